"""The whole HTTP application: routes, error mapping, and a Site that bounds request bodies."""

from __future__ import annotations

import json
import tempfile
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from pypicloud_tx.metrics import Metrics
from pypicloud_tx.web.admin import add_admin_routes
from pypicloud_tx.web.api import add_api_routes
from pypicloud_tx.web.context import WebContext, json_body
from pypicloud_tx.web.errors import failure_to_response
from pypicloud_tx.web.fetch import add_fetch_routes
from pypicloud_tx.web.metrics import add_metrics_routes
from pypicloud_tx.web.proxy import behind_proxies
from pypicloud_tx.web.requestlog import ObservedRequest, request_ended, track_routes
from pypicloud_tx.web.simple import add_simple_routes
from pypicloud_tx.web.tokens import add_token_routes
from pypicloud_tx.web.ui import add_ui_routes
from pypicloud_tx.web.users import add_user_routes

log = Logger()

#: Bodies up to this size stay in memory; larger ones are spooled to disk as they arrive.
IN_MEMORY_BODY = 256 * 1024
#: Room for the multipart framing and form fields around the file itself.
FORM_OVERHEAD = 16 * 1024 * 1024


def build_app(ctx: WebContext) -> Klein:
    app = Klein()

    @app.route("/ping", methods=["GET", "HEAD"])
    def ping(request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"pong\n"

    @app.route("/health", methods=["GET", "HEAD"])
    async def health(request: IRequest) -> bytes:
        report = await ctx.index.timed_health()
        ok = all(status for status, _, _ in report.values())
        return json_body(
            request,
            {
                "status": "ok" if ok else "unavailable",
                "backends": {
                    k: {"ok": v[0], "message": v[1], "seconds": round(v[2], 6)}
                    for k, v in report.items()
                },
            },
            200 if ok else 503,
        )

    add_simple_routes(app, ctx)
    add_api_routes(app, ctx)
    add_fetch_routes(app, ctx)
    add_admin_routes(app, ctx)
    add_user_routes(app, ctx)
    add_token_routes(app, ctx)
    add_ui_routes(app, ctx)
    add_metrics_routes(app, ctx)

    @app.handle_errors(Exception)
    def errors(request: IRequest, failure: Failure) -> bytes:
        return failure_to_response(request, failure, ctx.settings.realm)

    track_routes(app)  # route labels for the metrics; error handlers in the log context
    return app


def build_resource(ctx: WebContext) -> IResource:
    return behind_proxies(
        build_app(ctx).resource(), ctx.settings.trusted_proxies, ctx.settings.proxy_headers
    )


class BoundedRequest(ObservedRequest):
    """A request whose body is spooled to disk past a size and refused past a limit.

    twisted.web would otherwise buffer any body without limit; a body over the limit is
    answered 413 as soon as its ``Content-Length`` (or, when chunked, its size) gives it away.
    """

    _refused = False
    _received = 0

    def _limit(self) -> int:
        site = getattr(self.channel, "site", None)
        return int(getattr(site, "max_body", 1024**3 + FORM_OVERHEAD))

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self._refuse()
            return
        if length is not None and length <= IN_MEMORY_BODY:
            super().gotLength(length)
        else:
            spool_dir = getattr(getattr(self.channel, "site", None), "spool_dir", None)
            self.content = tempfile.TemporaryFile(  # noqa: SIM115 (the request closes it)
                prefix="ppc-body-", dir=spool_dir
            )

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._limit():
            self._refuse()
            return
        super().handleContentChunk(data)

    def _refuse(self) -> None:
        self._refused = True
        limit = self._limit() - FORM_OVERHEAD
        body = (
            json.dumps(
                {
                    "message": f"The upload is larger than this index allows ({limit} bytes; "
                    "see pypi.max_upload_size)."
                }
            ).encode()
            + b"\n"
        )
        transport = self.channel.transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        transport.loseConnection()
        if self.content is not None:
            self.content.close()
        self.content = None

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)


class IndexSite(server.Site):
    """The :class:`~twisted.web.server.Site` for the index: bounded bodies, no form parsing."""

    requestFactory = BoundedRequest

    def __init__(
        self, resource: IResource, max_upload_size: int, spool_dir: str | None = None, **kwargs: Any
    ) -> None:
        # Never let twisted.web parse (and buffer) multipart bodies on the reactor thread.
        kwargs.setdefault("timeout", 120)  # idle connections and stalled clients are closed
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
        self.max_body = max_upload_size + FORM_OVERHEAD
        self.spool_dir = spool_dir

    #: Whether to log every request (``twist pypicloud --access-log``).  Off by default: a
    #: line per request costs about a quarter of the CPU of a cached project page, and the
    #: proxy in front usually keeps an access log already.
    access_log = False
    #: The Prometheus metrics each request is counted in (``None``: not measured).
    metrics: Metrics | None = None

    def log(self, request: http.Request) -> None:
        request_ended(self, request)  # metrics, and the access-log line when it is on
