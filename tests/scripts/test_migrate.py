"""``pypicloud-tx migrate`` / ``ppc-migrate``: copying a storage into another.

The copy itself is tested on :class:`IStorage` objects (real file storages in temp folders,
synchronous threads, a fake clock); the command is tested as a real process between two file
storages, with real wheels and sdists.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from typing import IO, Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.application import build_backends, start_backends, stop_backends
from pypicloud_tx.backends.storage.files import FileStorage
from pypicloud_tx.backends.storage.memory import MemoryStorage
from pypicloud_tx.config.loader import load_settings
from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.errors import NotFound
from pypicloud_tx.runtime import Runtime
from pypicloud_tx.scripts.migrate import (
    HashingReader,
    Meter,
    MigrateOptions,
    Migration,
    Tally,
    human_size,
    make_plan,
)
from tests.backends.storage.conformance import package_file
from tests.distfactory import core_metadata, make_sdist, make_wheel
from tests.gcsbuckets import fakegcs
from tests.gcsbuckets import new_bucket_name as gcs_bucket_name
from tests.gcsbuckets import raw_client as gcs_client
from tests.gcsbuckets import remove_bucket as remove_gcs_bucket
from tests.s3buckets import new_bucket_name as s3_bucket_name
from tests.s3buckets import raw_client as s3_client
from tests.s3buckets import remove_bucket as remove_s3_bucket
from tests.s3buckets import seaweed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)

DISTS = [
    make_wheel("alpha", "1.0", summary="first"),
    make_wheel("alpha", "1.1", summary="second"),
    make_sdist("beta_pkg", "2.0", summary="an sdist"),
    make_wheel("gamma", "0.1", extra_files={"gamma/data.bin": os.urandom(200_000)}),
]


def file_storage(directory: str) -> FileStorage:
    storage = FileStorage(directory, Runtime.synchronous().threads("storage", 1))
    storage._start()
    return storage


def fill(storage: Any, dists: list[tuple[str, bytes]], **fields: Any) -> list[PackageFile]:
    """Store each ``(filename, data)`` with a full record and PEP 658 metadata."""
    files = []
    for filename, data in dists:
        meta = core_metadata(filename.split("-")[0], filename.split("-")[1].split(".tar")[0])
        file = package_file(
            data,
            filename,
            metadata_sha256=hashlib.sha256(meta).hexdigest(),
            uploader="alice",
            summary=f"summary of {filename}",
            metadata={"requires_dist": ["attrs>=23"]},
            **fields,
        )
        result: Deferred[None] = storage.put(file, io.BytesIO(data), meta, False)
        result.addErrback(lambda f: f.raiseException())
        files.append(file)
    return files


def read(storage: Any, file: PackageFile) -> bytes:
    out: list[bytes] = []
    storage.open(file).addCallback(lambda stream: out.append(stream.read()))
    return out[0]


class _Output:
    """sys.stdout and sys.stderr captured for the test."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        case.patch(sys, "stdout", self.out)
        case.patch(sys, "stderr", self.err)


class VanishingStorage(FileStorage):
    """A file storage from which the files of project ``gone`` are deleted (by someone else)
    right after they were listed."""

    def list(self) -> Deferred[list[PackageFile]]:
        def remove(files: list[PackageFile]) -> list[PackageFile]:
            for file in files:
                if file.name == "gone":
                    os.unlink(self._locate(file)[1])
            return files

        return super().list().addCallback(remove)


