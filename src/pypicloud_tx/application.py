"""Building the backends and services from :class:`Settings`, and running them as a service."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from pypicloud_tx.backends._threads import RunBlocking, ThreadPoolService
from pypicloud_tx.backends.cache.memo import MemoizedCache
from pypicloud_tx.backends.sessions.memory import MemorySessionStore
from pypicloud_tx.backends.sessions.sql import SQLSessionStore
from pypicloud_tx.config.model import Settings
from pypicloud_tx.domain.policy import Policy
from pypicloud_tx.errors import PPCError
from pypicloud_tx.interfaces import ISessionStore, IUpstream
from pypicloud_tx.metrics import Metrics
from pypicloud_tx.runtime import Runtime
from pypicloud_tx.services.auth import Authenticator
from pypicloud_tx.services.fallback import Fallback, FallbackOptions
from pypicloud_tx.services.index import IndexOptions, PackageIndex
from pypicloud_tx.services.sessions import Sessions, session_secret
from pypicloud_tx.services.upstream import UpstreamClient, public_url

log = Logger()


class OrderedServices(MultiService):
    """Starts children in order and stops them in reverse, each waiting for the one after it.

    Twisted's ``MultiService`` stops all children at once; the server must stop listening and
    stop its backends (which still use the thread pools) before the pools are stopped.
    """

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_in_reverse())

    async def _stop_in_reverse(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("error while stopping {service}", service=child)


class ThreadPools(MultiService):
    """Named thread pools, created on first use, started and stopped with the application."""

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self._reactor = reactor
        self._pools: dict[str, ThreadPoolService] = {}

    def __call__(self, name: str, size: int) -> RunBlocking:
        pool = self._pools.get(name)
        if pool is None:
            pool = self._pools[name] = ThreadPoolService(self._reactor, name, size)
            pool.setServiceParent(self)
        return pool.run


@attrs.frozen
class Backends:
    storage: Any
    cache: Any
    access: Any

    def all(self) -> tuple[Any, ...]:
        return (self.storage, self.cache, self.access)


def build_backends(
    settings: Settings, runtime: Runtime, metrics: Metrics | None = None
) -> Backends:
    """Instantiate the configured backends (no I/O yet); with ``metrics``, their calls are
    measured."""
    storage, cache, access = (
        choice.cls.from_config(choice.options, runtime)
        for choice in (settings.storage, settings.cache, settings.access)
    )
    if metrics is not None:
        storage = metrics.instrument_backend("storage", storage, settings.storage.name)
        cache = metrics.instrument_backend("cache", cache, settings.cache.name)
        access = metrics.instrument_backend("access", access, settings.access.name)
    return Backends(storage, MemoizedCache(cache), access)


def build_index(settings: Settings, backends: Backends, runtime: Runtime) -> PackageIndex:
    return PackageIndex(
        backends.storage,
        backends.cache,
        backends.access,
        Policy(default_read=settings.default_read, default_write=settings.default_write),
        runtime.threads("uploads", 4),
        IndexOptions(
            allow_overwrite=settings.allow_overwrite,
            allow_delete=settings.allow_delete,
            graceful_reload=settings.graceful_reload,
        ),
    )


async def start_backends(backends: Backends) -> None:
    for backend in backends.all():
        start = getattr(backend, "start", None)
        if start is not None:
            await start()


async def stop_backends(backends: Backends) -> None:
    waits = [stop() for b in backends.all() if (stop := getattr(b, "stop", None)) is not None]
    await DeferredList(
        [Deferred.fromCoroutine(w) if not isinstance(w, Deferred) else w for w in waits],
        consumeErrors=True,
    )


class IndexServer(Service):
    """Starts the backends (filling an empty cache), then listens; stops in reverse.

    A backend that cannot start (its database is down, say) is logged and retried every
    ``retry_seconds``; the server listens anyway and answers 503 until the backend is back.
    """

    def __init__(
        self,
        backends: Backends,
        index: PackageIndex,
        listen: Any,
        reactor: Any,
        retry_seconds: float = 5.0,
    ) -> None:
        self._backends = backends
        self._index = index
        self._listen = listen  # () -> Deferred[IListeningPort]
        self._reactor = reactor
        self._retry = retry_seconds
        self._port: Any = None
        self._pending: Any = None
        self.listen_failed = False

    def startService(self) -> None:
        super().startService()
        Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        await self._prepare()
        try:
            self._port = await self._listen()
        except Exception as e:
            log.critical("cannot listen: {error}; stopping", error=e)
            self.listen_failed = True
            self._reactor.stop()

    async def _prepare(self) -> None:
        self._pending = None
        try:
            await start_backends(self._backends)
            await self._index.reload_if_needed(lambda s: deferLater(self._reactor, s))
        except Exception as e:
            if isinstance(e, PPCError):
                log.warn(
                    "{message}; retrying in {seconds}s", message=e.message, seconds=self._retry
                )
            else:
                log.failure(
                    "a backend failed to start; retrying in {seconds}s", seconds=self._retry
                )
            if self.running:
                self._pending = self._reactor.callLater(
                    self._retry, lambda: Deferred.fromCoroutine(self._prepare())
                )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        if self._port is not None:
            await self._port.stopListening()
        await stop_backends(self._backends)


def build_fallback(
    settings: Settings,
    index: PackageIndex,
    runtime: Runtime,
    spool_dir: str | None = None,
    upstream: IUpstream | None = None,
    metrics: Metrics | None = None,
) -> Fallback:
    """The upstream fallback of ``pypi.fallback``: with ``upstream`` (tests give one), else
    with its own client and connection pool, built without connecting
    (:class:`FallbackStopper` closes the pool)."""
    options = FallbackOptions(
        mode=settings.fallback,
        always_show_upstream=settings.always_show_upstream,
        disallow=frozenset(settings.disallow_fallback),
        cache_update=settings.cache_update,
        simple_url=public_url(settings.fallback_simple_url),
        base_url=public_url(settings.fallback_root_url) if settings.fallback_root_url else None,
        cache_seconds=settings.fallback_cache_seconds,
        max_stale=settings.fallback_max_stale,
        max_file_size=settings.max_upload_size,
    )
    if options.mode == "none":
        return Fallback(index, None, options, runtime.reactor)
    if upstream is not None and metrics is not None:
        upstream = metrics.instrument_upstream(upstream)
    if upstream is not None:
        return Fallback(index, upstream, options, runtime.reactor)
    client = UpstreamClient.build(
        runtime.reactor,
        settings.fallback_simple_url,
        timeout=settings.fallback_timeout,
        max_connections=settings.fallback_max_connections,
        run_blocking=runtime.threads("upstream", 2),
        spool_dir=spool_dir,
    )
    if metrics is not None:
        return Fallback(index, metrics.instrument_upstream(client), options, runtime.reactor)
    return Fallback(index, client, options, runtime.reactor)


class FallbackStopper(Service):
    """Closes the upstream client's connections when the application stops."""

    def __init__(self, fallback: Fallback) -> None:
        self._fallback = fallback

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._fallback.stop()


