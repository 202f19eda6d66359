"""Running blocking work (SQL, boto3, password hashing, big-file hashing) off the reactor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class RunBlocking(Protocol):
    """Call ``f(*args, **kwargs)`` somewhere that may block; a Deferred fires with its result."""

    def __call__(self, f: Callable[..., T], /, *args: Any, **kwargs: Any) -> Deferred[T]: ...


def run_synchronously(f: Callable[..., T], /, *args: Any, **kwargs: Any) -> Deferred[T]:
    """A :class:`RunBlocking` for tests: runs ``f`` at once, on the calling thread."""
    try:
        return succeed(f(*args, **kwargs))
    except BaseException:
        return fail(Failure())


class ThreadPoolService(Service):
    """A named thread pool started and stopped with the application.

    Stopping it joins the worker threads, so the process exits promptly on SIGTERM.
    """

    def __init__(self, reactor: IReactorFromThreads, name: str, max_threads: int = 10) -> None:
        self.name = name
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=max_threads, name=name)

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        self._pool.stop()

    def run(self, f: Callable[..., T], /, *args: Any, **kwargs: Any) -> Deferred[T]:
        """A :class:`RunBlocking` that uses this pool."""
        return deferToThreadPool(self._reactor, self._pool, f, *args, **kwargs)
