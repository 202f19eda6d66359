"""The upstream fallback (``pypi.fallback``): what a project page, a download and
``POST /api/fetch`` do when this index does not hold what was asked for.

The decisions follow the table in ``docs/fallback.md`` (pypicloud's fallback behaviour, with
the dependency-confusion gaps closed):

* A project with at least one file uploaded here is **private**: it is never merged with
  upstream, never redirected upstream and never pulled through, unless
  ``pypi.always_show_upstream`` asks for the merge.  A project whose every file was cached
  from upstream is a mirror of upstream and shows upstream's whole list.
* Names in ``pypi.disallow_fallback`` are never looked up upstream (as with ``none``).
* ``redirect`` answers 302 to the upstream project page; ``cache`` lists upstream's files with
  links to this server, which fetches a file on its first download, checks its hashes, stores
  it through :class:`~pypicloud_tx.services.index.PackageIndex` (``origin = upstream``) and
  serves it.  Only callers in ``pypi.cache_update`` make the server fetch.

Upstream pages are kept in memory: fresh for ``pypi.fallback_cache_seconds``, then revalidated
with their ETag; when upstream fails, the last good page is used for up to
``pypi.fallback_max_stale`` seconds.  Concurrent requests for the same page or file share one
upstream exchange.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from pypicloud_tx.domain.models import UPSTREAM, Identity, PackageFile
from pypicloud_tx.domain.names import canonical, parse_filename
from pypicloud_tx.domain.policy import READ, group_principal, principals
from pypicloud_tx.domain.upstream_pages import (
    UpstreamFile,
    UpstreamProject,
    choose_files,
    parse_requirement,
)
from pypicloud_tx.errors import Forbidden, InvalidUpload, NotFound, Unauthenticated, UpstreamError
from pypicloud_tx.interfaces import IUpstream
from pypicloud_tx.services.index import PackageIndex

log = Logger()
T = TypeVar("T")

NONE = "none"
REDIRECT = "redirect"
CACHE = "cache"
MODES = (REDIRECT, CACHE, NONE)
#: Upstream pages kept in memory at most (least recently used ones are forgotten).
MAX_PAGES = 5_000
#: Requirement lines one ``POST /api/fetch`` may carry.
MAX_REQUIREMENTS = 200


@attrs.frozen
class FallbackOptions:
    """The settings the fallback rules need (see ``docs/fallback.md``)."""

    mode: str = NONE
    always_show_upstream: bool = False
    #: Canonical names never looked up upstream.
    disallow: frozenset[str] = frozenset()
    #: Groups (as in the config: ``authenticated``, ``everyone``, a group name) whose members
    #: may make the server fetch from upstream.
    cache_update: tuple[str, ...] = ("authenticated",)
    #: Where project pages are redirected to and read from (no trailing slash).
    simple_url: str = "https://pypi.org/simple"
    #: Upstream's root for ``/pypi/<name>/json`` redirects (None: no such redirect).
    base_url: str | None = "https://pypi.org"
    cache_seconds: float = 60.0
    max_stale: float = 24 * 3600.0
    max_file_size: int = 1024**3


@attrs.frozen
class Redirect:
    """Send the client to ``url`` (302)."""

    url: str


@attrs.frozen(eq=False)
class ProjectPage:
    """What a project page lists: ``files`` held here and ``upstream`` files not held here.

    ``direct`` says whether the upstream files link straight to upstream (``redirect``, or a
    caller who may not fill the cache) or to this server, which caches them on download.
    Compared by identity: the same object means the same page (and the same ETag).
    """

    name: str
    files: Sequence[PackageFile]
    upstream: Sequence[UpstreamFile] = ()
    direct: bool = False


@attrs.frozen
class FetchResult:
    """The outcome of one requirement line of ``POST /api/fetch``.

    ``status``: ``cached`` (fetched now), ``exists`` (held already), ``not_found``,
    ``refused`` (a private or disallowed name), ``forbidden``, ``invalid`` or ``error``.
    """

    requirement: str
    status: str
    files: tuple[PackageFile, ...] = ()
    message: str = ""


class SingleFlight:
    """Runs one piece of work per key at a time; callers asking for a running key wait for
    its result instead of starting their own.  A caller that gives up (its Deferred is
    cancelled) does not cancel the work the others wait for."""

    def __init__(self) -> None:
        self._running: dict[Hashable, list[Deferred[Any]]] = {}

    def __len__(self) -> int:
        return len(self._running)

    def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> Deferred[T]:
        waiters = self._running.get(key)
        start = waiters is None
        if waiters is None:
            waiters = self._running[key] = []
        mine: Deferred[T] = Deferred(lambda d: _forget(waiters, d))
        waiters.append(mine)
        if start:
            flight: Deferred[T] = ensureDeferred(work())  # type: ignore[arg-type]
            flight.addBoth(self._land, key)
        return mine

    def _land(self, result: Any, key: Hashable) -> None:
        for waiter in self._running.pop(key, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


def _forget(waiters: list[Deferred[Any]], d: Deferred[Any]) -> None:
    if d in waiters:
        waiters.remove(d)


@attrs.define
class _Snapshot:
    """The last good answer of upstream for one project (``None``: it has no such project)."""

    project: UpstreamProject | None
    etag: str | None
    #: When upstream last answered (the page's age is counted from here).
    fetched: float
    #: When upstream was last asked, answered or not (fresh for ``cache_seconds`` after).
    checked: float


class Fallback:
    """The fallback rules in front of :class:`PackageIndex`.

    :param index: the package index (local files, permissions, storing).
    :param upstream: the upstream client, or ``None`` when ``mode`` is ``none``.
    :param clock: gives the time pages were fetched (``seconds()``).
    """

    def __init__(
        self,
        index: PackageIndex,
        upstream: IUpstream | None,
        options: FallbackOptions,
        clock: Any,
    ) -> None:
        if upstream is None and options.mode != NONE:
            raise ValueError("an upstream client is needed unless pypi.fallback = none")
        self._index = index
        self._upstream = upstream
        self.options = options
        self._clock = clock
        self._cache_update = frozenset(group_principal(g) for g in options.cache_update)
        self._snapshots: OrderedDict[str, _Snapshot] = OrderedDict()
        self._flights = SingleFlight()
        self._pages: dict[str, tuple[object, object, bool, ProjectPage]] = {}

    @classmethod
    def disabled(cls, index: PackageIndex) -> Fallback:
        """A fallback that never looks upstream (``pypi.fallback = none``)."""
        return cls(index, None, FallbackOptions(), None)

    @property
    def mode(self) -> str:
        return self.options.mode

    def stop(self) -> Deferred[None]:
        """Close the upstream client's connections."""
        if self._upstream is None:
            return succeed(None)
        return self._upstream.stop()

    # -- who may do what ---------------------------------------------------------------------

    def can_update(self, caller: Identity) -> bool:
        """Whether ``caller`` may make the server fetch from upstream (``pypi.cache_update``)."""
        return caller.is_admin or bool(principals(caller) & self._cache_update)

    def _looks_upstream(self, name: str) -> bool:
        return self.mode != NONE and name not in self.options.disallow

    @staticmethod
    def _is_private(files: Sequence[PackageFile]) -> bool:
        return any(f.origin != UPSTREAM for f in files)

    def project_url(self, name: str) -> str:
        """The upstream project page of canonical ``name``, for a redirect."""
        return f"{self.options.simple_url}/{name}/"

    # -- project pages -----------------------------------------------------------------------

    async def project_page(self, caller: Identity, name: str) -> ProjectPage | Redirect:
        """The page of canonical ``name`` for ``caller``, or a redirect upstream.

        :raises NotFound: / :raises Unauthenticated: / :raises Forbidden: / :raises
            UpstreamError: as the table in ``docs/fallback.md`` says.
        """
        if not self._looks_upstream(name):
            return self._page(name, await self._index.project_files(caller, name))
        local = await self._index.stored_files(name)
        may_read = READ in await self._index.permissions(caller, name)
        if self._is_private(local):
            if not may_read:
                await self._index.require(caller, name, READ)
            if not self.options.always_show_upstream:
                return self._page(name, local)
            direct = self.mode == REDIRECT or not self.can_update(caller)
            return await self._merged(name, local, direct)
        if self.mode == REDIRECT:
            return Redirect(self.project_url(name))
        # pypi.fallback = cache, and nothing was uploaded here under this name.
        if not may_read:
            if local:
                await self._index.require(caller, name, READ)
            self._not_here(caller, name)
        if self.can_update(caller):
            return await self._merged(name, local, direct=False)
        if self.options.always_show_upstream:
            if local:
                return await self._merged(name, local, direct=True)
            if not caller.authenticated:
                self._not_here(caller, name)
            return Redirect(self.project_url(name))
        if local:
            return self._page(name, local)
        self._not_here(caller, name)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _not_here(caller: Identity, name: str) -> None:
        """401 for an anonymous caller (pip then sends credentials), else 404."""
        if not caller.authenticated:
            raise Unauthenticated(f"Log in to fetch {name} from the upstream index.")
        raise NotFound(f"There is no project named {name} on this index.")

    def _page(
        self,
        name: str,
        files: Sequence[PackageFile],
        upstream: UpstreamProject | None = None,
        direct: bool = False,
    ) -> ProjectPage:
        """A :class:`ProjectPage`, the very same object while its inputs are the same."""
        known = self._pages.get(name)
        if known is not None and known[0] is files and known[1] is upstream and known[2] == direct:
            return known[3]
        extra: Sequence[UpstreamFile] = ()
        if upstream is not None:
            held = {f.filename for f in files}
            extra = tuple(f for f in upstream.files if f.filename not in held)
        page = ProjectPage(name, files, extra, direct)
        if len(self._pages) >= MAX_PAGES:
            self._pages.clear()
        self._pages[name] = (files, upstream, direct, page)
        return page

    async def _merged(self, name: str, local: Sequence[PackageFile], direct: bool) -> ProjectPage:
        """``local`` plus upstream's files.  When upstream fails (and has no usable last good
        page) the local files are served alone; with none, the error is raised."""
        try:
            project = await self.upstream_project(name)
        except NotFound:
            if local:
                return self._page(name, local)
            raise
        except UpstreamError:
            if local:
                log.warn(
                    "upstream failed; serving the {count} local files of {name} alone",
                    count=len(local),
                    name=name,
                )
                return self._page(name, local)
            raise
        if not local and not project.files:
            raise NotFound(f"The upstream index lists no usable files for {name}.")
        return self._page(name, local, project, direct)

    # -- upstream pages ----------------------------------------------------------------------

    async def upstream_project(self, name: str) -> UpstreamProject:
        """Upstream's page of canonical ``name``: from memory while fresh, else revalidated.

        :raises NotFound: upstream has no such project.
        :raises UpstreamError: upstream failed and no last good page is recent enough.
        """
        snapshot = self._snapshots.get(name)
        now = float(self._clock.seconds())
        if (
            snapshot is not None
            and now - snapshot.checked < self.options.cache_seconds
            and now - snapshot.fetched <= self.options.max_stale
        ):
            self._snapshots.move_to_end(name)
        else:
            snapshot = await self._flights.run(("page", name), lambda: self._refresh(name))
        if snapshot.project is None:
            raise NotFound(f"There is no project named {name} here nor on the upstream index.")
        return snapshot.project

    def _age(self, snapshot: _Snapshot) -> float:
        return float(self._clock.seconds()) - snapshot.fetched

    async def _refresh(self, name: str) -> _Snapshot:
        assert self._upstream is not None
        old = self._snapshots.get(name)
        try:
            fetched = await self._upstream.project(name, old.etag if old else None)
        except NotFound:
            now = float(self._clock.seconds())
            snapshot = _Snapshot(None, None, now, now)
        except UpstreamError as e:
            if old is not None and self._age(old) <= self.options.max_stale:
                # Serve the last good page, and let upstream rest until it is due again
                # (rather than make every request wait for the timeout).
                log.warn(
                    "upstream failed ({problem}); serving its page of {name} from {age:.0f} s ago",
                    problem=e.message,
                    name=name,
                    age=self._age(old),
                )
                old.checked = float(self._clock.seconds())
                return old
            raise
        else:
            now = float(self._clock.seconds())
            if fetched.project is None and old is not None:  # 304 Not Modified
                snapshot = _Snapshot(old.project, old.etag, now, now)
            else:
                snapshot = _Snapshot(fetched.project, fetched.etag, now, now)
        self._snapshots[name] = snapshot
        self._snapshots.move_to_end(name)
        while len(self._snapshots) > MAX_PAGES:
            self._snapshots.popitem(last=False)
        return snapshot

    # -- downloads ---------------------------------------------------------------------------

    async def file(self, caller: Identity, name: str, filename: str) -> PackageFile:
        """A file held here, or (``cache`` mode) fetched from upstream, stored and returned.

        :raises NotFound: / :raises Unauthenticated: / :raises Forbidden: /
            :raises UpstreamError: (nothing is stored then).
        """
        try:
            return await self._index.file(caller, name, filename)
        except NotFound:
            if self.mode != CACHE:
                raise
        source = await self._pullable(caller, canonical(name), filename)
        return await self._pull(source)

    async def core_metadata(self, caller: Identity, name: str, filename: str) -> tuple[bytes, str]:
        """``(PEP 658 metadata, its sha256)`` of a file held here or listed upstream."""
        try:
            file = await self._index.file(caller, name, filename)
        except NotFound:
            if self.mode != CACHE:
                raise
        else:
            data = await self._index.core_metadata(file)
            return data, file.metadata_sha256 or hashlib.sha256(data).hexdigest()
        source = await self._pullable(caller, canonical(name), filename)
        if source.core_metadata is False:
            raise NotFound(f"{filename} has no separate core metadata.")
        upstream = self._upstream
        assert upstream is not None
        data = await self._flights.run(
            ("metadata", filename), lambda: upstream.core_metadata(source)
        )
        return data, hashlib.sha256(data).hexdigest()

    async def _pullable(self, caller: Identity, name: str, filename: str) -> UpstreamFile:
        """The upstream file ``filename`` of ``name`` if ``caller`` may have it fetched."""
        try:
            dist = parse_filename(filename)
        except InvalidUpload:
            raise NotFound(f"There is no file {filename} in project {name}.") from None
        if dist.name != name or name in self.options.disallow:
            raise NotFound(f"There is no file {filename} in project {name}.")
        await self._index.require(caller, name, READ)
        local = await self._index.stored_files(name)
        if self._is_private(local) and not self.options.always_show_upstream:
            raise NotFound(
                f"There is no file {filename} in project {name}; {name} is a private project "
                "here, so its files are never fetched from upstream."
            )
        if not self.can_update(caller):
            if not caller.authenticated:
                raise Unauthenticated(f"Log in to fetch {filename} from the upstream index.")
            raise Forbidden(
                f"User {caller.username} may not fetch files from the upstream index "
                "(pypi.cache_update)."
            )
        source = (await self.upstream_project(name)).file(filename)
        if source is None:
            raise NotFound(f"There is no file {filename} in project {name} upstream.")
        return source

    def _pull(self, source: UpstreamFile) -> Deferred[PackageFile]:
        """Fetch, check and store ``source`` once, however many callers ask at once."""
        return self._flights.run(("file", source.filename), lambda: self._store(source))

    async def _store(self, source: UpstreamFile) -> PackageFile:
        held = await self._index.stored_file(source.filename)
        if held is not None:  # another process (or an earlier flight) cached it
            return held
        upstream = self._upstream
        assert upstream is not None
        download = await upstream.download(source, self.options.max_file_size)
        try:
            stored = await self._index.store_upstream(download, source)
        finally:
            download.stream.close()
        log.info(
            "cached {filename} from upstream ({size} bytes)",
            filename=stored.filename,
            size=stored.size,
        )
        return stored

    # -- /pypi/<name>/json -------------------------------------------------------------------

    async def json_files(
        self, caller: Identity, name: str, version: str | None = None
    ) -> list[PackageFile] | Redirect:
        """The files for ``/pypi/<name>[/<version>]/json``, or a redirect to upstream's JSON
        API (``redirect`` mode, for a project not held here)."""
        try:
            return await self._index.project_files(caller, name)
        except NotFound:
            if self.mode == REDIRECT and self._looks_upstream(name) and self.options.base_url:
                path = "json" if version is None else f"{quote(version, safe='')}/json"
                return Redirect(f"{self.options.base_url}/pypi/{name}/{path}")
            raise

    # -- POST /api/fetch ---------------------------------------------------------------------

    async def fetch(
        self, caller: Identity, requirements: str, wheel: bool = True, prerelease: bool = False
    ) -> list[FetchResult]:
        """Resolve each requirement line against upstream and cache the chosen files.

        :raises InvalidUpload: when the mode is not ``cache`` or there are too many lines.
        :raises Unauthenticated: / :raises Forbidden: for a caller not in
            ``pypi.cache_update``.
        """
        if self.mode != CACHE:
            raise InvalidUpload("POST /api/fetch needs pypi.fallback = cache on this index.")
        if not self.can_update(caller):
            if not caller.authenticated:
                raise Unauthenticated("Log in to fetch packages from the upstream index.")
            raise Forbidden(
                f"User {caller.username} may not fetch from the upstream index (pypi.cache_update)."
            )
        lines = [line for line in requirements.splitlines() if line.strip()]
        if len(lines) > MAX_REQUIREMENTS:
            raise InvalidUpload(f"Send at most {MAX_REQUIREMENTS} requirements at once.")
        results = []
        for line in lines:
            result = await self._fetch_one(caller, line.strip(), wheel, prerelease)
            if result is not None:
                results.append(result)
        return results

    async def _fetch_one(
        self, caller: Identity, line: str, wheel: bool, prerelease: bool
    ) -> FetchResult | None:
        try:
            requirement = parse_requirement(line)
        except InvalidUpload as e:
            return FetchResult(line, "invalid", message=e.message)
        if requirement is None:
            return None
        name = canonical(requirement.name)
        if name in self.options.disallow:
            return FetchResult(line, "refused", message=f"{name} is in pypi.disallow_fallback.")
        if READ not in await self._index.permissions(caller, name):
            return FetchResult(line, "forbidden", message=f"You may not read {name}.")
        local = await self._index.stored_files(name)
        if self._is_private(local) and not self.options.always_show_upstream:
            return FetchResult(
                line,
                "refused",
                message=f"{name} is a private project here; it is never fetched from upstream.",
            )
        try:
            project = await self.upstream_project(name)
        except NotFound as e:
            return FetchResult(line, "not_found", message=e.message)
        except UpstreamError as e:
            return FetchResult(line, "error", message=e.message)
        chosen = choose_files(project, requirement, wheel, prerelease)
        if not chosen:
            return FetchResult(
                line, "not_found", message=f"No version of {name} upstream matches {line!r}."
            )
        files = []
        fetched = False
        for source in chosen:
            held = await self._index.stored_file(source.filename)
            if held is not None:
                files.append(held)
                continue
            try:
                files.append(await self._pull(source))
            except UpstreamError as e:
                return FetchResult(line, "error", tuple(files), e.message)
            fetched = True
        return FetchResult(line, "cached" if fetched else "exists", tuple(files))
