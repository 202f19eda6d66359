"""A whole index (memory backends, real routes, real Site) driven through ``StubTreq``.

No socket and no reactor: requests go through the real HTTP stack in memory, and blocking
work runs synchronously.  Users (cheap hashes, for speed): ``alice`` (admin), ``bob``
(group ``devs``), ``carol`` (no groups); every password is ``<name>pw``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from passlib.hash import sha512_crypt
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.application import build_backends, build_index, build_sessions
from pypicloud_tx.backends._threads import run_synchronously
from pypicloud_tx.config.loader import parse_settings
from pypicloud_tx.domain.names import parse_filename
from pypicloud_tx.runtime import Runtime
from pypicloud_tx.services.auth import Authenticator
from pypicloud_tx.web.context import WebContext
from pypicloud_tx.web.root import IndexSite, build_resource
from tests.distfactory import encode_upload, make_sdist, make_wheel, twine_fields

_HASHES: dict[str, str] = {}


def cheap_hash(password: str) -> str:
    """A real sha512_crypt hash with few rounds, so tests stay fast."""
    if password not in _HASHES:
        _HASHES[password] = sha512_crypt.using(rounds=1000).hash(password)
    return _HASHES[password]


BASE_OPTIONS = {
    "pypi.storage": "memory",
    "pypi.db": "memory",
    "pypi.auth": "config",
    "auth.admins": "alice",
    "user.alice": "alicepw",
    "user.bob": "bobpw",
    "user.carol": "carolpw",
    "group.devs": "bob",
    "pypi.default_read": "everyone",
    "pypi.default_write": "authenticated",
}


def basic(user: str, password: str | None = None) -> dict[bytes, list[bytes]]:
    token = base64.b64encode(f"{user}:{password or user + 'pw'}".encode()).decode()
    return {b"Authorization": [f"Basic {token}".encode()]}


class Index:
    """One index under test; ``options`` override :data:`BASE_OPTIONS` (None removes one)."""

    def __init__(self, options: Mapping[str, str | None] | None = None) -> None:
        raw: dict[str, str] = dict(BASE_OPTIONS)
        for key, value in (options or {}).items():
            if value is None:
                raw.pop(key, None)
            else:
                raw[key] = value
        for key in list(raw):
            if key.startswith("user."):
                raw[key] = cheap_hash(raw[key])
        self.settings = parse_settings(raw)
        self.clock = Clock()
        self.runtime = Runtime.synchronous(reactor=self.clock, settings=self.settings)
        self.backends = build_backends(self.settings, self.runtime)
        self.index = build_index(self.settings, self.backends, self.runtime)
        self.ctx = WebContext(
            index=self.index,
            auth=Authenticator(self.backends.access, self.clock),
            settings=self.settings,
            run_blocking=run_synchronously,
            sessions=build_sessions(self.settings, run_synchronously),
        )
        self.resource = build_resource(self.ctx)
        self.treq = StubTreq(self.resource)
        agent = self.treq._agent  # use our Site (bounded bodies, no form parsing)
        agent._serverFactory = IndexSite(
            self.resource, self.settings.max_upload_size, reactor=agent._memoryReactor
        )

    def raw_http(self, data: bytes) -> bytes:
        """Feed raw bytes to a fresh connection of the real :class:`IndexSite`; what it wrote.

        For what ``StubTreq`` cannot send: chunked bodies, headers without their body.
        """
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        site = IndexSite(self.resource, self.settings.max_upload_size, reactor=self.clock)
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        return transport.value()

    def wire(
        self, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, list[str]], bytes]:
        """One request as raw HTTP; ``(status, headers by lower-case name, body)`` exactly as
        sent on the wire (the HTTP client hides Content-Length and adds Content-Encoding)."""
        lines = [f"{method} {path} HTTP/1.1", "Host: index.test", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        answer = self.raw_http(("\r\n".join(lines) + "\r\n\r\n").encode())
        head, _, body = answer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        found: dict[str, list[str]] = {}
        for line in header_lines:
            key, _, value = line.partition(":")
            found.setdefault(key.strip().lower(), []).append(value.strip())
        return int(status_line.split()[1]), found, body

    @property
    def storage(self) -> Any:
        return self.backends.storage

    @property
    def cache(self) -> Any:
        return self.backends.cache


class RouteTestCase(SynchronousTestCase):
    """Helpers for route tests: requests, bodies, uploads."""

    def make_index(self, options: Mapping[str, str | None] | None = None) -> Index:
        self.ix = Index(options)
        return self.ix

    def request(
        self,
        method: str,
        path: str,
        user: str | None = None,
        password: str | None = None,
        headers: Mapping[bytes, list[bytes]] | None = None,
        data: Any = None,
    ) -> Any:
        """Send a request; returns ``(response, body bytes)``."""
        all_headers: dict[bytes, list[bytes]] = dict(headers or {})
        if user is not None:
            all_headers.update(basic(user, password))
        d = self.ix.treq.request(
            method,
            "http://index.test" + path,
            headers=all_headers,
            data=data,
            allow_redirects=False,
        )
        response = self.successResultOf(self._pump(d))
        body = self.successResultOf(self._pump(response.content()))
        return response, body

    def _pump(self, d: Any, limit: int = 100_000) -> Any:
        """Move bytes between client and server until ``d`` fires (streamed bodies)."""
        done: list[bool] = []

        def finished(result: Any) -> Any:
            done.append(True)
            return result

        d.addBoth(finished)
        for _ in range(limit):
            if done:
                break
            self.ix.treq.flush()
        return d

    def get_json(
        self, path: str, user: str | None = None, accept: bytes = b"application/json"
    ) -> Any:
        response, body = self.request("GET", path, user, headers={b"Accept": [accept]})
        return response, json.loads(body) if body else None

    def upload(
        self,
        filename: str,
        data: bytes,
        user: str | None = "bob",
        path: str = "/simple/",
        fields: list[tuple[str, str]] | None = None,
        password: str | None = None,
    ) -> Any:
        """Upload ``data`` as ``filename`` the way twine does (fields computed unless given)."""
        if fields is None:
            dist = parse_filename(filename)
            fields = twine_fields(filename, data, dist.name, dist.version)
        content_type, body = encode_upload(fields, (filename, data))
        return self.request(
            "POST",
            path,
            user,
            password,
            headers={b"Content-Type": [content_type.encode()]},
            data=body,
        )

    def make_mutable_index(self, options: Mapping[str, str | None] | None = None) -> Index:
        """An index on a mutable access backend (SQL in memory) holding the same users as
        :data:`BASE_OPTIONS` (``alice`` stored as admin, ``bob`` in ``devs``); ``options``
        override :data:`MUTABLE_OPTIONS`."""
        ix = self.make_index({**MUTABLE_OPTIONS, **(options or {})})
        access = ix.backends.access
        _fired(access.start())
        self.addCleanup(lambda: _fired(access.stop()))
        _fired(access.load(mutable_users()))
        return ix

    @staticmethod
    def wheel(name: str = "demo", version: str = "1.0", **kw: Any) -> tuple[str, bytes]:
        return make_wheel(name, version, **kw)

    @staticmethod
    def sdist(name: str = "demo", version: str = "1.0", **kw: Any) -> tuple[str, bytes]:
        return make_sdist(name, version, **kw)


#: Options of an index whose access backend can change (see
#: :meth:`RouteTestCase.make_mutable_index`): the config file's users and admins are dropped.
MUTABLE_OPTIONS: dict[str, str | None] = {
    "pypi.auth": "sql",
    "auth.db.url": "sqlite://",
    "auth.rounds": "1000",  # cheap hashes for passwords set during a test
    "auth.admins": None,
    "user.alice": None,
    "user.bob": None,
    "user.carol": None,
    "group.devs": None,
}


def mutable_users() -> dict[str, Any]:
    """:data:`BASE_OPTIONS`'s users in pypicloud's export format, for ``load``."""
    return {
        "users": [
            {"username": name, "password": cheap_hash(name + "pw"), "admin": name == "alice"}
            for name in ("alice", "bob", "carol")
        ],
        "groups": {"devs": ["bob"]},
        "packages": {"users": {}, "groups": {}},
    }


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def snapshot(ix: Index) -> tuple[list[tuple[str, str]], list[str], list[tuple[str, str]]]:
    """What storage and cache hold: ``(storage (filename, sha256), cache names, cache files)``.

    Compare one taken before a refused request with one taken after to show nothing changed.
    """
    stored_files = sorted((f.filename, f.sha256) for f in _fired(ix.storage.list()))
    names = list(_fired(ix.cache.distinct()))
    cached: list[tuple[str, str]] = []
    for name in names:
        cached.extend((f.filename, f.sha256) for f in _fired(ix.cache.all(name)))
    return stored_files, names, sorted(cached)


def _fired(d: Any) -> Any:
    """The result of an already-fired Deferred (memory backends answer at once)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def wheel_metadata(data: bytes) -> bytes:
    """The ``*.dist-info/METADATA`` member of a wheel."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        (member,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return archive.read(member)


#: The Accept header pip sends (pip/_internal/index/collector.py).
PIP_ACCEPT = (
    b"application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    b"text/html; q=0.01"
)
#: The Accept header uv sends (crates/uv-client/src/registry_client.rs).
UV_ACCEPT = (
    b"application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    b"text/html;q=0.01"
)
