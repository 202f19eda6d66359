"""Start-up and shutdown order of the application's services."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.application import Backends, IndexServer, OrderedServices
from pypicloud_tx.errors import BackendUnavailable


class Recorder(Service):
    def __init__(self, name: str, events: list[str], stopping: Deferred[None] | None = None):
        self.name = name
        self._events = events
        self._stopping = stopping

    def stopService(self) -> Any:
        super().stopService()
        self._events.append(f"stop {self.name}")
        if self._stopping is not None:
            self._stopping.addCallback(lambda _: self._events.append(f"stopped {self.name}"))
            return self._stopping
        return None


class OrderedServicesTests(SynchronousTestCase):
    def test_stops_in_reverse_waiting_for_each(self) -> None:
        """The last child stops first, and the one before it only once that has finished:
        the server's backends must be stopped before the thread pools they use."""
        events: list[str] = []
        slow: Deferred[None] = Deferred()
        root = OrderedServices()
        Recorder("pools", events).setServiceParent(root)
        Recorder("server", events, slow).setServiceParent(root)
        root.startService()
        done = root.stopService()
        self.assertEqual(events, ["stop server"])
        self.assertNoResult(done)
        slow.callback(None)
        self.assertEqual(events, ["stop server", "stopped server", "stop pools"])
        self.successResultOf(done)


class FlakyBackend:
    """A backend whose start() fails until ``up`` is set."""

    def __init__(self) -> None:
        self.up = False
        self.starts = 0

    def start(self) -> Deferred[None]:
        self.starts += 1
        if not self.up:
            raise BackendUnavailable("the cache database is unreachable: connection refused")
        return succeed(None)


class FakeIndex:
    def __init__(self) -> None:
        self.reloads = 0

    async def reload_if_needed(self, sleep: Any = None) -> bool:
        self.reloads += 1
        return True


class IndexServerTests(SynchronousTestCase):
    def test_backend_down_at_start_is_retried(self) -> None:
        """A backend that cannot start does not stop the server from listening (it answers
        503 meanwhile); start-up is retried until the backend is back, then the empty cache
        is filled."""
        clock = Clock()
        cache = FlakyBackend()
        index = FakeIndex()
        listened: list[bool] = []

        def listen() -> Deferred[Any]:
            listened.append(True)
            return succeed(None)

        server = IndexServer(
            Backends(object(), cache, object()),
            index,
            listen,
            clock,  # type: ignore[arg-type]
            retry_seconds=5,
        )
        server.startService()
        self.assertEqual((listened, cache.starts, index.reloads), ([True], 1, 0))
        clock.advance(5)
        self.assertEqual((cache.starts, index.reloads), (2, 0))
        cache.up = True
        clock.advance(5)
        self.assertEqual((cache.starts, index.reloads), (3, 1))
        clock.advance(60)
        self.assertEqual(cache.starts, 3)
        self.successResultOf(server.stopService())

    def test_stop_cancels_pending_retry(self) -> None:
        """Stopping while a retry is scheduled cancels it."""
        clock = Clock()
        cache = FlakyBackend()
        server = IndexServer(
            Backends(object(), cache, object()),
            FakeIndex(),  # type: ignore[arg-type]
            lambda: succeed(None),
            clock,
            retry_seconds=5,
        )
        server.startService()
        self.successResultOf(server.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])
