"""One request, observed: its id, the log context it runs in, its access-log line, its metrics.

Every request gets an id: the client's (or proxy's) ``X-Request-ID`` when it is a sane token,
else a new random one.  It is sent back in the ``X-Request-ID`` response header, written on
the request's access-log line, and added as the ``request_id`` field to every log event
emitted while the request is handled.

That last part works through :mod:`contextvars`: :class:`ObservedRequest` processes the
request in a context of its own holding the id, Twisted runs each step of a coroutine
(``async def`` routes and the services they await) in the context the coroutine started in,
and :func:`add_request_id`, an observer placed ahead of the log file's, copies the id into
each event.  Events emitted outside any request (start-up, a backend's reconnection) carry
no ``request_id``.
"""

from __future__ import annotations

import contextvars
import re
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from klein import Klein
from klein.interfaces import IKleinRequest
from twisted.logger import ILogObserver, Logger, LogPublisher, globalLogPublisher
from twisted.web import server
from zope.interface import provider

if TYPE_CHECKING:
    from pypicloud_tx.metrics import Metrics

#: The id of the request being handled, in the context it is handled in.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pypicloud_request_id", default=None
)
HEADER = b"X-Request-ID"
#: An incoming id is used when it is one short token (UUIDs, nginx's ``$request_id``,
#: trace ids); anything else is replaced, so a client cannot forge log lines with it.
_VALID_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}\Z")
#: The route label of a request that matched no route (a 404 from the router).
UNMATCHED = "unmatched"
#: The status recorded for a request whose client went away before its answer ended
#: (nginx's "client closed request").
ABORTED = 499
#: ``<string:project>`` -> ``<project>`` in route patterns.
_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")

access_log = Logger(namespace="pypicloud_tx.access")
ACCESS_FORMAT = (
    '{client} - {user} "{method} {uri} {protocol}" {status} {size} "{referrer}" '
    '"{user_agent}" {duration:.4f}s {request_id}'
)


def new_request_id() -> str:
    return secrets.token_hex(8)


def current_request_id() -> str | None:
    """The id of the request whose handling is running now, if any."""
    return REQUEST_ID.get()


def request_id(request: Any) -> str | None:
    """The id of ``request`` (``None`` for a request this module never saw)."""
    return getattr(request, "request_id", None) or None


def request_metrics(request: Any) -> Metrics | None:
    """The metrics of the site ``request`` came through (``None`` when off)."""
    return getattr(getattr(request, "site", None), "metrics", None)


# -- the log context -----------------------------------------------------------------------


@provider(ILogObserver)
def add_request_id(event: dict[str, Any]) -> None:
    """Add ``request_id`` to an event emitted while a request is handled."""
    if "request_id" not in event:
        found = REQUEST_ID.get()
        if found is not None:
            event["request_id"] = found


def install_log_context(publisher: LogPublisher = globalLogPublisher) -> None:
    """Put :func:`add_request_id` on ``publisher`` (once).

    It must come before the observer that writes the log: ``twist`` builds the service
    (calling this) before it begins logging to its file, and an observer added later runs
    after ours.
    """
    publisher.addObserver(add_request_id)


def _run_with_id(rid: str, call: Callable[..., Any], *args: Any) -> Any:
    REQUEST_ID.set(rid)
    return call(*args)


def in_request_context(request: Any, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)`` in a context holding ``request``'s id (when it has one)."""
    rid = request_id(request)
    if rid is None:
        return call(*args)
    return contextvars.copy_context().run(_run_with_id, rid, call, *args)


# -- the request ---------------------------------------------------------------------------


