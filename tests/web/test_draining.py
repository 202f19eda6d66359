"""Graceful shutdown of the site: requests in progress finish, connections then close."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pypicloud_tx.web.draining import InFlight
from pypicloud_tx.web.root import IndexSite

DONE = Failure(ConnectionDone())
GET = b"GET /slow HTTP/1.1\r\nHost: index.test\r\n\r\n"


class Slow(Resource):
    """Answers only when the test says so; remembers the requests it holds."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.held.append(request)
        request.setHeader(b"Content-Length", b"3")
        return NOT_DONE_YET

    def render_POST(self, request: Any) -> bytes:
        return b"ok\n"

    def answer(self) -> None:
        for request in self.held:
            request.write(b"ok\n")
            request.finish()
        self.held = []


class FakePort:
    """A listening port that records being stopped."""

    stopped = False

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 6543)


class FakeEndpoint:
    def __init__(self) -> None:
        self.port = FakePort()
        self.factory: Any = None

    def listen(self, factory: Any) -> Deferred[FakePort]:
        self.factory = factory
        return succeed(self.port)


class InFlightTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = Slow()
        self.site = IndexSite(self.resource, 1024 * 1024, reactor=self.clock)
        self.in_flight = InFlight(self.site, self.clock, grace=10.0)
        self.endpoint = FakeEndpoint()
        self.port = self.successResultOf(self.in_flight.listen(self.endpoint))

    def connect(self, data: bytes = b"") -> StringTransport:
        """A connection to the site, fed ``data``; its transport (``.protocol`` is the
        channel)."""
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        transport.protocol = protocol  # type: ignore[attr-defined]
        protocol.makeConnection(transport)
        if data:
            protocol.dataReceived(data)
        self.addCleanup(protocol.connectionLost, DONE)
        return transport

    def test_listens_with_the_site(self) -> None:
        """The site itself is given to the endpoint; the port reports the endpoint's host."""
        self.assertIs(self.endpoint.factory, self.site)
        self.assertEqual(self.port.getHost().port, 6543)

    def test_waits_for_requests_in_progress(self) -> None:
        """Stopping stops listening at once, then waits for the request in progress; it is
        answered in full, with ``Connection: close``, and its connection is closed after."""
        transport = self.connect(GET)
        self.assertEqual(len(self.in_flight), 1)
        stopped = self.port.stopListening()
        self.assertTrue(self.endpoint.port.stopped)
        self.assertNoResult(stopped)
        self.clock.advance(5)
        self.assertNoResult(stopped)
        self.resource.answer()
        self.successResultOf(stopped)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertIn(b"200 OK", head)
        self.assertIn(b"connection: close", head.lower())
        self.assertEqual(body, b"ok\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.in_flight), 0)

    def test_upload_in_progress_counts(self) -> None:
        """A request whose body is still arriving is in progress: the stop waits until it is
        complete and answered."""
        transport = self.connect(
            b"POST /up HTTP/1.1\r\nHost: index.test\r\nContent-Length: 10\r\n\r\nhalf!"
        )
        stopped = self.port.stopListening()
        self.assertNoResult(stopped)
        self.assertFalse(transport.disconnecting)
        transport.protocol.dataReceived(b"done!")  # type: ignore[attr-defined]
        self.successResultOf(stopped)
        self.assertTrue(transport.value().endswith(b"ok\n"))
        self.assertTrue(transport.disconnecting)

    def test_idle_connections_closed(self) -> None:
        """A keep-alive connection with no request in progress is closed when stopping, and
        the stop does not wait for it."""
        transport = self.connect(
            b"POST /up HTTP/1.1\r\nHost: index.test\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertTrue(transport.value().endswith(b"ok\n"))
        self.assertFalse(transport.disconnecting)
        self.successResultOf(self.port.stopListening())
        self.assertTrue(transport.disconnecting)

    def test_grace_period_bounds_the_wait(self) -> None:
        """A request still running when the grace period ends is left to be cut off: the stop
        completes after ``grace`` seconds."""
        self.connect(GET)
        stopped = self.port.stopListening()
        self.clock.advance(9.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.2)
        self.successResultOf(stopped)
        self.assertEqual(len(self.in_flight), 1)

    def test_no_grace(self) -> None:
        """With ``pypi.shutdown_grace = 0`` the stop does not wait."""
        site = IndexSite(self.resource, 1024, reactor=self.clock)
        in_flight = InFlight(site, self.clock, grace=0)
        port = self.successResultOf(in_flight.listen(FakeEndpoint()))
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(GET)
        self.addCleanup(protocol.connectionLost, DONE)
        self.successResultOf(port.stopListening())

    def test_lost_connection_ends_the_request(self) -> None:
        """A client that goes away ends its request: the stop need not wait for it."""
        transport = self.connect(GET)
        stopped = self.port.stopListening()
        self.assertNoResult(stopped)
        transport.protocol.connectionLost(DONE)  # type: ignore[attr-defined]
        self.successResultOf(stopped)

    def test_request_arriving_while_draining(self) -> None:
        """A request that arrives on an open connection while draining is served, answered
        with ``Connection: close``, and the connection is closed after it."""
        first = self.connect(GET)
        stopped = self.port.stopListening()
        late = self.connect(GET)
        self.assertEqual(len(self.in_flight), 2)
        self.resource.answer()
        self.successResultOf(stopped)
        for transport in (first, late):
            self.assertIn(b"connection: close", transport.value().lower())
            self.assertTrue(transport.value().endswith(b"ok\n"))
            self.assertTrue(transport.disconnecting)
