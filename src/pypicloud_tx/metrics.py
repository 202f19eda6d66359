"""The server's Prometheus metrics, on a registry of its own.

:class:`Metrics` owns the collectors; the application builds one (``pypi.metrics``) and hands
it to the web layer, the site and :func:`~pypicloud_tx.application.build_backends`.  Nothing
here uses prometheus_client's global default registry, so two servers (or two tests) in one
process never share a count.

Backends and the upstream client are measured from outside, by thin proxies
(:class:`InstrumentedBackend`, :class:`InstrumentedUpstream`): every call of an interface
method is timed, and its failures are counted by error class.  Labels are fixed words (the
backend's role, the method's name, a route *pattern*, an HTTP status): never a URL, a user
name, a project name or anything else a client chooses, so the number of series stays
bounded and no secret can end up in a label.  ``docs/observability.md`` lists every metric.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from pypicloud_tx import __version__
from pypicloud_tx.domain.models import PackageFile, Upload
from pypicloud_tx.domain.upstream_pages import PageFetch, UpstreamFile
from pypicloud_tx.errors import (
    Conflict,
    Forbidden,
    InvalidUpload,
    NotFound,
    TooLarge,
    Unauthenticated,
    UpstreamTimeout,
)
from pypicloud_tx.interfaces import IUpstream

#: Seconds; from a cached page (about a millisecond) to a large upload.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Seconds; from an in-memory lookup to a slow object store.
BACKEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Seconds; an exchange with the upstream index (bounded by ``pypi.fallback_timeout``).
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: HTTP methods counted under their own name; any other is counted as ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
#: Failures that are an answer about the request (no such file, name taken, not allowed),
#: not a fault of the backend: timed, but not counted as errors.
ANSWERS: tuple[type[BaseException], ...] = (
    NotFound,
    Conflict,
    Forbidden,
    Unauthenticated,
    InvalidUpload,
    TooLarge,
    CancelledError,
)
#: Interface methods not timed: :class:`~pypicloud_tx.backends.cache.memo.MemoizedCache`
#: asks for the version token before every memoised read, and it is cheap by contract.
UNTIMED = frozenset({"version_token"})


class Metrics:
    """Every collector of the server, registered on :attr:`registry`.

    :param registry: where the collectors live (a new one by default).
    :param process: also register the standard process, platform and garbage-collector
        collectors (CPU seconds, resident memory, open files, Python version).
    """

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "pypicloud_http_requests",
            "HTTP requests answered, by route pattern, method and status "
            '(status "aborted": the client went away first).',
            ["route", "method", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "pypicloud_http_request_duration_seconds",
            "Seconds from a request's first line to the end of its answer.",
            ["route", "method", "status"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.download_bytes = Counter(
            "pypicloud_download_bytes",
            "Bytes of package files this server streamed to clients (redirects to an "
            "object store are not counted).",
            registry=r,
        )
        self.upload_bytes = Counter(
            "pypicloud_upload_bytes",
            'Bytes of package files stored: origin "hosted" for uploads, "upstream" for '
            "files pulled through the upstream fallback.",
            ["origin"],
            registry=r,
        )
        self.uploads = Counter(
            "pypicloud_uploads",
            "Package files stored, by origin (as pypicloud_upload_bytes_total).",
            ["origin"],
            registry=r,
        )
        self.backend_seconds = Histogram(
            "pypicloud_backend_call_duration_seconds",
            "Seconds a call to a backend took, by role (storage, cache, access) and method.",
            ["backend", "operation"],
            buckets=BACKEND_BUCKETS,
            registry=r,
        )
        self.backend_errors = Counter(
            "pypicloud_backend_errors",
            "Backend calls that failed, by role, method and error class (answers such as "
            "NotFound or Conflict are not errors).",
            ["backend", "operation", "error"],
            registry=r,
        )
        self.backend_info = Gauge(
            "pypicloud_backend_info",
            "The configured backend of each role (always 1).",
            ["backend", "kind"],
            registry=r,
        )
        self.cache_rebuilds = Counter(
            "pypicloud_cache_rebuilds",
            "Cache rebuilds from storage that completed (at start-up on an empty cache, "
            "/admin/rebuild, the web console).",
            registry=r,
        )
        self.cache_rebuild_files = Gauge(
            "pypicloud_cache_rebuild_files",
            "Files written to the cache by the last completed rebuild.",
            registry=r,
        )
        self.cache_rebuild_time = Gauge(
            "pypicloud_cache_last_rebuild_timestamp_seconds",
            "When the last cache rebuild completed (Unix time).",
            registry=r,
        )
        self.upstream_requests = Counter(
            "pypicloud_upstream_requests",
            "Calls to the upstream index (pypi.fallback), by operation and outcome "
            "(ok, not_modified, not_found, error, timeout).",
            ["operation", "outcome"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "pypicloud_upstream_request_duration_seconds",
            "Seconds a call to the upstream index took, by operation.",
            ["operation"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.upstream_bytes = Counter(
            "pypicloud_upstream_bytes",
            "Bytes of package files downloaded from the upstream index.",
            registry=r,
        )
        info = Gauge("pypicloud_info", "This server's version (always 1).", ["version"], registry=r)
        info.labels(__version__).set(1)
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            if GC_COLLECTOR is not None:
                GCCollector(registry=r)
        # (route, method, status) -> the two children to update: looking a child up by its
        # labels takes a lock and a tuple of strings, too slow to repeat on every request.
        self._request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    # -- HTTP ------------------------------------------------------------------------------

    def observe_request(self, route: str, method: bytes, status: str, seconds: float) -> None:
        """Count one answered request (``route`` is a pattern, never a path)."""
        verb = method.decode("ascii", "replace")
        key = (route, verb if verb in METHODS else "other", status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.http_requests.labels(*key),
                self.http_seconds.labels(*key),
            )
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """``(body, content type)`` of every metric, in the format ``accept`` prefers
        (Prometheus text, or OpenMetrics when asked for)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    # -- wrapping --------------------------------------------------------------------------

    def instrument_backend(self, role: str, backend: Any, kind: str) -> InstrumentedBackend:
        """``backend`` (the ``role``'s, configured as ``kind``) with its calls measured."""
        self.backend_info.labels(role, kind).set(1)
        return InstrumentedBackend(backend, role, self)

    def instrument_upstream(self, upstream: IUpstream) -> InstrumentedUpstream:
        """``upstream`` with its calls measured."""
        return InstrumentedUpstream(upstream, self)

    def timed(self, role: str, operation: str, call: Callable[..., Any]) -> Callable[..., Any]:
        """``call`` (a backend method) timed into :attr:`backend_seconds`; its failures
        counted into :attr:`backend_errors`."""
        histogram = self.backend_seconds.labels(role, operation)
        after = self._after_call(role, operation)

        def measured(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = call(*args, **kwargs)
            except BaseException as e:
                histogram.observe(time.perf_counter() - started)
                self._failed(role, operation, e)
                raise
            if isinstance(result, Deferred):
                result.addBoth(self._observe, histogram, started, role, operation)
                if after is not None:
                    result.addCallback(_then, after, _first(args, kwargs))
                return result
            if inspect.iscoroutine(result):
                return self._observe_coroutine(
                    result, histogram, started, role, operation, after, _first(args, kwargs)
                )
            histogram.observe(time.perf_counter() - started)
            return result

        return measured

    def _observe(
        self, result: Any, histogram: Any, started: float, role: str, operation: str
    ) -> Any:
        histogram.observe(time.perf_counter() - started)
        if isinstance(result, Failure) and result.value is not None:
            self._failed(role, operation, result.value)
        return result

    async def _observe_coroutine(
        self,
        coroutine: Coroutine[Any, Any, Any],
        histogram: Any,
        started: float,
        role: str,
        operation: str,
        after: Callable[[Any], None] | None,
        argument: Any,
    ) -> Any:
        try:
            result = await coroutine
        except BaseException as e:
            histogram.observe(time.perf_counter() - started)
            self._failed(role, operation, e)
            raise
        histogram.observe(time.perf_counter() - started)
        if after is not None:
            after(argument)
        return result

    def _after_call(self, role: str, operation: str) -> Callable[[Any], None] | None:
        """What a successful call of ``operation`` also counts, given its first argument
        (the bytes of a stored file, a cache rebuild)."""
        if role == "storage" and operation == "put":
            return self._stored
        if role == "cache" and operation == "reload_from_storage":
            return self._rebuilt
        return None

    def _stored(self, file: Any) -> None:
        if isinstance(file, PackageFile):
            self.upload_bytes.labels(file.origin).inc(file.size)
            self.uploads.labels(file.origin).inc()

    def _rebuilt(self, files: Any) -> None:
        self.cache_rebuilds.inc()
        if files is not None:
            self.cache_rebuild_files.set(len(files))
        self.cache_rebuild_time.set_to_current_time()

    def _failed(self, role: str, operation: str, error: BaseException) -> None:
        if not isinstance(error, ANSWERS):
            self.backend_errors.labels(role, operation, type(error).__name__).inc()


class InstrumentedBackend:
    """A storage, cache or access backend whose interface methods are timed.

    Everything else (``start``, ``stop``, attributes a backend offers beyond its interface)
    is the backend's own; the proxy provides the same interfaces, so
    ``IMutableAccessBackend.providedBy`` still answers for the backend.
    """

    def __init__(self, inner: Any, role: str, metrics: Metrics) -> None:
        self.inner = inner
        self._role = role
        self._metrics = metrics
        provided = providedBy(inner)
        self._timed = frozenset(
            name for spec in provided.flattened() for name in spec.names() if name not in UNTIMED
        )
        directlyProvides(self, provided)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        if name in self._timed and callable(value):
            value = self._metrics.timed(self._role, name, value)
            self.__dict__[name] = value  # wrapped once; later look-ups skip __getattr__
        return value

    def __repr__(self) -> str:
        return f"<{self._role} {self.inner!r} (measured)>"


def _first(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The first argument of a call, however it was passed."""
    if args:
        return args[0]
    return next(iter(kwargs.values()), None)


def _then(result: Any, after: Callable[[Any], None], argument: Any) -> Any:
    after(argument)
    return result


_UPSTREAM_TIMEOUT = (UpstreamTimeout,)


@implementer(IUpstream)
class InstrumentedUpstream:
    """The upstream client with every exchange counted and timed (by operation)."""

    def __init__(self, inner: IUpstream, metrics: Metrics) -> None:
        self.inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        # simple_url, the request count tests read, ...
        return getattr(self.inner, name)

    def _measure(self, operation: str, d: Deferred[Any]) -> Deferred[Any]:
        started = time.perf_counter()
        metrics = self._metrics

        def done(result: Any) -> Any:
            metrics.upstream_seconds.labels(operation).observe(time.perf_counter() - started)
            if isinstance(result, Failure):
                if result.check(CancelledError):
                    return result
                if result.check(NotFound):
                    outcome = "not_found"
                elif result.check(*_UPSTREAM_TIMEOUT):
                    outcome = "timeout"
                else:
                    outcome = "error"
            elif isinstance(result, PageFetch) and result.project is None:
                outcome = "not_modified"
            else:
                outcome = "ok"
                if isinstance(result, Upload):
                    metrics.upstream_bytes.inc(result.size)
            metrics.upstream_requests.labels(operation, outcome).inc()
            return result

        return d.addBoth(done)

    def project(self, name: str, etag: str | None) -> Deferred[PageFetch]:
        return self._measure("project", self.inner.project(name, etag))

    def download(self, file: UpstreamFile, max_size: int) -> Deferred[Upload]:
        return self._measure("download", self.inner.download(file, max_size))

    def core_metadata(self, file: UpstreamFile) -> Deferred[bytes]:
        return self._measure("core_metadata", self.inner.core_metadata(file))

    def stop(self) -> Deferred[None]:
        return self.inner.stop()
