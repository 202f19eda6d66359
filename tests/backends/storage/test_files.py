"""The local-folder storage (``pypi.storage = file``)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import threading
import time
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pypicloud_tx.backends._threads import ThreadPoolService
from pypicloud_tx.backends.storage.files import FileStorage
from pypicloud_tx.config.options import parse_options
from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.errors import BackendUnavailable, ConfigError, Conflict, InvalidUpload, NotFound
from pypicloud_tx.interfaces import IStorage
from pypicloud_tx.runtime import Runtime

from .conformance import IStorageConformance, broken_stream, package_file


def _tree(root: str) -> list[str]:
    """Every file and folder under ``root``, as sorted relative paths."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(found)


def _file_storage(directory: str) -> FileStorage:
    options = parse_options(FileStorage.Options, "storage", {"dir": directory})
    return FileStorage.from_config(options, Runtime.synchronous())


class FileStorageConformanceTests(IStorageConformance, SynchronousTestCase):
    """FileStorage passes the IStorage conformance suite."""

    def make_storage(self) -> IStorage:
        storage = _file_storage(self.mktemp())
        self.successResultOf(storage.start())
        return storage


class _FolderTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.dir = os.path.join(self.root, "packages")
        self.storage = _file_storage(self.dir)
        self.successResultOf(self.storage.start())

    def write(self, relative: str, data: bytes) -> str:
        path = os.path.join(self.dir, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def listed(self) -> dict[str, PackageFile]:
        return {f.filename: f for f in self.successResultOf(self.storage.list())}

    def put(self, file: PackageFile, data: bytes, core_metadata: bytes | None = None) -> Any:
        return self.storage.put(file, io.BytesIO(data), core_metadata, False)


class ConfigurationTests(SynchronousTestCase):
    """Building a FileStorage from ``storage.*`` options."""

    def test_dir_required(self) -> None:
        """Without ``storage.dir`` the configuration is refused, naming the option."""
        e = self.assertRaises(ConfigError, parse_options, FileStorage.Options, "storage", {})
        self.assertIn("storage.dir", e.message)

    def test_absolute_dir_kept(self) -> None:
        """An absolute ``storage.dir`` is used as given."""
        options = parse_options(FileStorage.Options, "storage", {"dir": "/srv/packages"})
        storage = FileStorage.from_config(options, Runtime.synchronous(here="/etc/ppc"))
        self.assertEqual(storage.directory, "/srv/packages")

    def test_relative_dir_from_config_folder(self) -> None:
        """A relative ``storage.dir`` is relative to the config file's folder, made absolute."""
        options = parse_options(FileStorage.Options, "storage", {"dir": "packages/"})
        storage = FileStorage.from_config(options, Runtime.synchronous(here="/etc/ppc"))
        self.assertEqual(storage.directory, "/etc/ppc/packages")

    def test_from_config_does_no_io(self) -> None:
        """from_config() creates nothing; start() creates the folder."""
        directory = os.path.abspath(self.mktemp())
        storage = _file_storage(directory)
        self.assertFalse(os.path.exists(directory))
        self.successResultOf(storage.start())
        self.assertTrue(os.path.isdir(directory))


class LayoutTests(_FolderTestCase):
    """Where the files go, so that pypicloud's folders and ours are interchangeable."""

    def test_layout(self) -> None:
        """put() writes ``<dir>/<name>/<version>/<filename>``, a ``.meta`` JSON record equal to
        ``to_record()`` and a ``.metadata`` core-metadata file, and nothing else."""
        file = package_file(b"wheel bytes", filename="Demo_Pkg-1.0-py3-none-any.whl")
        self.successResultOf(self.put(file, b"wheel bytes", b"Name: Demo_Pkg\n"))
        base = "demo-pkg/1.0/Demo_Pkg-1.0-py3-none-any.whl"
        self.assertEqual(
            _tree(self.dir),
            ["demo-pkg", "demo-pkg/1.0", base, base + ".meta", base + ".metadata"],
        )
        with open(os.path.join(self.dir, base), "rb") as f:
            self.assertEqual(f.read(), b"wheel bytes")
        with open(os.path.join(self.dir, base + ".meta"), "rb") as f:
            self.assertEqual(json.loads(f.read()), file.to_record())
        with open(os.path.join(self.dir, base + ".metadata"), "rb") as f:
            self.assertEqual(f.read(), b"Name: Demo_Pkg\n")

    def test_download_url_is_none(self) -> None:
        """The file storage never redirects: the server streams the file."""
        self.assertIsNone(self.successResultOf(self.storage.download_url(package_file(b"x"))))

    def test_open_returns_binary_file(self) -> None:
        """open() gives a real binary file object, seekable for Range requests."""
        file = package_file(b"0123456789")
        self.successResultOf(self.put(file, b"0123456789"))
        stream = self.successResultOf(self.storage.open(file))
        self.addCleanup(stream.close)
        stream.seek(4)
        self.assertEqual(stream.read(3), b"456")

    def test_delete_removes_empty_folders(self) -> None:
        """delete() removes the version and project folders once they are empty, but keeps a
        project folder that still holds another version."""
        one = package_file(b"1", filename="demo-1.0.tar.gz")
        two = package_file(b"2", filename="demo-2.0.tar.gz")
        self.successResultOf(self.put(one, b"1"))
        self.successResultOf(self.put(two, b"2"))
        self.successResultOf(self.storage.delete(one))
        self.assertEqual(
            _tree(self.dir),
            ["demo", "demo/2.0", "demo/2.0/demo-2.0.tar.gz", "demo/2.0/demo-2.0.tar.gz.meta"],
        )
        self.successResultOf(self.storage.delete(two))
        self.assertEqual(_tree(self.dir), [])

    def test_save_record_is_a_replace(self) -> None:
        """save_record() leaves exactly one ``.meta`` (no temp files) holding the new record."""
        file = package_file(b"x", filename="demo-1.0.tar.gz")
        self.successResultOf(self.put(file, b"x"))
        yanked = package_file(b"x", filename="demo-1.0.tar.gz", yanked="")
        self.successResultOf(self.storage.save_record(yanked))
        self.assertEqual(
            _tree(self.dir),
            ["demo", "demo/1.0", "demo/1.0/demo-1.0.tar.gz", "demo/1.0/demo-1.0.tar.gz.meta"],
        )
        self.assertEqual(self.listed()["demo-1.0.tar.gz"].yanked, "")


#: Record fields that try to leave the storage folder or hide a file.
UNSAFE: tuple[dict[str, Any], ...] = (
    {"name": "../x"},
    {"name": "x/../../y"},
    {"name": "Not-Canonical"},
    {"name": ""},
    {"version": ".."},
    {"version": "1.0/../../.."},
    {"version": ".hidden"},
    {"version": "1\x000"},
    {"filename": "demo-1.0/../../../evil.tar.gz"},
    {"filename": "sub/demo-1.0.tar.gz"},
    {"filename": "..\\demo-1.0.tar.gz"},
    {"filename": ".demo-1.0.tar.gz"},
    {"filename": "demo-1.0.tar.gz\x00.whl"},
    {"filename": "demo-1.0.tar.gz.meta"},
    {"filename": "demo-1.0.tar.gz.metadata"},
)


class PathSafetyTests(_FolderTestCase):
    """No name, version or filename can make the storage touch anything outside its folder."""

    def test_put_refuses_unsafe_segments(self) -> None:
        """put() of a record with a traversing or hidden name, version or filename fails with
        InvalidUpload and writes nothing, inside or outside the folder."""
        for bad in UNSAFE:
            file = attrs.evolve(package_file(b"evil", filename="demo-1.0.tar.gz"), **bad)
            self.failureResultOf(self.put(file, b"evil"), InvalidUpload)
            self.failureResultOf(self.storage.save_record(file), InvalidUpload)
        self.assertEqual(_tree(self.root), ["packages"])

    def test_reads_of_unsafe_segments_are_not_found(self) -> None:
        """open() and open_metadata() of unsafe records fail with NotFound; delete() is a no-op."""
        outside = os.path.join(self.root, "x", "1.0", "demo-1.0.tar.gz")
        os.makedirs(os.path.dirname(outside))
        with open(outside, "wb") as f:
            f.write(b"secret")
        for bad in UNSAFE:
            file = attrs.evolve(package_file(b"evil", filename="demo-1.0.tar.gz"), **bad)
            self.failureResultOf(self.storage.open(file), NotFound)
            self.failureResultOf(self.storage.open_metadata(file), NotFound)
            self.successResultOf(self.storage.delete(file))
        with open(outside, "rb") as f:
            self.assertEqual(f.read(), b"secret")

    def test_symlink_out_of_folder_refused(self) -> None:
        """A project folder that is a symlink to somewhere outside the storage folder is not
        written through."""
        elsewhere = os.path.join(self.root, "elsewhere")
        os.makedirs(elsewhere)
        os.symlink(elsewhere, os.path.join(self.dir, "demo"))
        file = package_file(b"evil", filename="demo-1.0.tar.gz")
        self.failureResultOf(self.put(file, b"evil"), InvalidUpload)
        self.assertEqual(os.listdir(elsewhere), [])


class RecoveryTests(_FolderTestCase):
    """What a crash, or pypicloud, may leave in the folder is read sensibly."""

    def test_temp_files_not_listed(self) -> None:
        """A ``.tmp-`` file left by a crash is not listed."""
        self.write("demo/1.0/.tmp-0123abcd", b"partial")
        self.assertEqual(self.listed(), {})

    def test_start_removes_old_temp_files(self) -> None:
        """start() removes ``.tmp-`` files older than an hour and keeps younger ones (an upload in
        progress in another process)."""
        old = self.write("demo/1.0/.tmp-old", b"partial")
        young = self.write("demo/1.0/.tmp-young", b"partial")
        stored = self.write("demo/1.0/demo-1.0.tar.gz", b"whole")
        two_hours_ago = time.time() - 7200
        os.utime(old, (two_hours_ago, two_hours_ago))
        os.utime(stored, (two_hours_ago, two_hours_ago))
        self.successResultOf(self.storage.start())
        self.assertFalse(os.path.exists(old))
        self.assertTrue(os.path.exists(young))
        self.assertTrue(os.path.exists(stored))

    def test_file_without_record_is_listed(self) -> None:
        """A complete file without ``.meta`` (a crash after the link) is listed with metadata read
        from the file: size, digests, upload time from its mtime, empty summary."""
        data = b"a wheel without its record"
        path = self.write("demo-pkg/1.0/demo_pkg-1.0-py3-none-any.whl", data)
        os.utime(path, (1700000000, 1700000000))
        listed = self.listed()["demo_pkg-1.0-py3-none-any.whl"]
        self.assertEqual(
            listed.to_record(),
            package_file(
                data,
                display_name="demo-pkg",
                upload_time=_dt.datetime.fromtimestamp(1700000000, _dt.UTC),
            ).to_record(),
        )
        stream = self.successResultOf(self.storage.open(listed))
        self.addCleanup(stream.close)
        self.assertEqual(stream.read(), data)

    def test_file_without_record_keeps_core_metadata(self) -> None:
        """A file without ``.meta`` but with ``.metadata`` is listed with the core metadata's
        sha256, so the index keeps advertising it."""
        self.write("demo/1.0/demo-1.0-py3-none-any.whl", b"wheel")
        self.write("demo/1.0/demo-1.0-py3-none-any.whl.metadata", b"Name: demo\n")
        listed = self.listed()["demo-1.0-py3-none-any.whl"]
        self.assertEqual(listed.metadata_sha256, hashlib.sha256(b"Name: demo\n").hexdigest())

    def test_corrupt_record_falls_back_to_file(self) -> None:
        """An unreadable ``.meta`` (truncated JSON, or JSON of the wrong shape) does not hide the
        file: it is listed with metadata read from the file."""
        for index, junk in enumerate(
            [b'{"summary": "trunc', b"[1, 2]", b'{"upload_time": "nonsense"}']
        ):
            filename = f"demo-1.{index}.tar.gz"
            self.write(f"demo/1.{index}/{filename}", b"sdist")
            self.write(f"demo/1.{index}/{filename}.meta", junk)
            listed = self.listed()[filename]
            self.assertEqual(listed.sha256, hashlib.sha256(b"sdist").hexdigest())
            self.assertEqual(listed.version, f"1.{index}")

    def test_pypicloud_folder(self) -> None:
        """A folder written by pypicloud (project folder named as uploaded, ``.meta`` with only
        pypicloud's keys) is listed with canonical names and the missing fields filled in, and its
        files can be opened, refused as duplicates and deleted."""
        data = b"an old sdist"
        path = self.write("My_Package/1.0/My_Package-1.0.tar.gz", data)
        os.utime(path, (1600000000, 1600000000))
        self.write(
            "My_Package/1.0/My_Package-1.0.tar.gz.meta",
            json.dumps(
                {
                    "summary": "Caf\u00e9 tools",
                    "uploader": "bob",
                    "requires_python": ">=3.6",
                    "hash_md5": hashlib.md5(data).hexdigest(),
                    "pypicloud_extra": "kept",
                }
            ).encode(),
        )
        self.write("My_Package/2.0/My_Package-2.0.tar.gz.meta", b'{"summary": "orphan"}')
        listed = self.listed()
        self.assertEqual(list(listed), ["My_Package-1.0.tar.gz"])
        old = listed["My_Package-1.0.tar.gz"]
        self.assertEqual(old.name, "my-package")
        self.assertEqual(old.display_name, "My_Package")
        self.assertEqual(old.version, "1.0")
        self.assertEqual(old.size, len(data))
        self.assertEqual(old.summary, "Caf\u00e9 tools")
        self.assertEqual(old.uploader, "bob")
        self.assertEqual(old.requires_python, ">=3.6")
        self.assertEqual(old.sha256, hashlib.sha256(data).hexdigest())
        self.assertEqual(old.md5, hashlib.md5(data).hexdigest())
        self.assertEqual(old.blake2b_256, hashlib.blake2b(data, digest_size=32).hexdigest())
        self.assertEqual(old.upload_time, _dt.datetime.fromtimestamp(1600000000, _dt.UTC))
        self.assertEqual(dict(old.metadata), {"pypicloud_extra": "kept"})

        stream = self.successResultOf(self.storage.open(old))
        self.addCleanup(stream.close)
        self.assertEqual(stream.read(), data)

        again = package_file(b"new bytes", filename="My_Package-1.0.tar.gz")
        self.assertEqual(again.name, "my-package")
        self.failureResultOf(self.put(again, b"new bytes"), Conflict)

        self.successResultOf(self.storage.delete(old))
        self.failureResultOf(self.storage.open(old), NotFound)
        self.assertEqual(
            _tree(self.dir),
            ["My_Package", "My_Package/2.0", "My_Package/2.0/My_Package-2.0.tar.gz.meta"],
        )

    def test_new_version_goes_into_pypicloud_folder(self) -> None:
        """A new version of a project that pypicloud stored goes into the existing project folder
        rather than a second one."""
        self.write("My_Package/1.0/My_Package-1.0.tar.gz", b"old")
        new = package_file(b"new", filename="my_package-2.0.tar.gz")
        self.successResultOf(self.put(new, b"new"))
        self.assertEqual(sorted(os.listdir(self.dir)), ["My_Package"])
        self.assertEqual(sorted(self.listed()), ["My_Package-1.0.tar.gz", "my_package-2.0.tar.gz"])

    def test_stray_files_ignored(self) -> None:
        """Files outside the ``<project>/<version>/`` level and hidden files are not listed."""
        self.write("loose-1.0.tar.gz", b"x")
        self.write("demo/loose-1.0.tar.gz", b"x")
        self.write("demo/1.0/.DS_Store", b"x")
        self.write("demo/1.0/deeper/demo-1.0.tar.gz", b"x")
        self.assertEqual(self.listed(), {})


class FailureTests(_FolderTestCase):
    """Failures leave nothing half-done and surface as our error types."""

    def test_crash_mid_write_leaves_nothing(self) -> None:
        """If reading the upload fails half-way, the error reaches the caller and nothing is
        listed, nothing can be opened and no temp file or empty folder remains."""

        file = package_file(b"x" * 20, filename="demo-1.0.tar.gz")
        failure = self.failureResultOf(
            self.storage.put(file, broken_stream(), b"Name: demo\n", False),
            RuntimeError,
        )
        self.assertEqual(str(failure.value), "client went away")
        self.assertEqual(self.listed(), {})
        self.failureResultOf(self.storage.open(file), NotFound)
        self.assertEqual(_tree(self.dir), [])

    def test_crash_mid_write_keeps_existing_file(self) -> None:
        """A failed overwrite leaves the previous file, record and core metadata as they were."""
        file = package_file(b"original", filename="demo-1.0.tar.gz")
        self.successResultOf(self.put(file, b"original", b"Name: demo\n"))
        bigger = package_file(b"replacement!", filename="demo-1.0.tar.gz")
        self.failureResultOf(
            self.storage.put(bigger, io.BytesIO(b"short"), None, True), InvalidUpload
        )
        self.assertEqual(self.listed()["demo-1.0.tar.gz"].to_record(), file.to_record())
        self.assertEqual(self.successResultOf(self.storage.open_metadata(file)), b"Name: demo\n")
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.dir, "demo", "1.0"))),
            ["demo-1.0.tar.gz", "demo-1.0.tar.gz.meta", "demo-1.0.tar.gz.metadata"],
        )

    def test_disk_errors_become_backend_unavailable(self) -> None:
        """An OSError from the disk (here: the storage folder is a plain file) fails put(),
        list() and save_record() with BackendUnavailable, and health reports the problem."""
        os.rmdir(self.dir)
        with open(self.dir, "wb") as f:
            f.write(b"not a folder")
        file = package_file(b"x", filename="demo-1.0.tar.gz")
        self.failureResultOf(self.put(file, b"x"), BackendUnavailable)
        self.failureResultOf(self.storage.list(), BackendUnavailable)
        ok, message = self.successResultOf(self.storage.check_health())
        self.assertFalse(ok)
        self.assertIn(self.dir, message)

    def test_missing_folder(self) -> None:
        """When the folder has vanished (an unmounted disk), list() fails rather than reporting an
        empty index, and health says the folder is missing."""
        os.rmdir(self.dir)
        self.failureResultOf(self.storage.list(), BackendUnavailable)
        ok, message = self.successResultOf(self.storage.check_health())
        self.assertFalse(ok)
        self.assertIn("does not exist", message)


