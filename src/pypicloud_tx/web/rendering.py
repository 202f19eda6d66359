"""Turning package data into the Simple API (PEP 503/691) and PyPI-shaped JSON."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from html import escape
from typing import Any

from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.domain.names import is_prerelease, sort_key
from pypicloud_tx.domain.upstream_pages import UpstreamFile

API_VERSION = "1.1"
JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
TEXT_HTML = "text/html"
_OFFERS = {
    JSON_V1: ("json", JSON_V1),
    "application/vnd.pypi.simple.latest+json": ("json", JSON_V1),
    HTML_V1: ("html", HTML_V1),
    "application/vnd.pypi.simple.latest+html": ("html", HTML_V1),
    TEXT_HTML: ("html", "text/html; charset=utf-8"),
    "text/*": ("html", "text/html; charset=utf-8"),
    "*/*": ("html", "text/html; charset=utf-8"),
}
_FORMATS = {
    "json": ("json", JSON_V1),
    "html": ("html", HTML_V1),
    JSON_V1: ("json", JSON_V1),
    HTML_V1: ("html", HTML_V1),
    "application/vnd.pypi.simple.latest+json": ("json", JSON_V1),
    "application/vnd.pypi.simple.latest+html": ("html", HTML_V1),
    TEXT_HTML: ("html", "text/html; charset=utf-8"),
}


@functools.lru_cache(maxsize=512)
def negotiate(accept: str | None, format_override: str | None = None) -> tuple[str, str] | None:
    """``(kind, content type)`` for a Simple API response, or ``None`` for 406.

    No ``Accept`` header means HTML.  The highest q-value wins; on a tie JSON wins, then
    the order the client wrote them in.  ``?format=`` overrides the header.
    """
    if format_override:
        return _FORMATS.get(format_override.strip().lower())
    if not accept or not accept.strip():
        return ("html", "text/html; charset=utf-8")
    best: tuple[float, int, int] | None = None
    chosen = None
    for position, item in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in item.split(";"))
        offer = _OFFERS.get(media.lower())
        if offer is None:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        rank = (q, 1 if offer[0] == "json" else 0, -position)
        if best is None or rank > best:
            best, chosen = rank, offer
    return chosen


class PageMemo:
    """Rendered pages and their ETags, kept while their source is the very same object.

    The services hand back the same list for a project until the cache changes, so a page is
    rendered once per change rather than once per request.  The memo holds the source, so
    its identity cannot be reused by another object while the entry lives.
    """

    def __init__(self, max_entries: int = 20_000) -> None:
        self._max = max_entries
        self._pages: dict[Hashable, tuple[object, bytes, str]] = {}

    def get(self, key: Hashable, source: object, render: Callable[[], bytes]) -> tuple[bytes, str]:
        """``(body, etag)`` for ``key``, rendered again only when ``source`` changed."""
        hit = self._pages.get(key)
        if hit is not None and hit[0] is source:
            return hit[1], hit[2]
        body = render()
        tag = etag(body)
        if len(self._pages) >= self._max:
            self._pages.clear()
        self._pages[key] = (source, body, tag)
        return body, tag


def etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def file_url(file: PackageFile) -> str:
    """The stable, server-relative URL of a file, as seen from ``/simple/<name>/``."""
    return f"../../api/package/{file.name}/{file.filename}"


def _head(title: str) -> str:
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
        f"<title>{escape(title)}</title>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n"
    )


def root_html(names: Iterable[str]) -> bytes:
    links = "".join(f'<a href="{escape(n)}/">{escape(n)}</a><br>\n' for n in names)
    return (_head("Simple index") + links + "</body>\n</html>\n").encode("utf-8")


def root_json(names: Iterable[str]) -> bytes:
    doc = {"meta": {"api-version": API_VERSION}, "projects": [{"name": n} for n in names]}
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def upstream_file_url(file: UpstreamFile, direct: bool) -> str:
    """Where a page links an upstream file: upstream itself (``direct``), or this server's
    download URL, which fetches and caches it on first use."""
    if direct:
        return file.url
    return f"../../api/package/{file.name}/{file.filename}"


def _hash_fragment(hashes: Mapping[str, str]) -> str:
    """``#sha256=<hex>`` (or another algorithm when upstream gave no sha256), or nothing."""
    if not hashes:
        return ""
    algorithm = "sha256" if "sha256" in hashes else sorted(hashes)[0]
    return f"#{algorithm}={hashes[algorithm]}"


