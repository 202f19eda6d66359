"""An :class:`~pypicloud_tx.interfaces.ICache` in a dict, for tests and dev (``pypi.db = memory``).

Everything is lost when the process stops, and processes do not share it: never use it behind a
load balancer.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from pypicloud_tx.backends.cache._reload import (
    SummaryRow,
    latest_per_filename,
    matches,
    search_terms,
    summarize,
)
from pypicloud_tx.domain.models import PackageFile, ProjectSummary
from pypicloud_tx.interfaces import ICache, Progress
from pypicloud_tx.runtime import Runtime


@implementer(ICache)
@attrs.define
class MemoryCache:
    """Records keyed by filename, in this process's memory."""

    @attrs.frozen
    class Options:
        """The memory cache takes no options."""

    _files: dict[str, PackageFile] = attrs.field(factory=dict, alias="files")
    _locks: dict[str, tuple[str, float]] = attrs.field(factory=dict, alias="locks")
    _clock: Callable[[], float] = attrs.field(default=time.monotonic, alias="clock")

    @classmethod
    def from_config(cls, options: MemoryCache.Options, runtime: Runtime) -> MemoryCache:
        return cls()

    def save(self, file: PackageFile) -> Deferred[None]:
        self._files[file.filename] = file
        return succeed(None)

    def delete(self, file: PackageFile) -> Deferred[None]:
        self._files.pop(file.filename, None)
        return succeed(None)

    def fetch(self, filename: str) -> Deferred[PackageFile | None]:
        return succeed(self._files.get(filename))

    def all(self, name: str) -> Deferred[list[PackageFile]]:
        return succeed([f for f in self._files.values() if f.name == name])

    def distinct(self) -> Deferred[list[str]]:
        return succeed(sorted({f.name for f in self._files.values()}))

    def summary(self) -> Deferred[list[ProjectSummary]]:
        rows = (
            SummaryRow(f.name, f.version, f.upload_time, f.summary) for f in self._files.values()
        )
        return succeed(summarize(rows))

    def search(
        self, criteria: Mapping[str, Sequence[str]], query_type: str
    ) -> Deferred[list[PackageFile]]:
        try:
            terms = search_terms(criteria, query_type)
        except ValueError:
            return fail()
        return succeed(
            [f for f in self._files.values() if matches(f.name, f.summary, terms, query_type)]
        )

    def version_token(self) -> Deferred[object | None]:
        # Reads are already in memory: nothing to gain from memoising them.
        return succeed(None)

    def clear_all(self) -> Deferred[None]:
        self._files.clear()
        return succeed(None)

    def reload_from_storage(
        self, files: Sequence[PackageFile], graceful: bool, progress: Progress | None = None
    ) -> Deferred[None]:
        # One assignment either way: readers on the reactor thread never see a partial state.
        self._files = latest_per_filename(files)
        if progress is not None:
            progress(len(self._files), len(self._files))
        return succeed(None)

    def acquire_lock(self, name: str, seconds: float) -> Deferred[str | None]:
        now = self._clock()
        held = self._locks.get(name)
        if held is not None and held[1] > now:
            return succeed(None)
        token = secrets.token_hex(16)
        self._locks[name] = (token, now + seconds)
        return succeed(token)

    def release_lock(self, name: str, token: str) -> Deferred[bool]:
        held = self._locks.get(name)
        if held is None or held[0] != token or held[1] <= self._clock():
            return succeed(False)
        del self._locks[name]
        return succeed(True)

    def check_health(self) -> Deferred[tuple[bool, str]]:
        return succeed((True, ""))
