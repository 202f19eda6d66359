"""Reading upload forms (``multipart/form-data``) as twine, uv and poetry send them.

twisted.web's own form parsing keeps the whole body in memory, runs on the reactor thread and
drops filenames and repeated fields, so the upload routes parse the (already spooled) request
body here instead, in a worker thread.  The file part (``content``) is copied to a temporary
file while its digests are computed; every other part is a short text field.

This module is synchronous and does no Twisted work: the web layer calls :func:`parse_upload`
through its thread pool.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import IO, BinaryIO

import attrs
import multipart as _mp

from pypicloud_tx.errors import InvalidUpload, TooLarge

__all__ = [
    "DEFAULT_MAX_FILE_SIZE",
    "FILE_FIELD",
    "UploadForm",
    "UploadedFile",
    "parse_upload",
]

#: The form field that carries the distribution file.
FILE_FIELD = "content"

#: The largest distribution file accepted unless the caller says otherwise.
DEFAULT_MAX_FILE_SIZE = 1024**3

#: The largest single text field (long descriptions are the big ones).
MAX_FIELD_SIZE = 1024**2

#: The most text held in memory over all fields of one form.
MAX_FIELDS_TOTAL = 16 * 1024**2

#: The most parts one form may have.
MAX_PARTS = 1000

#: Above this many bytes the spooled file moves from memory to disk.
SPOOL_IN_MEMORY = 1024**2

_CHUNK = 64 * 1024

# RFC 2046 section 5.1.1 boundary characters.  The RFC caps the length at 70; clients are not
# known to exceed it, but nothing is gained by refusing a slightly longer one.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,199}[0-9A-Za-z'()+_,\-./:=?]$")


def _readonly(value: Mapping[str, tuple[str, ...]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType(dict(value))


@attrs.frozen
class UploadedFile:
    """The distribution file of an upload, spooled to a temporary file.

    ``filename`` is exactly what the client sent: validate it before using it for anything.
    ``stream`` is positioned at the start; the digests are lowercase hex.
    """

    filename: str
    stream: IO[bytes]
    size: int
    sha256: str
    md5: str
    blake2b_256: str
    content_type: str | None = None


@attrs.frozen
class UploadForm:
    """A parsed upload form: every text field (repeated ones in order) and the file, if any.

    Close it (or use it as a context manager) to delete the spooled file.
    """

    fields: Mapping[str, tuple[str, ...]] = attrs.field(converter=_readonly)
    file: UploadedFile | None = None

    def first(self, name: str, default: str | None = None) -> str | None:
        """The first value of field ``name``, or ``default`` when the form has none."""
        values = self.fields.get(name)
        return values[0] if values else default

    def close(self) -> None:
        """Close and delete the spooled file."""
        if self.file is not None:
            self.file.stream.close()

    def __enter__(self) -> UploadForm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def boundary_of(content_type: str) -> str:
    """The multipart boundary named in a ``Content-Type`` header.

    :raises InvalidUpload: when the type is not ``multipart/form-data`` or has no valid
        boundary.
    """
    media_type, options = _mp.parse_options_header(content_type or "")
    if media_type != "multipart/form-data":
        raise InvalidUpload(
            f"Uploads must be sent as multipart/form-data, not {media_type or 'no content type'!r}."
        )
    boundary = str(options.get("boundary", ""))
    if not boundary:
        raise InvalidUpload("The multipart/form-data content type has no boundary parameter.")
    if not _BOUNDARY.match(boundary):
        raise InvalidUpload(f"The multipart boundary {boundary!r} is not valid (RFC 2046).")
    return boundary


class _FileSink:
    """Spools the ``content`` part to a temporary file, hashing as it goes."""

    def __init__(
        self, filename: str, content_type: str | None, spool_dir: str | None, max_size: int
    ) -> None:
        self.filename = filename
        self.content_type = content_type
        self.max_size = max_size
        self.size = 0
        self.stream: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (kept open)
            max_size=SPOOL_IN_MEMORY, mode="w+b", dir=spool_dir
        )
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._blake2b = hashlib.blake2b(digest_size=32)

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_size:
            raise TooLarge(
                f"The uploaded file {self.filename!r} is larger than the limit of "
                f"{self.max_size} bytes."
            )
        self._sha256.update(chunk)
        self._md5.update(chunk)
        self._blake2b.update(chunk)
        self.stream.write(chunk)

    def finish(self) -> UploadedFile:
        self.stream.flush()
        self.stream.seek(0)
        return UploadedFile(
            filename=self.filename,
            stream=self.stream,
            size=self.size,
            sha256=self._sha256.hexdigest(),
            md5=self._md5.hexdigest(),
            blake2b_256=self._blake2b.hexdigest(),
            content_type=self.content_type,
        )


class _TextSink:
    """Collects one text part in memory, within the per-field and per-form budgets."""

    def __init__(self, name: str, is_file: bool, budget: list[int]) -> None:
        self.name = name
        self.is_file = is_file
        self.budget = budget
        self.data = bytearray()

    def write(self, chunk: bytes) -> None:
        if len(self.data) + len(chunk) > MAX_FIELD_SIZE:
            raise InvalidUpload(
                f"The form field {self.name!r} is larger than the limit of {MAX_FIELD_SIZE} bytes."
            )
        self.budget[0] -= len(chunk)
        if self.budget[0] < 0:
            raise InvalidUpload(
                f"The form's text fields together exceed the limit of {MAX_FIELDS_TOTAL} bytes."
            )
        self.data += chunk

    def text(self) -> str:
        if self.is_file:
            # Attachments such as signatures and attestations are informational: an odd
            # encoding in them must not make the upload fail.
            return self.data.decode("utf-8", errors="replace")
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidUpload(f"The form field {self.name!r} is not valid UTF-8.") from None


def parse_upload(
    body: BinaryIO,
    content_type: str,
    spool_dir: str | None = None,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
) -> UploadForm:
    """Parse an upload form from ``body`` (read from its current position to its end).

    Runs in a worker thread: it reads and writes files.  The distribution file, sent in the
    ``content`` part, is spooled to a temporary file in ``spool_dir`` (memory for small files)
    while its digests are computed; other parts become text fields.

    :param body: the request body.
    :param content_type: the request's ``Content-Type`` header.
    :param spool_dir: where to put the temporary file (the system default when ``None``).
    :param max_file_size: the largest file accepted, in bytes.
    :raises InvalidUpload: the body is not a well-formed upload form (what is wrong is in the
        message).
    :raises TooLarge: the file is larger than ``max_file_size``.
    """
    boundary = boundary_of(content_type)
    parser = _mp.PushMultipartParser(boundary, max_segment_count=MAX_PARTS)
    fields: dict[str, list[str]] = {}
    budget = [MAX_FIELDS_TOTAL]
    file_sink: _FileSink | None = None
    uploaded: UploadedFile | None = None
    sink: _FileSink | _TextSink | None = None
    try:
        while not parser.closed:
            chunk = body.read(_CHUNK)
            for event in parser.parse(chunk):
                if isinstance(event, _mp.MultipartSegment):
                    name = event.name or ""
                    if name == FILE_FIELD:
                        if file_sink is not None:
                            raise InvalidUpload(
                                f"The form has more than one {FILE_FIELD!r} part; upload one "
                                "file per request."
                            )
                        if event.filename is None:
                            raise InvalidUpload(
                                f"The {FILE_FIELD!r} part has no filename; send the file with "
                                "its name."
                            )
                        file_sink = sink = _FileSink(
                            event.filename, event.content_type, spool_dir, max_file_size
                        )
                    else:
                        sink = _TextSink(name, event.filename is not None, budget)
                elif event is None:
                    if isinstance(sink, _TextSink):
                        fields.setdefault(sink.name, []).append(sink.text())
                    elif isinstance(sink, _FileSink):
                        uploaded = sink.finish()
                    sink = None
                else:
                    assert sink is not None
                    sink.write(event)
    except _mp.ParserLimitReached as e:
        _discard(file_sink)
        raise InvalidUpload(
            f"The upload form exceeds a limit (at most {MAX_PARTS} parts, short part headers): {e}"
        ) from None
    except _mp.MultipartError as e:
        _discard(file_sink)
        raise InvalidUpload(f"The upload is not a valid multipart/form-data body: {e}") from None
    except BaseException:
        _discard(file_sink)
        raise
    return UploadForm(fields={k: tuple(v) for k, v in fields.items()}, file=uploaded)


def _discard(sink: _FileSink | None) -> None:
    if sink is not None:
        sink.stream.close()
