"""Observability: ``/metrics``, request ids, the request log context, the access log and the
per-backend timing of ``/health`` (``docs/observability.md``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from pypicloud_tx.application import build_backends, build_fallback, build_index, build_sessions
from pypicloud_tx.backends._threads import run_synchronously
from pypicloud_tx.config.loader import parse_settings
from pypicloud_tx.domain.models import UPSTREAM, PackageFile, Upload
from pypicloud_tx.domain.upstream_pages import PageFetch, UpstreamFile
from pypicloud_tx.errors import (
    BackendUnavailable,
    ConfigError,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
)
from pypicloud_tx.interfaces import IMutableAccessBackend, IStorage, IUpstream
from pypicloud_tx.metrics import Metrics
from pypicloud_tx.services.auth import Authenticator
from pypicloud_tx.web.context import WebContext
from pypicloud_tx.web.metrics import AllowList
from pypicloud_tx.web.requestlog import add_request_id, route_pattern
from pypicloud_tx.web.root import IndexSite, build_resource
from tests.web.harness import MUTABLE_OPTIONS, Index, RouteTestCase, utc

OPENMETRICS = b"application/openmetrics-text; version=1.0.0; charset=utf-8"


class MeteredIndex(Index):
    """The harness's index, measured: ``metrics`` sees every request, backend call and
    upstream call (``upstream`` stands in for the upstream index when given)."""

    def __init__(
        self, options: Mapping[str, str | None] | None = None, upstream: IUpstream | None = None
    ) -> None:
        super().__init__(options)
        self.metrics = Metrics(process=False)
        self.backends = build_backends(self.settings, self.runtime, metrics=self.metrics)
        self.index = build_index(self.settings, self.backends, self.runtime)
        self.ctx = WebContext(
            index=self.index,
            auth=Authenticator(self.backends.access, self.clock),
            settings=self.settings,
            run_blocking=run_synchronously,
            sessions=build_sessions(self.settings, run_synchronously),
            metrics=self.metrics,
            fallback=build_fallback(
                self.settings, self.index, self.runtime, upstream=upstream, metrics=self.metrics
            ),
        )
        self.resource = build_resource(self.ctx)
        self.treq = StubTreq(self.resource)
        agent = self.treq._agent
        self.site = IndexSite(
            self.resource, self.settings.max_upload_size, reactor=agent._memoryReactor
        )
        self.site.metrics = self.metrics
        agent._serverFactory = self.site


def samples(metrics: Metrics, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """``{labels: value}`` of every sample called ``name`` in the exposition."""
    body, _ = metrics.exposition(None)
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                found[frozenset(sample.labels.items())] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """One sample's value (0 when there is no such sample)."""
    return samples(metrics, name).get(frozenset(labels.items()), 0.0)


