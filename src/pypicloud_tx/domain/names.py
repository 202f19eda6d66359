"""Project names, distribution filenames and versions, by the rules of ``packaging``."""

from __future__ import annotations

import functools
import re

import attrs
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from pypicloud_tx.errors import InvalidUpload

__all__ = ["DistName", "canonical", "is_canonical", "is_prerelease", "parse_filename", "sort_key"]

# PEP 508 names: ASCII letters, digits, and . _ - inside.
_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])\Z", re.IGNORECASE)
SDIST_SUFFIXES = (".tar.gz", ".zip")
MAX_FILENAME = 255


def canonical(name: str) -> str:
    """The PEP 503 normalised form of a project name."""
    return canonicalize_name(name)


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a valid (ASCII, PEP 508) project name."""
    return bool(_NAME.match(name))


def is_canonical(name: str) -> bool:
    return canonical(name) == name


@attrs.frozen
class DistName:
    """What a distribution filename says about itself."""

    name: str  # canonical
    version: str  # as written in the filename
    kind: str  # "wheel" or "sdist"


def check_filename_characters(filename: str) -> None:
    """Refuse filenames that could become something other than one path segment."""
    if not filename:
        raise InvalidUpload("The upload has no filename; send the file in the 'content' field.")
    if len(filename) > MAX_FILENAME:
        raise InvalidUpload(f"The filename is longer than {MAX_FILENAME} characters.")
    if "/" in filename or "\\" in filename or filename in (".", "..") or filename.startswith("."):
        raise InvalidUpload(
            f"Invalid filename {filename!r}: it must be a bare file name, no paths."
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in filename) or not filename.isascii():
        raise InvalidUpload(
            f"Invalid filename {filename!r}: only printable ASCII characters are allowed."
        )


def parse_filename(filename: str) -> DistName:
    """Split a wheel or sdist filename into canonical name, version and kind.

    :raises InvalidUpload: with a message saying what is wrong and what is accepted.
    """
    check_filename_characters(filename)
    try:
        if filename.endswith(".whl"):
            name, version, _build, _tags = parse_wheel_filename(filename)
            return DistName(str(name), _version_text(filename, str(version)), "wheel")
        if filename.endswith(SDIST_SUFFIXES):
            name, version = parse_sdist_filename(filename)
            return DistName(str(name), _version_text(filename, str(version)), "sdist")
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion) as e:
        raise InvalidUpload(f"Invalid distribution filename {filename!r}: {e}") from None
    raise InvalidUpload(
        f"Invalid distribution filename {filename!r}: only wheels (.whl) and source "
        "distributions (.tar.gz, .zip) can be uploaded."
    )


def _version_text(filename: str, normalised: str) -> str:
    """The version as the filename spells it (``1.0.0`` stays ``1.0.0``)."""
    stem = filename[: -len(".whl")] if filename.endswith(".whl") else filename
    for suffix in SDIST_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            return stem.rsplit("-", 1)[1]
    return stem.split("-")[1]


@functools.lru_cache(maxsize=65536)
def parse_version(text: str) -> Version | None:
    """A :class:`Version`, or ``None`` for a version PEP 440 cannot read (memoised: the same
    few thousand versions are sorted on every project page)."""
    try:
        return Version(text)
    except InvalidVersion:
        return None


def versions_equal(a: str, b: str) -> bool:
    """Whether two version strings mean the same PEP 440 version."""
    va, vb = parse_version(a), parse_version(b)
    if va is None or vb is None:
        return a == b
    return va == vb


def sort_key(version: str) -> tuple[int, Version | str]:
    """Orders versions by PEP 440, with unparsable ones first."""
    parsed = parse_version(version)
    return (1, parsed) if parsed is not None else (0, version)


def is_prerelease(version: str) -> bool:
    parsed = parse_version(version)
    return parsed is None or parsed.is_prerelease
