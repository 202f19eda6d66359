"""Browser sessions in this process's memory: tests, and a deployment of one process."""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from pypicloud_tx.domain.models import SessionRecord
from pypicloud_tx.interfaces import ISessionStore


@implementer(ISessionStore)
class MemorySessionStore:
    """Records in this process's memory: for tests, and for a deployment of one process."""

    def __init__(self) -> None:
        self._records: dict[str, SessionRecord] = {}

    def add(self, record: SessionRecord) -> Deferred[None]:
        now = record.created
        for key, found in list(self._records.items()):
            if not found.alive(now):
                del self._records[key]
        self._records[record.key] = record
        return succeed(None)

    def get(self, key: str) -> Deferred[SessionRecord | None]:
        return succeed(self._records.get(key))

    def touch(self, key: str, expires: int) -> Deferred[None]:
        found = self._records.get(key)
        if found is not None:
            self._records[key] = attrs.evolve(found, expires=expires)
        return succeed(None)

    def remove(self, key: str) -> Deferred[None]:
        self._records.pop(key, None)
        return succeed(None)

    def remove_user(self, username: str, keep: str | None) -> Deferred[int]:
        gone = [k for k, r in self._records.items() if r.username == username and k != keep]
        for key in gone:
            del self._records[key]
        return succeed(len(gone))
