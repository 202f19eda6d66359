"""What the object-store storages (S3, CloudFront, GCS) have in common.

A vendor backend subclasses :class:`ObjectStorage` and supplies only the vendor calls (the
``_v_*`` methods and :meth:`ObjectStorage._vendor_errors`); everything else lives here: the key
layout, the per-object metadata, the sidecar records, listing, the upload protocol, streaming
reads and the choice of download URL.

Layout (pypicloud's, so an existing pypicloud bucket is served as it is)::

    <prefix>[<first 4 hex digits of md5(filename)>/]<name>/<filename>      the distribution
    ... <filename>.meta        JSON sidecar: the full record (PackageFile.to_record())
    ... <filename>.metadata    PEP 658 core metadata, when known

``<name>`` is the canonical project name (pypicloud normalised it the same way) and the hash
folder is there when ``storage.prepend_hash`` is true (pypicloud's default).  The prefix is
prepended as it is: ``packages/`` makes a folder, ``packages`` does not.

What is kept where:

* **Object metadata** (``x-amz-meta-*`` on S3, custom metadata on GCS) holds the facts fixed at
  upload time, under pypicloud's names so that either program reads the other's objects:
  ``name``, ``version``, ``summary``, ``requires-python``, ``hash-sha256``, ``hash-md5``,
  ``uploader``, plus ``blake2b-256``, ``upload-time``, ``display-name``, ``origin`` and
  ``metadata-sha256``.  Metadata travels in HTTP headers (S3 allows 2 KB in all, printable
  ASCII), so text values are folded to ASCII and the summary is shortened to fit; keys are
  written with dashes (some proxies and servers drop header names with underscores) and read
  with dashes or underscores (pypicloud wrote underscores).
* **The sidecar** ``<key>.meta`` holds the exact record (non-ASCII summary, yank state, the
  free-form metadata dict), with the ETag of the object it describes.  A sidecar whose ETag is
  not the object's (a crash between writing new bytes and their record) is ignored.
* An object with no valid sidecar (written by pypicloud, or a crash before the sidecar) is read
  back: its metadata, completed from the archive itself (digests, summary, Requires-Python,
  core metadata), and the result is written back as a sidecar so the next rebuild is quick.

Order of writes: the object first (atomically: a conditional create when ``overwrite`` is
false), then the core metadata, then the sidecar.  :meth:`ObjectStorage.list` starts from the
objects, so a sidecar without its object is never reported, and a failed upload leaves no
object behind.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import datetime as _dt
import hashlib
import io
import json
import secrets
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, Protocol, TypeVar

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from pypicloud_tx.backends._threads import RunBlocking
from pypicloud_tx.config.options import as_bool, as_str, option
from pypicloud_tx.domain.dists import DistInfo, inspect_distribution
from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.domain.names import (
    canonical,
    check_filename_characters,
    is_canonical,
    is_valid_name,
    parse_filename,
)
from pypicloud_tx.errors import BackendUnavailable, Conflict, InvalidUpload, NotFound, PPCError
from pypicloud_tx.interfaces import IStorage, Progress
from pypicloud_tx.runtime import Runtime

log = Logger()

T = TypeVar("T")

META_SUFFIX = ".meta"
CORE_METADATA_SUFFIX = ".metadata"
#: Name (under the prefix) of the object written and removed by the conditional-write probe.
PROBE_PREFIX = ".pypicloud-tx-probe-"
#: Sidecar format marker.
SIDECAR_FORMAT = "pypicloud-tx/1"
#: S3's limit on user metadata (keys and values, in bytes); we keep some room.
METADATA_BUDGET = 1900
#: Objects whose sidecar :meth:`ObjectStorage.list` fetches at the same time.
LIST_CONCURRENCY = 8
#: Bytes per read when hashing an object or reading it whole.
CHUNK = 1024 * 1024
#: Up to this size a read-back object is kept in memory, above it in a temp file.
SPOOL_SIZE = 16 * 1024 * 1024
DEFAULT_EXPIRE_AFTER = 60 * 60 * 24
#: The thread pool every vendor call runs on, and its size.
POOL_NAME = "storage"
POOL_SIZE = 10

# Our field -> the metadata key we write (dashed); pypicloud's underscored spelling is read too.
_META_KEYS = {
    "name": "name",
    "version": "version",
    "summary": "summary",
    "requires_python": "requires-python",
    "sha256": "hash-sha256",
    "md5": "hash-md5",
    "uploader": "uploader",
    "blake2b_256": "blake2b-256",
    "upload_time": "upload-time",
    "display_name": "display-name",
    "origin": "origin",
    "metadata_sha256": "metadata-sha256",
}
_FROM_META = {key.replace("-", "_"): field for field, key in _META_KEYS.items()}


# -- key layout ---------------------------------------------------------------------------------


@attrs.frozen
class Layout:
    """Where a file's objects live in the bucket: pypicloud's key layout."""

    prefix: str = ""
    prepend_hash: bool = True

    def key(self, name: str, filename: str) -> str:
        """The key of the distribution ``filename`` of project ``name`` (canonical)."""
        path = f"{name}/{filename}"
        if self.prepend_hash:
            digest = hashlib.md5(filename.encode("utf-8"), usedforsecurity=False).hexdigest()
            path = f"{digest[:4]}/{path}"
        return self.prefix + path

    def parse(self, key: str) -> tuple[str, str] | None:
        """``(name segment, filename)`` when ``key`` is where :meth:`key` puts a file, else
        ``None`` (another layout, a sidecar, or something else in the bucket)."""
        if not key.startswith(self.prefix):
            return None
        parts = key[len(self.prefix) :].split("/")
        if len(parts) != (3 if self.prepend_hash else 2):
            return None
        name, filename = parts[-2], parts[-1]
        if not name or not filename or self.key(name, filename) != key:
            return None
        return name, filename


def check_location(name: str, filename: str) -> None:
    """Refuse a project name or filename that cannot be one segment of a key."""
    if not isinstance(name, str) or not (is_valid_name(name) and is_canonical(name)):
        raise InvalidUpload(f"Invalid project name {name!r}: expected a normalised name.")
    check_filename_characters(filename)
    if filename.endswith((META_SUFFIX, CORE_METADATA_SUFFIX)):
        raise InvalidUpload(f"Invalid filename {filename!r}: not a distribution file.")


def content_type(filename: str) -> str:
    """The Content-Type objects are stored with (what a redirected client receives).

    Never one that invites a client or proxy to decompress a ``.tar.gz``; the same rule as
    the streamed downloads in ``web/download.py``.
    """
    return "application/zip" if filename.endswith((".whl", ".zip")) else "application/octet-stream"


def normalise_etag(etag: str | None) -> str:
    """An ETag without its quotes (servers differ in whether they quote it)."""
    return (etag or "").strip().strip('"')


# -- object metadata ----------------------------------------------------------------------------


def header_text(value: str) -> str:
    """``value`` as printable ASCII on one line (accents dropped, as pypicloud did)."""
    folded = unicodedata.normalize("NFKD", value)
    kept = "".join(c if " " <= c <= "~" else " " for c in folded if c.isascii() or c.isspace())
    return " ".join(kept.split())


def encode_metadata(file: PackageFile) -> dict[str, str]:
    """The object metadata written with ``file``'s bytes (printable ASCII, within S3's 2 KB)."""
    values: dict[str, str | None] = {
        "name": file.name,
        "version": file.version,
        "requires_python": file.requires_python,
        "sha256": file.sha256,
        "md5": file.md5,
        "blake2b_256": file.blake2b_256,
        "upload_time": file.upload_time.isoformat(),
        "display_name": file.display_name or None,
        "origin": file.origin,
        "uploader": file.uploader,
        "metadata_sha256": file.metadata_sha256,
    }
    meta = {
        _META_KEYS[field]: header_text(value)
        for field, value in values.items()
        if value is not None and header_text(value)
    }
    used = sum(len(k) + len(v) for k, v in meta.items())
    summary = header_text(file.summary or "")
    room = METADATA_BUDGET - used - len("summary")
    if summary and room > 0:
        meta["summary"] = summary[:room].rstrip()
    return meta


def decode_metadata(meta: Mapping[str, str] | None) -> dict[str, Any]:
    """The record fields found in object metadata written by us or by pypicloud."""
    values: dict[str, Any] = {}
    for key, value in (meta or {}).items():
        field = _FROM_META.get(key.lower().replace("-", "_"))
        if field is None or not isinstance(value, str) or not value:
            continue
        if field == "upload_time":
            try:
                values[field] = _dt.datetime.fromisoformat(value)
            except ValueError:
                continue
        else:
            values[field] = value
    return values


# -- sidecar records ----------------------------------------------------------------------------


def encode_sidecar(file: PackageFile, etag: str) -> bytes:
    """The ``.meta`` sidecar of ``file``, bound to the object whose ETag is ``etag``."""
    document = {"format": SIDECAR_FORMAT, "etag": normalise_etag(etag), "record": file.to_record()}
    return json.dumps(document, ensure_ascii=False, sort_keys=True).encode("utf-8")


def decode_sidecar(data: bytes, etag: str) -> dict[str, Any] | None:
    """The record in a sidecar, or ``None`` if it is unreadable or describes other bytes than
    the object whose ETag is ``etag``."""
    try:
        document = json.loads(data)
    except ValueError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("record"), dict):
        return None
    if normalise_etag(document.get("etag")) != normalise_etag(etag) or not etag:
        return None
    return dict(document["record"])


# -- what the vendor calls exchange -------------------------------------------------------------


@attrs.frozen
class ObjectInfo:
    """One object as the store describes it.  ``metadata`` is ``None`` when the call that
    found it does not return metadata (a listing)."""

    key: str
    size: int
    etag: str
    last_modified: _dt.datetime
    metadata: Mapping[str, str] | None = None


class ObjectExists(Exception):
    """Raised by a vendor write with ``if_absent`` when the key is taken."""


class ConditionalUnsupported(Exception):
    """Raised by a vendor write with ``if_absent`` when the server refuses conditional writes."""


class Body(Protocol):
    """A response body being streamed: ``read(n)`` up to ``n`` bytes, ``b""`` at the end."""

    def read(self, amt: int = ...) -> bytes: ...

    def close(self) -> None: ...


#: ``opener(start, etag)`` -> ``(body from start, total size, etag)``.
Opener = Callable[[int, "str | None"], tuple[Body, int, str]]


class UploadReader:
    """Reads an upload stream, refusing more or fewer bytes than ``file.size``.

    Vendor uploads read through it with :meth:`read` or :meth:`read_exact`, then call
    :meth:`finish`, which checks that the stream holds nothing more.
    """

    def __init__(self, stream: IO[bytes], file: PackageFile) -> None:
        self._stream = stream
        self._file = file
        self.count = 0

    @property
    def size(self) -> int:
        return self._file.size

    @property
    def remaining(self) -> int:
        return self._file.size - self.count

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that remain for ``n < 0``), never past ``file.size``."""
        want = self.remaining if n is None or n < 0 else min(n, self.remaining)
        if want <= 0:
            return b""
        data = self._stream.read(want)
        if not data:
            self._wrong_size(self.count)
        self.count += len(data)
        return data

    def read_exact(self, n: int) -> bytes:
        """Exactly ``min(n, remaining)`` bytes."""
        want = min(n, self.remaining)
        parts = []
        got = 0
        while got < want:
            data = self.read(want - got)
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def finish(self) -> None:
        """Check that the whole stream was exactly ``file.size`` bytes."""
        if self.remaining > 0:
            self._wrong_size(self.count)
        if self._stream.read(1):
            self._wrong_size(self.count + 1, more=True)

    def _wrong_size(self, count: int, more: bool = False) -> None:
        raise InvalidUpload(
            f"{self._file.filename}: received {'more than ' if more else ''}{count} bytes "
            f"but the upload said {self._file.size}."
        )


