"""Tests every object-store storage (S3, GCS) passes, beyond the IStorage conformance suite.

They pin what :class:`~pypicloud_tx.backends.storage._objects.ObjectStorage` does with a
bucket: which objects it writes and how it reads foreign ones, pypicloud's buckets, streamed
and redirected downloads, uploads in parts, and unreachable servers.  A vendor's test module
subclasses :class:`ObjectStoreCase` once, supplying the hooks (how to build a storage, how to
look at or write a raw object behind the storage's back), and mixes each group of cases
(:class:`LayoutCases`, :class:`DownloadCases`, ...) into a test class of its own next to its
vendor-only tests.  :class:`ConfigurationCases` does the same for the options every object
store reads, without a server.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import time
import urllib.request
import zipfile
from typing import IO, TYPE_CHECKING, Any, Generic, TypeVar, cast
from urllib.parse import urlsplit

import attrs
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.backends._threads import ThreadPoolService
from pypicloud_tx.backends.storage._objects import (
    Layout,
    ObjectReader,
    ObjectStorage,
    ObjectStorageOptions,
)
from pypicloud_tx.config.options import parse_options
from pypicloud_tx.config.registry import resolve
from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.errors import BackendUnavailable, ConfigError, Conflict, InvalidUpload, NotFound
from pypicloud_tx.interfaces import IStorage
from pypicloud_tx.runtime import Runtime
from pypicloud_tx.web.download import FileBody

from .conformance import IStorageConformance, package_file

if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object

KB = 1024
MB = 1024 * KB

S = TypeVar("S", bound=ObjectStorage)
OptionsT = TypeVar("OptionsT", bound=ObjectStorageOptions)


def make_wheel(name: str = "demo_pkg", version: str = "1.0", summary: str = "A demo") -> bytes:
    """A small but real wheel whose METADATA says ``name``, ``version`` and ``summary``."""
    metadata = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: {summary}\n"
        "Requires-Python: >=3.9\nRequires-Dist: attrs\n"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "")
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)
        archive.writestr(
            f"{name}-{version}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
        )
        archive.writestr(f"{name}-{version}.dist-info/RECORD", "")
    return buffer.getvalue()


class FailingAfter(io.RawIOBase):
    """An upload stream that yields ``good`` bytes, then fails (the client went away)."""

    def __init__(self, good: int) -> None:
        self.good = good
        self.sent = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.sent >= self.good:
            raise RuntimeError("client went away")
        n = min(size if size and size > 0 else self.good, self.good - self.sent)
        self.sent += n
        return b"z" * n


class socket_closed_port:
    """A local TCP port nobody listens on (bound, then closed)."""

    def __enter__(self) -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        pass


class ObjectStoreCase(Generic[S], _Base):
    """The hooks a vendor's test case supplies, and the helpers built on them.

    A vendor subclasses this together with ``SynchronousTestCase`` and defines the attributes
    and the methods that raise :exc:`NotImplementedError` here.
    """

    #: The option naming the server's address; messages about a dead server name it.
    endpoint_option: str
    #: The part (chunk) size of uploads in parts when the storage has :attr:`part_options`.
    part: int
    #: Options that make files larger than :attr:`part` go up in parts of that size.
    part_options: dict[str, str]
    #: The Content-Types a tarball may be stored with (never one implying an encoding).
    tarball_types: tuple[str, ...]
    #: The summary :meth:`pypicloud_upload` stores in the object's metadata.
    pypicloud_summary: str

    # -- hooks --------------------------------------------------------------------------------

    def unstarted(self, runtime: Runtime | None = None, /, **options: str) -> S:
        """A storage on the test's server, not started, on ``runtime`` (the synchronous one
        if None); ``options`` add to or override the defaults (fast failures and whatever
        else the vendor needs)."""
        raise NotImplementedError

    def new_bucket(self) -> str:
        """A bucket name no other test uses."""
        raise NotImplementedError

    def remove_bucket(self, bucket: str) -> None:
        """Empty and delete ``bucket`` if it exists."""
        raise NotImplementedError

    def keys(self, storage: S) -> list[str]:
        """Every key in the storage's bucket, sorted."""
        raise NotImplementedError

    def write_raw(
        self, storage: S, key: str, data: bytes, metadata: dict[str, str] | None = None
    ) -> None:
        """Write ``data`` at ``key`` behind the storage's back, with ``metadata`` (none if
        None) and no Content-Type."""
        raise NotImplementedError

    def delete_raw(self, storage: S, key: str) -> None:
        """Delete the object ``key`` behind the storage's back."""
        raise NotImplementedError

    def raw_metadata(self, storage: S, key: str) -> dict[str, str]:
        """The user metadata of the object ``key``."""
        raise NotImplementedError

    def raw_type(self, storage: S, key: str) -> tuple[str, str | None]:
        """The Content-Type and Content-Encoding (None if absent) of the object ``key``."""
        raise NotImplementedError

    def raw_version(self, storage: S, key: str) -> object:
        """What changes whenever the object ``key`` is written again (ETag, generation)."""
        raise NotImplementedError

    def object_url(self, storage: S, key: str) -> str:
        """The path-style URL of the object ``key`` on the test's server."""
        raise NotImplementedError

    def pending_uploads(self, storage: S) -> list[Any]:
        """Uploads in parts begun and neither completed nor aborted (where the vendor lists
        them)."""
        return []

    # -- helpers ------------------------------------------------------------------------------

    def started(self, **options: str) -> S:
        """A started storage on a new bucket; ``options`` add to or override the defaults."""
        bucket = options.pop("bucket", None) or self.new_bucket()
        storage = self.unstarted(bucket=bucket, **options)
        self.addCleanup(self.remove_bucket, bucket)
        self.successResultOf(storage.start())
        self.addCleanup(lambda: self.successResultOf(storage.stop()))
        return storage

    def in_parts(self, **options: str) -> S:
        """A started storage that uploads files larger than :attr:`part` in parts."""
        return self.started(**self.part_options, **options)

    def store(
        self,
        storage: S,
        data: bytes,
        core: bytes | None = None,
        overwrite: bool = False,
        **fields: Any,
    ) -> PackageFile:
        """Store ``data`` as a file described by :func:`package_file`; its record."""
        file = package_file(data, **fields)
        self.successResultOf(storage.put(file, io.BytesIO(data), core, overwrite))
        return file

    def listed(self, storage: S) -> dict[str, PackageFile]:
        """What list() reports, by filename."""
        return {f.filename: f for f in self.successResultOf(storage.list())}

    def read(self, storage: S, file: PackageFile) -> bytes:
        """The whole content of ``file``, read through open()."""
        stream = self.successResultOf(storage.open(file))
        try:
            return stream.read()
        finally:
            stream.close()

    def pypicloud_upload(
        self, storage: S, data: bytes, filename: str, prefix: str, hashed: bool
    ) -> str:
        """Store ``data`` as pypicloud's storage did: its key, its metadata (``name``,
        ``version`` and ``Package.get_metadata()``), no Content-Type; the key."""
        key = Layout(prefix, hashed).key("demo-pkg", filename)
        metadata = {
            "name": "demo-pkg",
            "version": "1.0",
            "summary": self.pypicloud_summary,
            "requires_python": ">=3.9",
            "hash_sha256": hashlib.sha256(data).hexdigest(),
            "hash_md5": hashlib.md5(data).hexdigest(),
            "uploader": "carol",
        }
        self.write_raw(storage, key, data, metadata)
        return key