def _upstream_html(f: UpstreamFile, direct: bool) -> str:
    attrs = [f'href="{escape(upstream_file_url(f, direct) + _hash_fragment(f.hashes))}"']
    if f.requires_python:
        attrs.append(f'data-requires-python="{escape(f.requires_python)}"')
    if f.core_metadata is not False:
        value = _hash_fragment(f.metadata_hashes)[1:] or "true"
        attrs.append(f'data-core-metadata="{escape(value)}"')
        attrs.append(f'data-dist-info-metadata="{escape(value)}"')
    if f.yanked is not None:
        attrs.append(f'data-yanked="{escape(f.yanked)}"')
    return f"<a {' '.join(attrs)}>{escape(f.filename)}</a><br>\n"


def _upstream_json(f: UpstreamFile, direct: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "filename": f.filename,
        "url": upstream_file_url(f, direct),
        "hashes": dict(f.hashes),
        "requires-python": f.requires_python,
        "core-metadata": (dict(f.metadata_hashes) or True) if f.core_metadata else False,
        "yanked": f.yanked if f.yanked is not None else False,
    }
    # PEP 700 fields only when upstream gave them (an HTML upstream page never does).
    if f.size is not None:
        entry["size"] = f.size
    if f.upload_time is not None:
        entry["upload-time"] = upload_time(f.upload_time)
    return entry


def _merged(
    files: Sequence[PackageFile], upstream: Sequence[UpstreamFile]
) -> list[PackageFile | UpstreamFile]:
    """Local and upstream files in one list, oldest version first."""
    both: list[PackageFile | UpstreamFile] = [*files, *upstream]
    return sorted(both, key=lambda f: (sort_key(f.version), f.filename))


def project_html(
    name: str,
    files: Sequence[PackageFile],
    upstream: Sequence[UpstreamFile] = (),
    direct: bool = False,
) -> bytes:
    """The PEP 503 page; ``upstream`` files (not held here) link as :func:`upstream_file_url`."""
    parts = [_head(f"Links for {name}")]
    for f in _merged(files, upstream) if upstream else files:
        if isinstance(f, UpstreamFile):
            parts.append(_upstream_html(f, direct))
            continue
        attrs = [f'href="{escape(file_url(f))}#sha256={f.sha256}"']
        if f.requires_python:
            attrs.append(f'data-requires-python="{escape(f.requires_python)}"')
        if f.metadata_sha256:
            attrs.append(f'data-core-metadata="sha256={f.metadata_sha256}"')
            attrs.append(f'data-dist-info-metadata="sha256={f.metadata_sha256}"')
        if f.yanked is not None:
            attrs.append(f'data-yanked="{escape(f.yanked)}"')
        parts.append(f"<a {' '.join(attrs)}>{escape(f.filename)}</a><br>\n")
    parts.append("</body>\n</html>\n")
    return "".join(parts).encode("utf-8")


