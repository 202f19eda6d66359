"""The package index: upload, list, download, delete and yank, with permissions applied."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import IO, Any, Protocol

import attrs
from twisted.logger import Logger

from pypicloud_tx.backends._threads import RunBlocking
from pypicloud_tx.domain import dists
from pypicloud_tx.domain.models import UPSTREAM, Identity, PackageFile, ProjectSummary, Upload
from pypicloud_tx.domain.names import canonical, parse_filename, sort_key, versions_equal
from pypicloud_tx.domain.policy import READ, WRITE, Policy
from pypicloud_tx.domain.upstream_pages import UpstreamFile
from pypicloud_tx.errors import (
    Conflict,
    Forbidden,
    InvalidUpload,
    NotFound,
    Unauthenticated,
)
from pypicloud_tx.interfaces import IAccessBackend, ICache, IStorage

log = Logger()

#: Form fields that describe the upload itself rather than the project.
_PROTOCOL_FIELDS = {
    ":action",
    "protocol_version",
    "content",
    "name",
    "version",
    "filetype",
    "pyversion",
    "md5_digest",
    "sha256_digest",
    "blake2_256_digest",
    "gpg_signature",
    "attestations",
    "comment",
}
#: Form fields that may repeat (everything else keeps its first value).
_LIST_FIELDS = {
    "classifiers",
    "requires_dist",
    "provides_dist",
    "obsoletes_dist",
    "requires_external",
    "project_urls",
    "provides_extra",
    "platform",
    "supported_platform",
    "dynamic",
    "license_file",
    "license_files",
}


_MAX_ORDERED = 50_000
#: The cache lock taken by the one process that rebuilds an empty cache, and for how long.
REBUILD_LOCK = "rebuild"
REBUILD_LOCK_SECONDS = 600.0


@attrs.frozen
class IndexOptions:
    """The settings the index rules need."""

    allow_overwrite: bool = False
    allow_delete: bool = True
    graceful_reload: bool = False


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class RebuildReport(Protocol):
    """Who follows a cache rebuild (``scripts/progress.py``'s ``StageProgress``)."""

    def stage(self, name: str) -> None:
        """A stage begins: ``reading storage``, then ``writing the cache``."""

    def update(self, done: int, total: int) -> None:
        """How far the stage got (a :data:`~pypicloud_tx.interfaces.Progress`: maybe called
        on a worker thread)."""

    def finish(self) -> None:
        """The rebuild is done."""


class PackageIndex:
    """Every package operation, as the web layer and the command line call them."""

    def __init__(
        self,
        storage: IStorage,
        cache: ICache,
        access: IAccessBackend,
        policy: Policy,
        run_blocking: RunBlocking,
        options: IndexOptions = IndexOptions(),
        now: Callable[[], dt.datetime] = _now,
    ) -> None:
        self.storage = storage
        self.cache = cache
        self.access = access
        self.policy = policy
        self._run_blocking = run_blocking
        self._options = options
        self._now = now
        self._ordered: dict[str, tuple[list[PackageFile], list[PackageFile]]] = {}

    # -- permissions ---------------------------------------------------------------------

    async def _acls(self) -> Mapping[str, Mapping[str, frozenset[str]]]:
        return await self.access.package_acls()

    async def permissions(self, caller: Identity, name: str) -> frozenset[str]:
        """What ``caller`` may do with project ``name`` (canonical)."""
        return self.policy.permissions(caller, (await self._acls()).get(name), name)

    async def require(self, caller: Identity, name: str, perm: str) -> None:
        """Return if ``caller`` has ``perm`` on ``name`` (canonical).

        :raises Unauthenticated: for an anonymous caller without it.
        :raises Forbidden: for a logged-in caller without it.
        """
        await self._require(caller, name, perm)

    async def _require(self, caller: Identity, name: str, perm: str) -> None:
        if perm in await self.permissions(caller, name):
            return
        verb = "read" if perm == READ else "upload to or change"
        if not caller.authenticated:
            raise Unauthenticated(f"Log in to {verb} {name}.")
        raise Forbidden(f"User {caller.username} may not {verb} {name}.")

    # -- reading -------------------------------------------------------------------------

    async def project_names(self, caller: Identity) -> list[str]:
        """Canonical names of every project the caller may read, sorted."""
        names = await self.cache.distinct()
        return self.policy.readable(caller, names, await self._acls())

    async def project_files(self, caller: Identity, name: str) -> list[PackageFile]:
        """The files of one project, oldest version first (a list the caller must not change:
        while nothing changes, every caller gets the same one).

        :raises NotFound: when the project has no files.
        :raises Unauthenticated: / :raises Forbidden: when the caller may not read it.
        """
        files = await self.stored_files(name)
        if not files:
            raise NotFound(f"There is no project named {name} on this index.")
        await self._require(caller, name, READ)
        return files

    async def stored_files(self, name: str) -> list[PackageFile]:
        """Every file held for canonical ``name``, oldest version first, maybe none; no
        permission check (for the services: the fallback decides on it).  The caller must
        not change the list."""
        files = await self.cache.all(name)
        if not files:
            return files
        # A memoising cache hands back the very same list until something changes: keep its
        # ordered copy, so a page is sorted once per change, not once per request.
        known = self._ordered.get(name)
        if known is not None and known[0] is files:
            return known[1]
        ordered = sorted(files, key=lambda f: (sort_key(f.version), f.filename))
        if len(self._ordered) >= _MAX_ORDERED:
            self._ordered.clear()
        self._ordered[name] = (files, ordered)
        return ordered

    async def stored_file(self, filename: str) -> PackageFile | None:
        """The record of ``filename`` if it is held here; no permission check."""
        return await self.cache.fetch(filename)

    async def file(self, caller: Identity, name: str, filename: str) -> PackageFile:
        """One file the caller may read.  ``name`` may be non-canonical."""
        found = await self.cache.fetch(filename)
        if found is None or found.name != canonical(name):
            raise NotFound(f"There is no file {filename} in project {canonical(name)}.")
        await self._require(caller, found.name, READ)
        return found

    async def open(self, file: PackageFile) -> IO[bytes]:
        return await self.storage.open(file)

    async def download_url(self, file: PackageFile) -> str | None:
        return await self.storage.download_url(file)

    async def core_metadata(self, file: PackageFile) -> bytes:
        if file.metadata_sha256 is None:
            raise NotFound(f"{file.filename} has no separate core metadata.")
        return await self.storage.open_metadata(file)

    async def summaries(self, caller: Identity) -> list[ProjectSummary]:
        readable = set(await self.project_names(caller))
        return [s for s in await self.cache.summary() if s.name in readable]

    async def search(
        self, caller: Identity, criteria: Mapping[str, Sequence[str]], query_type: str
    ) -> list[PackageFile]:
        """The newest matching file of each readable project."""
        if query_type not in ("and", "or"):
            raise InvalidUpload("The search operator must be 'and' or 'or'.")
        found = await self.cache.search(criteria, query_type)
        readable = set(await self.project_names(caller))
        newest: dict[str, PackageFile] = {}
        for f in found:
            if f.name in readable:
                best = newest.get(f.name)
                if best is None or sort_key(f.version) > sort_key(best.version):
                    newest[f.name] = f
        return [newest[n] for n in sorted(newest)]

    # -- writing -------------------------------------------------------------------------

    async def upload(
        self,
        caller: Identity,
        upload: Upload,
        expect_name: str | None = None,
        expect_filename: str | None = None,
    ) -> PackageFile:
        """Validate and store an upload; on any failure nothing is changed.

        :raises InvalidUpload: the upload is malformed or disagrees with itself.
        :raises Conflict: the file exists and overwriting is not allowed.
        """
        dist = parse_filename(upload.filename)
        if expect_filename is not None and expect_filename != upload.filename:
            raise InvalidUpload(
                f"The URL names {expect_filename} but the uploaded file is {upload.filename}."
            )
        if expect_name is not None and canonical(expect_name) != dist.name:
            raise InvalidUpload(
                f"The URL names project {expect_name} but the file is for {dist.name}."
            )
        await self._require(caller, dist.name, WRITE)
        _check_form(upload, dist.name, dist.version)
        if not self._options.allow_overwrite and await self.cache.fetch(upload.filename):
            raise _exists(upload.filename)
        info = await self._run_blocking(dists.inspect_distribution, upload.stream, upload.filename)
        dists.check_agrees(info, dist.name, dist.version)
        file = self._package_file(caller, upload, dist.name, dist.version, info)
        stored = await self._store(
            file, upload.stream, info.core_metadata, self._options.allow_overwrite
        )
        log.info("stored {filename} for {user}", filename=file.filename, user=caller.username)
        return stored

    async def store_upstream(self, download: Upload, source: UpstreamFile) -> PackageFile:
        """Store a file fetched (and checked) from the upstream index, as ``origin = upstream``,
        through the same path as uploads: storage first, then the cache.

        Its metadata is read from the archive as for uploads; an archive whose metadata
        cannot be read (some old sdists) is stored without it, since its bytes are exactly
        upstream's.

        :raises InvalidUpload: the filename is not a distribution's.
        :raises Conflict: a different file of that name is held here.
        """
        dist = parse_filename(download.filename)
        info: Any = None
        try:
            info = await self._run_blocking(
                dists.inspect_distribution, download.stream, download.filename
            )
            dists.check_agrees(info, dist.name, dist.version)
        except InvalidUpload as e:
            log.warn(
                "{filename} from upstream: {problem}; stored without its metadata",
                filename=download.filename,
                problem=e.message,
            )
            info = None
        core = info.core_metadata if info is not None else None
        fields = info.fields if info is not None else {}
        file = PackageFile(
            name=dist.name,
            version=dist.version,
            filename=download.filename,
            size=download.size,
            sha256=download.sha256,
            md5=download.md5,
            blake2b_256=download.blake2b_256,
            upload_time=source.upload_time or self._now(),
            display_name=(info.name if info is not None else "") or dist.name,
            summary=info.summary if info is not None else "",
            requires_python=source.requires_python
            or (info.requires_python if info is not None else None),
            metadata_sha256=hashlib.sha256(core).hexdigest() if core is not None else None,
            yanked=source.yanked,
            origin=UPSTREAM,
            metadata={k: v for k, v in fields.items() if v not in (None, "", [], ())},
        )
        return await self._store(file, download.stream, core, overwrite=False)

    async def _store(
        self, file: PackageFile, stream: IO[bytes], core: bytes | None, overwrite: bool
    ) -> PackageFile:
        """Put ``stream`` in storage as ``file``, then record it in the cache.

        :raises Conflict: a file of that name with other bytes is stored (and ``overwrite``
            is off).
        """
        try:
            await self.storage.put(file, stream, core, overwrite)
        except Conflict:
            if not await self._same_bytes_stored(file):
                raise _exists(file.filename) from None
            # The same bytes were stored before (a retried upload, or one interrupted
            # before the cache heard of it): record them and succeed.
            stored = await self.cache.fetch(file.filename)
            if stored is not None:
                return stored
        await self.cache.save(file)
        return file

    def _package_file(
        self, caller: Identity, upload: Upload, name: str, version: str, info: Any
    ) -> PackageFile:
        metadata: dict[str, Any] = {}
        for key, values in upload.fields.items():
            if key in _PROTOCOL_FIELDS or not values:
                continue
            metadata[key] = list(values) if key in _LIST_FIELDS else values[0]
        metadata.update({k: v for k, v in info.fields.items() if v not in (None, "", [], ())})
        core = info.core_metadata
        return PackageFile(
            name=name,
            version=version,
            filename=upload.filename,
            size=upload.size,
            sha256=upload.sha256,
            md5=upload.md5,
            blake2b_256=upload.blake2b_256,
            upload_time=self._now(),
            display_name=info.name or upload.first("name") or name,
            summary=info.summary or upload.first("summary") or "",
            requires_python=info.requires_python or upload.first("requires_python") or None,
            metadata_sha256=hashlib.sha256(core).hexdigest() if core is not None else None,
            uploader=caller.username,
            metadata=metadata,
        )

    async def _same_bytes_stored(self, file: PackageFile) -> bool:
        try:
            stream = await self.storage.open(file)
        except NotFound:
            return False
        return await self._run_blocking(_sha256_of, stream) == file.sha256

    async def delete(self, caller: Identity, name: str, filename: str) -> None:
        """Remove a file: from the cache first, so it is never listed but missing."""
        file = await self.file(caller, name, filename)
        await self._require(caller, file.name, WRITE)
        if not self._options.allow_delete:
            raise Forbidden("Deleting packages is disabled on this index (pypi.allow_delete).")
        await self.cache.delete(file)
        await self.storage.delete(file)
        log.info("deleted {filename} for {user}", filename=filename, user=caller.username)

    async def yank(
        self, caller: Identity, name: str, filename: str, reason: str | None
    ) -> PackageFile:
        """Yank (``reason`` a string, maybe empty) or unyank (``reason`` None) a file."""
        file = await self.file(caller, name, filename)
        await self._require(caller, file.name, WRITE)
        changed = attrs.evolve(file, yanked=reason)
        await self.storage.save_record(changed)
        await self.cache.save(changed)
        return changed

    # -- maintenance ---------------------------------------------------------------------

    async def rebuild(self, report: RebuildReport | None = None) -> int:
        """Make the cache hold exactly what storage holds; returns the number of files.

        ``report`` hears each stage begin and how far it got (for the command line)."""
        if report is not None:
            report.stage("reading storage")
        files = await self.storage.list(report.update if report else None)
        if report is not None:
            report.stage("writing the cache")
        await self.cache.reload_from_storage(
            files, self._options.graceful_reload, report.update if report else None
        )
        if report is not None:
            report.finish()
        return len(files)

    async def reload_if_needed(
        self,
        sleep: Callable[[float], Awaitable[object]] | None = None,
        lock_seconds: float = REBUILD_LOCK_SECONDS,
        poll_seconds: float = 1.0,
    ) -> bool:
        """Rebuild the cache from storage when it is empty; whether this process did.

        Several processes starting on one empty cache rebuild it once: the one that takes the
        cache's ``rebuild`` lock does; the others wait (polling with ``sleep``) until the cache
        is filled or the lock is free again (its holder finished with nothing to add, or died
        and its lock expired), then take their turn if it is still empty.
        """
        while True:
            if await self.cache.distinct():
                return False
            token = await self.cache.acquire_lock(REBUILD_LOCK, lock_seconds)
            if token is not None:
                break
            if sleep is None:
                return False
            log.info("another process is rebuilding the cache; waiting for it")
            await sleep(poll_seconds)
        try:
            if await self.cache.distinct():
                return False  # filled while we waited for the lock
            count = await self.rebuild()
            log.info("rebuilt the empty cache from storage: {count} files", count=count)
            return True
        finally:
            await self.cache.release_lock(REBUILD_LOCK, token)

    async def health(self) -> dict[str, tuple[bool, str]]:
        """``{"storage"|"cache"|"access": (ok, message)}``."""
        return {k: (ok, message) for k, (ok, message, _) in (await self.timed_health()).items()}

    async def timed_health(
        self, clock: Callable[[], float] = time.perf_counter
    ) -> dict[str, tuple[bool, str, float]]:
        """``{"storage"|"cache"|"access": (ok, message, seconds the check took)}``."""
        report = {}
        for label, backend in (
            ("storage", self.storage),
            ("cache", self.cache),
            ("access", self.access),
        ):
            started = clock()
            try:
                ok, message = await backend.check_health()
            except Exception as e:  # a health check must report, never raise
                ok, message = False, str(e) or type(e).__name__
            report[label] = (ok, message, clock() - started)
        return report


def _exists(filename: str) -> Conflict:
    return Conflict(
        f"File {filename} already exists on this index; files cannot be overwritten. "
        "Upload a new version instead."
    )


def _check_form(upload: Upload, name: str, version: str) -> None:
    """The form's name, version and digests agree with the file."""
    form_name = upload.first("name")
    if form_name and canonical(form_name) != name:
        raise InvalidUpload(f"The form says project {form_name!r} but the file is for {name}.")
    form_version = upload.first("version")
    if form_version and not versions_equal(form_version, version):
        raise InvalidUpload(f"The form says version {form_version!r} but the file is {version}.")
    for field, actual in (
        ("sha256_digest", upload.sha256),
        ("blake2_256_digest", upload.blake2b_256),
        ("md5_digest", upload.md5),
    ):
        expected = upload.first(field)
        if expected and not dists.digest_matches(expected, actual):
            raise InvalidUpload(
                f"The {field} sent does not match the uploaded file; it may be corrupt."
            )


def _sha256_of(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    try:
        for block in iter(lambda: stream.read(1 << 16), b""):
            digest.update(block)
    finally:
        stream.close()
    return digest.hexdigest()
