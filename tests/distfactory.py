"""Real distribution files and upload bodies, built in memory for tests.

The wheels are complete (``RECORD`` with correct digests) so pip and uv install them; the
sdists build with setuptools (``--no-build-isolation``) so ``pip download`` can fetch them.
Archives are byte-for-byte reproducible: the same arguments give the same bytes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import tarfile
import uuid
import zipfile
from collections.abc import Iterable, Mapping, Sequence

from packaging.utils import canonicalize_name
from packaging.version import Version

__all__ = [
    "core_metadata",
    "encode_upload",
    "make_sdist",
    "make_wheel",
    "sdist_filename",
    "twine_fields",
    "wheel_filename",
]

_WHEN = (2024, 1, 2, 3, 4, 6)  # zip timestamps have 2-second resolution
_MTIME = 1704164646


def _escaped(name: str) -> str:
    """The name as wheel and sdist filenames spell it (normalised, ``_`` for ``-``)."""
    return canonicalize_name(name).replace("-", "_")


def wheel_filename(name: str, version: str, tag: str = "py3-none-any") -> str:
    """The standard filename of a wheel of ``name`` ``version``."""
    return f"{_escaped(name)}-{Version(version)}-{tag}.whl"


def sdist_filename(name: str, version: str, archive: str = "tar.gz") -> str:
    """The PEP 625 filename of an sdist of ``name`` ``version``."""
    return f"{_escaped(name)}-{Version(version)}.{archive}"


def core_metadata(
    name: str,
    version: str,
    summary: str = "",
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    description: str = "",
    classifiers: Iterable[str] = (),
    extra_headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """``METADATA``/``PKG-INFO`` text (metadata 2.1) for the given values, UTF-8 encoded."""
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if summary:
        lines.append(f"Summary: {summary}")
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Classifier: {c}" for c in classifiers]
    lines += [f"Requires-Dist: {r}" for r in requires_dist]
    lines += [f"{k}: {v}" for k, v in extra_headers]
    if description:
        lines.append("Description-Content-Type: text/plain")
    text = "\n".join(lines) + "\n\n" + description
    return text.encode("utf-8")


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(
    name: str,
    version: str,
    summary: str = "",
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    description: str = "",
    extra_files: Mapping[str, bytes] | None = None,
    classifiers: Iterable[str] = (),
    metadata: bytes | None = None,
) -> tuple[str, bytes]:
    """A pure-Python wheel ``(filename, bytes)`` with one package named after the project.

    ``metadata`` replaces the generated ``METADATA`` bytes (to test disagreeing metadata);
    ``extra_files`` adds members (paths inside the archive), also listed in ``RECORD``.
    """
    package = _escaped(name)
    dist_info = f"{package}-{Version(version)}.dist-info"
    if metadata is None:
        metadata = core_metadata(
            name, version, summary, requires_python, requires_dist, description, classifiers
        )
    members: list[tuple[str, bytes]] = [
        (f"{package}/__init__.py", f'__version__ = "{version}"\n'.encode()),
        *sorted((extra_files or {}).items()),
        (f"{dist_info}/METADATA", metadata),
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: pypicloud-tx-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
        ),
    ]
    record = "\n".join(_record_line(p, d) for p, d in members)
    record += f"\n{dist_info}/RECORD,,\n"
    members.append((f"{dist_info}/RECORD", record.encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in members:
            info = zipfile.ZipInfo(path, _WHEN)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return wheel_filename(name, version), buffer.getvalue()


def _pyproject(
    name: str,
    version: str,
    summary: str,
    requires_python: str | None,
    requires_dist: Iterable[str],
) -> bytes:
    deps = ", ".join(_toml_string(r) for r in requires_dist)
    lines = [
        "[build-system]",
        'requires = ["setuptools>=61"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        f"name = {_toml_string(name)}",
        f"version = {_toml_string(version)}",
        f"description = {_toml_string(summary)}",
        f"dependencies = [{deps}]",
    ]
    if requires_python:
        lines.append(f"requires-python = {_toml_string(requires_python)}")
    lines += ["", "[tool.setuptools]", f"packages = [{_toml_string(_escaped(name))}]", ""]
    return "\n".join(lines).encode()


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_sdist(
    name: str,
    version: str,
    summary: str = "",
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    description: str = "",
    extra_files: Mapping[str, bytes] | None = None,
    archive: str = "tar.gz",
    metadata: bytes | None = None,
    classifiers: Iterable[str] = (),
) -> tuple[str, bytes]:
    """A setuptools sdist ``(filename, bytes)``: ``.tar.gz`` or, with ``archive="zip"``, zip.

    Members live under ``<name>-<version>/`` with ``PKG-INFO``, ``pyproject.toml``,
    ``setup.cfg`` and the package; ``extra_files`` paths are relative to that directory.
    """
    requires_dist = tuple(requires_dist)
    filename = sdist_filename(name, version, archive)
    top = filename[: -len("." + archive)]
    if metadata is None:
        metadata = core_metadata(
            name, version, summary, requires_python, requires_dist, description, classifiers
        )
    members: list[tuple[str, bytes]] = [
        ("PKG-INFO", metadata),
        ("pyproject.toml", _pyproject(name, version, summary, requires_python, requires_dist)),
        ("setup.cfg", b"[egg_info]\ntag_build =\ntag_date = 0\n"),
        (f"{_escaped(name)}/__init__.py", f'__version__ = "{version}"\n'.encode()),
        *sorted((extra_files or {}).items()),
    ]
    buffer = io.BytesIO()
    if archive == "zip":
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, data in members:
                info = zipfile.ZipInfo(f"{top}/{path}", _WHEN)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
    elif archive == "tar.gz":
        # gzip's header holds a timestamp: fix it so the bytes are reproducible.
        with (
            gzip.GzipFile(fileobj=buffer, mode="wb", mtime=_MTIME, filename="") as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf,
        ):
            for path, data in members:
                entry = tarfile.TarInfo(f"{top}/{path}")
                entry.size = len(data)
                entry.mtime = _MTIME
                entry.mode = 0o644
                tf.addfile(entry, io.BytesIO(data))
    else:
        raise ValueError(f"unknown sdist archive type {archive!r}")
    return filename, buffer.getvalue()


def twine_fields(
    filename: str,
    data: bytes,
    name: str,
    version: str,
    **extra: str | Sequence[str],
) -> list[tuple[str, str]]:
    """The form fields twine sends with ``filename`` (without the file itself).

    Keyword arguments add fields; a sequence value repeats the field (``classifiers=[...]``).
    """
    wheel = filename.endswith(".whl")
    fields = [
        (":action", "file_upload"),
        ("protocol_version", "1"),
        ("metadata_version", "2.1"),
        ("name", name),
        ("version", version),
        ("filetype", "bdist_wheel" if wheel else "sdist"),
        ("pyversion", "py3" if wheel else "source"),
        ("md5_digest", hashlib.md5(data, usedforsecurity=False).hexdigest()),
        ("sha256_digest", hashlib.sha256(data).hexdigest()),
        ("blake2_256_digest", hashlib.blake2b(data, digest_size=32).hexdigest()),
    ]
    for key, value in extra.items():
        if isinstance(value, str):
            fields.append((key, value))
        else:
            fields.extend((key, v) for v in value)
    return fields


def _disposition(name: str, filename: str | None = None) -> bytes:
    def quote(text: str) -> str:
        return text.replace("\\", "\\\\").replace('"', '\\"')

    header = f'Content-Disposition: form-data; name="{quote(name)}"'
    if filename is not None:
        header += f'; filename="{quote(filename)}"'
    return header.encode("utf-8")


def encode_upload(
    fields: Sequence[tuple[str, str]],
    file: tuple[str, bytes] | None,
    boundary: str | None = None,
    extra_files: Sequence[tuple[str, str, bytes]] = (),
) -> tuple[str, bytes]:
    """A twine-shaped ``multipart/form-data`` body: ``(content_type, body)``.

    ``fields`` become text parts in order (repeat a name to repeat the field); ``file`` is
    ``(filename, bytes)`` sent as the ``content`` part with ``application/octet-stream``;
    ``extra_files`` are further ``(field, filename, bytes)`` file parts (e.g. a
    ``gpg_signature``).
    """
    boundary = boundary or uuid.uuid4().hex
    delimiter = b"--" + boundary.encode("ascii")
    parts: list[bytes] = []
    for key, value in fields:
        parts += [delimiter, b"\r\n", _disposition(key), b"\r\n\r\n", value.encode(), b"\r\n"]
    files = [("content", *file)] if file is not None else []
    for key, filename, data in [*files, *extra_files]:
        parts += [
            delimiter,
            b"\r\n",
            _disposition(key, filename),
            b"\r\nContent-Type: application/octet-stream\r\n\r\n",
            data,
            b"\r\n",
        ]
    parts += [delimiter, b"--\r\n"]
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)