class DefaultLayoutConformance(IStorageConformance, ObjectStoreCase[S]):
    """The IStorage conformance suite, on a bucket with the default layout."""

    def make_storage(self) -> IStorage:
        return self.started()


class PrefixLayoutConformance(IStorageConformance, ObjectStoreCase[S]):
    """The IStorage conformance suite, with a key prefix and without the hash folder."""

    def make_storage(self) -> IStorage:
        return self.started(prefix="some/packages/", prepend_hash="false")


class LayoutCases(ObjectStoreCase[S]):
    """What lands in the bucket."""

    def test_objects_written(self) -> None:
        """put() writes the file, a JSON sidecar and the core metadata under pypicloud's key,
        with pypicloud-compatible metadata and a Content-Type that is never gzip."""
        storage = self.started(prefix="pkgs/")
        file = self.store(storage, b"wheel", b"Name: demo-pkg\n", summary="s", uploader="bob")
        key = Layout("pkgs/", True).key("demo-pkg", file.filename)
        self.assertEqual(self.keys(storage), [key, key + ".meta", key + ".metadata"])
        metadata = self.raw_metadata(storage, key)
        self.assertEqual(
            {k: metadata.get(k) for k in ("name", "version", "summary", "uploader")},
            {"name": "demo-pkg", "version": "1.0", "summary": "s", "uploader": "bob"},
        )
        self.assertEqual(metadata["hash-sha256"], file.sha256)
        self.assertEqual(self.raw_type(storage, key), ("application/zip", None))
        self.assertEqual(self.raw_type(storage, key + ".meta")[0], "application/json")
        tarball = self.store(storage, b"sdist", filename="demo_pkg-2.0.tar.gz")
        kind, encoding = self.raw_type(
            storage, Layout("pkgs/", True).key("demo-pkg", tarball.filename)
        )
        self.assertIn(kind, self.tarball_types)
        self.assertIsNone(encoding)

    def test_delete_removes_every_object(self) -> None:
        """delete() leaves nothing of the file in the bucket."""
        storage = self.started()
        file = self.store(storage, b"data", b"Name: demo-pkg\n")
        self.successResultOf(storage.delete(file))
        self.assertEqual(self.keys(storage), [])

    def test_sidecar_without_object_not_listed(self) -> None:
        """A sidecar whose object is gone (an interrupted delete) is never listed."""
        storage = self.started()
        file = self.store(storage, b"data")
        self.delete_raw(storage, Layout("", True).key(file.name, file.filename))
        self.assertEqual(self.listed(storage), {})

    def test_stale_sidecar_ignored(self) -> None:
        """When the object was replaced (a new ETag or generation) but its sidecar was not (a
        crash between the two), list() reports the object's real digests and size, not the
        stale record."""
        storage = self.started()
        file = self.store(storage, b"old bytes", summary="old")
        key = Layout("", True).key(file.name, file.filename)
        self.write_raw(
            storage, key, b"new bytes!", {"name": "demo-pkg", "version": "1.0", "summary": "new"}
        )
        listed = self.listed(storage)[file.filename]
        self.assertEqual(
            (listed.sha256, listed.size, listed.summary),
            (hashlib.sha256(b"new bytes!").hexdigest(), 10, "new"),
        )

    def test_foreign_keys_ignored(self) -> None:
        """Objects that are not where a package file goes (other data in the bucket, another
        prefix, a key without the hash folder) are not listed."""
        storage = self.started(prefix="pkgs/")
        kept = self.store(storage, b"kept")
        for key in (
            "readme.txt",
            "pkgs/notes.txt",
            "pkgs/demo-pkg/demo_pkg-1.0-py3-none-any.whl",
            "pkgs/ffff/demo-pkg/demo_pkg-3.0.tar.gz",
            "other/1234/demo-pkg/demo_pkg-1.0.tar.gz",
        ):
            self.write_raw(storage, key, b"junk")
        self.assertEqual(list(self.listed(storage)), [kept.filename])

    def test_save_record_keeps_the_object(self) -> None:
        """save_record() rewrites only the sidecar: the object's bytes and version (ETag or
        generation) stay."""
        storage = self.started()
        file = self.store(storage, b"data")
        key = Layout("", True).key(file.name, file.filename)
        before = self.raw_version(storage, key)
        self.successResultOf(storage.save_record(attrs.evolve(file, yanked="bad")))
        self.assertEqual(self.raw_version(storage, key), before)
        self.assertEqual(self.listed(storage)[file.filename].yanked, "bad")