class MeteredTestCase(RouteTestCase):
    def make_metered(
        self, options: Mapping[str, str | None] | None = None, upstream: IUpstream | None = None
    ) -> MeteredIndex:
        self.ix = MeteredIndex(options, upstream)
        return self.ix

    @property
    def metrics(self) -> Metrics:
        assert isinstance(self.ix, MeteredIndex)
        return self.ix.metrics

    def answered(self, route: str, status: str, method: str = "GET") -> float:
        """How many requests ``route`` answered with ``status``."""
        labels = {"route": route, "method": method, "status": status}
        return value(self.metrics, "pypicloud_http_requests_total", **labels)

    def calls(self, backend: str, operation: str) -> float:
        """How many calls of ``operation`` the ``backend`` role got."""
        labels = {"backend": backend, "operation": operation}
        return value(self.metrics, "pypicloud_backend_call_duration_seconds_count", **labels)

    def capture_log(self) -> list[dict[str, Any]]:
        """Every event logged from now on, after :func:`add_request_id` saw it (as with
        ``twist``: the observer comes before the log file's)."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(add_request_id)
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events


class RequestMetricsTests(MeteredTestCase):
    def setUp(self) -> None:
        self.make_metered()

    def test_counted_by_route_pattern(self) -> None:
        """Requests are counted and timed under their route's pattern, never their path: two
        projects make one series, and no project name appears in any label."""
        self.upload(*self.wheel("alpha"))
        self.request("GET", "/simple/alpha/")
        self.request("GET", "/simple/beta/")
        requests = samples(self.metrics, "pypicloud_http_requests_total")
        route = "/simple/<project>/"
        self.assertEqual((self.answered(route, "200"), self.answered(route, "404")), (1, 1))
        timed = {"route": route, "method": "GET", "status": "200"}
        self.assertEqual(
            value(self.metrics, "pypicloud_http_request_duration_seconds_count", **timed), 1
        )
        labels = " ".join(v for key in requests for _, v in key)
        self.assertNotIn("alpha", labels)
        self.assertNotIn("beta", labels)

    def test_endpoint_with_several_patterns(self) -> None:
        """A handler routed at several patterns counts each under the one that matched."""
        self.request("GET", "/simple/")
        self.request("GET", "/pypi/")
        self.request("GET", "/pypi/")
        self.assertEqual((self.answered("/simple/", "200"), self.answered("/pypi/", "200")), (1, 2))

    def test_unmatched_and_odd_methods(self) -> None:
        """A path no route matches is counted as ``unmatched``; an unknown method as
        ``other``: a client cannot create series."""
        self.request("GET", "/no/such/thing")
        self.request("BREW", "/coffee")
        found = samples(self.metrics, "pypicloud_http_requests_total")
        self.assertEqual(
            {dict(k)["route"] for k in found}, {"unmatched"}, "only the unmatched route"
        )
        self.assertEqual({dict(k)["method"] for k in found}, {"GET", "other"})

    def test_route_pattern(self) -> None:
        """Converters are dropped from a pattern: the label reads like the route."""
        self.assertEqual(route_pattern("/simple/<string:project>/"), "/simple/<project>/")
        self.assertEqual(
            route_pattern("/api/package/<string:project>/<path:filename>"),
            "/api/package/<project>/<filename>",
        )

    def test_upload_and_download_bytes(self) -> None:
        """An upload adds its file's size to the hosted upload bytes; a GET streams and counts
        the file's bytes, a HEAD none."""
        filename, data = self.wheel("bytes-demo")
        self.assertEqual(self.upload(filename, data)[0].code, 200)
        self.assertEqual(
            value(self.metrics, "pypicloud_upload_bytes_total", origin="hosted"), len(data)
        )
        self.assertEqual(value(self.metrics, "pypicloud_uploads_total", origin="hosted"), 1)
        self.request("HEAD", f"/api/package/bytes-demo/{filename}")
        self.assertEqual(value(self.metrics, "pypicloud_download_bytes_total"), 0)
        body = self.request("GET", f"/api/package/bytes-demo/{filename}")[1]
        self.assertEqual(body, data)
        self.assertEqual(value(self.metrics, "pypicloud_download_bytes_total"), len(data))

    def test_backend_calls_timed(self) -> None:
        """Calls to the storage and the cache are timed by role and method; the backend in
        use is named by an info series."""
        self.upload(*self.wheel("timed"))
        self.assertEqual((self.calls("storage", "put"), self.calls("cache", "save")), (1, 1))
        self.assertEqual(
            value(self.metrics, "pypicloud_backend_info", backend="storage", kind="memory"), 1
        )
        self.assertEqual(
            value(self.metrics, "pypicloud_backend_info", backend="access", kind="config"), 1
        )

    def test_cache_rebuild_counted(self) -> None:
        """/admin/rebuild counts a rebuild, the files it wrote, and when it ended."""
        self.upload(*self.wheel("one"))
        self.upload(*self.wheel("two"))
        self.assertEqual(self.request("POST", "/admin/rebuild", user="alice")[0].code, 200)
        self.assertEqual(value(self.metrics, "pypicloud_cache_rebuilds_total"), 1)
        self.assertEqual(value(self.metrics, "pypicloud_cache_rebuild_files"), 2)
        self.assertGreater(value(self.metrics, "pypicloud_cache_last_rebuild_timestamp_seconds"), 0)

    def test_aborted_request(self) -> None:
        """A request whose client goes away before the answer is counted with status 499."""
        self.ix.index.storage = _Hanging()
        protocol = self.ix.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"GET /health HTTP/1.1\r\nHost: index.test\r\n\r\n")
        self.assertEqual(samples(self.metrics, "pypicloud_http_requests_total"), {})
        protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.answered("/health", "499"), 1)


class _Hanging:
    """A storage whose health check never answers."""

    def check_health(self) -> Deferred[tuple[bool, str]]:
        return Deferred()