def make_authenticator(backends: Backends, reactor: Any) -> Authenticator:
    return Authenticator(backends.access, reactor)


def store_location(settings: Settings) -> tuple[str, str] | None:
    """``(database URL, option naming it)`` for the session table, or ``None`` for memory."""
    if settings.session_url:
        return settings.session_url, "session.url"
    access = settings.access
    if access.cls.__module__ == "pypicloud_tx.backends.access.sql":
        return str(access.options.db__url), "auth.db.url"
    cache = settings.cache
    if cache.cls.__module__ == "pypicloud_tx.backends.cache.sql":
        return str(cache.options.url), "db.url"
    return None


def build_sessions(
    settings: Settings, run_blocking: RunBlocking, now: Callable[[], float] = time.time
) -> Sessions:
    """The sessions of a deployment, stored where :func:`store_location` says."""
    location = store_location(settings)
    store: ISessionStore
    if location is None:
        log.info(
            "browser sessions are kept in this process's memory (no SQL database is "
            "configured): with several processes, set session.url"
        )
        store = MemorySessionStore()
    else:
        store = SQLSessionStore.from_url(location[0], run_blocking, location[1])
    return Sessions(
        store,
        session_secret(settings),
        timeout=settings.session_timeout,
        max_age=settings.session_max_age,
        now=now,
    )
