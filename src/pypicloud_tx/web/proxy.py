"""Requests that came through a trusted reverse proxy: the public URL and the client's address.

Behind nginx the server sees the proxy's address and whatever ``Host`` the proxy sends; the
public scheme, host, path prefix and the client's address arrive in ``X-Forwarded-*`` headers.
Anybody can send those headers, so they are believed only when the peer is one of
``pypi.trusted_proxies`` (none by default).  A request from a trusted proxy is then made to look
like the public request (:meth:`twisted.web.http.Request.setHost`), so every URL the application
builds (``WebContext.base_url``, redirects, Klein's own) and the address used for login
throttling and the access log are the public ones:

``X-Forwarded-Proto``
    ``http`` or ``https``: the scheme the client used.
``X-Forwarded-Host`` (else the ``Host`` the proxy sent) and ``X-Forwarded-Port``
    the host (and port) the client asked for.
``X-Forwarded-Prefix``
    the path the proxy serves the index under (``/pypi``); an absolute-path ``Location``
    (``/simple/name/``) gets it in front, and ``base_url`` ends with it.
``X-Forwarded-For``
    the client: the rightmost address that is not a trusted proxy.

With ``pypi.proxy_headers = forwarded`` the standard ``Forwarded`` header (RFC 7239) is read
instead of ``X-Forwarded-For/Proto/Host/Port`` (which are then ignored): ``proto``, ``host`` and
the rightmost ``for`` that is not a trusted proxy.  It has no prefix parameter, so
``X-Forwarded-Prefix`` still names the prefix.  Only one family is read, never both: a proxy that
sets one family usually passes the other through from the client untouched.

Where a proxy appended to a header that already had values, the last (rightmost) value is the
one the trusted proxy wrote.  A value that does not parse is ignored, as if it were absent.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?$")
#: A path prefix: ASCII path characters only, no empty, ``.`` or ``..`` segment.
_PREFIX = re.compile(r"^(/[A-Za-z0-9_.~%!$&'()*+,;=:@-]+)+$")


@attrs.frozen
class TrustedProxies:
    """The peers whose ``X-Forwarded-*`` headers are believed.

    :ivar networks: the trusted addresses, as networks (a single address is a /32 or /128).
    :ivar unix: whether a peer on a Unix socket is trusted (only local processes that may open
        the socket file can connect there).
    """

    networks: tuple[IPNetwork, ...] = ()
    unix: bool = False
    #: which headers they write: ``x-forwarded`` (``X-Forwarded-*``) or ``forwarded``
    #: (RFC 7239): ``pypi.proxy_headers``.
    headers: str = "x-forwarded"

    @classmethod
    def from_words(cls, words: Iterable[str], headers: str = "x-forwarded") -> TrustedProxies:
        """From ``pypi.trusted_proxies``' words (already checked by the loader) and
        ``pypi.proxy_headers``.

        :raises ValueError: for a word that is neither a network nor ``unix``.
        """
        networks = []
        unix = False
        for word in words:
            if word.lower() == "unix":
                unix = True
            else:
                networks.append(ipaddress.ip_network(word, strict=False))
        return cls(tuple(networks), unix, headers)

    def __bool__(self) -> bool:
        return bool(self.networks) or self.unix

    def trusts_ip(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.networks)

    def trusts(self, peer: Any) -> bool:
        """Whether the connection's peer address (a Twisted address) is a trusted proxy."""
        if isinstance(peer, UNIXAddress):
            return self.unix
        ip = parse_ip(getattr(peer, "host", None))
        return ip is not None and self.trusts_ip(ip)


def parse_ip(text: str | bytes | None) -> IPAddress | None:
    """An IP address (IPv4-mapped IPv6 addresses as IPv4), or ``None``.

    Accepts the forms proxies write in ``X-Forwarded-For``: ``1.2.3.4``, ``1.2.3.4:5678``,
    ``2001:db8::1`` and ``[2001:db8::1]:5678``.
    """
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def forwarded_client(values: Sequence[bytes], proxies: TrustedProxies) -> IPAddress | None:
    """The client of ``X-Forwarded-For`` ``values``: the rightmost hop that is not a trusted
    proxy (every hop being trusted: the leftmost).  ``None`` when the last hop is not an
    address.  Hops left of one that does not parse are not believed."""
    return _client([hop for value in values for hop in value.split(b",")], proxies)