class ObjectReader(io.RawIOBase):
    """A readable, seekable stream of one object that never holds it whole.

    It reads the response body it was opened with; after :meth:`seek` the next read issues a
    new ranged GET (``Range: bytes=<pos>-``) for the same object version (``If-Match`` on its
    ETag), so a ``Range`` request costs one extra request, not a download of what precedes.
    Errors while reading surface as :class:`OSError`, as from any file.
    """

    def __init__(self, opener: Opener, body: Body | None, size: int, etag: str, name: str) -> None:
        super().__init__()
        self._opener = opener
        self._body = body
        self._size = size
        self._etag = etag
        self._pos = 0
        self.name = name

    @property
    def size(self) -> int:
        """The object's length in bytes."""
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._pos + offset
        elif whence == io.SEEK_END:
            position = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise ValueError("negative seek position")
        if position != self._pos:
            self._drop_body()
            self._pos = position
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if size is None or size < 0:
            return self.readall()
        want = min(size, self._size - self._pos)
        if want <= 0:
            return b""
        if self._body is None:
            try:
                self._body, _size, _etag = self._opener(self._pos, self._etag)
            except PPCError as e:
                raise OSError(f"{self.name}: {e.message}") from e
        try:
            data = self._body.read(want)
        except Exception as e:
            self._drop_body()
            raise OSError(f"{self.name}: reading failed: {type(e).__name__}: {e}") from e
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._drop_body()
        super().close()

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(Exception):
                body.close()