class MetricsEndpointTests(MeteredTestCase):
    def test_text_format(self) -> None:
        """From 127.0.0.1, /metrics is Prometheus' text format, not cached, with the
        server's version."""
        self.make_metered()
        response, body = self.request("GET", "/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"),
            [b"text/plain; version=0.0.4; charset=utf-8"],
        )
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertRegex(body.decode(), r'(?m)^pypicloud_info\{version="[^"]+"\} 1\.0$')

    def test_openmetrics(self) -> None:
        """A scraper that asks for OpenMetrics gets it."""
        self.make_metered()
        response, body = self.request(
            "GET", "/metrics", headers={b"Accept": [b"application/openmetrics-text"]}
        )
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [OPENMETRICS])
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_forwarded_client_refused(self) -> None:
        """A request a proxy on this host forwarded for an outside client is refused (403),
        whichever header names the client; one forwarded for an allowed client is not."""
        self.make_metered()
        for header, client in [
            (b"X-Forwarded-For", b"203.0.113.9"),
            (b"X-Forwarded-For", b"127.0.0.1, 203.0.113.9"),
            (b"X-Real-IP", b"203.0.113.9"),
            (b"Forwarded", b'for="[2001:db8::7]:4711";proto=https'),
            (b"Forwarded", b"for=unknown"),
        ]:
            response, body = self.request("GET", "/metrics", headers={header: [client]})
            self.assertEqual(response.code, 403, (header, client))
            self.assertIn(b"pypi.metrics_allow", body)
        response, _ = self.request("GET", "/metrics", headers={b"X-Forwarded-For": [b"::1"]})
        self.assertEqual(response.code, 200)

    def test_allow_list(self) -> None:
        """pypi.metrics_allow replaces the default: 127.0.0.1 outside it is refused."""
        self.make_metered({"pypi.metrics_allow": "10.0.0.0/8"})
        self.assertEqual(self.request("GET", "/metrics")[0].code, 403)

    def test_allow_list_rules(self) -> None:
        """Networks, single addresses (also IPv4-mapped, with ports as proxies write them),
        and ``unix`` for Unix-socket peers; a peer that is not allowed is refused even when
        the forwarded address would be."""
        allowed = AllowList.from_words(["10.0.0.0/8", "2001:db8::1", "unix"])
        for address in ("10.1.2.3", "10.1.2.3:8080", "::ffff:10.0.0.1", "[2001:db8::1]:443"):
            self.assertTrue(allowed.allows(address), address)
        for address in ("11.0.0.1", "2001:db8::2", "unknown", "_hidden", "", None):
            self.assertFalse(allowed.allows(address), address)

        def request(peer: Any, forwarded: bytes | None = None) -> DummyRequest:
            r = DummyRequest([b"metrics"])
            r.client = peer
            if forwarded is not None:
                r.requestHeaders.setRawHeaders(b"x-forwarded-for", [forwarded])
            return r

        self.assertTrue(allowed.may_read(request(UNIXAddress(b"/run/ppc.sock"))))
        self.assertFalse(AllowList.from_words(["127.0.0.1"]).may_read(request(UNIXAddress(None))))
        self.assertFalse(allowed.may_read(request(IPv4Address("TCP", "192.0.2.1", 1), b"10.0.0.1")))

    def test_disabled(self) -> None:
        """Without metrics (pypi.metrics = false) there is no /metrics."""
        self.make_index()
        self.assertEqual(self.request("GET", "/metrics")[0].code, 404)

    def test_options(self) -> None:
        """pypi.metrics is on by default and reads loopback and Unix sockets; both options
        are parsed and checked, naming the option."""
        base = {"pypi.storage": "memory", "pypi.db": "memory"}
        default = parse_settings(base)
        self.assertTrue(default.metrics)
        self.assertEqual(default.metrics_allow, ("127.0.0.0/8", "::1/128", "unix"))
        settings = parse_settings(
            {**base, "pypi.metrics": "false", "pypi.metrics_allow": "10.0.0.0/8 ::1"}
        )
        self.assertFalse(settings.metrics)
        self.assertEqual(settings.metrics_allow, ("10.0.0.0/8", "::1/128"))
        error = self.assertRaises(
            ConfigError, parse_settings, {**base, "pypi.metrics_allow": "everyone"}
        )
        self.assertIn("pypi.metrics_allow", error.message)


