"""Package files kept in a dict: for tests and throw-away dev configs (``pypi.storage = memory``).

Nothing survives a restart.  Every method answers at once with an already-fired Deferred.
"""

from __future__ import annotations

import io
from typing import IO

import attrs
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from zope.interface import implementer

from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.errors import Conflict, InvalidUpload, NotFound
from pypicloud_tx.interfaces import IStorage, Progress
from pypicloud_tx.runtime import Runtime


@attrs.frozen
class _Stored:
    record: PackageFile
    data: bytes
    core_metadata: bytes | None


@implementer(IStorage)
@attrs.define
class MemoryStorage:
    """An :class:`IStorage` in a dict keyed by filename."""

    @attrs.frozen
    class Options:
        """No options: ``pypi.storage = memory`` is all it takes."""

    _files: dict[str, _Stored] = attrs.field(factory=dict)

    @classmethod
    def from_config(cls, options: MemoryStorage.Options, runtime: Runtime) -> MemoryStorage:
        """An empty storage."""
        return cls()

    def list(self, progress: Progress | None = None) -> Deferred[list[PackageFile]]:
        files = [stored.record for stored in self._files.values()]
        if progress is not None:
            progress(len(files), len(files))
        return succeed(files)

    def put(
        self, file: PackageFile, stream: IO[bytes], core_metadata: bytes | None, overwrite: bool
    ) -> Deferred[None]:
        return maybeDeferred(self._put, file, stream, core_metadata, overwrite)

    def _put(
        self, file: PackageFile, stream: IO[bytes], core_metadata: bytes | None, overwrite: bool
    ) -> None:
        if not overwrite and file.filename in self._files:
            raise Conflict(f"{file.filename} already exists; upload a new version instead.")
        if getattr(stream, "seekable", lambda: False)():
            stream.seek(0)
        data = stream.read()
        if len(data) != file.size:
            raise InvalidUpload(
                f"{file.filename}: received {len(data)} bytes but the upload said {file.size}."
            )
        self._files[file.filename] = _Stored(file, data, core_metadata)

    def save_record(self, file: PackageFile) -> Deferred[None]:
        stored = self._files.get(file.filename)
        if stored is None:
            return fail(NotFound(f"{file.filename} is not stored."))
        self._files[file.filename] = attrs.evolve(stored, record=file)
        return succeed(None)

    def open(self, file: PackageFile) -> Deferred[IO[bytes]]:
        stored = self._files.get(file.filename)
        if stored is None:
            return fail(NotFound(f"{file.filename} is not stored."))
        return succeed(io.BytesIO(stored.data))

    def open_metadata(self, file: PackageFile) -> Deferred[bytes]:
        stored = self._files.get(file.filename)
        if stored is None or stored.core_metadata is None:
            return fail(NotFound(f"{file.filename} has no core metadata file."))
        return succeed(stored.core_metadata)

    def download_url(self, file: PackageFile) -> Deferred[str | None]:
        return succeed(None)

    def delete(self, file: PackageFile) -> Deferred[None]:
        self._files.pop(file.filename, None)
        return succeed(None)

    def check_health(self) -> Deferred[tuple[bool, str]]:
        return succeed((True, ""))
