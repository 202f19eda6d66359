"""What the application gives each backend when it builds it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from pypicloud_tx.backends._threads import RunBlocking, run_synchronously


@attrs.frozen
class Runtime:
    """The reactor and the thread pools a backend may use.

    ``threads(name, size)`` returns a :class:`RunBlocking` backed by a pool of that name,
    created on first use and stopped with the application.  ``here`` is the config file's folder.
    """

    reactor: Any
    threads: Callable[[str, int], RunBlocking]
    here: str = "."
    settings: Any = None

    @classmethod
    def synchronous(cls, reactor: Any = None, here: str = ".", settings: Any = None) -> Runtime:
        """A runtime for tests: blocking work runs at once on the calling thread."""
        return cls(
            reactor=reactor,
            threads=lambda name, size: run_synchronously,
            here=here,
            settings=settings,
        )