def upload_time(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def project_json(
    name: str,
    files: Sequence[PackageFile],
    upstream: Sequence[UpstreamFile] = (),
    direct: bool = False,
) -> bytes:
    """The PEP 691 page; ``upstream`` files (not held here) link as :func:`upstream_file_url`."""
    versions = sorted({f.version for f in files} | {f.version for f in upstream}, key=sort_key)
    doc = {
        "meta": {"api-version": API_VERSION},
        "name": name,
        "versions": versions,
        "files": [
            _upstream_json(f, direct)
            if isinstance(f, UpstreamFile)
            else {
                "filename": f.filename,
                "url": file_url(f),
                "hashes": {"sha256": f.sha256},
                "requires-python": f.requires_python,
                "core-metadata": {"sha256": f.metadata_sha256} if f.metadata_sha256 else False,
                "yanked": f.yanked if f.yanked is not None else False,
                "size": f.size,
                "upload-time": upload_time(f.upload_time),
            }
            for f in (_merged(files, upstream) if upstream else files)
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def pypi_file(f: PackageFile, base: str) -> dict[str, Any]:
    """One file as PyPI's JSON API describes it; ``base`` is the URL prefix for ``url``."""
    digests = {"sha256": f.sha256}
    if f.md5:
        digests["md5"] = f.md5
    if f.blake2b_256:
        digests["blake2b_256"] = f.blake2b_256
    return {
        "filename": f.filename,
        "url": f"{base}api/package/{f.name}/{f.filename}",
        "digests": digests,
        "md5_digest": f.md5,
        "size": f.size,
        "packagetype": f.packagetype,
        "python_version": f.metadata.get("pyversion")
        or ("source" if f.packagetype == "sdist" else "py3"),
        "requires_python": f.requires_python,
        "upload_time": f.upload_time.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "upload_time_iso_8601": upload_time(f.upload_time),
        "yanked": f.yanked is not None,
        "yanked_reason": f.yanked or None,
        "uploader": f.uploader,
    }


def pypi_json(name: str, files: Sequence[PackageFile], version: str | None, base: str) -> bytes:
    """PyPI-shaped ``/pypi/<name>[/<version>]/json``; ``version`` None means the latest."""
    by_version: dict[str, list[PackageFile]] = {}
    for f in files:
        by_version.setdefault(f.version, []).append(f)
    ordered = sorted(by_version, key=sort_key)
    stable = [v for v in ordered if not is_prerelease(v)]
    unyanked = [v for v in (stable or ordered) if any(f.yanked is None for f in by_version[v])]
    current = version or (unyanked or stable or ordered)[-1]
    newest = max(by_version[current], key=lambda f: f.upload_time)
    meta = dict(newest.metadata)
    info = {
        "name": newest.display_name or name,
        "version": current,
        "summary": newest.summary,
        "requires_python": newest.requires_python,
        "requires_dist": meta.get("requires_dist") or None,
        "classifiers": meta.get("classifiers") or [],
        "description": meta.get("description", ""),
        "description_content_type": meta.get("description_content_type"),
        "author": meta.get("author"),
        "author_email": meta.get("author_email"),
        "maintainer": meta.get("maintainer"),
        "maintainer_email": meta.get("maintainer_email"),
        "license": meta.get("license"),
        "keywords": meta.get("keywords"),
        "home_page": meta.get("home_page"),
        "project_urls": _project_urls(meta.get("project_urls")),
        "package_url": f"{base}pypi/{name}/",
        "release_url": f"{base}pypi/{name}/{current}/",
        "yanked": all(f.yanked is not None for f in by_version[current]),
        "yanked_reason": next((f.yanked for f in by_version[current] if f.yanked), None),
    }
    doc = {
        "info": info,
        "last_serial": 0,
        "releases": {v: [pypi_file(f, base) for f in by_version[v]] for v in ordered},
        "urls": [pypi_file(f, base) for f in by_version[current]],
    }
    if version is not None:
        del doc["releases"]
    return json.dumps(doc).encode("utf-8")


def _project_urls(value: Any) -> dict[str, str] | None:
    if not value:
        return None
    if isinstance(value, dict):
        return value
    urls = {}
    for entry in value if isinstance(value, list) else [value]:
        label, _, url = str(entry).partition(",")
        urls[label.strip()] = url.strip()
    return urls


def packages_html(files: Iterable[PackageFile]) -> bytes:
    """``/packages/``: every readable file, for ``pip --find-links``."""
    links = "".join(
        f'<a href="../api/package/{escape(f.name)}/{escape(f.filename)}#sha256={f.sha256}">'
        f"{escape(f.filename)}</a><br>\n"
        for f in files
    )
    return (_head("Packages") + links + "</body>\n</html>\n").encode("utf-8")