class ConcurrencyTests(TestCase):
    """Simultaneous uploads through a real thread pool."""

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.pool = ThreadPoolService(cast(Any, reactor), "storage-test", max_threads=8)
        self.pool.startService()
        self.addCleanup(self.pool.stopService)
        self.dir = os.path.abspath(self.mktemp())
        runtime = Runtime(reactor=reactor, threads=lambda name, size: self.pool.run)
        self.storage = FileStorage.from_config(
            parse_options(FileStorage.Options, "storage", {"dir": self.dir}), runtime
        )

    async def _race(self, overwrite: bool) -> tuple[list[Any], dict[int, bytes]]:
        await self.storage.start()
        barrier = threading.Barrier(8, timeout=10)

        class Gate(io.BytesIO):
            """Waits for all eight writers to be mid-copy before handing out its bytes."""

            def read(self, size: int | None = -1) -> bytes:
                if self.tell() == 0:
                    barrier.wait()
                return super().read(size)

        bodies = {i: f"upload number {i}".encode() * (1000 + i) for i in range(8)}
        attempts: list[Deferred[None]] = []
        for i, body in bodies.items():
            file = package_file(body, filename="demo-1.0.tar.gz", summary=f"#{i}")
            attempts.append(self.storage.put(file, Gate(body), f"meta {i}".encode(), overwrite))
        results = await DeferredList(attempts, consumeErrors=True)
        return results, bodies

    async def test_eight_simultaneous_uploads(self) -> None:
        """Eight threads storing the same filename with different bytes at once: exactly one
        succeeds, seven fail with Conflict, and the stored bytes, record and core metadata are
        all the winner's."""
        results, bodies = await self._race(overwrite=False)
        winners = [i for i, (ok, _) in enumerate(results) if ok]
        self.assertEqual(len(winners), 1)
        for ok, value in results:
            if not ok:
                value.trap(Conflict)
        (winner,) = winners
        listed = await self.storage.list()
        self.assertEqual([f.summary for f in listed], [f"#{winner}"])
        stream = await self.storage.open(listed[0])
        with stream:
            self.assertEqual(stream.read(), bodies[winner])
        self.assertEqual(await self.storage.open_metadata(listed[0]), f"meta {winner}".encode())
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.dir, "demo", "1.0"))),
            ["demo-1.0.tar.gz", "demo-1.0.tar.gz.meta", "demo-1.0.tar.gz.metadata"],
        )

    async def test_eight_simultaneous_overwrites(self) -> None:
        """Eight simultaneous overwrites all succeed and leave one complete file whose bytes
        match one of the uploads, with no temp files left."""
        results, bodies = await self._race(overwrite=True)
        self.assertTrue(all(ok for ok, _ in results))
        (listed,) = await self.storage.list()
        stream = await self.storage.open(listed)
        with stream:
            self.assertIn(stream.read(), bodies.values())
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.dir, "demo", "1.0"))),
            ["demo-1.0.tar.gz", "demo-1.0.tar.gz.meta", "demo-1.0.tar.gz.metadata"],
        )


