"""Reading an upstream index's project pages, and choosing files for requirements.

Pure functions, no I/O: the upstream client hands over the bytes of a PEP 691 JSON page or a
PEP 503 HTML page with the URL it came from, and gets back an :class:`UpstreamProject` whose
files keep everything the page said about them (hashes, ``requires-python``, ``yanked``,
``size``, ``upload-time``, ``core-metadata``).

Upstream is not trusted: a file whose name is not a wheel or sdist of the requested project
(another project's file, a path, control characters, an ``.egg``) is left out, as is a link
whose URL is not ``http(s)``.  Hashes are kept only for algorithms :mod:`hashlib` guarantees,
as lower-case hex.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

import attrs
from packaging.requirements import InvalidRequirement, Requirement

from pypicloud_tx.domain.names import canonical, parse_filename, parse_version, sort_key
from pypicloud_tx.errors import InvalidUpload

__all__ = [
    "UpstreamFile",
    "UpstreamPageError",
    "UpstreamProject",
    "choose_files",
    "parse_project_html",
    "parse_project_json",
    "parse_requirement",
]

#: Hash names a file may be checked with (PEP 503 allows any hashlib algorithm).
HASH_NAMES = frozenset(a for a in hashlib.algorithms_guaranteed if not a.startswith("shake_"))
_HEX = re.compile(r"^[0-9a-f]+\Z")
JSON_TYPES = ("application/vnd.pypi.simple.v1+json",)
HTML_TYPES = ("application/vnd.pypi.simple.v1+html", "text/html")


class UpstreamPageError(ValueError):
    """The page is not a simple-index project page we can read."""


def _frozen(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(value or {})


@attrs.frozen
class UpstreamFile:
    """One file an upstream project page lists.

    ``url`` is absolute and has no fragment.  ``core_metadata`` is ``False`` (none), ``True``
    (available, no hash given) or the hashes of the PEP 658 metadata file.  ``size`` and
    ``upload_time`` are ``None`` when the page does not say (HTML pages never do).
    """

    name: str  # canonical
    version: str
    filename: str
    url: str
    hashes: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen, eq=False)
    requires_python: str | None = None
    yanked: str | None = None
    size: int | None = None
    upload_time: dt.datetime | None = None
    core_metadata: Mapping[str, str] | bool = False

    @property
    def sha256(self) -> str | None:
        return self.hashes.get("sha256")

    @property
    def metadata_hashes(self) -> Mapping[str, str]:
        return self.core_metadata if isinstance(self.core_metadata, Mapping) else {}

    @property
    def kind(self) -> str:
        return "wheel" if self.filename.endswith(".whl") else "sdist"


@attrs.frozen
class UpstreamProject:
    """An upstream project page: its canonical name and its files, oldest version first."""

    name: str
    files: tuple[UpstreamFile, ...] = ()

    def file(self, filename: str) -> UpstreamFile | None:
        for f in self.files:
            if f.filename == filename:
                return f
        return None


# -- helpers ----------------------------------------------------------------------------------


def _hashes(value: Any) -> dict[str, str]:
    """``{algorithm: hex}`` for the well-formed entries of a hashes object."""
    found: dict[str, str] = {}
    if not isinstance(value, Mapping):
        return found
    for algorithm, digest in value.items():
        if not isinstance(algorithm, str) or not isinstance(digest, str):
            continue
        algorithm, digest = algorithm.lower(), digest.strip().lower()
        if algorithm in HASH_NAMES and _HEX.match(digest):
            found[algorithm] = digest
    return found


def _fragment_hashes(fragment: str) -> dict[str, str]:
    """``sha256=abc`` (a URL fragment or a data-core-metadata value) -> ``{"sha256": "abc"}``."""
    algorithm, sep, digest = fragment.partition("=")
    if not sep:
        return {}
    return _hashes({algorithm: digest})


def _http_url(base: str, href: str) -> tuple[str, str] | None:
    """``(absolute URL without fragment, fragment)``, or ``None`` for a non-HTTP link."""
    absolute, fragment = urldefrag(urljoin(base, href.strip()))
    if urlsplit(absolute).scheme not in ("http", "https"):
        return None
    return absolute, fragment


def _upload_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def _yanked(value: Any) -> str | None:
    """PEP 691's ``yanked``: false -> None, true -> "", a reason -> the reason."""
    if value is True:
        return ""
    if isinstance(value, str):
        return value
    return None