# -- options ------------------------------------------------------------------------------------


def as_prefix(text: str) -> str:
    """A key prefix, as given (``packages/`` makes a folder)."""
    value = text.strip()
    if value.startswith("/"):
        raise ValueError(f"{value!r} must not start with '/' (keys have no leading slash)")
    return value


def _whole_number(text: str, least: int, what: str, too_small: str) -> int:
    """``text`` as an integer of at least ``least``; the messages say ``what`` it should be,
    and that it is ``too_small``."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not {what}") from None
    if value < least:
        raise ValueError(f"{text.strip()!r} {too_small}")
    return value


def as_positive_int(text: str) -> int:
    return _whole_number(text, 1, "a whole number", "must be more than zero")


def as_seconds(text: str) -> int:
    """Seconds, zero included."""
    return _whole_number(text, 0, "a whole number of seconds", "must not be negative")


@attrs.frozen(kw_only=True)
class ObjectStorageOptions:
    """The ``storage.*`` options every object-store backend has (pypicloud's names)."""

    bucket: str = option(as_str, doc="The bucket that holds the packages.")
    region_name: str | None = option(
        as_str, default=None, doc="Region of the bucket; a missing bucket is created there."
    )
    prefix: str = option(
        as_prefix, default="", doc="Prepended to every key (use a trailing '/' for a folder)."
    )
    prepend_hash: bool = option(
        as_bool, default=True, doc="Start keys with 4 hex digits of md5(filename), as pypicloud."
    )
    expire_after: int = option(
        as_positive_int,
        default=DEFAULT_EXPIRE_AFTER,
        doc="Seconds a signed download URL stays valid.",
    )
    redirect_urls: bool = option(
        as_bool,
        default=True,
        doc="Redirect downloads to the store (signed or public URL); false streams them.",
    )
    object_acl: str | None = option(as_str, default=None, doc="Canned ACL of uploaded objects.")
    storage_class: str | None = option(
        as_str, default=None, doc="Storage class of uploaded objects."
    )
    public_url: bool = option(
        as_bool, default=False, doc="Redirect to unsigned public URLs (a public bucket)."
    )
    connect_timeout: int = option(
        as_positive_int, default=10, doc="Seconds to wait for a connection."
    )
    read_timeout: int = option(as_positive_int, default=60, doc="Seconds to wait for data.")


# -- the shared storage -------------------------------------------------------------------------


@implementer(IStorage)
@attrs.define(kw_only=True)
class ObjectStorage:
    """An :class:`IStorage` in an object store; subclasses supply the vendor calls.

    :param layout: where objects go.
    :param run: where blocking vendor calls run (a thread pool).
    :param redirect_urls: whether :meth:`download_url` gives a URL (else the server streams).
    :param public_url: give unsigned public URLs instead of signed ones.
    :param expire_after: seconds a signed URL lives.
    :param conditional: whether the server honours conditional creates (``If-None-Match: *``);
        ``None`` means "find out in :meth:`start`" (until then, assume it does).
    """

    #: Used in messages: "S3", "GCS".
    service = "object store"

    layout: Layout
    _run: RunBlocking
    redirect_urls: bool = True
    public_url: bool = False
    expire_after: int = DEFAULT_EXPIRE_AFTER
    conditional: bool | None = None

    # -- the vendor calls (blocking; run on the pool) -----------------------------------------

    def _vendor_errors(self) -> contextlib.AbstractContextManager[None]:
        """A context that turns the vendor's exceptions into NotFound/BackendUnavailable."""
        raise NotImplementedError

    def _v_ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""
        raise NotImplementedError

    def _v_list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (metadata not needed)."""
        raise NotImplementedError

    def _v_head(self, key: str) -> ObjectInfo:
        """One object with its metadata; :class:`NotFound` if absent."""
        raise NotImplementedError

    def _v_read(self, key: str) -> bytes:
        """A small object's bytes; :class:`NotFound` if absent."""
        raise NotImplementedError

    def _v_write(self, key: str, data: bytes, content_type: str, if_absent: bool) -> None:
        """Store a small object; :class:`ObjectExists` if ``if_absent`` and the key is taken."""
        raise NotImplementedError

    def _v_upload(
        self,
        key: str,
        reader: UploadReader,
        metadata: Mapping[str, str],
        content_type: str,
        if_absent: bool,
    ) -> str:
        """Stream ``reader`` (ending with ``reader.finish()``) into ``key`` without holding it
        whole; nothing may remain if it fails.  :class:`ObjectExists` if ``if_absent`` and the
        key is taken.  Returns the new object's ETag."""
        raise NotImplementedError

    def _v_open(self, key: str, start: int, etag: str | None) -> tuple[Body, int, str]:
        """``(body from byte start, total size, etag)``; :class:`NotFound` if absent, an
        :class:`OSError` if ``etag`` is given and the object changed."""
        raise NotImplementedError

    def _v_delete(self, keys: builtins.list[str]) -> None:
        """Remove ``keys``; absent ones are not an error."""
        raise NotImplementedError

    def _v_signed_url(self, key: str) -> str:
        """A URL that downloads ``key`` for :attr:`expire_after` seconds without credentials."""
        raise NotImplementedError

    def _v_public_url(self, key: str) -> str:
        """The unsigned URL of ``key`` in a public bucket."""
        raise NotImplementedError

    def _v_health(self) -> None:
        """Succeed when the bucket is reachable (errors are translated by the caller)."""
        raise NotImplementedError

    def _v_close(self) -> None:
        """Release connections."""

    @staticmethod
    def _missing(key: str) -> NotFound:
        """What a vendor call raises for an absent ``key``."""
        return NotFound(f"{key} is not in the bucket.")

    def _refuse_taken(self, key: str) -> None:
        """:class:`ObjectExists` if ``key`` is taken.  Not the decision for a conditional
        upload (its final write is), but it spares streaming a large file that is doomed."""
        if self._exists(key):
            raise ObjectExists(key)

    # -- building --------------------------------------------------------------------------------

    @staticmethod
    def option_arguments(options: ObjectStorageOptions, runtime: Runtime) -> dict[str, Any]:
        """The constructor arguments every object store takes from its options the same way:
        the key layout, the :data:`POOL_NAME` thread pool and the download URLs' settings."""
        return {
            "layout": Layout(options.prefix, options.prepend_hash),
            "run": runtime.threads(POOL_NAME, POOL_SIZE),
            "redirect_urls": options.redirect_urls,
            "public_url": options.public_url,
            "expire_after": options.expire_after,
        }

    # -- running ---------------------------------------------------------------------------------

    def _call(self, f: Callable[..., T], *args: Any) -> T:
        with self._vendor_errors():
            return f(*args)

    def _defer(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        return self._run(self._call, f, *args)

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Create the bucket if needed; find out whether conditional creates work."""
        return self._defer(self._start)

    def stop(self) -> Deferred[None]:
        """Release the client's connections."""
        return self._run(self._v_close)

    def _start(self) -> None:
        self._v_ensure_bucket()
        if self.conditional is None:
            self.conditional = self._probe_conditional()
            if not self.conditional:
                log.warn(
                    "{service} ignores conditional writes (If-None-Match); duplicate uploads "
                    "are detected by looking first, which two simultaneous uploads can race",
                    service=self.service,
                )

    def _probe_conditional(self) -> bool:
        """Whether a create-if-absent of an existing key is refused (as it must be)."""
        key = self.layout.prefix + PROBE_PREFIX + secrets.token_hex(8)
        try:
            self._call(self._v_write, key, b"1", "text/plain", False)
            try:
                self._call(self._v_write, key, b"2", "text/plain", True)
            except ObjectExists:
                return True
            except ConditionalUnsupported:
                return False
            return False
        except PPCError as e:
            log.warn(
                "cannot probe {service} for conditional writes ({why}); assuming they work",
                service=self.service,
                why=e.message,
            )
            return True
        finally:
            with contextlib.suppress(PPCError):
                self._call(self._v_delete, [key])

    # -- IStorage --------------------------------------------------------------------------------

    def list(self, progress: Progress | None = None) -> Deferred[builtins.list[PackageFile]]:
        return self._defer(self._list, progress)

    def _list(self, progress: Progress | None) -> builtins.list[PackageFile]:
        files: dict[str, ObjectInfo] = {}
        sidecars: set[str] = set()
        cores: set[str] = set()
        for info in self._v_list(self.layout.prefix):
            if info.key.endswith(META_SUFFIX):
                sidecars.add(info.key[: -len(META_SUFFIX)])
            elif info.key.endswith(CORE_METADATA_SUFFIX):
                cores.add(info.key[: -len(CORE_METADATA_SUFFIX)])
            else:
                files[info.key] = info
        found: builtins.list[PackageFile] = []
        with concurrent.futures.ThreadPoolExecutor(LIST_CONCURRENCY) as pool:
            entries = pool.map(
                lambda info: self._call(
                    self._read_entry, info, info.key in sidecars, info.key in cores
                ),
                files.values(),
            )
            for done, entry in enumerate(entries, 1):
                if entry is not None:
                    found.append(entry)
                if progress is not None:
                    progress(done, len(files))
        return found

    def _read_entry(
        self, info: ObjectInfo, has_sidecar: bool, has_core: bool
    ) -> PackageFile | None:
        """The record of one listed object, or ``None`` if it is not a file of ours."""
        where = self.layout.parse(info.key)
        if where is None:
            if not info.key[len(self.layout.prefix) :].startswith(PROBE_PREFIX):
                log.warn(
                    "ignoring {key}: not where a package file goes (check storage.prefix and "
                    "storage.prepend_hash)",
                    key=info.key,
                )
            return None
        segment, filename = where
        try:
            dist = parse_filename(filename)
            check_location(segment, filename)
        except InvalidUpload as e:
            log.warn("ignoring {key}: {why}", key=info.key, why=e.message)
            return None
        try:
            if has_sidecar:
                record = decode_sidecar(self._v_read(info.key + META_SUFFIX), info.etag)
                if record is not None:
                    try:
                        record.update(name=segment, filename=filename, size=info.size)
                        return PackageFile.from_record(record)
                    except (TypeError, ValueError, AttributeError):
                        log.warn("ignoring the malformed record {key}.meta", key=info.key)
            return self._read_back(info, segment, filename, dist.version, has_core)
        except NotFound:
            return None  # deleted while we looked

    def _read_back(
        self, info: ObjectInfo, segment: str, filename: str, version: str, has_core: bool
    ) -> PackageFile:
        """The record of an object without a valid sidecar: its metadata, completed from the
        archive, then saved as its sidecar."""
        head = self._v_head(info.key)
        if normalise_etag(head.etag) != normalise_etag(info.etag):
            info = head  # replaced since the listing
        values = decode_metadata(head.metadata)
        folded_summary = values.pop("summary", "")
        values.update(name=segment, filename=filename, size=info.size)
        values.setdefault("version", version)
        values.setdefault("upload_time", info.last_modified)
        hashes, dist = self._inspect(info.key, filename)
        if dist is not None and canonical(dist.name) == segment:
            values.setdefault("display_name", dist.name)
        values.setdefault("display_name", segment)
        values.update(hashes)  # the bytes themselves, whatever the metadata claims
        core: bytes | None = None
        if dist is not None:
            values["summary"] = dist.summary or folded_summary
            values["requires_python"] = dist.requires_python or values.get("requires_python")
            values["metadata"] = dict(dist.fields)
            core = dist.core_metadata
        else:
            values["summary"] = folded_summary
        if core is not None:
            try:
                self._call(
                    self._v_write, info.key + CORE_METADATA_SUFFIX, core, "text/plain", False
                )
                values["metadata_sha256"] = hashlib.sha256(core).hexdigest()
            except PPCError as e:
                log.warn("cannot write {key}.metadata: {why}", key=info.key, why=e.message)
                values.pop("metadata_sha256", None)
        elif has_core:
            with contextlib.suppress(NotFound):
                existing = self._v_read(info.key + CORE_METADATA_SUFFIX)
                values["metadata_sha256"] = hashlib.sha256(existing).hexdigest()
        else:
            values.pop("metadata_sha256", None)
        record = PackageFile.from_record(values)
        try:
            self._call(
                self._v_write,
                info.key + META_SUFFIX,
                encode_sidecar(record, info.etag),
                "application/json",
                False,
            )
        except PPCError as e:
            log.warn("cannot save the record of {key}: {why}", key=info.key, why=e.message)
        log.info("read back the record of {key} from the object itself", key=info.key)
        return record

    def _inspect(self, key: str, filename: str) -> tuple[dict[str, str], DistInfo | None]:
        """The digests of an object and what its archive says (``None`` if unreadable)."""
        sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        blake = hashlib.blake2b(digest_size=32)
        with tempfile.SpooledTemporaryFile(SPOOL_SIZE) as spool:
            body, _size, _etag = self._v_open(key, 0, None)
            try:
                while chunk := body.read(CHUNK):
                    sha256.update(chunk)
                    md5.update(chunk)
                    blake.update(chunk)
                    spool.write(chunk)
            finally:
                body.close()
            hashes = {
                "sha256": sha256.hexdigest(),
                "md5": md5.hexdigest(),
                "blake2b_256": blake.hexdigest(),
            }
            try:
                return hashes, inspect_distribution(spool, filename)
            except InvalidUpload as e:
                log.warn("cannot read the metadata of {key}: {why}", key=key, why=e.message)
                return hashes, None

    def put(
        self, file: PackageFile, stream: IO[bytes], core_metadata: bytes | None, overwrite: bool
    ) -> Deferred[None]:
        return self._defer(self._put, file, stream, core_metadata, overwrite)

    def _put(
        self, file: PackageFile, stream: IO[bytes], core_metadata: bytes | None, overwrite: bool
    ) -> None:
        check_location(file.name, file.filename)
        key = self.layout.key(file.name, file.filename)
        if getattr(stream, "seekable", lambda: False)():
            stream.seek(0)
        reader = UploadReader(stream, file)
        metadata = encode_metadata(file)
        kind = content_type(file.filename)
        if overwrite:
            # Sidecars first: a crash then leaves old or new bytes without a record (read back
            # from the object), never a record or core metadata describing other bytes.
            self._v_delete([key + META_SUFFIX, key + CORE_METADATA_SUFFIX])
            etag = self._v_upload(key, reader, metadata, kind, False)
        else:
            conditional = self.conditional is not False
            if not conditional and self._exists(key):
                raise self._conflict(file)
            try:
                etag = self._v_upload(key, reader, metadata, kind, conditional)
            except ObjectExists:
                raise self._conflict(file) from None
        # The object is complete and visible; its sidecars follow.
        try:
            if core_metadata is not None:
                self._v_write(key + CORE_METADATA_SUFFIX, core_metadata, "text/plain", False)
            elif not overwrite:
                self._v_delete([key + CORE_METADATA_SUFFIX])  # left by an interrupted delete
            self._v_write(key + META_SUFFIX, encode_sidecar(file, etag), "application/json", False)
        except BaseException:
            if not overwrite:
                # Take back the object we created, so that the upload can simply be retried.
                with contextlib.suppress(Exception):
                    self._call(self._v_delete, [key + META_SUFFIX, key + CORE_METADATA_SUFFIX, key])
            raise
        log.info("stored {filename} as {key}", filename=file.filename, key=key)

    def _exists(self, key: str) -> bool:
        try:
            self._v_head(key)
        except NotFound:
            return False
        return True

    @staticmethod
    def _conflict(file: PackageFile) -> Conflict:
        return Conflict(f"{file.filename} already exists; upload a new version instead.")

    def save_record(self, file: PackageFile) -> Deferred[None]:
        return self._defer(self._save_record, file)

    def _save_record(self, file: PackageFile) -> None:
        check_location(file.name, file.filename)
        key = self.layout.key(file.name, file.filename)
        try:
            head = self._v_head(key)
        except NotFound:
            raise NotFound(f"{file.filename} is not stored.") from None
        self._v_write(key + META_SUFFIX, encode_sidecar(file, head.etag), "application/json", False)

    def _key(self, file: PackageFile) -> str:
        """The key of ``file``; NotFound when its name cannot be stored at all."""
        try:
            check_location(file.name, file.filename)
        except InvalidUpload:
            raise NotFound(f"{file.filename} is not stored.") from None
        return self.layout.key(file.name, file.filename)

    def open(self, file: PackageFile) -> Deferred[IO[bytes]]:
        return self._defer(self._open, file)

    def _open(self, file: PackageFile) -> IO[bytes]:
        key = self._key(file)
        try:
            body, size, etag = self._v_open(key, 0, None)
        except NotFound:
            raise NotFound(f"{file.filename} is not stored.") from None

        def reopen(start: int, etag: str | None) -> tuple[Body, int, str]:
            return self._call(self._v_open, key, start, etag)

        return ObjectReader(reopen, body, size, etag, file.filename)  # type: ignore[return-value]

    def open_metadata(self, file: PackageFile) -> Deferred[bytes]:
        return self._defer(self._open_metadata, file)

    def _open_metadata(self, file: PackageFile) -> bytes:
        try:
            return self._v_read(self._key(file) + CORE_METADATA_SUFFIX)
        except NotFound:
            raise NotFound(f"The core metadata of {file.filename} is not stored.") from None

    def download_url(self, file: PackageFile) -> Deferred[str | None]:
        if not self.redirect_urls:
            return succeed(None)
        return self._defer(self._download_url, file)

    def _download_url(self, file: PackageFile) -> str:
        key = self._key(file)
        return self._v_public_url(key) if self.public_url else self._v_signed_url(key)

    def delete(self, file: PackageFile) -> Deferred[None]:
        return self._defer(self._delete, file)

    def _delete(self, file: PackageFile) -> None:
        try:
            key = self._key(file)
        except NotFound:
            return  # such a file cannot have been stored
        # Sidecars first: a crash half-way leaves a complete object read back from itself.
        self._v_delete([key + META_SUFFIX, key + CORE_METADATA_SUFFIX])
        self._v_delete([key])
        log.info("deleted {filename}", filename=file.filename)

    def check_health(self) -> Deferred[tuple[bool, str]]:
        return self._run(self._check_health)

    def _check_health(self) -> tuple[bool, str]:
        try:
            self._call(self._v_health)
        except PPCError as e:
            return False, e.message
        return True, ""


def unavailable(message: str) -> BackendUnavailable:
    """A :class:`BackendUnavailable` with a one-line message."""
    return BackendUnavailable(" ".join(message.split()))