class PypicloudBucketCases(ObjectStoreCase[S]):
    """A bucket written by pypicloud is served as it is."""

    def check_served(self, storage: S, prefix: str, hashed: bool) -> None:
        """A wheel pypicloud stored under ``prefix`` (with or without the hash folder) is
        listed with the metadata of its archive, opened, and gets a sidecar."""
        wheel = make_wheel(summary="Caf\u00e9 demo")
        filename = "demo_pkg-1.0-py3-none-any.whl"
        key = self.pypicloud_upload(storage, wheel, filename, prefix, hashed)
        listed = self.listed(storage)
        self.assertEqual(list(listed), [filename])
        file = listed[filename]
        self.assertEqual(
            (
                file.name,
                file.version,
                file.size,
                file.sha256,
                file.summary,
                file.requires_python,
                file.uploader,
                file.metadata.get("requires_dist"),
            ),
            (
                "demo-pkg",
                "1.0",
                len(wheel),
                hashlib.sha256(wheel).hexdigest(),
                "Caf\u00e9 demo",
                ">=3.9",
                "carol",
                ["attrs"],
            ),
        )
        self.assertEqual(self.read(storage, file), wheel)
        core = self.successResultOf(storage.open_metadata(file))
        self.assertIn(b"Summary: Caf\xc3\xa9 demo", core)
        self.assertEqual(file.metadata_sha256, hashlib.sha256(core).hexdigest())
        # The record read back was saved: the next rebuild reads it instead of the archive.
        self.assertEqual(self.keys(storage), sorted([key, key + ".meta", key + ".metadata"]))
        self.assertEqual(self.listed(storage)[filename].to_record(), file.to_record())

    def test_default_layout(self) -> None:
        """Objects under ``<hash>/<name>/<filename>`` with pypicloud's metadata are listed with
        their metadata read back from the archive, can be opened, and get a sidecar."""
        self.check_served(self.started(), "", True)

    def test_prefix_without_hash(self) -> None:
        """pypicloud's ``storage.prefix`` and ``storage.prepend_hash = false`` layout works."""
        self.check_served(self.started(prefix="pypi/", prepend_hash="false"), "pypi/", False)

    def test_old_object_without_metadata(self) -> None:
        """An object without any metadata (from before pypicloud stored it on S3; skipped by
        pypicloud's GCS backend) is listed with the name and version of its filename and
        digests computed from its bytes."""
        storage = self.started()
        filename = "demo_pkg-2.0rc1.tar.gz"
        key = Layout("", True).key("demo-pkg", filename)
        self.write_raw(storage, key, b"not really a tarball")
        file = self.listed(storage)[filename]
        self.assertEqual(
            (file.name, file.version, file.sha256, file.summary, file.metadata_sha256),
            ("demo-pkg", "2.0rc1", hashlib.sha256(b"not really a tarball").hexdigest(), "", None),
        )


