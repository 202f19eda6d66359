"""The behaviour every :class:`~pypicloud_tx.interfaces.IStorage` must have.

Mix :class:`IStorageConformance` into a ``SynchronousTestCase`` and implement
:meth:`~IStorageConformance.make_storage`.  The tests drive the storage through Deferreds that
must have fired by the time the call returns (``Runtime.synchronous()``); a storage that needs a
real reactor overrides :meth:`~IStorageConformance.result` and :meth:`~IStorageConformance.failure`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
from typing import IO, Any, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from pypicloud_tx.domain.models import UPSTREAM, PackageFile
from pypicloud_tx.domain.names import canonical
from pypicloud_tx.errors import Conflict, InvalidUpload, NotFound
from pypicloud_tx.interfaces import IStorage

T = TypeVar("T")

WHEN = _dt.datetime(2024, 5, 17, 12, 30, 15, 123456, tzinfo=_dt.UTC)


def package_file(
    data: bytes, filename: str = "demo_pkg-1.0-py3-none-any.whl", **fields: Any
) -> PackageFile:
    """A :class:`PackageFile` for ``data``: name and version from ``filename``, real digests."""
    stem = filename.removesuffix(".whl").removesuffix(".tar.gz").removesuffix(".zip")
    name, version = stem.split("-")[:2]
    values: dict[str, Any] = {
        "name": canonical(name),
        "display_name": name,
        "version": version,
        "filename": filename,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
        "blake2b_256": hashlib.blake2b(data, digest_size=32).hexdigest(),
        "upload_time": WHEN,
    }
    values.update(fields)
    return PackageFile(**values)


class _BrokenStream(io.RawIOBase):
    """An upload whose second read fails, as when the client goes away mid-transfer."""

    def __init__(self) -> None:
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if size is None or size < 0 or self.reads > 1:
            raise RuntimeError("client went away")
        return b"x" * min(size, 10)


def broken_stream() -> IO[bytes]:
    """A stream that yields 10 bytes, then fails with ``RuntimeError("client went away")``."""
    return cast(IO[bytes], _BrokenStream())


class IStorageConformance:
    """Tests every storage backend passes.  Mix into a ``SynchronousTestCase``."""

    # Provided by SynchronousTestCase.
    successResultOf: Any
    failureResultOf: Any
    assertEqual: Any
    assertTrue: Any
    assertIsNone: Any
    assertIn: Any
    assertNotIn: Any

    def make_storage(self) -> IStorage:
        """A new, empty storage to test."""
        raise NotImplementedError

    def result(self, d: Deferred[T]) -> T:
        """The result of ``d`` (which must succeed)."""
        return self.successResultOf(d)  # type: ignore[no-any-return]

    def failure(self, d: Deferred[Any], *types: type[BaseException]) -> Failure:
        """The failure of ``d``, which must be one of ``types``."""
        return self.failureResultOf(d, *types)  # type: ignore[no-any-return]

    def put(
        self,
        storage: IStorage,
        data: bytes,
        *,
        overwrite: bool = False,
        core_metadata: bytes | None = None,
        **fields: Any,
    ) -> PackageFile:
        """Store ``data`` as a file described by :func:`package_file` and return its record."""
        file = package_file(data, **fields)
        self.result(storage.put(file, io.BytesIO(data), core_metadata, overwrite))
        return file

    def read(self, storage: IStorage, file: PackageFile) -> bytes:
        """Every byte of the stored ``file``."""
        stream = self.result(storage.open(file))
        try:
            return stream.read()
        finally:
            stream.close()

    def records(self, storage: IStorage) -> dict[str, dict[str, Any]]:
        """What ``list()`` returns, as ``{filename: record}``."""
        return {f.filename: f.to_record() for f in self.result(storage.list())}

    # -- tests ----------------------------------------------------------------------------

    def test_provides_interface(self) -> None:
        """The storage provides every method of IStorage with the declared signatures."""
        self.assertTrue(verifyObject(IStorage, self.make_storage()))

    def test_put_then_open(self) -> None:
        """Bytes stored with put() are read back unchanged by open()."""
        storage = self.make_storage()
        data = bytes(range(256)) * 1000
        file = self.put(storage, data)
        self.assertEqual(self.read(storage, file), data)

    def test_put_reads_from_start(self) -> None:
        """put() stores the whole stream even if its position is not at the start."""
        storage = self.make_storage()
        data = b"whole content"
        file = package_file(data)
        stream = io.BytesIO(data)
        stream.seek(0, io.SEEK_END)
        self.result(storage.put(file, stream, None, False))
        self.assertEqual(self.read(storage, file), data)

    def test_put_empty_file(self) -> None:
        """A zero-byte file is stored and read back as zero bytes."""
        storage = self.make_storage()
        file = self.put(storage, b"")
        self.assertEqual(self.read(storage, file), b"")

    def test_duplicate_conflicts(self) -> None:
        """A second put() of the same filename without overwrite fails with Conflict and keeps the
        first upload's bytes and record."""
        storage = self.make_storage()
        first = self.put(storage, b"first", summary="one")
        second = package_file(b"second!", summary="two")
        failure = self.failure(storage.put(second, io.BytesIO(b"second!"), None, False), Conflict)
        self.assertIn(first.filename, str(failure.value))
        self.assertEqual(self.read(storage, first), b"first")
        self.assertEqual(self.records(storage), {first.filename: first.to_record()})

    def test_overwrite_replaces(self) -> None:
        """put() with overwrite replaces the bytes, the record and the core metadata."""
        storage = self.make_storage()
        self.put(storage, b"first", core_metadata=b"Name: old\n", summary="one")
        second = self.put(
            storage, b"second!", overwrite=True, core_metadata=b"Name: new\n", summary="two"
        )
        self.assertEqual(self.read(storage, second), b"second!")
        self.assertEqual(self.result(storage.open_metadata(second)), b"Name: new\n")
        self.assertEqual(self.records(storage), {second.filename: second.to_record()})

    def test_overwrite_without_metadata_drops_old_metadata(self) -> None:
        """Overwriting a file without core metadata leaves no stale core metadata behind."""
        storage = self.make_storage()
        self.put(storage, b"first", core_metadata=b"Name: old\n")
        second = self.put(storage, b"second", overwrite=True)
        self.failure(storage.open_metadata(second), NotFound)

    def test_overwrite_of_new_file(self) -> None:
        """put() with overwrite stores a file that did not exist yet."""
        storage = self.make_storage()
        file = self.put(storage, b"fresh", overwrite=True)
        self.assertEqual(self.read(storage, file), b"fresh")

    def test_size_mismatch_refused(self) -> None:
        """A stream whose length differs from the record's size fails with InvalidUpload and
        stores nothing."""
        storage = self.make_storage()
        file = package_file(b"12345")
        self.failure(storage.put(file, io.BytesIO(b"1234"), None, False), InvalidUpload)
        self.failure(storage.put(file, io.BytesIO(b"123456"), None, False), InvalidUpload)
        self.assertEqual(self.result(storage.list()), [])
        self.failure(storage.open(file), NotFound)

    def test_failed_read_stores_nothing(self) -> None:
        """When reading the upload fails half-way, put() fails with that error and nothing is
        stored: not listed, not openable, and the same filename can be uploaded afterwards."""
        storage = self.make_storage()
        file = package_file(b"x" * 20)
        self.failure(storage.put(file, broken_stream(), b"Name: demo-pkg\n", False), RuntimeError)
        self.assertEqual(self.result(storage.list()), [])
        self.failure(storage.open(file), NotFound)
        self.failure(storage.open_metadata(file), NotFound)
        good = self.put(storage, b"y" * 20)
        self.assertEqual(self.read(storage, good), b"y" * 20)

    def test_core_metadata_round_trip(self) -> None:
        """Core metadata given to put() is returned byte for byte by open_metadata()."""
        storage = self.make_storage()
        metadata = "Metadata-Version: 2.1\nName: demo-pkg\nSummary: caf\u00e9\n".encode()
        file = self.put(
            storage,
            b"wheel",
            core_metadata=metadata,
            metadata_sha256=hashlib.sha256(metadata).hexdigest(),
        )
        self.assertEqual(self.result(storage.open_metadata(file)), metadata)

    def test_core_metadata_absent(self) -> None:
        """open_metadata() fails with NotFound for a file stored without core metadata."""
        storage = self.make_storage()
        file = self.put(storage, b"sdist", filename="demo_pkg-1.0.tar.gz")
        self.failure(storage.open_metadata(file), NotFound)

    def test_open_missing(self) -> None:
        """open() and open_metadata() of a file never stored fail with NotFound."""
        storage = self.make_storage()
        file = package_file(b"nothing")
        self.failure(storage.open(file), NotFound)
        self.failure(storage.open_metadata(file), NotFound)

    def test_list_empty(self) -> None:
        """An empty storage lists nothing."""
        self.assertEqual(self.result(self.make_storage().list()), [])

    def test_list_progress(self) -> None:
        """list() with a progress report tells it how many of the files it found it has read,
        never backwards, ending with all of them."""
        storage = self.make_storage()
        for i in range(5):
            self.put(storage, f"wheel {i}".encode(), filename=f"demo_pkg-1.{i}-py3-none-any.whl")
        seen: list[tuple[int, int]] = []
        files = self.result(storage.list(lambda *step: seen.append(step)))
        self.assertEqual(len(files), 5)
        self.assertEqual(seen[-1], (5, 5))
        self.assertEqual([d for d, _ in seen], sorted(d for d, _ in seen), seen)

    def test_list_full_records(self) -> None:
        """list() returns every stored file with every field of its record intact, including a
        non-ASCII summary, a yank reason and the free-form metadata dict."""
        storage = self.make_storage()
        metadata = b"Metadata-Version: 2.1\nName: demo-pkg\n"
        rich = self.put(
            storage,
            b"rich wheel",
            core_metadata=metadata,
            summary="Na\u00efve \u65e5\u672c\u8a9e \U0001f40d summary",
            requires_python=">=3.9",
            metadata_sha256=hashlib.sha256(metadata).hexdigest(),
            yanked="broken build",
            uploader="alice",
            origin=UPSTREAM,
            metadata={
                "requires_dist": ["attrs>=23", "packaging"],
                "classifiers": ["Programming Language :: Python :: 3"],
                "description": "Long text \u2603",
                "keywords": None,
            },
        )
        plain = self.put(storage, b"plain sdist", filename="demo_pkg-1.0.tar.gz")
        other = self.put(storage, b"other project", filename="Other.Thing-2.0rc1.zip")
        self.assertEqual(
            self.records(storage),
            {f.filename: f.to_record() for f in (rich, plain, other)},
        )
        listed = {f.filename: f for f in self.result(storage.list())}
        self.assertEqual(listed[rich.filename], rich)
        self.assertEqual(dict(listed[rich.filename].metadata), dict(rich.metadata))

    def test_save_record_changes_list(self) -> None:
        """save_record() replaces the record that list() returns, keeping the bytes."""
        storage = self.make_storage()
        file = self.put(storage, b"data", summary="before")
        yanked = package_file(b"data", summary="before", yanked="security hole \u26a0")
        self.result(storage.save_record(yanked))
        self.assertEqual(self.records(storage), {file.filename: yanked.to_record()})
        self.assertEqual(self.read(storage, file), b"data")

    def test_save_record_of_missing_file(self) -> None:
        """save_record() of a file that is not stored fails with NotFound and lists nothing."""
        storage = self.make_storage()
        self.failure(storage.save_record(package_file(b"ghost")), NotFound)
        self.assertEqual(self.result(storage.list()), [])

    def test_delete(self) -> None:
        """After delete() the file, its record and its core metadata are gone; other files stay."""
        storage = self.make_storage()
        gone = self.put(storage, b"v1", core_metadata=b"Name: demo-pkg\n")
        kept = self.put(storage, b"v2", filename="demo_pkg-2.0-py3-none-any.whl")
        self.result(storage.delete(gone))
        self.failure(storage.open(gone), NotFound)
        self.failure(storage.open_metadata(gone), NotFound)
        self.assertEqual(self.records(storage), {kept.filename: kept.to_record()})
        self.assertEqual(self.read(storage, kept), b"v2")

    def test_put_after_delete(self) -> None:
        """A deleted filename can be uploaded again, with new bytes."""
        storage = self.make_storage()
        file = self.put(storage, b"old")
        self.result(storage.delete(file))
        again = self.put(storage, b"new bytes")
        self.assertEqual(self.read(storage, again), b"new bytes")
        self.assertEqual(self.records(storage), {again.filename: again.to_record()})

    def test_delete_missing(self) -> None:
        """Deleting a file that is not stored succeeds and changes nothing."""
        storage = self.make_storage()
        kept = self.put(storage, b"kept")
        self.assertIsNone(self.result(storage.delete(package_file(b"x", filename="nope-1.0.zip"))))
        self.assertEqual(self.records(storage), {kept.filename: kept.to_record()})

    def test_health(self) -> None:
        """A working storage reports itself healthy with an empty message."""
        self.assertEqual(self.result(self.make_storage().check_health()), (True, ""))