class FailingReadStream(io.RawIOBase):
    """A stream whose second read fails with EIO, as a failing disk does."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise OSError(errno.EIO, "Input/output error")
        return self._data[:1000]


class FailingReadStorage(MemoryStorage):
    """A memory storage whose file ``broken*`` cannot be read to the end."""

    def open(self, file: PackageFile) -> Deferred[IO[bytes]]:
        if file.filename.startswith("broken"):
            return succeed(FailingReadStream(b"x" * file.size))  # type: ignore[arg-type]
        return super().open(file)


class MigrationTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.output = _Output(self)

    def migrate(self, source: Any, destination: Any, **options: Any) -> Tally:
        meter = Meter(self.clock, every=5.0, tty=False)
        migration = Migration(source, destination, meter, self.clock, MigrateOptions(**options))
        return self.successResultOf(Deferred.fromCoroutine(migration.run()))


class CopyTests(MigrationTestCase):
    """Copying between two real file storages."""

    def test_copies_files_records_and_metadata(self) -> None:
        """Every file arrives with the same bytes, the same record (yank state, uploader,
        extra metadata) and its PEP 658 metadata; the tally counts them and their bytes."""
        source = file_storage(os.path.join(self.root, "old"))
        files = fill(source, DISTS[:2])
        yanked = fill(source, DISTS[2:], yanked="broken build")
        files += yanked
        destination = file_storage(os.path.join(self.root, "new"))

        tally = self.migrate(source, destination)

        self.assertEqual((tally.copied, tally.skipped, tally.conflicts, tally.failed), (4, 0, 0, 0))
        self.assertEqual(tally.copied_bytes, sum(f.size for f in files))
        self.assertTrue(tally.ok)
        copied = {f.filename: f for f in self.successResultOf(destination.list())}
        self.assertEqual(sorted(copied), sorted(f.filename for f in files))
        for file in files:
            self.assertEqual(copied[file.filename].to_record(), file.to_record())
            self.assertEqual(read(destination, file), read(source, file))
            self.assertEqual(
                self.successResultOf(destination.open_metadata(file)),
                self.successResultOf(source.open_metadata(file)),
            )
        self.assertEqual(copied[yanked[0].filename].yanked, "broken build")
        self.assertTrue(tally.summary(False).startswith("copied 4 files / "), tally.summary(False))

    def test_memory_to_file(self) -> None:
        """Only IStorage is used: a memory storage copies into a file storage."""
        source = MemoryStorage()
        files = fill(source, DISTS)
        destination = file_storage(os.path.join(self.root, "new"))
        tally = self.migrate(source, destination, jobs=2)
        self.assertEqual(tally.copied, 4)
        for file in files:
            self.assertEqual(read(destination, file), read(source, file))

    def test_run_twice(self) -> None:
        """A second run copies nothing: every file is skipped, nothing fails."""
        source = file_storage(os.path.join(self.root, "old"))
        fill(source, DISTS)
        destination = file_storage(os.path.join(self.root, "new"))
        self.migrate(source, destination)
        tally = self.migrate(source, destination)
        self.assertEqual((tally.copied, tally.skipped, tally.failed), (0, 4, 0))
        self.assertTrue(tally.ok)

    def test_resume(self) -> None:
        """After a partial run (two files already in the destination), the next run copies
        only the rest."""
        source = file_storage(os.path.join(self.root, "old"))
        fill(source, DISTS)
        destination = file_storage(os.path.join(self.root, "new"))
        fill(destination, DISTS[:2])
        tally = self.migrate(source, destination, verbose=True)
        self.assertEqual((tally.copied, tally.skipped), (2, 2))
        lines = self.output.out.getvalue().splitlines()
        self.assertEqual(
            sorted(lines),
            sorted(
                [f"skip {name} (the destination holds the same bytes)" for name, _ in DISTS[:2]]
                + [f"copied {name} ({human_size(len(data))})" for name, data in DISTS[2:]]
            ),
        )
        self.assertEqual(len(self.successResultOf(destination.list())), 4)

    def test_conflict(self) -> None:
        """A destination file with other bytes is a conflict: reported on stderr, counted,
        left as it was; the other files are still copied."""
        source = file_storage(os.path.join(self.root, "old"))
        fill(source, DISTS)
        destination = file_storage(os.path.join(self.root, "new"))
        other = make_wheel("alpha", "1.0", summary="a different build")
        [theirs] = fill(destination, [other])

        tally = self.migrate(source, destination)

        self.assertEqual((tally.copied, tally.conflicts, tally.failed), (3, 1, 0))
        self.assertFalse(tally.ok)
        self.assertEqual(read(destination, theirs), other[1])
        err = self.output.err.getvalue()
        self.assertIn("conflict: alpha-1.0-py3-none-any.whl: the destination holds other", err)
        self.assertIn("--overwrite", err)

    def test_overwrite(self) -> None:
        """With --overwrite the source's bytes and record replace the different file."""
        source = file_storage(os.path.join(self.root, "old"))
        [ours] = fill(source, DISTS[:1])
        destination = file_storage(os.path.join(self.root, "new"))
        fill(destination, [make_wheel("alpha", "1.0", summary="a different build")])

        tally = self.migrate(source, destination, overwrite=True)

        self.assertEqual((tally.copied, tally.replaced, tally.conflicts), (1, 1, 0))
        self.assertEqual(read(destination, ours), DISTS[0][1])
        [stored] = self.successResultOf(destination.list())
        self.assertEqual(stored.sha256, ours.sha256)

    def test_yank_state_follows(self) -> None:
        """A file yanked in the source after it was copied has its destination record
        updated on the next run, without copying the bytes again."""
        source = file_storage(os.path.join(self.root, "old"))
        [file] = fill(source, DISTS[:1])
        destination = file_storage(os.path.join(self.root, "new"))
        self.migrate(source, destination)
        self.successResultOf(source.save_record(attrs.evolve(file, yanked="security issue")))

        tally = self.migrate(source, destination)

        self.assertEqual((tally.copied, tally.skipped, tally.updated), (0, 1, 1))
        [stored] = self.successResultOf(destination.list())
        self.assertEqual(stored.yanked, "security issue")

    def test_dry_run(self) -> None:
        """A dry run lists on stdout what it would copy and changes nothing."""
        source = file_storage(os.path.join(self.root, "old"))
        fill(source, DISTS)
        destination = file_storage(os.path.join(self.root, "new"))
        fill(destination, DISTS[:1])

        tally = self.migrate(source, destination, dry_run=True)

        self.assertEqual((tally.copied, tally.skipped), (3, 1))
        self.assertEqual(
            self.output.out.getvalue().splitlines(),
            [f"copy {name} ({human_size(len(data))})" for name, data in DISTS[1:]],
        )
        self.assertEqual(len(self.successResultOf(destination.list())), 1)
        self.assertIn("dry run: would copy 3 files", tally.summary(True))