class DownloadCases(ObjectStoreCase[S]):
    """Redirect URLs and streamed reads."""

    def test_redirect_url_downloads(self) -> None:
        """download_url() gives a signed URL of the object that anyone can fetch without
        credentials, returning exactly the stored bytes."""
        storage = self.started()
        data = os.urandom(300_000)
        file = self.store(storage, data)
        url = self.successResultOf(storage.download_url(file))
        assert url is not None
        key = Layout("", True).key(file.name, file.filename)
        self.assertEqual(url.split("?")[0], self.object_url(storage, key))
        request = urllib.request.Request(url)
        self.assertFalse(request.has_header("Authorization"))
        with urllib.request.urlopen(request, timeout=10) as response:
            self.assertEqual(response.read(), data)

    def test_public_url_with_endpoint(self) -> None:
        """With ``storage.public_url`` and an endpoint, the URL is ``<endpoint>/<bucket>/<key>``."""
        storage = self.started(public_url="true")
        file = self.store(storage, b"data")
        key = Layout("", True).key(file.name, file.filename)
        self.assertEqual(
            self.successResultOf(storage.download_url(file)), self.object_url(storage, key)
        )

    def test_open_streams(self) -> None:
        """open() returns a stream that reads the object piece by piece (not a copy of it in
        memory) and knows the object's size."""
        storage = self.started()
        data = os.urandom(3 * MB + 17)
        file = self.store(storage, data)
        stream = self.successResultOf(storage.open(file))
        self.addCleanup(stream.close)
        self.assertIsInstance(stream, ObjectReader)
        self.assertEqual(cast(ObjectReader, stream).size, len(data))
        chunks = []
        while chunk := stream.read(64 * KB):
            self.assertLessEqual(len(chunk), 64 * KB)
            chunks.append(chunk)
        self.assertEqual(b"".join(chunks), data)

    def test_seek_reads_a_range(self) -> None:
        """Seeking, from the start, the current position or the end, then reading gives the
        bytes at that position (a new ranged GET each time)."""
        storage = self.started()
        data = bytes(range(256)) * 4096
        file = self.store(storage, data)
        stream = self.successResultOf(storage.open(file))
        self.addCleanup(stream.close)
        self.assertEqual(stream.read(10), data[:10])
        stream.seek(500_000)
        self.assertEqual(stream.read(1000), data[500_000:501_000])
        stream.seek(-100, io.SEEK_END)
        self.assertEqual(stream.read(), data[-100:])
        stream.seek(5)
        stream.seek(10, io.SEEK_CUR)
        self.assertEqual((stream.tell(), stream.read(5)), (15, data[15:20]))
        self.assertEqual(stream.read(0), b"")

    def test_range_request_through_file_body(self) -> None:
        """The web layer's FileBody answers a Range request on a streamed object with 206 and
        exactly the requested bytes."""
        storage = self.started()
        data = os.urandom(2 * MB)
        file = self.store(storage, data)
        stream = self.successResultOf(storage.open(file))
        treq = StubTreq(FileBody(file, stream, 60))
        response = self.successResultOf(
            treq.get(  # type: ignore[attr-defined]
                "http://example.test/f", headers={b"Range": [b"bytes=1000000-1000999"]}
            )
        )
        self.assertEqual(response.code, 206)
        self.assertEqual(self.successResultOf(response.content()), data[1_000_000:1_001_000])
        treq.flush()

    def test_replaced_while_reading(self) -> None:
        """A stream never mixes two versions: if the object is replaced after open(), a read
        that needs a new request fails with OSError instead of returning other bytes."""
        storage = self.started()
        file = self.store(storage, b"a" * 100_000)
        stream = self.successResultOf(storage.open(file))
        self.addCleanup(stream.close)
        self.assertEqual(stream.read(10), b"a" * 10)
        self.store(storage, b"b" * 100_000, overwrite=True)
        stream.seek(50_000)
        self.assertRaises(OSError, stream.read, 10)

    def test_open_missing(self) -> None:
        """open() and open_metadata() of a file that is not in the bucket are NotFound, not a
        server error."""
        storage = self.started()
        self.failureResultOf(storage.open(package_file(b"nothing")), NotFound)
        self.failureResultOf(storage.open_metadata(package_file(b"nothing")), NotFound)


