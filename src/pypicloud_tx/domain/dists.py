"""Opening uploaded distributions and reading their core metadata.

Archives are read in memory, member by member, never extracted: a wheel (zip) gives its
``*.dist-info/METADATA``, an sdist (``.tar.gz`` or ``.zip``) its top-level ``PKG-INFO``.  The
metadata member is read with a size cap, so a zip or gzip bomb costs at most that much memory,
and a tar archive is scanned as a stream with a cap on the bytes it may expand to.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import tarfile
import zipfile
import zlib
from collections.abc import Mapping
from typing import IO, Any, BinaryIO

import attrs
from packaging.metadata import parse_email

from pypicloud_tx.domain.names import DistName, canonical, parse_filename, versions_equal
from pypicloud_tx.errors import InvalidUpload

__all__ = ["DistInfo", "check_agrees", "digest_matches", "inspect_distribution"]

#: The largest metadata member read from an archive.
MAX_METADATA_SIZE = 10 * 1024**2

#: How many bytes a tar archive may expand to while we look for its ``PKG-INFO``.
MAX_TAR_SCAN = 4 * 1024**3

# Errors the archive modules raise on corrupt, truncated or unsupported input.
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    RuntimeError,  # encrypted zip members
    NotImplementedError,  # unsupported zip compression methods
)

# Metadata fields that may appear more than once, by their twine/pypicloud names.
_MULTIPLE = frozenset(
    {
        "classifiers",
        "dynamic",
        "import_names",
        "import_namespaces",
        "license_files",
        "obsoletes",
        "obsoletes_dist",
        "platform",
        "project_urls",
        "provides",
        "provides_dist",
        "provides_extra",
        "requires",
        "requires_dist",
        "requires_external",
        "supported_platform",
    }
)

# packaging's names (and email header names) where twine's form names differ.
_TWINE_NAMES = {
    "platforms": "platform",
    "supported_platforms": "supported_platform",
    "classifier": "classifiers",
    "project_url": "project_urls",
    "license_file": "license_files",
    "import_name": "import_names",
    "import_namespace": "import_namespaces",
}

# Fields that DistInfo carries as attributes rather than in ``fields``.
_OWN = frozenset({"name", "version", "summary", "requires_python"})


def _plain_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(value)


@attrs.frozen
class DistInfo:
    """What a distribution's core metadata says.

    ``name`` and ``version`` are as the metadata spells them.  ``core_metadata`` is the exact
    ``METADATA`` of a wheel (served for PEP 658), ``None`` for sdists.  ``fields`` holds the
    remaining metadata under the names twine's upload form uses (``requires_dist``,
    ``classifiers``, ``description``, ``project_urls`` ...) as JSON-serialisable values: lists
    for repeatable fields, strings otherwise.
    """

    name: str
    version: str
    summary: str = ""
    requires_python: str | None = None
    core_metadata: bytes | None = None
    fields: dict[str, Any] = attrs.field(factory=dict, converter=_plain_dict, eq=False)


def inspect_distribution(stream: BinaryIO | IO[bytes], filename: str) -> DistInfo:
    """Open the distribution in ``stream`` and read its core metadata.

    ``stream`` must be seekable; it is read from the start and left open.  The filename says
    what kind of archive to expect (and, for wheels, which ``.dist-info`` directory).

    :raises InvalidUpload: the filename is not a distribution name, the archive is not valid,
        its metadata member is missing, ambiguous or too large, or the metadata lacks a name
        or version.
    """
    dist = parse_filename(filename)
    stream.seek(0)
    try:
        if dist.kind == "wheel":
            core = _wheel_metadata(stream, filename, dist)
            return _parse_metadata(core, filename, core_metadata=core)
        if filename.endswith(".zip"):
            raw = _zip_sdist_metadata(stream, filename)
        else:
            raw = _tar_sdist_metadata(stream, filename)
        return _parse_metadata(raw, filename, core_metadata=None)
    except InvalidUpload:
        raise
    except _ARCHIVE_ERRORS as e:
        kind = "wheel" if dist.kind == "wheel" else "sdist"
        raise InvalidUpload(
            f"{filename!r} is not a valid {kind}: {str(e) or type(e).__name__}"
        ) from None


def check_agrees(dist: DistInfo, filename_name: str, filename_version: str) -> None:
    """Refuse a distribution whose metadata names another project or version than its filename.

    :raises InvalidUpload: naming both values.
    """
    if canonical(dist.name) != canonical(filename_name):
        raise InvalidUpload(
            f"The metadata names the project {dist.name!r}, but the filename says "
            f"{filename_name!r}."
        )
    if not versions_equal(dist.version, filename_version):
        raise InvalidUpload(
            f"The metadata gives version {dist.version!r}, but the filename says "
            f"{filename_version!r}."
        )


def digest_matches(expected: str, actual_hex: str) -> bool:
    """Whether a digest sent by a client equals ``actual_hex``.

    ``expected`` may be hexadecimal (any case) or URL-safe base64 with or without padding, as
    clients send either.  The comparison takes constant time.
    """
    try:
        actual = bytes.fromhex(actual_hex)
    except ValueError:
        return False
    sent = _digest_bytes(expected.strip(), len(actual))
    if sent is None:
        return False
    return hmac.compare_digest(sent, actual)


def _digest_bytes(text: str, size: int) -> bytes | None:
    if not text or not text.isascii():
        return None
    if len(text) == 2 * size:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None


# -- archives -----------------------------------------------------------------------------


def _wheel_metadata(stream: IO[bytes], filename: str, dist: DistName) -> bytes:
    with zipfile.ZipFile(stream) as archive:
        candidates = [
            info
            for info in archive.infolist()
            if info.filename.count("/") == 1
            and info.filename.endswith("/METADATA")
            and info.filename.split("/", 1)[0].endswith(".dist-info")
        ]
        if not candidates:
            raise InvalidUpload(
                f"{filename!r} is not a valid wheel: it has no top-level *.dist-info/METADATA."
            )
        directories = sorted({info.filename.split("/", 1)[0] for info in candidates})
        if len(candidates) > 1:
            raise InvalidUpload(
                f"{filename!r} is not a valid wheel: it has more than one .dist-info/METADATA "
                f"({', '.join(directories)})."
            )
        directory = directories[0]
        if not _dist_info_matches(directory[: -len(".dist-info")], dist):
            raise InvalidUpload(
                f"{filename!r} is not a valid wheel: its metadata directory {directory!r} does "
                "not match the name and version in the filename."
            )
        return _read_zip_member(archive, candidates[0], filename)


def _dist_info_matches(stem: str, dist: DistName) -> bool:
    """Whether ``<stem>.dist-info`` belongs to the wheel's name and version.

    The name and version are split at whichever dash makes them match, so that an unescaped
    name with dashes (written by old tools) is still recognised.
    """
    for i, char in enumerate(stem):
        if char == "-":
            name, version = stem[:i], stem[i + 1 :]
            if canonical(name) == dist.name and versions_equal(version, dist.version):
                return True
    return False


def _read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, filename: str) -> bytes:
    if info.file_size > MAX_METADATA_SIZE:
        raise _too_large(filename, info.filename)
    with archive.open(info) as member:
        # The declared size may lie; read one byte past the cap to find out.
        data = member.read(MAX_METADATA_SIZE + 1)
    if len(data) > MAX_METADATA_SIZE:
        raise _too_large(filename, info.filename)
    return data


def _too_large(filename: str, member: str) -> InvalidUpload:
    return InvalidUpload(
        f"{filename!r} is not a valid distribution: its metadata member {member!r} is larger "
        f"than {MAX_METADATA_SIZE} bytes."
    )


def _no_pkg_info(filename: str) -> InvalidUpload:
    return InvalidUpload(
        f"{filename!r} is not a valid sdist: it has no PKG-INFO in its top-level directory."
    )


def _zip_sdist_metadata(stream: IO[bytes], filename: str) -> bytes:
    with zipfile.ZipFile(stream) as archive:
        candidates = sorted(
            (
                info
                for info in archive.infolist()
                if info.filename.count("/") == 1
                and info.filename.endswith("/PKG-INFO")
                and not info.is_dir()
            ),
            key=lambda info: _prefer_stem(info.filename, filename),
        )
        if not candidates:
            raise _no_pkg_info(filename)
        return _read_zip_member(archive, candidates[0], filename)


def _prefer_stem(member: str, filename: str) -> tuple[int, str]:
    """Sort key putting ``<filename stem>/PKG-INFO`` first, then by name."""
    stem = filename.removesuffix(".zip")
    return (0 if member.split("/", 1)[0] == stem else 1, member)


def _tar_sdist_metadata(stream: IO[bytes], filename: str) -> bytes:
    # Stream mode ("r|gz") reads forward only and lets us forget each member once seen, so a
    # tar with millions of entries does not pile up TarInfo objects.  The first top-level
    # PKG-INFO is the shortest possible path: stop there.
    with tarfile.open(fileobj=stream, mode="r|gz") as archive:
        while True:
            member = archive.next()
            if member is None:
                raise _no_pkg_info(filename)
            # TarFile keeps every TarInfo it has read in ``members``; we never look back.
            archive.members.clear()  # type: ignore[attr-defined]
            # Checked before the next member header is sought, which decompresses this
            # member's (declared) data: a bomb is refused before it is expanded.
            if member.offset_data + member.size > MAX_TAR_SCAN:
                raise InvalidUpload(
                    f"{filename!r} is not a valid sdist: no PKG-INFO found in the first "
                    f"{MAX_TAR_SCAN} bytes of the archive."
                )
            path = member.name.removeprefix("./")
            if path.count("/") != 1 or not path.endswith("/PKG-INFO"):
                continue
            if not member.isfile():
                raise InvalidUpload(
                    f"{filename!r} is not a valid sdist: its {path!r} is not a regular file."
                )
            if member.size > MAX_METADATA_SIZE:
                raise _too_large(filename, path)
            extracted = archive.extractfile(member)
            assert extracted is not None  # a regular file always has contents
            return extracted.read(MAX_METADATA_SIZE + 1)


# -- metadata -----------------------------------------------------------------------------


def _parse_metadata(data: bytes, filename: str, core_metadata: bytes | None) -> DistInfo:
    raw, unparsed = parse_email(data)
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        field = _TWINE_NAMES.get(key, key)
        if key == "keywords" and isinstance(value, list):
            fields[field] = ",".join(value)
        elif isinstance(value, dict):  # project_urls
            fields[field] = [f"{label}, {url}" for label, url in value.items()]
        elif isinstance(value, list):
            fields[field] = list(value)
        elif isinstance(value, str):
            fields[field] = value
    # Leniency: a known field packaging could not read (a repeated single field, an odd
    # project URL) is kept as written rather than failing the upload.  Unknown ones are dropped.
    for header, values in unparsed.items():
        key = header.lower().replace("-", "_")
        field = _TWINE_NAMES.get(key, key)
        if field in fields or field in _OWN or not _is_known(field):
            continue
        texts = [v if isinstance(v, str) else v.decode("utf-8", errors="replace") for v in values]
        if texts:
            fields[field] = texts if field in _MULTIPLE else texts[0]
    name = fields.pop("name", None)
    version = fields.pop("version", None)
    if not name or not version:
        missing = "Name" if not name else "Version"
        raise InvalidUpload(
            f"{filename!r} is not a valid distribution: its metadata has no single {missing} field."
        )
    summary = (fields.pop("summary", "") or "").strip()
    requires_python = fields.pop("requires_python", None) or None
    return DistInfo(
        name=name,
        version=version,
        summary=summary,
        requires_python=requires_python,
        core_metadata=core_metadata,
        fields=fields,
    )


_KNOWN = frozenset(
    {
        "metadata_version",
        "description",
        "description_content_type",
        "keywords",
        "home_page",
        "download_url",
        "author",
        "author_email",
        "maintainer",
        "maintainer_email",
        "license",
        "license_expression",
    }
)


def _is_known(field: str) -> bool:
    return field in _KNOWN or field in _MULTIPLE
