"""``pypicloud-tx migrate OLD.conf NEW.conf`` (also ``ppc-migrate``, as pypicloud named it):
copy every package file, with its record and PEP 658 metadata, from the storage of one
configuration to the storage of another.

Only :class:`~pypicloud_tx.interfaces.IStorage` is used, so any storage moves to any other
(file, S3, GCS).  The run is resumable: a file the destination already holds with the same
sha256 is skipped, one it holds with other bytes is a conflict left alone (``--overwrite``
replaces it).  Each file is streamed from ``open()`` into ``put()`` and its sha256 checked on the
way.  The destination's cache is not touched unless ``--rebuild`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from collections.abc import Iterable
from typing import IO, Any, cast

import attrs
from twisted.internet.defer import Deferred, gatherResults

from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.errors import Conflict, NotFound, PPCError
from pypicloud_tx.scripts.progress import ProgressLine, StageProgress, progress
from pypicloud_tx.scripts.runner import with_backends

#: How often the bar is redrawn on a terminal (seconds).
DEFAULT_JOBS = 4
MAX_JOBS = 64


def add_migrate_command(commands: Any) -> None:
    migrate = commands.add_parser(
        "migrate",
        help="copy every package file from one config's storage to another's",
        description="Copy every package file (with its record and PEP 658 metadata) from "
        "the storage of OLD.conf to the storage of NEW.conf, as pypicloud's ppc-migrate did. "
        "Files the destination already holds with the same sha256 are skipped, so an "
        "interrupted run can simply be run again; a file it holds with other bytes is a "
        "conflict and is left alone unless --overwrite is given.  Only the storages are "
        "used: the destination's cache is left alone (see --rebuild).  Exit status 0 when "
        "nothing failed or conflicted, 1 otherwise, 2 for a bad configuration.",
    )
    migrate.add_argument("config_from", metavar="OLD.conf", help="config file to copy from")
    migrate.add_argument("config_to", metavar="NEW.conf", help="config file to copy to")
    migrate.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="list what would be copied (on stdout) and change nothing",
    )
    migrate.add_argument(
        "--overwrite",
        action="store_true",
        help="replace destination files whose bytes differ (default: report a conflict)",
    )
    migrate.add_argument(
        "--rebuild",
        action="store_true",
        help="rebuild NEW.conf's cache from its storage afterwards (as `pypicloud-tx rebuild`)",
    )
    migrate.add_argument(
        "-j",
        "--jobs",
        type=_jobs,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"files copied at the same time (default {DEFAULT_JOBS})",
    )
    migrate.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print one line per file on stdout (also the skipped ones)",
    )
    migrate.add_argument(
        "--progress-every",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="when stderr is not a terminal, print a progress line this often (default 5)",
    )
    migrate.set_defaults(func=_migrate)


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {MAX_JOBS}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


# -- what to do -----------------------------------------------------------------------------


@attrs.frozen
class Plan:
    """What a migration does with each source file, decided from both listings.

    ``update`` and ``conflicts`` hold ``(source record, destination record)`` pairs.
    """

    copy: tuple[PackageFile, ...] = ()
    #: Held by the destination with other bytes, replaced because of ``--overwrite``.
    replace: tuple[PackageFile, ...] = ()
    #: Same bytes, but the yank state differs: the destination's record is updated.
    update: tuple[tuple[PackageFile, PackageFile], ...] = ()
    skip: tuple[PackageFile, ...] = ()
    conflicts: tuple[tuple[PackageFile, PackageFile], ...] = ()

    @property
    def transfers(self) -> tuple[PackageFile, ...]:
        return self.copy + self.replace


def make_plan(
    source: Iterable[PackageFile], destination: Iterable[PackageFile], overwrite: bool
) -> Plan:
    """Compare the listings by filename and sha256; files come out sorted by project,
    version and filename."""
    present = {f.filename: f for f in destination}
    copy: list[PackageFile] = []
    replace: list[PackageFile] = []
    update: list[tuple[PackageFile, PackageFile]] = []
    skip: list[PackageFile] = []
    conflicts: list[tuple[PackageFile, PackageFile]] = []
    for file in sorted(source, key=lambda f: (f.name, f.version, f.filename)):
        there = present.get(file.filename)
        if there is None:
            copy.append(file)
        elif there.sha256.lower() == file.sha256.lower():
            if there.yanked != file.yanked:
                update.append((file, there))
            else:
                skip.append(file)
        elif overwrite:
            replace.append(file)
        else:
            conflicts.append((file, there))
    return Plan(tuple(copy), tuple(replace), tuple(update), tuple(skip), tuple(conflicts))


@attrs.define
class Tally:
    """What a migration did (or, in a dry run, would do)."""

    copied: int = 0
    copied_bytes: int = 0
    replaced: int = 0
    skipped: int = 0
    updated: int = 0
    conflicts: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.conflicts or self.failed)

    def summary(self, dry_run: bool) -> str:
        copied = f"{count(self.copied, 'file')} / {human_size(self.copied_bytes)}"
        if self.replaced:
            copied += f" ({self.replaced} replacing different bytes)"
        skipped = str(self.skipped)
        if self.updated:
            skipped += f" ({self.updated} with their yank state updated)"
        if dry_run:
            return (
                f"dry run: would copy {copied}, skip {skipped}; conflicts {self.conflicts}; "
                "nothing was changed"
            )
        return (
            f"copied {copied}, skipped {skipped}, conflicts {self.conflicts}, "
            f"failed {self.failed}, in {self.seconds:.1f}s"
        )


def count(n: int, what: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{n} {what}{'' if n == 1 else 's'}"


def human_size(size: float) -> str:
    """``size`` bytes in decimal units: ``512 B``, ``12.3 kB``, ``4.0 MB``."""
    if size < 1000:
        return f"{int(size)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        size /= 1000
        if size < 1000 or unit == "TB":
            break
    return f"{size:.1f} {unit}"


# -- reading with a count -------------------------------------------------------------------


class HashingReader(io.RawIOBase):
    """The source stream as the destination's ``put()`` reads it: the bytes are counted
    (for progress) and hashed (to check them against the record) on their way.

    Reads may happen on a storage thread.  A destination that reads the stream twice (seeks
    back to compute a checksum first) is fine: bytes are hashed once, in order.  One that
    skips ahead leaves the digest unknown.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw
        self._sha256 = hashlib.sha256()
        self._position = 0
        #: Bytes hashed so far: every byte before this offset has been read, in order.
        self.hashed = 0
        self._gap = False
        #: What reading the source raised, if it did (the destination may report it as its
        #: own failure).
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        seekable = getattr(self._raw, "seekable", None)
        return bool(seekable()) if seekable is not None else False

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._position = self._raw.seek(offset, whence)
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        try:
            data = self._raw.read() if size is None or size < 0 else self._raw.read(size)
        except Exception as e:
            self.error = e
            raise
        self._take(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _take(self, data: bytes) -> None:
        start, self._position = self._position, self._position + len(data)
        if start > self.hashed:
            self._gap = True
        elif self._position > self.hashed:
            self._sha256.update(data[self.hashed - start :])
            self.hashed = self._position

    def sha256(self) -> str | None:
        """The hex sha256 of the bytes read, or ``None`` if they were not read in order."""
        return None if self._gap else self._sha256.hexdigest()

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


# -- progress --------------------------------------------------------------------------------


class Meter:
    """Progress of a migration on stderr (a :class:`ProgressLine`): files done/total, bytes
    and rate.  Messages go through :meth:`say`, which keeps them off the bar's line."""

    def __init__(self, clock: Any, every: float, tty: bool | None = None) -> None:
        self._clock = clock
        self._line = ProgressLine(clock, every, self._bar_status, tty)
        self._readers: set[HashingReader] = set()
        self._started = 0.0
        self._total_files = 0
        self._total_bytes = 0
        self._files_done = 0
        self._bytes_done = 0

    def begin(self, files: int, size: int) -> None:
        self._started = self._clock.seconds()
        self._total_files, self._total_bytes = files, size
        self._line.start()

    def end(self) -> None:
        self._line.stop()

    def reading(self, reader: HashingReader) -> None:
        self._readers.add(reader)

    def done(self, reader: HashingReader | None, size: int) -> None:
        """One transfer is over (copied, or failed: its bytes then count as done too, so the
        bar ends full)."""
        if reader is not None:
            self._readers.discard(reader)
        self._files_done += 1
        self._bytes_done += size

    def say(self, line: str, stdout: bool = False) -> None:
        """Print a line (on stdout or stderr) without mangling the bar."""
        self._line.say(line, stdout)

    def status(self) -> str:
        """``12/40 files, 3.1 MB of 10.0 MB, 1.2 MB/s``."""
        done = self._bytes_done + sum(r.hashed for r in list(self._readers))
        elapsed = self._clock.seconds() - self._started
        rate = f"{human_size(done / elapsed)}/s" if elapsed > 0 else "-"
        return (
            f"{self._files_done}/{self._total_files} files, {human_size(done)} of "
            f"{human_size(self._total_bytes)}, {rate}"
        )

    def _bar_status(self) -> tuple[float, str]:
        return self._files_done / (self._total_files or 1), self.status()


# -- the migration ---------------------------------------------------------------------------


@attrs.frozen
class MigrateOptions:
    dry_run: bool = False
    overwrite: bool = False
    jobs: int = DEFAULT_JOBS
    verbose: bool = False


@attrs.define
class Migration:
    """Copy what ``source`` holds into ``destination`` (two :class:`IStorage` objects)."""

    source: Any
    destination: Any
    meter: Meter
    clock: Any
    options: MigrateOptions = MigrateOptions()
    tally: Tally = attrs.field(factory=Tally)

    async def run(self) -> Tally:
        started = self.clock.seconds()
        files = await self.source.list()
        there = await self.destination.list()
        self.meter.say(
            f"the source holds {count(len(files), 'file')} "
            f"({human_size(sum(f.size for f in files))}), the destination {len(there)}"
        )
        if not files:
            self.meter.say(
                "warning: the source storage holds no files (check its storage.* options)"
            )
        plan = make_plan(files, there, self.options.overwrite)
        self.tally.skipped = len(plan.skip) + len(plan.update)
        for file in plan.skip:
            self._tell(f"skip {file.filename} (the destination holds the same bytes)", quiet=True)
        for file, other in plan.conflicts:
            self._conflict(file, other)
        if self.options.dry_run:
            self._dry_run(plan)
        else:
            for file, other in plan.update:
                await self._update(file, other)
            await self._transfer(plan)
        self.tally.seconds = self.clock.seconds() - started
        return self.tally

    def _tell(self, line: str, quiet: bool = False) -> None:
        """One line per file on stdout: always in a dry run, else with ``--verbose``."""
        if self.options.verbose or (self.options.dry_run and not quiet):
            self.meter.say(line, stdout=True)

    def _fail(self, file: PackageFile, why: str) -> None:
        self.tally.failed += 1
        self.meter.say(f"error: {file.filename}: {why}")

    def _conflict(self, file: PackageFile, other: PackageFile) -> None:
        self.tally.conflicts += 1
        self.meter.say(
            f"conflict: {file.filename}: the destination holds other bytes (sha256 "
            f"{other.sha256[:12]}..., the source {file.sha256[:12]}...); left alone "
            "(--overwrite replaces it)"
        )

    def _dry_run(self, plan: Plan) -> None:
        for file, _other in plan.update:
            self._tell(f"update {file.filename} (yank state)")
            self.tally.updated += 1
        for file in plan.copy:
            self._tell(f"copy {file.filename} ({human_size(file.size)})")
        for file in plan.replace:
            self._tell(f"overwrite {file.filename} ({human_size(file.size)})")
        self.tally.copied = len(plan.transfers)
        self.tally.replaced = len(plan.replace)
        self.tally.copied_bytes = sum(f.size for f in plan.transfers)

    async def _update(self, file: PackageFile, other: PackageFile) -> None:
        try:
            await self.destination.save_record(attrs.evolve(other, yanked=file.yanked))
        except Exception as e:
            self._fail(file, f"cannot update the yank state: {_why(e)}")
        else:
            self.tally.updated += 1
            self._tell(f"updated {file.filename} (yank state)")

    async def _transfer(self, plan: Plan) -> None:
        steps = [(f, False) for f in plan.copy] + [(f, True) for f in plan.replace]
        if not steps:
            return
        self.meter.say(
            f"copying {count(len(steps), 'file')} ({human_size(sum(f.size for f, _ in steps))}), "
            f"{min(self.options.jobs, len(steps))} at a time"
        )
        queue = iter(steps)

        async def worker() -> None:
            for file, replace in queue:  # one iterator shared by the workers
                await self._copy(file, replace)

        self.meter.begin(len(steps), sum(f.size for f, _ in steps))
        try:
            workers = min(self.options.jobs, len(steps))
            await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(workers)])
        finally:
            self.meter.end()

    async def _copy(self, file: PackageFile, replace: bool) -> None:
        reader: HashingReader | None = None
        try:
            record, core_metadata = await self._metadata(file)
            reader = HashingReader(await self.source.open(file))
            self.meter.reading(reader)
            await self.destination.put(record, cast(IO[bytes], reader), core_metadata, replace)
            digest = reader.sha256()
            if reader.hashed == file.size and digest is not None and digest != file.sha256.lower():
                await self.destination.delete(record)
                self._fail(
                    file,
                    f"the bytes read have sha256 {digest[:12]}... but the source's record says "
                    f"{file.sha256[:12]}...; the copy was removed",
                )
                return
        except Conflict:
            # Stored by someone else since the destination was listed.
            self.tally.conflicts += 1
            self.meter.say(
                f"conflict: {file.filename}: appeared in the destination during the copy; "
                "left alone (run again to compare it)"
            )
        except Exception as e:
            if reader is not None and reader.error is not None:
                self._fail(file, f"cannot read it from the source: {_why(reader.error)}")
            else:
                self._fail(file, _why(e))
        else:
            self.tally.copied += 1
            self.tally.copied_bytes += file.size
            self.tally.replaced += replace
            self._tell(f"copied {file.filename} ({human_size(file.size)})")
        finally:
            self.meter.done(reader, file.size)
            if reader is not None:
                reader.close()

    async def _metadata(self, file: PackageFile) -> tuple[PackageFile, bytes | None]:
        """The record to store and the PEP 658 metadata to store with it.

        The source is always asked (a record may lack ``metadata_sha256`` although the file
        exists, or list one that is gone); the stored record describes what is copied.
        """
        try:
            core_metadata = await self.source.open_metadata(file)
        except NotFound:
            if file.metadata_sha256:
                self.meter.say(
                    f"warning: {file.filename}: its record lists core metadata that the "
                    "source does not hold; copied without it"
                )
            return attrs.evolve(file, metadata_sha256=None), None
        digest = hashlib.sha256(core_metadata).hexdigest()
        return attrs.evolve(file, metadata_sha256=digest), core_metadata