class MetadataTests(MigrationTestCase):
    """The PEP 658 file and the record's metadata_sha256 always agree in the destination."""

    def test_metadata_not_in_the_record(self) -> None:
        """A metadata file the record does not mention is copied, and the record says so."""
        source = MemoryStorage()
        filename, data = DISTS[0]
        file = package_file(data, filename)
        self.successResultOf(source.put(file, io.BytesIO(data), b"Metadata-Version: 2.1\n", False))
        destination = file_storage(os.path.join(self.root, "new"))
        self.migrate(source, destination)
        [stored] = self.successResultOf(destination.list())
        self.assertEqual(
            stored.metadata_sha256, hashlib.sha256(b"Metadata-Version: 2.1\n").hexdigest()
        )
        self.assertEqual(
            self.successResultOf(destination.open_metadata(stored)), b"Metadata-Version: 2.1\n"
        )

    def test_metadata_missing(self) -> None:
        """A record listing metadata the source lacks: copied without it, with a warning,
        and the destination's record does not advertise it."""
        source = MemoryStorage()
        filename, data = DISTS[0]
        file = package_file(data, filename, metadata_sha256="ab" * 32)
        self.successResultOf(source.put(file, io.BytesIO(data), None, False))
        destination = file_storage(os.path.join(self.root, "new"))
        tally = self.migrate(source, destination)
        self.assertEqual(tally.copied, 1)
        [stored] = self.successResultOf(destination.list())
        self.assertIsNone(stored.metadata_sha256)
        self.failureResultOf(destination.open_metadata(stored), NotFound)
        self.assertIn(
            f"warning: {filename}: its record lists core metadata", self.output.err.getvalue()
        )


