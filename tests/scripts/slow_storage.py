"""A memory storage whose listing takes a while, to see ``rebuild`` report progress."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from pypicloud_tx.backends.storage.memory import MemoryStorage
from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.interfaces import Progress

DELAY = 0.5
STEPS = 4


class SlowStorage(MemoryStorage):
    """Lists nothing, after :data:`DELAY` seconds on the reactor's clock, telling ``progress``
    it read 1, 2, ... :data:`STEPS` of :data:`STEPS` files on the way."""

    reactor: Any = None

    @classmethod
    def from_config(cls, options: MemoryStorage.Options, runtime: Any) -> SlowStorage:
        storage = cls()
        storage.reactor = runtime.reactor
        return storage

    def list(self, progress: Progress | None = None) -> Deferred[list[PackageFile]]:
        async def slowly() -> list[PackageFile]:
            for step in range(1, STEPS + 1):
                await deferLater(self.reactor, DELAY / STEPS, lambda: None)
                if progress is not None:
                    progress(step, STEPS)
            return []

        return Deferred.fromCoroutine(slowly())
