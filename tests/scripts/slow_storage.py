"""A memory storage whose listing takes a while, to see ``rebuild`` report progress."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from pypicloud_tx.backends.storage.memory import MemoryStorage
from pypicloud_tx.domain.models import PackageFile

DELAY = 0.5


class SlowStorage(MemoryStorage):
    """Lists nothing, after :data:`DELAY` seconds on the reactor's clock."""

    reactor: Any = None

    @classmethod
    def from_config(cls, options: MemoryStorage.Options, runtime: Any) -> SlowStorage:
        storage = cls()
        storage.reactor = runtime.reactor
        return storage

    def list(self) -> Deferred[list[PackageFile]]:
        return deferLater(self.reactor, DELAY, list)