class FailureTests(MigrationTestCase):
    """A file that cannot be copied is counted and named; the others are still copied."""

    def test_file_gone_after_listing(self) -> None:
        """A source file deleted after the listing fails (one stderr line naming it); the
        other files are copied."""
        source = VanishingStorage(
            os.path.join(self.root, "old"), Runtime.synchronous().threads("s", 1)
        )
        source._start()
        fill(source, [*DISTS, make_wheel("gone", "1.0")])
        destination = file_storage(os.path.join(self.root, "new"))

        tally = self.migrate(source, destination)

        self.assertEqual((tally.copied, tally.failed), (4, 1))
        self.assertFalse(tally.ok)
        errors = [line for line in self.output.err.getvalue().splitlines() if "error" in line]
        self.assertEqual(len(errors), 1, errors)
        self.assertTrue(errors[0].startswith("error: gone-1.0-py3-none-any.whl: "), errors)
        self.assertEqual(len(self.successResultOf(destination.list())), 4)

    def test_read_error(self) -> None:
        """A read that fails half-way: counted as failed, nothing partial is left in the
        destination, the other files are copied."""
        source = FailingReadStorage()
        fill(source, DISTS[:2])
        data = b"x" * 5000
        broken = package_file(data, "broken-1.0-py3-none-any.whl")
        self.successResultOf(source.put(broken, io.BytesIO(data), None, False))
        destination = file_storage(os.path.join(self.root, "new"))

        tally = self.migrate(source, destination)

        self.assertEqual((tally.copied, tally.failed), (2, 1))
        self.assertIn(
            "error: broken-1.0-py3-none-any.whl: cannot read it from the source: "
            "OSError: [Errno 5] Input/output error\n",
            self.output.err.getvalue(),
        )
        stored = {f.filename for f in self.successResultOf(destination.list())}
        self.assertEqual(stored, {name for name, _ in DISTS[:2]})
        leftovers = [
            name
            for _dir, _dirs, names in os.walk(os.path.join(self.root, "new"))
            for name in names
            if name.startswith(".tmp-")
        ]
        self.assertEqual(leftovers, [])

    def test_corrupt_source(self) -> None:
        """Bytes that do not match the source's recorded sha256 fail the file and are
        removed from the destination."""
        source = file_storage(os.path.join(self.root, "old"))
        [file] = fill(source, DISTS[:1])
        path = source._locate(file)[1]
        with open(path, "r+b") as f:
            f.seek(10)
            f.write(b"\0")
        destination = file_storage(os.path.join(self.root, "new"))

        tally = self.migrate(source, destination)

        self.assertEqual((tally.copied, tally.failed), (0, 1))
        self.assertIn(
            f"error: {file.filename}: the bytes read have sha256", self.output.err.getvalue()
        )
        self.assertEqual(self.successResultOf(destination.list()), [])

    def test_listing_fails(self) -> None:
        """A source that cannot be listed fails the whole run with its error."""

        class Down(MemoryStorage):
            def list(self) -> Deferred[list[PackageFile]]:
                from pypicloud_tx.errors import BackendUnavailable

                return fail(BackendUnavailable("The bucket cannot be reached."))

        meter = Meter(self.clock, every=5.0, tty=False)
        migration = Migration(Down(), MemoryStorage(), meter, self.clock)
        failure = self.failureResultOf(Deferred.fromCoroutine(migration.run()))
        self.assertEqual(failure.value.message, "The bucket cannot be reached.")


class PlanTests(SynchronousTestCase):
    """make_plan decides by filename and sha256."""

    def test_plan(self) -> None:
        """New files are copied, equal ones skipped, different ones conflict (or are
        replaced with overwrite), equal ones with another yank state are updated."""
        a, b, c, d = (package_file(data, name) for name, data in DISTS)
        other_c = attrs.evolve(c, sha256="0" * 64)
        yanked_d = attrs.evolve(d, yanked="")
        plan = make_plan([d, c, b, a], [b, other_c, yanked_d], overwrite=False)
        self.assertEqual(plan.copy, (a,))
        self.assertEqual(plan.skip, (b,))
        self.assertEqual(plan.conflicts, ((c, other_c),))
        self.assertEqual(plan.update, ((d, yanked_d),))
        replacing = make_plan([d, c, b, a], [b, other_c, yanked_d], overwrite=True)
        self.assertEqual((replacing.replace, replacing.conflicts), ((c,), ()))

    def test_human_size(self) -> None:
        """Sizes are shown in decimal units with one decimal."""
        self.assertEqual(
            [human_size(n) for n in (0, 999, 1000, 12_345_678, 5 * 10**12, 10**16)],
            ["0 B", "999 B", "1.0 kB", "12.3 MB", "5.0 TB", "10000.0 TB"],
        )