def _why(error: BaseException) -> str:
    if isinstance(error, PPCError):
        return error.message
    return f"{type(error).__name__}: {error}".rstrip(": ") or type(error).__name__


# -- the command -----------------------------------------------------------------------------


def _storage_only(settings: Any) -> Any:
    """``settings`` with in-memory cache and access backends: only the storage is used, and
    neither the cache nor the access backend of either config is started or touched."""
    from pypicloud_tx.backends.access.memory import MemoryAccessBackend
    from pypicloud_tx.backends.cache.memory import MemoryCache
    from pypicloud_tx.config.model import BackendChoice

    return attrs.evolve(
        settings,
        cache=BackendChoice("memory", MemoryCache, MemoryCache.Options()),
        access=BackendChoice("memory", MemoryAccessBackend, MemoryAccessBackend.Options()),
    )


def _migrate(args: argparse.Namespace) -> int:
    from pypicloud_tx.config.loader import load_settings

    old = load_settings(args.config_from)
    new = load_settings(args.config_to)
    if old.storage == new.storage and old.here == new.here:
        print(
            f"error: {args.config_from} and {args.config_to} name the same storage "
            "(check their storage.* options and PPC_STORAGE_* variables)",
            file=sys.stderr,
        )
        return 2
    rebuild = args.rebuild and not args.dry_run
    options = MigrateOptions(
        dry_run=args.dry_run, overwrite=args.overwrite, jobs=args.jobs, verbose=args.verbose
    )

    async def work(backends: Any, index: Any, reactor: Any) -> int:
        from pypicloud_tx.application import (
            ThreadPools,
            build_backends,
            start_backends,
            stop_backends,
        )
        from pypicloud_tx.runtime import Runtime

        pools = ThreadPools(reactor)
        pools.startService()
        runtime = Runtime(reactor=reactor, threads=pools, here=old.here, settings=old)
        source = build_backends(_storage_only(old), runtime)
        meter = Meter(reactor, args.progress_every)
        try:
            await start_backends(source)
            progress(
                f"from {args.config_from} ({old.storage.name}) to {args.config_to} "
                f"({new.storage.name}){' (dry run)' if args.dry_run else ''}"
            )
            migration = Migration(source.storage, backends.storage, meter, reactor, options)
            tally = await migration.run()
        finally:
            await stop_backends(source)
            await pools.stopService()
        progress(tally.summary(args.dry_run))
        if rebuild:
            progress(f"rebuilding the cache of {args.config_to} ({new.cache.name})")
            report = StageProgress(reactor, args.progress_every, "files")
            try:
                count = await index.rebuild(report)
            finally:
                report.finish()
            progress(f"cache rebuilt: {count} files")
        elif args.dry_run:
            progress(
                f"hint: after a real run, rebuild the destination's cache with "
                f"`pypicloud-tx rebuild {args.config_to}` (or add --rebuild)"
            )
        elif tally.copied or tally.updated:
            progress(
                f"hint: the destination's cache does not know these files yet: run "
                f"`pypicloud-tx rebuild {args.config_to}` (a server starting with an empty "
                "cache rebuilds it itself)"
            )
        return 0 if tally.ok else 1

    return with_backends(new if rebuild else _storage_only(new), work)
