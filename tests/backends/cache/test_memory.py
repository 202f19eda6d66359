"""The in-memory cache against the ICache conformance suite."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.backends.cache.memory import MemoryCache
from pypicloud_tx.interfaces import ICache
from pypicloud_tx.runtime import Runtime

from .conformance import ICacheConformance


class MemoryCacheTests(ICacheConformance, SynchronousTestCase):
    """MemoryCache passes the shared suite."""

    def make_cache(self) -> ICache:
        return MemoryCache.from_config(MemoryCache.Options(), Runtime.synchronous())