def _core_metadata(value: Any) -> Mapping[str, str] | bool:
    if isinstance(value, Mapping):
        return _hashes(value) or True
    return value is True


def _requires_python(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _checked_file(project: str, filename: str, url: str, **fields: Any) -> UpstreamFile | None:
    """An :class:`UpstreamFile`, or ``None`` when ``filename`` is not a distribution of
    ``project`` (or not a safe filename at all)."""
    try:
        dist = parse_filename(filename)
    except InvalidUpload:
        return None
    if dist.name != project:
        return None
    return UpstreamFile(name=project, version=dist.version, filename=filename, url=url, **fields)


def _ordered(project: str, files: Iterable[UpstreamFile]) -> UpstreamProject:
    unique: dict[str, UpstreamFile] = {}
    for f in files:
        unique.setdefault(f.filename, f)
    ordered = sorted(unique.values(), key=lambda f: (sort_key(f.version), f.filename))
    return UpstreamProject(project, tuple(ordered))


# -- PEP 691 ----------------------------------------------------------------------------------


def parse_project_json(body: bytes, page_url: str, project: str) -> UpstreamProject:
    """Read a PEP 691 JSON project page fetched from ``page_url``.

    :raises UpstreamPageError: when the body is not a JSON project page.
    """
    project = canonical(project)
    try:
        doc = json.loads(body)
    except ValueError:
        raise UpstreamPageError("the JSON project page is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise UpstreamPageError("the JSON project page has no 'files' list")
    files = []
    for entry in doc["files"]:
        if not isinstance(entry, dict):
            continue
        filename, href = entry.get("filename"), entry.get("url")
        if not isinstance(filename, str) or not isinstance(href, str):
            continue
        link = _http_url(page_url, href)
        if link is None:
            continue
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            size = None
        metadata = entry.get("core-metadata", entry.get("dist-info-metadata", False))
        checked = _checked_file(
            project,
            filename,
            link[0],
            hashes=_hashes(entry.get("hashes")),
            requires_python=_requires_python(entry.get("requires-python")),
            yanked=_yanked(entry.get("yanked")),
            size=size,
            upload_time=_upload_time(entry.get("upload-time")),
            core_metadata=_core_metadata(metadata),
        )
        if checked is not None:
            files.append(checked)
    return _ordered(project, files)


# -- PEP 503 ----------------------------------------------------------------------------------


class _Anchors(HTMLParser):
    """Collects ``<a>`` elements (attributes and text) and the ``<base href>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base: str | None = None
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self._open: tuple[dict[str, str | None], list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "base" and self.base is None:
            self.base = dict(attrs).get("href")
        elif tag == "a":
            self._close()
            self._open = (dict(attrs), [])

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._close()

    def _close(self) -> None:
        if self._open is not None:
            self.anchors.append((self._open[0], "".join(self._open[1]).strip()))
            self._open = None

    def close(self) -> None:
        super().close()
        self._close()


def parse_project_html(body: bytes, page_url: str, project: str) -> UpstreamProject:
    """Read a PEP 503 HTML project page fetched from ``page_url``.

    The filename is the anchor's text, or else the last segment of its URL's path.

    :raises UpstreamPageError: when the body is not text.
    """
    project = canonical(project)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise UpstreamPageError("the HTML project page is not UTF-8") from None
    parser = _Anchors()
    parser.feed(text)
    parser.close()
    base = urljoin(page_url, parser.base) if parser.base else page_url
    files = []
    for attributes, label in parser.anchors:
        href = attributes.get("href")
        if not href:
            continue
        link = _http_url(base, href)
        if link is None:
            continue
        url, fragment = link
        filename = label or unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        metadata_attr = attributes.get(
            "data-core-metadata", attributes.get("data-dist-info-metadata")
        )
        metadata: Mapping[str, str] | bool = False
        if metadata_attr is not None:
            metadata = _fragment_hashes(metadata_attr) or metadata_attr.strip().lower() != "false"
        yanked = attributes.get("data-yanked") if "data-yanked" in attributes else None
        checked = _checked_file(
            project,
            filename,
            url,
            hashes=_fragment_hashes(fragment),
            requires_python=_requires_python(attributes.get("data-requires-python")),
            yanked=(yanked or "") if "data-yanked" in attributes else None,
            core_metadata=metadata,
        )
        if checked is not None:
            files.append(checked)
    return _ordered(project, files)


def parse_project_page(
    body: bytes, content_type: str, page_url: str, project: str
) -> UpstreamProject:
    """JSON or HTML by the response's ``Content-Type`` (a body starting with ``{`` is JSON).

    :raises UpstreamPageError: when it is neither.
    """
    media = content_type.split(";")[0].strip().lower()
    if media in JSON_TYPES or media.endswith("+json") or media == "application/json":
        return parse_project_json(body, page_url, project)
    if media in HTML_TYPES or media.endswith("+html") or not media:
        if body.lstrip()[:1] == b"{":
            return parse_project_json(body, page_url, project)
        return parse_project_html(body, page_url, project)
    raise UpstreamPageError(f"the project page has an unexpected Content-Type {media!r}")


# -- requirements (POST /api/fetch) ----------------------------------------------------------


def parse_requirement(line: str) -> Requirement | None:
    """A requirement from one line of a requirements file; ``None`` for a blank or comment
    line.

    :raises InvalidUpload: for an option line (``-r``, ``--index-url``...) or a line that is
        not a PEP 508 requirement.
    """
    text = line.split(" #", 1)[0].strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith("-"):
        raise InvalidUpload(f"{text!r}: options are not supported here, only requirements")
    try:
        requirement = Requirement(text)
    except InvalidRequirement as e:
        raise InvalidUpload(f"{text!r} is not a valid requirement: {e}") from None
    if requirement.url:
        raise InvalidUpload(f"{text!r}: direct URL requirements cannot be fetched")
    return requirement


def choose_files(
    project: UpstreamProject, requirement: Requirement, wheel: bool, prerelease: bool
) -> Sequence[UpstreamFile]:
    """The files of the newest version of ``project`` that satisfies ``requirement``.

    Yanked files count only when the requirement pins their version with ``==``/``===``
    (PEP 592); pre-releases only with ``prerelease`` or when the specifier names one.  With
    ``wheel`` the version's wheels are chosen (its sdist when it has none); without, its
    sdist (its wheels when it has none).  Markers and extras are not evaluated: the server
    cannot know the client's environment.
    """
    pinned = any(s.operator in ("==", "===") for s in requirement.specifier)
    by_version: dict[str, list[UpstreamFile]] = {}
    for f in project.files:
        if f.yanked is not None and not pinned:
            continue
        by_version.setdefault(f.version, []).append(f)
    candidates = []
    for version in by_version:
        parsed = parse_version(version)
        if parsed is None:
            continue
        allow_pre = prerelease or requirement.specifier.prereleases or False
        if requirement.specifier.contains(parsed, prereleases=allow_pre):
            candidates.append((parsed, version))
    if not candidates:
        return ()
    _, best = max(candidates)
    files = by_version[best]
    wheels = [f for f in files if f.kind == "wheel"]
    sdists = [f for f in files if f.kind == "sdist"]
    chosen = (wheels or sdists) if wheel else (sdists or wheels)
    return tuple(chosen)


@attrs.frozen
class PageFetch:
    """A project page fetched from upstream: ``project`` is ``None`` when upstream answered
    ``304 Not Modified`` to the ``ETag`` we sent."""

    project: UpstreamProject | None
    etag: str | None
