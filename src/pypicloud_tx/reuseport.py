"""The ``reuseport:`` endpoint: TCP listening with ``SO_REUSEPORT``, for N processes on one port.

``twist pypicloud --listen reuseport:port=6543:interface=127.0.0.1`` in each of N processes: each
process binds its own socket to the same address, and the kernel spreads new connections
evenly over them (by a hash of the client's address and port).  Options, as for ``tcp:``:
``port`` (required), ``interface`` (default: every IPv4 interface; an IPv6 address listens on
IPv6, colons escaped as ``\\:``) and ``backlog`` (default 1024).

This is what ``docs/pypicloud-tx@.socket`` (``ReusePort=true``) does under systemd, where the
socket outlives its process; here the socket closes with the process, so connections still
waiting in the queue of a process that stops are reset.  Linux only (3.9+).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IListeningPort,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """Listens on ``interface:port`` with ``SO_REUSEADDR`` and ``SO_REUSEPORT`` set."""

    def __init__(self, reactor: Any, port: int, interface: str = "", backlog: int = 1024) -> None:
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._backlog = backlog
        self._family = socket.AF_INET6 if ":" in interface else socket.AF_INET

    def listen(self, factory: Any) -> defer.Deferred[IListeningPort]:
        try:
            sock = socket.socket(self._family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((self._interface, self._port))
                sock.listen(self._backlog)
                sock.setblocking(False)
                port = self._reactor.adoptStreamPort(sock.fileno(), self._family, factory)
            finally:
                # The reactor holds its own copy of the descriptor.
                sock.close()
        except Exception:
            return defer.fail()
        return defer.succeed(port)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    """Parses ``reuseport:port=N[:interface=ADDR][:backlog=N]`` (port may come first)."""

    prefix = "reuseport"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> ReusePortEndpoint:
        return self._parse(reactor, *args, **kwargs)

    def _parse(
        self, reactor: Any, port: str, interface: str = "", backlog: str = "1024"
    ) -> ReusePortEndpoint:
        if not hasattr(socket, "SO_REUSEPORT"):
            raise ValueError("SO_REUSEPORT is not available on this system")
        return ReusePortEndpoint(reactor, int(port), interface, int(backlog))