class HashingReaderTests(SynchronousTestCase):
    """The stream handed to put() counts and hashes what is read."""

    def test_sequential(self) -> None:
        """Reading in chunks gives the data, its count and its sha256."""
        data = os.urandom(10_000)
        reader = HashingReader(io.BytesIO(data))
        chunks = iter(lambda: reader.read(3000), b"")
        self.assertEqual(b"".join(chunks), data)
        self.assertEqual(reader.hashed, len(data))
        self.assertEqual(reader.sha256(), hashlib.sha256(data).hexdigest())

    def test_read_twice(self) -> None:
        """A reader that seeks back and reads again (to checksum first) is hashed once."""
        data = os.urandom(5000)
        reader = HashingReader(io.BytesIO(data))
        self.assertEqual(reader.read(2000), data[:2000])
        reader.seek(0)
        self.assertEqual(reader.tell(), 0)
        self.assertEqual(reader.read(), data)
        self.assertEqual(reader.sha256(), hashlib.sha256(data).hexdigest())
        buffer = bytearray(10)
        reader.seek(0)
        self.assertEqual(reader.readinto(buffer), 10)
        self.assertEqual(bytes(buffer), data[:10])
        self.assertEqual(reader.sha256(), hashlib.sha256(data).hexdigest())

    def test_skip_ahead(self) -> None:
        """Bytes skipped by a seek forward leave the digest unknown rather than wrong."""
        reader = HashingReader(io.BytesIO(b"0123456789"))
        reader.seek(5)
        reader.read()
        self.assertIsNone(reader.sha256())

    def test_close(self) -> None:
        """Closing it closes the source stream."""
        raw = io.BytesIO(b"data")
        HashingReader(raw).close()
        self.assertTrue(raw.closed)