class UploadCases(ObjectStoreCase[S]):
    """Uploads in parts, failures half-way and simultaneous uploads."""

    def test_failure_half_way_leaves_nothing(self) -> None:
        """An upload in parts whose stream fails after the first part leaves no object, no
        sidecar and no pending upload; the same file can be uploaded afterwards."""
        storage = self.in_parts()
        size = 2 * self.part + self.part // 2
        file = package_file(b"z" * size)
        failure = self.failureResultOf(
            storage.put(
                file, cast(IO[bytes], FailingAfter(self.part + self.part // 5)), b"Name: x\n", False
            ),
            RuntimeError,
        )
        self.assertIn("client went away", str(failure.value))
        self.assertEqual((self.listed(storage), self.keys(storage)), ({}, []))
        self.assertEqual(self.pending_uploads(storage), [])
        self.successResultOf(storage.put(file, io.BytesIO(b"z" * size), None, False))
        self.assertEqual(list(self.listed(storage)), [file.filename])

    def test_size_mismatch_in_parts(self) -> None:
        """An upload in parts shorter or longer than announced fails with InvalidUpload and
        leaves nothing behind."""
        storage = self.in_parts()
        size = 2 * self.part + self.part // 5
        file = package_file(b"q" * size)
        for data in (b"q" * (size - 1), b"q" * (size + 1)):
            self.failureResultOf(storage.put(file, io.BytesIO(data), None, False), InvalidUpload)
        self.assertEqual((self.keys(storage), self.pending_uploads(storage)), ([], []))

    def test_duplicate_in_parts_conflicts(self) -> None:
        """A duplicate large enough to go up in parts fails with Conflict, leaves the first
        bytes and no pending upload."""
        storage = self.in_parts()
        size = self.part + self.part // 5
        first = self.store(storage, b"1" * size)
        second = package_file(b"2" * size)
        self.failureResultOf(storage.put(second, io.BytesIO(b"2" * size), None, False), Conflict)
        self.assertEqual(self.read(storage, first)[:3], b"111")
        self.assertEqual(self.pending_uploads(storage), [])

    def test_simultaneous_uploads_one_wins(self) -> None:
        """Eight simultaneous uploads of one filename: one succeeds, seven get Conflict, and
        the stored bytes and record are the winner's."""
        storage = self.started()
        results: dict[int, str] = {}

        def upload(i: int) -> None:
            data = bytes([65 + i]) * 1000
            d = storage.put(package_file(data, summary=str(i)), io.BytesIO(data), None, False)
            d.addCallbacks(
                lambda _: results.__setitem__(i, "ok"),
                lambda f: results.__setitem__(i, f.type.__name__),
            )

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(sorted(results.values()), ["Conflict"] * 7 + ["ok"])
        winner = next(i for i, result in results.items() if result == "ok")
        listed = self.listed(storage)["demo_pkg-1.0-py3-none-any.whl"]
        self.assertEqual(
            (self.read(storage, listed), listed.summary),
            (bytes([65 + winner]) * 1000, str(winner)),
        )


class LifecycleCases(ObjectStoreCase[S]):
    """Start-up, health and unreachable servers."""

    def test_missing_bucket_unhealthy(self) -> None:
        """A storage on a bucket that does not exist (never started) reports it by name, and
        list() fails with BackendUnavailable saying so."""
        storage = self.unstarted(bucket=self.new_bucket())
        healthy, message = self.successResultOf(storage.check_health())
        self.assertFalse(healthy)
        self.assertIn("storage.bucket", message)
        failure = self.failureResultOf(storage.list(), BackendUnavailable)
        self.assertIn("does not exist", failure.value.message)

    def test_unreachable_endpoint(self) -> None:
        """A dead endpoint fails start(), list(), put() and open() quickly with
        BackendUnavailable naming the endpoint option, and check_health() reports it."""
        named = f"storage.{self.endpoint_option}"
        with socket_closed_port() as port:
            storage = self.unstarted(
                bucket="b", **{self.endpoint_option: f"http://127.0.0.1:{port}"}
            )
            began = time.monotonic()
            for d in (
                storage.start(),
                storage.list(),
                storage.put(package_file(b"x"), io.BytesIO(b"x"), None, False),
                storage.open(package_file(b"x")),
            ):
                failure = self.failureResultOf(d, BackendUnavailable)
                self.assertIn(named, failure.value.message)
            healthy, message = self.successResultOf(storage.check_health())
            self.assertEqual((healthy, named in message), (False, True))
            self.assertLess(time.monotonic() - began, 10)


class ThreadPoolCases(ObjectStoreCase[S]):
    """With a real thread pool (as in the server) every call answers through the reactor.

    Mix into a ``TestCase`` (not a ``SynchronousTestCase``): the test runs on the reactor.
    """

    def test_cycle_on_threads(self) -> Deferred[None]:
        """start, put (small and in parts), list, open, download_url, delete and health work
        off the reactor."""
        from twisted.internet import reactor

        pool = ThreadPoolService(reactor, "storage", 4)  # type: ignore[arg-type]
        pool.startService()
        self.addCleanup(pool.stopService)
        bucket = self.new_bucket()
        self.addCleanup(self.remove_bucket, bucket)
        runtime = Runtime(reactor=reactor, threads=lambda name, size: pool.run)
        storage = self.unstarted(runtime, bucket=bucket, **self.part_options)
        small = package_file(b"threaded")
        large_data = os.urandom(self.part + self.part // 5)
        large = package_file(large_data, filename="demo_pkg-1.0.tar.gz")

        async def cycle() -> None:
            await storage.start()
            await storage.put(small, io.BytesIO(b"threaded"), b"Name: demo-pkg\n", False)
            await storage.put(large, io.BytesIO(large_data), None, False)
            self.assertEqual(sorted(await storage.list(), key=lambda f: f.filename), [small, large])
            stream = await storage.open(large)
            self.assertEqual(stream.read(), large_data)
            stream.close()
            url = await storage.download_url(small)
            assert url is not None
            self.assertEqual(
                urlsplit(url).path, f"/{bucket}/" + storage.layout.key(small.name, small.filename)
            )
            self.assertEqual(await storage.check_health(), (True, ""))
            await storage.delete(small)
            await storage.delete(large)
            self.assertEqual(await storage.list(), [])
            await storage.stop()

        return Deferred.fromCoroutine(cycle())


class ConfigurationCases(Generic[S, OptionsT], _Base):
    """Reading the ``storage.*`` options every object store has (no network)."""

    #: The vendor's options.
    options_type: type[OptionsT]
    #: The storage that ``pypi.storage`` chooses with any of :attr:`registry_names`.
    storage_type: type[S]
    registry_names: tuple[str, ...]
    #: Wrong values only this vendor refuses, each with the option its message must name.
    vendor_refusals: tuple[tuple[dict[str, str], str], ...]

    def configured(self, **values: str) -> S:
        """A storage built from :meth:`options` (never started: no network)."""
        raise NotImplementedError

    def options(self, **values: str) -> OptionsT:
        """The vendor's options from ``values`` and a bucket."""
        return parse_options(self.options_type, "storage", {"bucket": "b", **values})

    def test_bucket_required(self) -> None:
        """Without ``storage.bucket`` the configuration is refused, naming the option."""
        e = self.assertRaises(ConfigError, parse_options, self.options_type, "storage", {})
        self.assertIn("storage.bucket", e.message)

    def test_pypicloud_defaults(self) -> None:
        """Defaults are pypicloud's: hash folder on, no prefix, URLs valid a day, downloads
        redirected to signed (not public) URLs, the bucket's own ACL and storage class."""
        options = self.options()
        self.assertEqual(
            (
                options.prepend_hash,
                options.prefix,
                options.expire_after,
                options.redirect_urls,
                options.object_acl,
                options.storage_class,
                options.public_url,
            ),
            (True, "", 86400, True, None, None, False),
        )

    def test_registry_names(self) -> None:
        """``pypi.storage`` with the vendor's short name or pypicloud's class paths chooses
        the vendor's storage."""
        for value in self.registry_names:
            self.assertIs(resolve("pypi.storage", value)[1], self.storage_type)

    def test_refused_values(self) -> None:
        """Wrong values, of the options every object store has and of the vendor's own, stop
        start-up with a message naming the option."""
        for values, named in (
            ({"object_acl": "everyone-may-write"}, "storage.object_acl"),
            ({"expire_after": "0"}, "storage.expire_after"),
            ({"prefix": "/abs"}, "storage.prefix"),
            ({"no_such_option": "x"}, "storage.no_such_option"),
            *self.vendor_refusals,
        ):
            e = self.assertRaises(ConfigError, self.configured, **values)
            self.assertIn(named, e.message)

    def test_redirect_urls_off_streams(self) -> None:
        """With ``storage.redirect_urls = false`` download_url() is None: the server streams."""
        storage = self.configured(redirect_urls="false")
        self.assertIsNone(self.successResultOf(storage.download_url(package_file(b"x"))))