class RequestIdTests(MeteredTestCase):
    def setUp(self) -> None:
        self.make_metered()

    def test_generated(self) -> None:
        """Every answer carries a new X-Request-ID."""
        ids = [
            self.request("GET", path)[0].headers.getRawHeaders(b"x-request-id")
            for path in ("/ping", "/ping", "/no/such")
        ]
        self.assertTrue(all(i is not None and len(i) == 1 for i in ids), ids)
        values = [i[0] for i in ids if i]
        self.assertEqual(len(set(values)), 3)
        self.assertTrue(all(re.fullmatch(rb"[0-9a-f]{16}", v) for v in values), values)

    def test_incoming_kept_when_sane(self) -> None:
        """A proxy's (or client's) X-Request-ID is kept when it is one short token, and
        replaced when it could forge a log line or is too long."""
        for incoming, kept in [
            (b"0f8e1c2a-7d0b-4c55-9a5e-3f1a2b3c4d5e", True),
            (b"abc123", True),
            (b'x" 200 "forged', False),
            (b"a b", False),
            (b"x" * 200, False),
        ]:
            response, _ = self.request("GET", "/ping", headers={b"X-Request-ID": [incoming]})
            got = response.headers.getRawHeaders(b"x-request-id")[0]
            self.assertEqual(got == incoming, kept, incoming)

    def test_log_events_carry_it(self) -> None:
        """Events logged while a request is handled carry its id, in the route (an upload
        stored) and in the error handler (a backend that is down, and says so later, from
        outside the request: as a thread pool's answer arrives)."""
        events = self.capture_log()
        response, _ = self.upload(*self.wheel("traced"), user="bob")
        rid = response.headers.getRawHeaders(b"x-request-id")[0].decode()
        stored = [e for e in events if e.get("log_format", "").startswith("stored {filename}")]
        self.assertEqual([e.get("request_id") for e in stored], [rid])

        late = _Late()
        self.ix.index.cache = late
        d = self.ix.treq.request("GET", "http://index.test/simple/traced/")
        self.ix.treq.flush()
        self.assertTrue(late.pending)
        while late.pending:
            late.pending.pop().errback(BackendUnavailable("cannot reach the database (db.url)"))
        response = self.successResultOf(self._pump(d))
        self.assertEqual(response.code, 503)
        rid = response.headers.getRawHeaders(b"x-request-id")[0].decode()
        warned = [e for e in events if "backend unavailable" in e.get("log_format", "")]
        self.assertTrue(warned)
        self.assertEqual({e.get("request_id") for e in warned}, {rid})

    def test_outside_a_request(self) -> None:
        """An event logged outside any request has no request id."""
        events = self.capture_log()
        from twisted.logger import Logger

        Logger().info("between requests")
        self.assertNotIn("request_id", events[-1])

    def test_access_log(self) -> None:
        """With the access log on, each request logs one line in the combined format with its
        duration and id, and the same facts as fields."""
        self.ix.site.access_log = True
        events = self.capture_log()
        response, _ = self.request(
            "GET", "/simple/", user="bob", headers={b"User-Agent": [b'pip/24 "quoted"']}
        )
        rid = response.headers.getRawHeaders(b"x-request-id")[0].decode()
        [line] = [e for e in events if e.get("log_namespace") == "pypicloud_tx.access"]
        self.assertEqual(
            {k: line[k] for k in ("method", "uri", "status", "route", "user", "request_id")},
            {
                "method": "GET",
                "uri": "/simple/",
                "status": 200,
                "route": "/simple/",
                "user": "bob",
                "request_id": rid,
            },
        )
        self.assertRegex(
            formatEvent(line),
            r'^127\.0\.0\.1 - bob "GET /simple/ HTTP/1\.1" 200 \d+ "-" "pip/24 \\"quoted\\"" '
            rf"\d+\.\d{{4}}s {rid}$",
        )

    def test_no_access_log_by_default(self) -> None:
        """Without --access-log no line is logged per request."""
        events = self.capture_log()
        self.request("GET", "/simple/")
        self.assertFalse([e for e in events if e.get("log_namespace") == "pypicloud_tx.access"])


class _Late:
    """A cache whose every read waits until the test fails it."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d

        return call


class _Down:
    """A cache whose every read fails as a database that is down."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: fail(BackendUnavailable("cannot reach the database (db.url)"))