class MeterTests(SynchronousTestCase):
    """Progress on stderr: plain lines when it is not a terminal, a bar when it is."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.output = _Output(self)

    def test_plain_lines(self) -> None:
        """Not a terminal: one line every `every` seconds with files, bytes and rate, no
        carriage returns or escape codes."""
        meter = Meter(self.clock, every=5.0, tty=False)
        meter.begin(3, 3_000_000)
        self.clock.advance(4)
        self.assertEqual(self.output.err.getvalue(), "")
        reader = HashingReader(io.BytesIO(b"x" * 1_000_000))
        meter.reading(reader)
        reader.read(500_000)
        self.clock.advance(1)
        meter.done(reader, 1_000_000)
        meter.say("error: a.whl: failed")
        self.clock.advance(5)
        meter.end()
        self.assertEqual(
            self.output.err.getvalue().splitlines(),
            [
                "... 0/3 files, 500.0 kB of 3.0 MB, 100.0 kB/s, 5.0s",
                "error: a.whl: failed",
                "... 1/3 files, 1.0 MB of 3.0 MB, 100.0 kB/s, 10.0s",
            ],
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bar(self) -> None:
        """A terminal: the bar is redrawn in place, cleared for messages, and left on its
        own line at the end."""
        meter = Meter(self.clock, every=5.0, tty=True)
        meter.begin(2, 2000)
        meter.done(None, 1000)
        self.clock.advance(1)
        meter.say("error: b.whl: failed")
        meter.done(None, 1000)
        meter.end()
        err = self.output.err.getvalue()
        self.assertTrue(err.startswith("\r[....................] 0/2 files, 0 B of 2.0 kB"), err)
        self.assertIn("\r[##########..........] 1/2 files, 1.0 kB of 2.0 kB, 1.0 kB/s", err)
        self.assertIn("\r\x1b[Kerror: b.whl: failed\n", err)
        self.assertTrue(
            err.endswith("\r[####################] 2/2 files, 2.0 kB of 2.0 kB, 2.0 kB/s\x1b[K\n"),
            err,
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])


# -- the command, as a real process ------------------------------------------------------------


def run(*args: str, command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPC_")}
    env["PYTHONPATH"] = ROOT
    return subprocess.run(
        command or [os.path.join(BIN, "pypicloud-tx"), "migrate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


class CommandTests(SynchronousTestCase):
    """pypicloud-tx migrate OLD.conf NEW.conf between two file storages."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.old = self.write(
            "old.ini",
            "[app:main]\nuse = egg:pypicloud\npypi.storage = file\n"
            "storage.dir = %(here)s/old-packages\n"
            # neither config's cache is used: this one could not even be opened
            "pypi.db = sql\ndb.url = sqlite:////nonexistent/folder/db.sqlite\n",
        )
        self.new = self.write(
            "new.ini",
            "[pypicloud]\npypi.storage = file\nstorage.dir = %(here)s/new-packages\n"
            "db.url = sqlite:///%(here)s/new.sqlite\n",
        )
        self.source = file_storage(os.path.join(self.root, "old-packages"))
        self.files = fill(self.source, DISTS)
        self.destination = file_storage(os.path.join(self.root, "new-packages"))

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def stored(self) -> set[str]:
        return {f.filename for f in self.successResultOf(self.destination.list())}

    def test_migrate(self) -> None:
        """Every file is copied; stdout is empty; stderr has progress lines (no terminal
        codes), the summary and the rebuild hint; exit 0; the destination cache is untouched."""
        result = run(self.old, self.new)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertEqual(self.stored(), {name for name, _ in DISTS})
        total = human_size(sum(len(data) for _, data in DISTS))
        self.assertIn("the source holds 4 files", result.stderr)
        self.assertIn(f"copying 4 files ({total}), 4 at a time", result.stderr)
        self.assertRegex(
            result.stderr, rf"copied 4 files / {total}, skipped 0, conflicts 0, failed 0, in "
        )
        self.assertIn(f"pypicloud-tx rebuild {self.new}", result.stderr)
        self.assertNotIn("\r", result.stderr)
        self.assertNotIn("\x1b", result.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.root, "new.sqlite")))

    def test_resume_and_conflict(self) -> None:
        """A second run after a partial one copies the rest; a conflicting file makes the
        exit status 1 and is named on stderr; --overwrite then resolves it (exit 0)."""
        first = run(self.old, self.new)
        self.assertEqual(first.returncode, 0, first.stderr)
        for file in self.files[:2]:
            self.successResultOf(self.destination.delete(file))
        fill(self.destination, [make_wheel("alpha", "1.0", summary="rebuilt elsewhere")])

        second = run(self.old, self.new)
        self.assertEqual(second.returncode, 1, second.stderr)
        self.assertIn("copied 1 file / ", second.stderr)
        self.assertIn("skipped 2, conflicts 1, failed 0", second.stderr)
        self.assertIn("conflict: alpha-1.0-py3-none-any.whl: ", second.stderr)

        third = run("--overwrite", self.old, self.new)
        self.assertEqual(third.returncode, 0, third.stderr)
        self.assertIn("copied 1 file / ", third.stderr)
        self.assertIn("(1 replacing different bytes)", third.stderr)
        self.assertEqual(read(self.destination, self.files[0]), DISTS[0][1])

    def test_failure(self) -> None:
        """A source file whose bytes were damaged: one error line naming it, the others are
        copied, the summary counts it, exit 1."""
        path = self.source._locate(self.files[1])[1]
        with open(path, "r+b") as f:
            f.write(b"#")
        result = run(self.old, self.new)
        self.assertEqual(result.returncode, 1, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        self.assertEqual(len(errors), 1, result.stderr)
        self.assertIn(self.files[1].filename, errors[0])
        self.assertIn("copied 3 files", result.stderr)
        self.assertIn("failed 1", result.stderr)
        self.assertEqual(self.stored(), {f.filename for f in self.files} - {self.files[1].filename})

        with open(path, "r+b") as f:
            f.write(DISTS[1][1][:1])
        again = run(self.old, self.new)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("copied 1 file / ", again.stderr)
        self.assertIn("skipped 3, conflicts 0, failed 0", again.stderr)
        self.assertEqual(self.stored(), {f.filename for f in self.files})

    def test_dry_run(self) -> None:
        """--dry-run prints what it would copy on stdout, stores nothing, exit 0, and says
        how to rebuild the cache afterwards."""
        result = run("--dry-run", self.old, self.new)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            sorted(result.stdout.splitlines()),
            sorted(f"copy {name} ({human_size(len(data))})" for name, data in DISTS),
        )
        self.assertEqual(self.stored(), set())
        self.assertIn("dry run: would copy 4 files", result.stderr)
        self.assertIn(f"`pypicloud-tx rebuild {self.new}`", result.stderr)

    def test_rebuild(self) -> None:
        """--rebuild fills the destination's cache from its storage after copying."""
        result = run("--rebuild", "-j", "2", self.old, self.new)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("cache rebuilt: 4 files", result.stderr)
        self.assertNotIn("hint:", result.stderr)
        settings = load_settings(self.new, {})
        backends = build_backends(settings, Runtime.synchronous(settings=settings))
        self.successResultOf(Deferred.fromCoroutine(start_backends(backends)))
        self.addCleanup(lambda: Deferred.fromCoroutine(stop_backends(backends)))
        self.assertEqual(
            self.successResultOf(backends.cache.distinct()), ["alpha", "beta-pkg", "gamma"]
        )

    def test_ppc_migrate(self) -> None:
        """pypicloud's name, ppc-migrate, takes the two config files the same way."""
        result = run(command=[os.path.join(BIN, "ppc-migrate"), self.old, self.new])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(self.stored(), {name for name, _ in DISTS})
        verbose = run(command=[os.path.join(BIN, "ppc-migrate"), "-v", self.old, self.new])
        self.assertEqual(verbose.returncode, 0, verbose.stderr)
        self.assertEqual(len(verbose.stdout.splitlines()), 4)
        self.assertTrue(all(line.startswith("skip ") for line in verbose.stdout.splitlines()))

    def test_help(self) -> None:
        """--help of both names shows the two config files and the options; exit 0."""
        for command in (
            [os.path.join(BIN, "ppc-migrate"), "--help"],
            [os.path.join(BIN, "pypicloud-tx"), "migrate", "--help"],
        ):
            result = run(command=command)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("OLD.conf NEW.conf", result.stdout)
            for option in ("--dry-run", "--overwrite", "--rebuild", "--jobs", "--progress-every"):
                self.assertIn(option, result.stdout)
        top = run(command=[os.path.join(BIN, "pypicloud-tx"), "--help"])
        self.assertIn("migrate", top.stdout)

    def test_usage_errors(self) -> None:
        """A missing config file argument or a bad option value: usage, exit 2; a config
        file that does not exist: one line naming it, exit 2."""
        for args in ([self.old], ["-j", "0", self.old, self.new]):
            result = run(*args)
            self.assertEqual(result.returncode, 2)
            self.assertIn("usage:", result.stderr)
        missing = run(self.old, "/nonexistent/new.ini")
        self.assertEqual(missing.returncode, 2)
        self.assertEqual(missing.stderr.count("\n"), 1, missing.stderr)
        self.assertIn("/nonexistent/new.ini", missing.stderr)

    def test_same_storage(self) -> None:
        """Two configs naming the same storage: one error line, exit 2, nothing done."""
        same = self.write(
            "same.ini",
            "[pypicloud]\npypi.storage = file\nstorage.dir = %(here)s/old-packages\n"
            "pypi.db = memory\n",
        )
        result = run(self.old, same)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        self.assertIn("name the same storage", result.stderr)

    def test_terminal(self) -> None:
        """When stderr is a terminal a bar is drawn (and redrawn with a carriage return)."""
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PPC_")}
        process = subprocess.Popen(
            [os.path.join(BIN, "pypicloud-tx"), "migrate", self.old, self.new],
            stdout=subprocess.DEVNULL,
            stderr=slave,
            env=env,
        )
        os.close(slave)
        chunks: list[bytes] = []
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 1.0)
                if not ready:
                    if process.poll() is not None:
                        break
                    continue
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the other side is closed
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(master)
            status = process.wait(timeout=60)
        self.assertEqual(status, 0)
        err = b"".join(chunks).decode()
        self.assertIn("\r[####################] 4/4 files", err)
        self.assertIn("copied 4 files", err)


