"""Graceful shutdown: stop listening, let the requests in progress finish, then go.

On SIGTERM ``twist`` stops the application's services before it stops the reactor, and the
reactor closes every connection that is still open right after.  :class:`InFlight` counts the
site's requests from their first line to their end (an upload still arriving counts, and so
does a download still being sent) and, when the listening port stops, waits up to
``pypi.shutdown_grace`` seconds for them:

- idle keep-alive connections are closed at once, and every connection is closed as soon as
  its last request is answered (answers written while draining say ``Connection: close``);
- a request that arrives on an open connection meanwhile is still served;
- what is still running when the grace period ends is cut off by the reactor, as before.

The backends and thread pools stop only after this (``IndexServer`` stops the port first).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.server import Site
from zope.interface import directlyProvides, implementer

log = Logger()


class InFlight:
    """The requests of one :class:`~twisted.web.server.Site` in progress, and the wait for them.

    :param site: the site; its ``requestFactory`` is wrapped, so build it first.
    :param clock: the reactor (``callLater``, ``seconds``).
    :param grace: seconds to wait for requests after the port stops; 0 does not wait.
    """

    def __init__(self, site: Site, clock: Any, grace: float) -> None:
        self._site = site
        self._clock = clock
        self._grace = grace
        self._requests: set[Any] = set()
        self._channels: weakref.WeakSet[Any] = weakref.WeakSet()
        self._draining = False
        self._idle: Deferred[None] | None = None
        # Twisted types it as a Request class; any callable taking the channel will do.
        site.requestFactory = self._wrap(site.requestFactory)  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self._requests)

    def _wrap(self, factory: Callable[..., Any]) -> Callable[..., Any]:
        def make(channel: Any, *args: Any, **kwargs: Any) -> Any:
            request = factory(channel, *args, **kwargs)
            self._requests.add(request)
            self._channels.add(channel)
            if self._draining:
                request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            request.notifyFinish().addBoth(self._ended, request, channel)
            return request

        if INonQueuedRequestFactory.providedBy(factory):
            directlyProvides(make, INonQueuedRequestFactory)
        return make

    def _ended(self, result: object, request: Any, channel: Any) -> None:
        self._requests.discard(request)
        if self._draining:
            if not getattr(channel, "requests", None):
                _close(channel)
            if not self._requests and self._idle is not None:
                idle, self._idle = self._idle, None
                idle.callback(None)

    def listen(self, endpoint: IStreamServerEndpoint) -> Deferred[IListeningPort]:
        """Listen with the site on ``endpoint``; the port's ``stopListening`` also drains."""
        return endpoint.listen(self._site).addCallback(lambda port: _DrainingPort(port, self))

    async def drain(self) -> None:
        """Close idle connections; wait until no request is in progress, or the grace ends."""
        self._draining = True
        for channel in list(self._channels):
            if getattr(channel, "requests", None):
                for request in channel.requests:
                    if not request.startedWriting:
                        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            else:
                _close(channel)
        if not self._requests:
            return
        count = len(self._requests)
        log.info(
            "waiting up to {grace}s for {count} requests in progress",
            grace=self._grace,
            count=count,
        )
        if self._grace <= 0:
            return
        started = self._clock.seconds()
        self._idle = Deferred()
        self._idle.addTimeout(self._grace, self._clock, onTimeoutCancel=lambda *_: None)
        await self._idle
        self._idle = None
        if self._requests:
            log.warn(
                "{count} requests still in progress after {grace}s are cut off",
                count=len(self._requests),
                grace=self._grace,
            )
        else:
            log.info(
                "the requests in progress finished in {seconds:.1f}s",
                seconds=self._clock.seconds() - started,
            )


def _close(channel: Any) -> None:
    transport = getattr(channel, "transport", None)
    if transport is not None and not getattr(transport, "disconnecting", False):
        transport.loseConnection()


@implementer(IListeningPort)
class _DrainingPort:
    """A listening port whose :meth:`stopListening` waits for :class:`InFlight` to drain."""

    def __init__(self, port: IListeningPort, in_flight: InFlight) -> None:
        self._port = port
        self._in_flight = in_flight

    def startListening(self) -> None:
        self._port.startListening()

    def stopListening(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await maybeDeferred(self._port.stopListening)
        await self._in_flight.drain()

    def getHost(self) -> Any:
        return self._port.getHost()
