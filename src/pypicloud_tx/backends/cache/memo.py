"""Keeping a cache's answers in this process until the cache says it changed.

Project pages are read far more often than packages are uploaded.  :class:`MemoizedCache`
wraps any :class:`~pypicloud_tx.interfaces.ICache` whose ``version_token()`` is cheap (a SQLite
file's state, say): reads are answered from memory while the token is unchanged, so a page
costs no query and no thread hop.  A write through any process changes the token; a write
through this process also clears the memory at once.  Caches that answer ``None`` are passed
through untouched.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from pypicloud_tx.domain.models import PackageFile, ProjectSummary
from pypicloud_tx.interfaces import ICache, Progress

_MISSING = object()


@implementer(ICache)
class MemoizedCache:
    """An :class:`ICache` that remembers read results while the inner cache is unchanged."""

    def __init__(self, inner: ICache, max_entries: int = 50_000) -> None:
        self.inner = inner
        self._max = max_entries
        self._token: object = _MISSING
        self._memo: OrderedDict[Hashable, Any] = OrderedDict()

    def __getattr__(self, name: str) -> Any:
        # start()/stop() and anything else a backend offers beyond the interface.
        return getattr(self.inner, name)

    async def _read(self, key: Hashable, call: Callable[[], Deferred[Any]]) -> Any:
        token = await self.inner.version_token()
        if token is None:
            return await call()
        if token != self._token:
            self._memo.clear()
            self._token = token
        found = self._memo.get(key, _MISSING)
        if found is not _MISSING:
            return found
        value = await call()
        if self._token == token:
            self._memo[key] = value
            if len(self._memo) > self._max:
                self._memo.popitem(last=False)
        return value

    async def _write(self, call: Callable[[], Deferred[Any]]) -> Any:
        try:
            return await call()
        finally:
            self._memo.clear()
            self._token = _MISSING

    def fetch(self, filename: str) -> Deferred[PackageFile | None]:
        return Deferred.fromCoroutine(
            self._read(("fetch", filename), lambda: self.inner.fetch(filename))
        )

    def all(self, name: str) -> Deferred[list[PackageFile]]:
        return Deferred.fromCoroutine(self._read(("all", name), lambda: self.inner.all(name)))

    def distinct(self) -> Deferred[list[str]]:
        return Deferred.fromCoroutine(self._read(("distinct",), self.inner.distinct))

    def summary(self) -> Deferred[list[ProjectSummary]]:
        return Deferred.fromCoroutine(self._read(("summary",), self.inner.summary))

    def search(
        self, criteria: Mapping[str, Sequence[str]], query_type: str
    ) -> Deferred[list[PackageFile]]:
        return self.inner.search(criteria, query_type)

    def save(self, file: PackageFile) -> Deferred[None]:
        return Deferred.fromCoroutine(self._write(lambda: self.inner.save(file)))

    def delete(self, file: PackageFile) -> Deferred[None]:
        return Deferred.fromCoroutine(self._write(lambda: self.inner.delete(file)))

    def clear_all(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._write(self.inner.clear_all))

    def reload_from_storage(
        self, files: Sequence[PackageFile], graceful: bool, progress: Progress | None = None
    ) -> Deferred[None]:
        return Deferred.fromCoroutine(
            self._write(lambda: self.inner.reload_from_storage(files, graceful, progress))
        )

    def version_token(self) -> Deferred[object | None]:
        return self.inner.version_token()

    def check_health(self) -> Deferred[tuple[bool, str]]:
        return self.inner.check_health()