class ObservedRequest(server.Request):
    """A request with an id, a start time, the route it matched, and a log context."""

    request_id = ""
    #: The pattern of the route that answered (set by :func:`track_routes`).
    route: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Created when the request line arrives, so the time includes reading the body.
        self.started = time.perf_counter()

    def process(self) -> None:
        incoming = self.requestHeaders.getRawHeaders(b"x-request-id")
        if incoming and _VALID_ID.match(incoming[-1]):
            self.request_id = incoming[-1].decode("ascii")
        else:
            self.request_id = new_request_id()
        self.responseHeaders.setRawHeaders(HEADER, [self.request_id.encode("ascii")])
        contextvars.copy_context().run(_run_with_id, self.request_id, super().process)

    def connectionLost(self, reason: Any) -> None:
        site = getattr(self, "site", None)
        super().connectionLost(reason)
        if not self.finished and self.request_id:
            request_ended(site, self, aborted=True)


def request_ended(site: Any, request: Any, aborted: bool = False) -> None:
    """Count ``request`` in the site's metrics and write its access-log line (when on)."""
    started = getattr(request, "started", None)
    if started is None:
        return
    seconds = time.perf_counter() - started
    status = ABORTED if aborted else request.code
    metrics = getattr(site, "metrics", None)
    if metrics is not None:
        metrics.observe_request(
            getattr(request, "route", None) or UNMATCHED, request.method, str(status), seconds
        )
    if getattr(site, "access_log", False):
        _log_access(request, status, seconds, aborted)


def _text(value: bytes | None) -> str:
    """A header or URI as printable text for a log line (quotes and controls escaped)."""
    if not value:
        return "-"
    return value.decode("latin-1").encode("unicode_escape").decode("ascii").replace('"', '\\"')


def _log_access(request: Any, status: int, seconds: float, aborted: bool) -> None:
    address = request.getClientAddress()
    identity = getattr(request, "_ppc_identity", None)
    access_log.info(
        ACCESS_FORMAT,
        client=getattr(address, "host", None) or "-",
        user=getattr(identity, "username", None) or "-",
        method=_text(request.method),
        uri=_text(request.uri),
        protocol=_text(request.clientproto),
        status=status,
        size=request.sentLength,
        referrer=_text(request.getHeader(b"referer")),
        user_agent=_text(request.getHeader(b"user-agent")),
        duration=seconds,
        request_id=request_id(request) or "-",
        route=getattr(request, "route", None) or UNMATCHED,
        aborted=aborted,
    )


# -- routes --------------------------------------------------------------------------------


def route_pattern(rule: str) -> str:
    """A Werkzeug rule as a label: ``/simple/<string:project>/`` -> ``/simple/<project>/``."""
    return _CONVERTER.sub(r"<\1>", rule)


def track_routes(app: Klein) -> None:
    """Record on each request the pattern of the route that answers it, and run the error
    handlers in the request's log context.

    Klein matches the route but keeps the rule to itself, so ``app``'s two entry points are
    wrapped: an endpoint with one pattern is looked up in a table; one routed at several
    patterns (``/simple/`` and ``/pypi/``) asks the request's router again.
    """
    execute_endpoint = app.execute_endpoint
    execute_error_handler = app.execute_error_handler
    patterns: dict[str, str | None] = {}

    def pattern_of(endpoint: str, request: Any) -> str:
        if not patterns:
            found: dict[str, set[str]] = {}
            for rule in app.url_map.iter_rules():
                found.setdefault(str(rule.endpoint), set()).add(route_pattern(rule.rule))
            patterns.update((k, next(iter(v)) if len(v) == 1 else None) for k, v in found.items())
        known = patterns.get(endpoint)
        if known is not None:
            return known
        try:
            rule, _ = IKleinRequest(request).mapper.match(return_rule=True)
            return route_pattern(rule.rule)
        except Exception:
            return UNMATCHED

    # Positional-only: a route's own arguments may be called "name" or "request".
    def endpoint(name: str, request: Any, /, *args: Any, **kwargs: Any) -> Any:
        if isinstance(request, ObservedRequest):
            request.route = pattern_of(name, request)
        return execute_endpoint(name, request, *args, **kwargs)

    def error_handler(handler: Any, request: Any, failure: Any, /) -> Any:
        return in_request_context(request, execute_error_handler, handler, request, failure)

    app.execute_endpoint = endpoint  # type: ignore[method-assign,assignment]
    app.execute_error_handler = error_handler  # type: ignore[method-assign,assignment]