def _client(hops: Sequence[bytes], proxies: TrustedProxies) -> IPAddress | None:
    """The rightmost of ``hops`` that is not a trusted proxy (see :func:`forwarded_client`)."""
    client = None
    for hop in reversed(hops):
        ip = parse_ip(hop)
        if ip is None:
            break
        client = ip
        if not proxies.trusts_ip(ip):
            break
    return client


# RFC 7239 section 4: forwarded-pair = token "=" ( token / quoted-string ).  A value with a
# ":" or "[" (a port, an IPv6 address) must be quoted, but proxies configured by hand often
# write it bare ("for=$remote_addr" in nginx): any run of characters up to the next separator
# is read as the value.  What the value is worth is checked where it is used.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PAIR = re.compile(rf'\s*({_TOKEN})\s*=\s*([^\s";,]+|"(?:[^"\\]|\\.)*")\s*')


def parse_forwarded(values: Sequence[bytes]) -> list[dict[str, str]]:
    """The elements of ``Forwarded`` header lines, left to right, each as ``{parameter: value}``
    (parameter names lower-cased, quoted strings unquoted).  An element that does not parse is
    an empty dict: it still counts as a hop, about which nothing is known."""
    elements: list[dict[str, str]] = []
    for line in values:
        text = line.decode("latin-1")
        position = 0
        element: dict[str, str] = {}
        broken = False
        while position < len(text):
            match = _PAIR.match(text, position)
            if match is None:
                broken = True
                end = text.find(",", position)
                position = len(text) if end < 0 else end
            else:
                name, value = match.group(1).lower(), match.group(2)
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                if name in element:
                    broken = True  # a parameter twice in one element (section 4): distrust it
                element[name] = value
                position = match.end()
            if position >= len(text) or text[position] == ",":
                elements.append({} if broken else element)
                element, broken = {}, False
                position += 1
            elif text[position] == ";":
                position += 1
            else:
                broken = True
                end = text.find(",", position)
                position = len(text) if end < 0 else end
    return elements


def forwarded_for(
    elements: Sequence[Mapping[str, str]], proxies: TrustedProxies
) -> IPAddress | None:
    """The client of parsed ``Forwarded`` elements: as :func:`forwarded_client`, over their
    ``for`` parameters (``unknown`` and obfuscated ``_names`` are not addresses)."""
    return _client([element.get("for", "").encode("latin-1") for element in elements], proxies)


def _last(request: IRequest, name: bytes) -> str | None:
    """The rightmost value of header ``name`` (over repeated lines and commas), or ``None``."""
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    last = values[-1].rpartition(b",")[2].strip()
    return last.decode("latin-1") if last else None


def _prefix(text: str | None) -> str:
    """A valid ``X-Forwarded-Prefix`` without its trailing ``/`` (``""`` for none or bad)."""
    if not text:
        return ""
    value = text.rstrip("/")
    if not _PREFIX.match(value) or any(s in (".", "..") for s in value.split("/")[1:]):
        return ""
    return value


def prefix_of(request: IRequest) -> str:
    """The public path prefix of a request (``/pypi``), ``""`` when served at the root."""
    return str(getattr(request, "_ppc_prefix", ""))