class ArchiveRecoveryTests(_FolderTestCase):
    """A file without our record (pypicloud's folder, or a crash) is completed from its archive."""

    def test_pypicloud_wheel_gets_metadata_from_archive(self) -> None:
        """A bare wheel in pypicloud's layout is listed with its summary, Requires-Python and
        PEP 658 metadata, and the record and ``.metadata`` are written for next time."""
        from tests.distfactory import make_wheel

        filename, data = make_wheel(
            "My_Pkg",
            "2.0",
            summary="From the archive",
            requires_python=">=3.9",
            requires_dist=["attrs>=20"],
        )
        folder = os.path.join(self.dir, "My_Pkg", "2.0")
        os.makedirs(folder)
        with open(os.path.join(folder, filename), "wb") as f:
            f.write(data)
        [found] = self.successResultOf(self.storage.list())
        self.assertEqual(found.name, "my-pkg")
        self.assertEqual(found.summary, "From the archive")
        self.assertEqual(found.requires_python, ">=3.9")
        self.assertEqual(found.sha256, hashlib.sha256(data).hexdigest())
        self.assertEqual(list(found.metadata["requires_dist"]), ["attrs>=20"])
        metadata = self.successResultOf(self.storage.open_metadata(found))
        self.assertIn(b"Summary: From the archive", metadata)
        self.assertEqual(found.metadata_sha256, hashlib.sha256(metadata).hexdigest())
        self.assertTrue(os.path.exists(os.path.join(folder, filename + ".meta")))
        [again] = self.successResultOf(self.storage.list())
        self.assertEqual(again, found)

    def test_unreadable_archive_still_listed(self) -> None:
        """A file that is not a valid archive is still listed, with what the file itself says."""
        folder = os.path.join(self.dir, "broken", "1.0")
        os.makedirs(folder)
        with open(os.path.join(folder, "broken-1.0.tar.gz"), "wb") as f:
            f.write(b"not a tarball")
        [found] = self.successResultOf(self.storage.list())
        self.assertEqual((found.name, found.version, found.size), ("broken", "1.0", 13))
        self.assertIsNone(found.metadata_sha256)


class MissingRootTests(_FolderTestCase):
    """A storage folder that went away is reported, never silently recreated."""

    def test_put_refused_when_root_missing(self) -> None:
        """With ``storage.dir`` renamed away, put fails with BackendUnavailable and creates
        nothing; once it is back, put works again."""
        moved = self.dir + ".away"
        os.rename(self.dir, moved)
        file = package_file(b"data", name="gone", version="1.0")
        self.failureResultOf(self.put(file, b"data"), BackendUnavailable)
        self.assertFalse(os.path.exists(self.dir))
        os.rename(moved, self.dir)
        self.successResultOf(self.put(file, b"data"))
