"""``GET /metrics``: the Prometheus metrics, for the clients of ``pypi.metrics_allow``.

A request may read them when its peer and every client address a proxy forwarded for it
(``X-Forwarded-For``, ``X-Real-IP``, ``Forwarded``) are allowed.  A scraper that connects
directly is judged by its own address; a request that came in through a proxy on this host
(whose address, 127.0.0.1, is allowed by default) is judged by the client address the proxy
forwards, so the public side of the proxy never sees the metrics.  ``unix`` in the list
allows peers on a Unix socket.  What a trusted proxy (``pypi.trusted_proxies``) forwarded
has already replaced the peer address (``web/proxy.py``); the headers are checked as well.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator

import attrs
from klein import Klein
from twisted.internet.address import UNIXAddress
from twisted.web.iweb import IRequest

from pypicloud_tx.errors import Forbidden
from pypicloud_tx.web.context import WebContext
from pypicloud_tx.web.proxy import parse_ip

#: ``for=`` of each element of a ``Forwarded`` header (RFC 7239).
_FORWARDED_FOR = re.compile(r'(?:^|[;,\s])for\s*=\s*("[^"]*"|[^;,\s]+)', re.IGNORECASE)


@attrs.frozen
class AllowList:
    """Who may read the metrics: networks, and whether Unix-socket peers may."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    unix: bool = False

    @classmethod
    def from_words(cls, words: Iterable[str]) -> AllowList:
        """From ``pypi.metrics_allow``'s words (checked by the loader)."""
        words = list(words)
        return cls(
            tuple(ipaddress.ip_network(w, strict=False) for w in words if w.lower() != "unix"),
            any(w.lower() == "unix" for w in words),
        )

    def allows(self, address: str | None) -> bool:
        """Whether ``address`` (as a proxy writes it: ``1.2.3.4``, ``[::1]:80``) is allowed;
        anything that is not an address (``unknown``, an obfuscated name) is not."""
        ip = parse_ip(address)
        return ip is not None and any(ip in network for network in self.networks)

    def may_read(self, request: IRequest) -> bool:
        """Whether the peer and every forwarded client address of ``request`` are allowed."""
        peer = request.getClientAddress()
        if isinstance(peer, UNIXAddress):
            if not self.unix:
                return False
        elif not self.allows(getattr(peer, "host", None)):
            return False
        return all(self.allows(address) for address in forwarded_for(request))


def forwarded_for(request: IRequest) -> Iterator[str]:
    """Every client address proxies wrote into the request's headers, as written."""
    headers = request.requestHeaders
    for value in headers.getRawHeaders(b"x-forwarded-for") or ():
        yield from (part.strip() for part in value.decode("latin-1").split(","))
    for value in headers.getRawHeaders(b"x-real-ip") or ():
        yield value.decode("latin-1").strip()
    for value in headers.getRawHeaders(b"forwarded") or ():
        for match in _FORWARDED_FOR.finditer(value.decode("latin-1")):
            yield match.group(1).strip('"')


def add_metrics_routes(app: Klein, ctx: WebContext) -> None:
    """``/metrics`` when the application measures (``pypi.metrics``); else no such route."""
    metrics = ctx.metrics
    if metrics is None:
        return
    allowed = AllowList.from_words(ctx.settings.metrics_allow)

    @app.route("/metrics", methods=["GET", "HEAD"])
    def metrics_page(request: IRequest) -> bytes:
        if not allowed.may_read(request):
            raise Forbidden("The metrics are only shown to the clients of pypi.metrics_allow.")
        accept = request.getHeader(b"accept")
        body, content_type = metrics.exposition(accept.decode("latin-1") if accept else None)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return body