class _PrefixedLocation(Headers):
    """Response headers that put the public path prefix in front of an absolute-path
    ``Location`` (``/simple/name/`` -> ``/pypi/simple/name/``); other headers are untouched."""

    __slots__ = ("_location_prefix",)

    def __init__(self, prefix: bytes, headers: Headers) -> None:
        self._location_prefix = prefix
        super().__init__()
        for name, values in headers.getAllRawHeaders():
            super().setRawHeaders(name, list(values))

    def _prefixed(self, value: str | bytes) -> bytes:
        raw = value.encode("utf-8") if isinstance(value, str) else value
        if raw.startswith(b"/") and not raw.startswith(b"//"):
            return self._location_prefix + raw
        return raw

    def setRawHeaders(self, name: str | bytes, values: Sequence[str | bytes]) -> None:
        if _is_location(name):
            values = [self._prefixed(v) for v in values]
        super().setRawHeaders(name, values)

    def addRawHeader(self, name: str | bytes, value: str | bytes) -> None:
        if _is_location(name):
            value = self._prefixed(value)
        super().addRawHeader(name, value)


def _is_location(name: str | bytes) -> bool:
    return (name.encode("latin-1") if isinstance(name, str) else name).lower() == b"location"


def apply_forwarded(request: Any, proxies: TrustedProxies) -> None:
    """Make a request from a trusted proxy look like the public request (nothing otherwise).

    ``request`` is a :class:`twisted.web.http.Request` (``setHost``, ``client`` and
    ``prepath`` are not part of ``IRequest``).
    """
    if not proxies.trusts(request.getClientAddress()):
        return
    client: IPAddress | None = None
    if proxies.headers == "forwarded":
        elements = parse_forwarded(request.requestHeaders.getRawHeaders(b"forwarded") or [])
        client = forwarded_for(elements, proxies) if elements else None
        # The rightmost element is the one the trusted proxy wrote.
        newest = elements[-1] if elements else {}
        proto = newest.get("proto", "").lower()
        host_text, port_text = newest.get("host"), None
    else:
        forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for")
        client = forwarded_client(forwarded, proxies) if forwarded else None
        proto = (_last(request, b"x-forwarded-proto") or "").lower()
        host_text = _last(request, b"x-forwarded-host")
        port_text = _last(request, b"x-forwarded-port")
    if client is not None:
        kind = IPv4Address if client.version == 4 else IPv6Address
        request.client = kind("TCP", str(client), 0)
    host_match = _HOST.match(host_text) if host_text else None
    if proto in ("http", "https") or host_match or port_text:
        secure = proto == "https" if proto in ("http", "https") else bool(request.isSecure())
        # X-Forwarded-Port counts unless X-Forwarded-Host named a port itself.
        if host_match is not None and host_match.group(2):
            port_text = None
        if host_match is None:
            header = (request.getHeader(b"host") or b"").decode("latin-1")
            host_match = _HOST.match(header)
        if host_match is not None:
            host, port = host_match.group(1), host_match.group(2)
        else:
            host, port = str(getattr(request.getHost(), "host", "localhost")), None
        if port_text and port_text.isdigit():
            port = port_text
        number = int(port) if port and 0 < int(port) < 65536 else (443 if secure else 80)
        request.setHost(host.encode("ascii"), number, ssl=secure)
    prefix = _prefix(_last(request, b"x-forwarded-prefix"))
    if prefix:
        request._ppc_prefix = prefix
        # Klein builds its own URLs (werkzeug redirects) from prepath, as a script name.
        request.prepath = [s.encode("ascii") for s in prefix.split("/")[1:]]
        request.responseHeaders = _PrefixedLocation(prefix.encode("ascii"), request.responseHeaders)


class BehindProxies(Resource):
    """Wraps the application's resource: applies :func:`apply_forwarded`, then renders it."""

    isLeaf = True

    def __init__(self, resource: IResource, proxies: TrustedProxies) -> None:
        super().__init__()
        self._resource = resource
        self._proxies = proxies

    def render(self, request: IRequest) -> Any:
        apply_forwarded(request, self._proxies)
        return self._resource.render(request)


def behind_proxies(
    resource: IResource, trusted: Iterable[str], headers: str = "x-forwarded"
) -> IResource:
    """``resource`` itself when no proxy is trusted, else wrapped in :class:`BehindProxies`."""
    proxies = TrustedProxies.from_words(trusted, headers)
    return BehindProxies(resource, proxies) if proxies else resource
