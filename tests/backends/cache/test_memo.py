"""MemoizedCache: reads come from memory until the inner cache's token changes."""

from __future__ import annotations

import datetime as _dt
import os

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pypicloud_tx.backends.cache.memo import MemoizedCache
from pypicloud_tx.backends.cache.memory import MemoryCache
from pypicloud_tx.backends.cache.sql import SQLCache
from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.interfaces import ICache
from pypicloud_tx.runtime import Runtime

from .conformance import ICacheConformance


def _file(name: str, version: str) -> PackageFile:
    return PackageFile(
        name=name,
        version=version,
        filename=f"{name}-{version}.tar.gz",
        size=1,
        sha256="0" * 64,
        upload_time=_dt.datetime(2024, 1, 1, tzinfo=_dt.UTC),
    )


class CountingCache(MemoryCache):
    """A memory cache that counts reads and has a settable token."""

    token: object = 1
    reads = 0

    def all(self, name: str) -> Deferred[list[PackageFile]]:
        self.reads += 1
        return super().all(name)

    def version_token(self) -> Deferred[object | None]:
        return succeed(self.token)


class MemoizedConformanceTests(ICacheConformance, SynchronousTestCase):
    """The wrapper keeps every ICache promise (over a SQLite file, whose token is real)."""

    def make_cache(self) -> ICache:
        folder = self.mktemp()
        os.makedirs(folder)
        inner = SQLCache.from_config(
            SQLCache.Options(url=f"sqlite:///{folder}/db.sqlite"), Runtime.synchronous()
        )
        self.successResultOf(inner.start())
        self.addCleanup(inner.stop)
        return MemoizedCache(inner)


class MemoTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.inner = CountingCache()
        self.cache = MemoizedCache(self.inner)

    def test_interface(self) -> None:
        """The wrapper provides ICache."""
        self.assertTrue(verifyObject(ICache, self.cache))

    def test_reads_memoised_while_token_unchanged(self) -> None:
        """A second read with the same token does not reach the inner cache."""
        self.successResultOf(self.inner.save(_file("a", "1")))
        first = self.successResultOf(self.cache.all("a"))
        second = self.successResultOf(self.cache.all("a"))
        self.assertEqual(first, second)
        self.assertEqual(self.inner.reads, 1)

    def test_token_change_invalidates(self) -> None:
        """A write by another process (the token changes) is seen by the next read."""
        self.successResultOf(self.cache.all("a"))
        self.successResultOf(self.inner.save(_file("a", "1")))  # behind the wrapper's back
        self.inner.token = 2
        self.assertEqual(len(self.successResultOf(self.cache.all("a"))), 1)

    def test_own_write_invalidates_without_token_change(self) -> None:
        """A write through the wrapper is seen at once, even if the token has not moved yet."""
        self.successResultOf(self.cache.all("a"))
        self.successResultOf(self.cache.save(_file("a", "1")))
        self.assertEqual(len(self.successResultOf(self.cache.all("a"))), 1)

    def test_no_token_means_no_memo(self) -> None:
        """An inner cache that cannot tell (token None) is asked every time."""
        self.inner.token = None
        self.successResultOf(self.cache.all("a"))
        self.successResultOf(self.cache.all("a"))
        self.assertEqual(self.inner.reads, 2)

    def test_sqlite_token_sees_other_process_writes(self) -> None:
        """Two SQLCache objects on one SQLite file (two processes): a write through one
        changes the other's token, so its memoised reads are refreshed."""
        folder = self.mktemp()
        os.makedirs(folder)
        url = f"sqlite:///{folder}/db.sqlite"
        a = SQLCache.from_config(SQLCache.Options(url=url), Runtime.synchronous())
        b = SQLCache.from_config(SQLCache.Options(url=url), Runtime.synchronous())
        self.successResultOf(a.start())
        self.successResultOf(b.start())
        memo_b = MemoizedCache(b)
        self.assertEqual(self.successResultOf(memo_b.distinct()), [])
        self.successResultOf(a.save(_file("new", "1")))
        self.assertEqual(self.successResultOf(memo_b.distinct()), ["new"])
        self.successResultOf(a.stop())
        self.successResultOf(b.stop())
