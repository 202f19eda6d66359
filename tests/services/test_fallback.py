"""The fallback service's parts that need no HTTP: single flights, the settings it is built
from, and how the application builds it."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.application import build_backends, build_fallback, build_index
from pypicloud_tx.config.loader import parse_settings
from pypicloud_tx.errors import ConfigError
from pypicloud_tx.runtime import Runtime
from pypicloud_tx.services.fallback import Fallback, FallbackOptions, SingleFlight
from pypicloud_tx.services.upstream import UpstreamClient

BASE = {"pypi.storage": "memory", "pypi.db": "memory", "pypi.auth": "config"}


def settings(**options: str) -> Any:
    return parse_settings({**BASE, **{k.replace("_", ".", 1): v for k, v in options.items()}})


class SingleFlightTests(SynchronousTestCase):
    """One piece of work per key, shared by every caller that asks meanwhile."""

    def test_shared(self) -> None:
        """Callers asking for a running key get its result; the work ran once; a later call
        runs it again."""
        flights = SingleFlight()
        started: list[Deferred[str]] = []

        def work() -> Deferred[str]:
            started.append(Deferred())
            return started[-1]

        first, second = flights.run("k", work), flights.run("k", work)
        other = flights.run("other", work)
        self.assertEqual(len(started), 2)
        started[0].callback("one")
        self.assertEqual(
            (self.successResultOf(first), self.successResultOf(second)), ("one", "one")
        )
        self.assertNoResult(other)
        flights.run("k", work)
        self.assertEqual(len(started), 3)

    def test_failure_shared(self) -> None:
        """A failure reaches every waiter, and is not left unhandled."""
        flights = SingleFlight()
        gate: Deferred[str] = Deferred()
        a, b = flights.run("k", lambda: gate), flights.run("k", lambda: gate)
        gate.errback(ValueError("boom"))
        self.failureResultOf(a, ValueError)
        self.failureResultOf(b, ValueError)
        self.assertEqual(len(flights), 0)

    def test_cancel_one_waiter(self) -> None:
        """A caller that gives up does not cancel the work the others wait for."""
        flights = SingleFlight()
        gate: Deferred[str] = Deferred()
        a, b = flights.run("k", lambda: gate), flights.run("k", lambda: gate)
        a.cancel()
        self.failureResultOf(a, CancelledError)
        self.assertFalse(gate.called)
        gate.callback("done")
        self.assertEqual(self.successResultOf(b), "done")


class SettingsTests(SynchronousTestCase):
    """pypi.fallback* options parsed into Settings."""

    def test_defaults(self) -> None:
        """No fallback options: mode none, PyPI as upstream, 10 s timeout."""
        s = settings()
        self.assertEqual(
            (s.fallback, s.always_show_upstream, s.disallow_fallback, s.fallback_timeout),
            ("none", False, (), 10.0),
        )
        self.assertEqual(s.fallback_simple_url, "https://pypi.org/simple")
        self.assertEqual(s.fallback_root_url, "https://pypi.org")

    def test_parsed(self) -> None:
        """Every option is read, names in disallow_fallback are made canonical, and
        fallback_base_url gives the simple and JSON roots."""
        s = settings(
            pypi_fallback="Cache",
            pypi_fallback_base_url="https://mirror.test/root/",
            pypi_always_show_upstream="yes",
            pypi_disallow_fallback="Our_Pkg other.pkg",
            pypi_fallback_timeout="2.5",
            pypi_fallback_cache_seconds="0",
            pypi_fallback_max_stale="30",
            pypi_fallback_max_connections="3",
        )
        self.assertEqual(s.fallback, "cache")
        self.assertTrue(s.always_show_upstream)
        self.assertEqual(s.disallow_fallback, ("other-pkg", "our-pkg"))
        self.assertEqual(
            (s.fallback_timeout, s.fallback_cache_seconds, s.fallback_max_stale),
            (2.5, 0.0, 30.0),
        )
        self.assertEqual(s.fallback_max_connections, 3)
        self.assertEqual(s.fallback_simple_url, "https://mirror.test/root/simple")
        self.assertEqual(s.fallback_root_url, "https://mirror.test/root")

    def test_refused(self) -> None:
        """Wrong values stop start-up naming the option, never echoing a URL's password."""
        cases = {
            "pypi_fallback": ("proxy", "pypi.fallback: 'proxy' is not one of"),
            "pypi_fallback_base_url": ("ftp://u:hunter2@x", "pypi.fallback_base_url: is not"),
            "pypi_fallback_url": ("https://u:hunter2@x/simple?q=1", "pypi.fallback_url: must"),
            "pypi_fallback_timeout": ("0", "pypi.fallback_timeout: '0' must"),
            "pypi_fallback_max_stale": ("-1", "pypi.fallback_max_stale:"),
            "pypi_fallback_max_connections": ("0", "pypi.fallback_max_connections:"),
            "pypi_disallow_fallback": ("good bad/name", "pypi.disallow_fallback: 'bad/name'"),
        }
        for option, (value, expected) in cases.items():
            with self.assertRaises(ConfigError) as caught:
                settings(**{option: value})
            self.assertIn(expected, caught.exception.message)
            self.assertNotIn("hunter2", caught.exception.message)

    def test_no_not_yet_warning(self) -> None:
        """The fallback options are acted on: no "not supported yet" warning any more; the
        deprecated spellings warn that they are deprecated."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        settings(pypi_fallback="redirect", pypi_fallback_url="https://x.test/simple")
        settings(pypi_use_fallback="true")
        texts = " ".join(str(e.get("log_format")) for e in events)
        self.assertNotIn("not supported", texts)
        self.assertIn("pypi.fallback_url is deprecated", texts)
        self.assertIn("pypi.use_fallback is deprecated", texts)


class BuildTests(SynchronousTestCase):
    """How the application builds the fallback."""

    def build(self, **options: str) -> Fallback:
        s = settings(**options)
        runtime = Runtime.synchronous(reactor=Clock(), settings=s)
        index = build_index(s, build_backends(s, runtime), runtime)
        return build_fallback(s, index, runtime)

    def test_none_has_no_client(self) -> None:
        """Mode none builds no upstream client; stop() fires at once."""
        fallback = self.build()
        self.assertEqual(fallback.mode, "none")
        self.successResultOf(fallback.stop())

    def test_cache_builds_client(self) -> None:
        """Mode cache builds an upstream client with its own pool; the options keep the URL
        without its credentials (it is shown to clients in redirects)."""
        fallback = self.build(
            pypi_fallback="cache",
            pypi_fallback_base_url="https://bot:hunter2@mirror.test",
            pypi_cache_update="devs admins",
        )
        self.assertIsInstance(fallback._upstream, UpstreamClient)
        self.assertEqual(fallback.options.simple_url, "https://mirror.test/simple")
        self.assertEqual(fallback.options.base_url, "https://mirror.test")
        self.assertEqual(fallback.options.cache_update, ("devs", "admins"))
        self.successResultOf(fallback.stop())

    def test_needs_upstream(self) -> None:
        """A fallback that must look upstream refuses to be built without a client."""
        s = settings()
        runtime = Runtime.synchronous(reactor=Clock(), settings=s)
        index = build_index(s, build_backends(s, runtime), runtime)
        with self.assertRaises(ValueError):
            Fallback(index, None, FallbackOptions(mode="cache"), Clock())


class ServiceTreeTests(SynchronousTestCase):
    """``twist pypicloud`` with a fallback that looks upstream."""

    def test_stopper_between_pools_and_server(self) -> None:
        """With pypi.fallback = cache the tree is thread pools, the fallback's stopper, then
        the server: stopped in reverse, the upstream pool closes after the server stopped
        listening and before the thread pools stop.  Nothing runs or connects before
        start."""
        import os

        from pypicloud_tx.application import FallbackStopper, IndexServer, ThreadPools
        from pypicloud_tx.tap import Options, makeService

        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(
                "[pypicloud]\npypi.storage = memory\npypi.db = memory\n"
                "pypi.fallback = cache\npypi.fallback_base_url = http://127.0.0.1:9\n"
            )
        options = Options()
        options.parseOptions(["--config", path, "--listen", "tcp:0:interface=127.0.0.1"])
        service = makeService(options)
        children = list(service)  # type: ignore[call-overload]
        self.assertEqual([type(c) for c in children], [ThreadPools, FallbackStopper, IndexServer])
        self.assertFalse(any(c.running for c in children))
        self.successResultOf(children[1].stopService())
