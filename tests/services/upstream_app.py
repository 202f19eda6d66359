"""A small Klein app standing in for an upstream index (PyPI) in in-memory tests.

It serves ``/simple/<name>/`` as PEP 691 JSON or PEP 503 HTML by the ``Accept`` header (or
HTML only), with an ``ETag`` it honours, the files under ``/files/<filename>`` and their
PEP 658 metadata under ``/files/<filename>.metadata``.  It records every request, and can be
told to misbehave: hang, answer an error status, lie about a hash, cut a body short or stall
in the middle of one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from pypicloud_tx.domain.names import canonical, parse_filename

JSON = "application/vnd.pypi.simple.v1+json"


@attrs.define
class Served:
    """One file the fake upstream holds."""

    filename: str
    data: bytes
    requires_python: str | None = None
    yanked: str | None = None
    metadata: bytes | None = None
    upload_time: dt.datetime = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)


class FakeUpstream:
    """An in-memory upstream simple index; see the module docstring."""

    def __init__(self) -> None:
        self.projects: dict[str, dict[str, Served]] = {}
        self.requests: list[str] = []  # the paths asked for, in order
        self.html_only = False
        self.hang = False  # nothing is ever answered
        self.status: int | None = None  # every answer has this status (and no body)
        self.lie: set[str] = set()  # filenames whose page gives a wrong sha256
        self.no_hash: set[str] = set()  # filenames listed without any hash
        self.truncate: set[str] = set()  # filenames whose body is cut short
        self.stall: set[str] = set()  # filenames whose body stops half-way
        self.etags = True
        self.held: list[IRequest] = []  # requests left hanging
        self.authorizations: list[bytes | None] = []  # the Authorization header of each
        self.gated = False  # answers wait for release()
        self.gate: list[Deferred[None]] = []

    def release(self) -> int:
        """Let every held answer go; how many there were."""
        held, self.gate = self.gate, []
        for d in held:
            d.callback(None)
        return len(held)

    def add(self, filename: str, data: bytes, metadata: bytes | None = None, **kw: Any) -> Served:
        served = Served(filename, data, metadata=metadata, **kw)
        name = parse_filename(filename).name
        self.projects.setdefault(name, {})[filename] = served
        return served

    def count(self, path_part: str) -> int:
        """How many requests asked for a path containing ``path_part``."""
        return sum(1 for p in self.requests if path_part in p)

    # -- pages -------------------------------------------------------------------------

    def _json(self, name: str) -> bytes:
        files = []
        for f in self.projects[name].values():
            entry: dict[str, Any] = {
                "filename": f.filename,
                "url": f"../../files/{f.filename}",
                "hashes": self._hashes(f),
                "requires-python": f.requires_python,
                "yanked": f.yanked if f.yanked is not None else False,
                "size": len(f.data),
                "upload-time": f.upload_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "core-metadata": (
                    {"sha256": hashlib.sha256(f.metadata).hexdigest()} if f.metadata else False
                ),
            }
            files.append(entry)
        return json.dumps({"meta": {"api-version": "1.1"}, "name": name, "files": files}).encode()

    def _hashes(self, f: Served) -> dict[str, str]:
        if f.filename in self.no_hash:
            return {}
        digest = hashlib.sha256(f.data).hexdigest()
        if f.filename in self.lie:
            digest = hashlib.sha256(b"something else").hexdigest()
        return {"sha256": digest}

    def _html(self, name: str) -> bytes:
        links = []
        for f in self.projects[name].values():
            hashes = self._hashes(f)
            fragment = f"#sha256={hashes['sha256']}" if hashes else ""
            extra = ""
            if f.requires_python:
                extra += f' data-requires-python="{f.requires_python.replace("<", "&lt;")}"'
            if f.yanked is not None:
                extra += f' data-yanked="{f.yanked}"'
            if f.metadata:
                extra += f' data-core-metadata="sha256={hashlib.sha256(f.metadata).hexdigest()}"'
            links.append(f'<a href="/files/{f.filename}{fragment}"{extra}>{f.filename}</a><br>')
        return ("<!DOCTYPE html><html><body>" + "\n".join(links) + "</body></html>").encode()

    # -- the app -----------------------------------------------------------------------

    def resource(self) -> IResource:
        app = Klein()

        def misbehave(request: IRequest) -> Any:
            self.requests.append(request.path.decode())
            self.authorizations.append(request.getHeader(b"authorization"))
            if self.hang:
                self.held.append(request)
                return Deferred()  # never fires
            if self.status is not None:
                request.setResponseCode(self.status)
                return b""
            return None

        def gated(answer: Any) -> Any:
            """Hold the answer until :meth:`release` while :attr:`gated` is set."""

            def wrapper(request: IRequest, name: str) -> Any:
                early = misbehave(request)
                if early is not None:
                    return early
                if not self.gated:
                    return answer(request, name)
                later: Deferred[None] = Deferred()
                self.gate.append(later)
                return later.addCallback(lambda _: answer(request, name))

            return wrapper

        @app.route("/simple/<string:project>/", methods=["GET"])
        def page(request: IRequest, project: str) -> Any:
            return gated(page_answer)(request, project)

        def page_answer(request: IRequest, project: str) -> Any:
            name = canonical(project)
            if name not in self.projects:
                request.setResponseCode(404)
                return b"no such project"
            accept = (request.getHeader(b"accept") or b"").decode()
            if JSON in accept and not self.html_only:
                body, content_type = self._json(name), JSON
            else:
                body, content_type = self._html(name), "text/html; charset=utf-8"
            tag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            request.setHeader(b"Content-Type", content_type.encode())
            if self.etags:
                request.setHeader(b"ETag", tag.encode())
                if request.getHeader(b"if-none-match") == tag.encode():
                    request.setResponseCode(304)
                    return b""
            return body

        @app.route("/files/<string:filename>", methods=["GET"])
        def file(request: IRequest, filename: str) -> Any:
            return gated(file_answer)(request, filename)

        def file_answer(request: IRequest, filename: str) -> Any:
            metadata = filename.endswith(".metadata")
            real = filename[: -len(".metadata")] if metadata else filename
            served = next(
                (p[real] for p in self.projects.values() if real in p),
                None,
            )
            if served is None or (metadata and served.metadata is None):
                request.setResponseCode(404)
                return b"no such file"
            data = served.metadata if metadata else served.data
            assert data is not None
            request.setHeader(b"Content-Type", b"application/octet-stream")
            request.setHeader(b"Content-Length", str(len(data)).encode())
            if not metadata and real in self.truncate:
                request.write(data[: len(data) // 2])
                request.loseConnection()
                return Deferred()
            if not metadata and real in self.stall:
                request.write(data[: len(data) // 2])
                self.held.append(request)
                return Deferred()  # the rest never comes
            return data

        return app.resource()