class HealthTimingTests(MeteredTestCase):
    def test_seconds_per_backend(self) -> None:
        """/health says how long each backend's check took."""
        self.make_metered()
        response, doc = self.get_json("/health")
        self.assertEqual(response.code, 200)
        for name in ("storage", "cache", "access"):
            seconds = doc["backends"][name]["seconds"]
            self.assertIsInstance(seconds, float)
            self.assertGreaterEqual(seconds, 0)

    def test_timed_health(self) -> None:
        """Each check is timed on the clock given, also a check that raises."""
        self.make_index()
        ticks = iter([0.0, 0.25, 1.0, 1.5, 2.0, 4.0])
        self.ix.index.cache = _Down()
        report = self.successResultOf(
            Deferred.fromCoroutine(self.ix.index.timed_health(clock=lambda: next(ticks)))
        )
        self.assertEqual(report["storage"], (True, "", 0.25))
        self.assertEqual(report["cache"][::2], (False, 0.5))
        self.assertEqual(report["access"], (True, "", 2.0))


# -- the proxies, one call at a time ------------------------------------------------------


@implementer(IStorage)
class _Storage:
    """A storage whose methods answer as told."""

    flavour = "test"

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}

    def _answer(self, name: str) -> Any:
        answer = self.answers.get(name)
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)

    def list(self) -> Any:
        return self._answer("list")

    def put(self, file: Any, stream: Any, core_metadata: Any, overwrite: bool) -> Any:
        return self._answer("put")

    def save_record(self, file: Any) -> Any:
        return self._answer("save_record")

    def open(self, file: Any) -> Any:
        return self._answer("open")

    def open_metadata(self, file: Any) -> Any:
        return self._answer("open_metadata")

    async def download_url(self, file: Any) -> Any:  # a coroutine, as some backends write
        answer = self.answers.get("download_url")
        if isinstance(answer, Exception):
            raise answer
        return answer

    def delete(self, file: Any) -> Any:
        return self._answer("delete")

    def check_health(self) -> Any:
        return self._answer("check_health")


FILE = PackageFile(
    name="demo",
    version="1.0",
    filename="demo-1.0-py3-none-any.whl",
    size=1234,
    sha256="0" * 64,
    upload_time=utc(2024, 1, 2),
    origin=UPSTREAM,
)


class InstrumentedBackendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = Metrics(process=False)
        self.inner = _Storage()
        self.storage = self.metrics.instrument_backend("storage", self.inner, "test")

    def count(self, operation: str) -> float:
        return value(
            self.metrics,
            "pypicloud_backend_call_duration_seconds_count",
            backend="storage",
            operation=operation,
        )

    def errors(self) -> dict[frozenset[tuple[str, str]], float]:
        return samples(self.metrics, "pypicloud_backend_errors_total")

    def test_same_interfaces(self) -> None:
        """The proxy provides what the backend provides, and nothing more."""
        verifyObject(IStorage, self.storage)
        self.assertFalse(IMutableAccessBackend.providedBy(self.storage))
        self.assertEqual(self.storage.flavour, "test")  # other attributes are the backend's

    def test_results_pass_through(self) -> None:
        """Results, also of coroutine methods, arrive unchanged and each call is timed."""
        self.inner.answers["list"] = [FILE]
        self.inner.answers["download_url"] = "https://cdn.example/demo.whl"
        self.assertEqual(self.successResultOf(self.storage.list()), [FILE])
        url = self.successResultOf(Deferred.fromCoroutine(self.storage.download_url(FILE)))
        self.assertEqual(url, "https://cdn.example/demo.whl")
        self.assertEqual((self.count("list"), self.count("download_url")), (1, 1))
        self.assertEqual(self.errors(), {})

    def test_failures_counted_by_class(self) -> None:
        """A failure is passed on and counted by error class; an answer such as NotFound is
        timed but is not an error."""
        self.inner.answers["open"] = BackendUnavailable("cannot reach the bucket")
        self.failureResultOf(self.storage.open(FILE), BackendUnavailable)
        self.inner.answers["open_metadata"] = NotFound("no metadata")
        self.failureResultOf(self.storage.open_metadata(FILE), NotFound)
        self.inner.answers["download_url"] = RuntimeError("bug")
        self.failureResultOf(Deferred.fromCoroutine(self.storage.download_url(FILE)), RuntimeError)
        found = {(dict(k)["operation"], dict(k)["error"]): v for k, v in self.errors().items()}
        self.assertEqual(
            found, {("open", "BackendUnavailable"): 1, ("download_url", "RuntimeError"): 1}
        )
        self.assertEqual(self.count("open_metadata"), 1)

    def test_stored_bytes_by_origin(self) -> None:
        """A stored file counts its size under its origin; a refused one counts nothing."""
        self.successResultOf(self.storage.put(FILE, None, None, False))
        self.inner.answers["put"] = BackendUnavailable("full")
        self.failureResultOf(self.storage.put(FILE, None, None, False), BackendUnavailable)
        self.assertEqual(
            samples(self.metrics, "pypicloud_upload_bytes_total"),
            {frozenset({"origin": "upstream"}.items()): 1234.0},
        )


