"""Users, groups and permissions in process memory (``pypi.auth = memory``).

For tests and development configurations: everything is lost when the process stops, and
each process has its own.  The document and every rule are those of
:mod:`pypicloud_tx.backends.access._document` (the AWS Secrets Manager format), so what works
here works there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pypicloud_tx.backends._threads import RunBlocking
from pypicloud_tx.backends.access._document import DocumentAccessBackend, DocumentOptions
from pypicloud_tx.runtime import Runtime


class MemoryAccessBackend(DocumentAccessBackend):
    """The access document kept in a Python object; only the optional ``auth.`` options."""

    Options = DocumentOptions

    def __init__(
        self,
        run_blocking: RunBlocking,
        admins: Iterable[str] = (),
        rounds: int | None = None,
        document: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(run_blocking, admins, rounds, source="the in-memory access document")
        self._document: dict[str, Any] | None = None if document is None else _copy(document)

    @classmethod
    def from_config(cls, options: DocumentOptions, runtime: Runtime) -> MemoryAccessBackend:
        return cls(runtime.threads("passwords", 4), options.admins, options.rounds)

    async def fetch(self, fresh: bool) -> Mapping[str, Any] | None:
        # The same object until the next store: readers keep their parse of it.
        return self._document

    async def store(self, document: dict[str, Any]) -> None:
        self._document = _copy(document)


def _copy(document: Mapping[str, Any]) -> dict[str, Any]:
    """A private copy, made through JSON so that what the memory holds could be stored
    anywhere else too."""
    copied: dict[str, Any] = json.loads(json.dumps(document))
    return copied