class RecordsTests(SynchronousTestCase):
    """The JSON sidecars written in the destination are the source's records."""

    def test_sidecar(self) -> None:
        """The destination's .meta file holds the source record (pypicloud layout)."""
        root = os.path.abspath(self.mktemp())
        _Output(self)
        source = file_storage(os.path.join(root, "old"))
        when = _dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=_dt.UTC)
        [file] = fill(source, DISTS[:1], upload_time=when)
        destination = file_storage(os.path.join(root, "new"))
        clock = Clock()
        migration = Migration(source, destination, Meter(clock, 5.0, tty=False), clock)
        self.successResultOf(Deferred.fromCoroutine(migration.run()))
        with open(destination._locate(file)[1] + ".meta") as f:
            record = json.load(f)
        self.assertEqual(record["upload_time"], when.isoformat())
        self.assertEqual(record["uploader"], "alice")


class ObjectStorageCommandTests(SynchronousTestCase):
    """pypicloud-tx migrate between a folder, S3 (SeaweedFS) and GCS (fake-gcs-server)."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        s3 = seaweed()
        gcs = fakegcs()
        self.s3_bucket = s3_bucket_name()
        self.gcs_bucket = gcs_bucket_name()
        self.addCleanup(remove_s3_bucket, s3_client(s3), self.s3_bucket)
        self.addCleanup(remove_gcs_bucket, gcs_client(gcs), self.gcs_bucket)
        db = "db.url = sqlite:///%(here)s/unused.sqlite\n"
        self.folder = self.write(
            "folder.ini", f"[pypicloud]\nstorage.dir = %(here)s/packages\n{db}"
        )
        self.s3 = self.write(
            "s3.ini",
            "[pypicloud]\npypi.storage = s3\n"
            + "".join(f"storage.{k} = {v}\n" for k, v in s3.items())
            + f"storage.bucket = {self.s3_bucket}\n{db}",
        )
        self.gcs = self.write(
            "gcs.ini",
            "[pypicloud]\npypi.storage = gcs\n"
            + "".join(f"storage.{k} = {v}\n" for k, v in gcs.items())
            # The emulator has no service-account key to sign redirect URLs with.
            + f"storage.bucket = {self.gcs_bucket}\nstorage.redirect_urls = false\n{db}",
        )
        self.back = self.write("back.ini", f"[pypicloud]\nstorage.dir = %(here)s/back\n{db}")
        self.files = fill(file_storage(os.path.join(self.root, "packages")), DISTS)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_folder_to_s3_to_gcs_and_back(self) -> None:
        """Packages travel folder → S3 → GCS → folder with their bytes, records and core
        metadata intact; a second run to S3 skips everything."""
        for source, destination in [
            (self.folder, self.s3),
            (self.s3, self.gcs),
            (self.gcs, self.back),
        ]:
            result = run(source, destination)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("copied 4 files", result.stderr)
        again = run(self.folder, self.s3)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("copied 0 files", again.stderr)
        self.assertIn("skipped 4", again.stderr)
        back = file_storage(os.path.join(self.root, "back"))
        source = file_storage(os.path.join(self.root, "packages"))
        arrived = {f.filename: f for f in self.successResultOf(back.list())}
        self.assertEqual(set(arrived), {f.filename for f in self.files})
        for original in self.files:
            copy = arrived[original.filename]
            self.assertEqual(read(back, copy), read(source, original))
            self.assertEqual(copy.sha256, original.sha256)
            self.assertEqual(copy.upload_time, original.upload_time)
            self.assertEqual(copy.summary, original.summary)
            if original.metadata_sha256:
                self.assertEqual(
                    self.successResultOf(back.open_metadata(copy)),
                    self.successResultOf(source.open_metadata(original)),
                )