@implementer(IUpstream)
class _Upstream:
    """An upstream index whose answers are given by the test."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.simple_url = "https://upstream.example/simple"

    def _answer(self, name: str) -> Any:
        answer = self.answers[name]
        return fail(answer) if isinstance(answer, Exception) else succeed(answer)

    def project(self, name: str, etag: str | None) -> Any:
        return self._answer("project")

    def download(self, file: Any, max_size: int) -> Any:
        return self._answer("download")

    def core_metadata(self, file: Any) -> Any:
        return self._answer("core_metadata")

    def stop(self) -> Any:
        return succeed(None)


class InstrumentedUpstreamTests(SynchronousTestCase):
    def test_outcomes(self) -> None:
        """Upstream calls are counted by operation and outcome and timed; a downloaded file
        adds its size to the upstream bytes; answers pass through unchanged."""
        metrics = Metrics(process=False)
        inner = _Upstream()
        upstream = metrics.instrument_upstream(inner)
        verifyObject(IUpstream, upstream)
        self.assertEqual(upstream.simple_url, inner.simple_url)
        file = UpstreamFile(
            name="demo", version="1.0", filename="demo-1.0.tar.gz", url="https://up.example/d"
        )
        inner.answers["project"] = PageFetch(None, '"etag"')
        self.assertEqual(self.successResultOf(upstream.project("demo", '"etag"')).etag, '"etag"')
        inner.answers["project"] = NotFound("no such project")
        self.failureResultOf(upstream.project("nope", None), NotFound)
        inner.answers["core_metadata"] = UpstreamTimeout("no answer within 10 s")
        self.failureResultOf(upstream.core_metadata(file), UpstreamTimeout)
        inner.answers["download"] = UpstreamError("answered 500")
        self.failureResultOf(upstream.download(file, 100), UpstreamError)
        inner.answers["download"] = Upload(
            filename=file.filename, stream=None, size=321, sha256="", md5="", blake2b_256=""
        )
        self.successResultOf(upstream.download(file, 1000))
        found = {
            (dict(k)["operation"], dict(k)["outcome"]): v
            for k, v in samples(metrics, "pypicloud_upstream_requests_total").items()
        }
        self.assertEqual(
            found,
            {
                ("project", "not_modified"): 1,
                ("project", "not_found"): 1,
                ("core_metadata", "timeout"): 1,
                ("download", "error"): 1,
                ("download", "ok"): 1,
            },
        )
        self.assertEqual(value(metrics, "pypicloud_upstream_bytes_total"), 321)
        timed = samples(metrics, "pypicloud_upstream_request_duration_seconds_count")
        self.assertEqual(timed[frozenset({"operation": "download"}.items())], 2)


class PullThroughMetricsTests(MeteredTestCase):
    def test_fallback_is_measured(self) -> None:
        """With pypi.fallback, the upstream client the application builds is measured."""
        upstream = _Upstream()
        upstream.answers["project"] = NotFound("no such project")
        self.make_metered({"pypi.fallback": "cache"}, upstream=upstream)
        self.assertEqual(self.request("GET", "/simple/nowhere/", user="bob")[0].code, 404)
        labels = {"operation": "project", "outcome": "not_found"}
        self.assertEqual(value(self.metrics, "pypicloud_upstream_requests_total", **labels), 1)


class MutableAccessTests(MeteredTestCase):
    def test_mutable_backend_stays_mutable(self) -> None:
        """A measured SQL access backend still offers registration and the admin API."""
        self.make_metered(dict(MUTABLE_OPTIONS))
        self.assertTrue(IMutableAccessBackend.providedBy(self.ix.backends.access))
