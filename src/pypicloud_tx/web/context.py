"""What every route needs: the services, the settings, and who is calling."""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.web.iweb import IRequest

from pypicloud_tx.backends._threads import RunBlocking
from pypicloud_tx.config.model import Settings
from pypicloud_tx.domain.models import Identity
from pypicloud_tx.metrics import Metrics
from pypicloud_tx.services.accounts import Accounts
from pypicloud_tx.services.auth import Authenticator
from pypicloud_tx.services.fallback import Fallback
from pypicloud_tx.services.index import PackageIndex
from pypicloud_tx.services.sessions import Sessions
from pypicloud_tx.services.tokens import Tokens
from pypicloud_tx.web.proxy import prefix_of


@attrs.frozen
class WebContext:
    """The services and settings the routes call; built once by the application."""

    index: PackageIndex
    auth: Authenticator
    settings: Settings
    run_blocking: RunBlocking
    spool_dir: str | None = None
    #: Registration and the admin operations; built from the others unless given (tests
    #: pass one with a test clock).
    accounts: Accounts = attrs.field(
        default=attrs.Factory(lambda self: _accounts(self), takes_self=True)
    )
    #: API tokens; built from the others unless given.
    tokens: Tokens = attrs.field(
        default=attrs.Factory(lambda self: Tokens(self.index.access, self.auth), takes_self=True)
    )
    #: The upstream fallback (``pypi.fallback``); never looks upstream unless given.
    fallback: Fallback = attrs.field(
        default=attrs.Factory(lambda self: Fallback.disabled(self.index), takes_self=True)
    )
    #: Browser sessions of the web interface (``web/ui/``): ``application.build_sessions``.
    sessions: Sessions = attrs.field(kw_only=True)
    #: The Prometheus metrics (``pypi.metrics``); ``None``: not measured, no ``/metrics``.
    metrics: Metrics | None = attrs.field(default=None, kw_only=True)

    async def caller(self, request: IRequest) -> Identity:
        """The identity behind the request's credentials (memoised on the request)."""
        known = getattr(request, "_ppc_identity", None)
        if known is not None:
            return known  # type: ignore[no-any-return]
        address = request.getClientAddress()
        host = getattr(address, "host", "unknown")
        identity = await self.auth.identify(request.getHeader(b"authorization"), host)
        request._ppc_identity = identity  # type: ignore[attr-defined]
        return identity

    def base_url(self, request: IRequest) -> str:
        """The server's root URL ending in ``/``: ``pypi.download_url`` or the request's host
        (and path prefix, behind a trusted proxy: ``web/proxy.py``)."""
        if self.settings.download_url:
            return self.settings.download_url.rstrip("/") + "/"
        scheme = "https" if request.isSecure() else "http"
        host = (request.getHeader(b"host") or b"localhost").decode("latin-1")
        return f"{scheme}://{host}{prefix_of(request)}/"


def _accounts(ctx: WebContext) -> Accounts:
    return Accounts(
        ctx.index.access,
        ctx.auth,
        backend_name=ctx.settings.access.name,
        signing_key=ctx.settings.signing_key,
        token_expire=ctx.settings.token_expire,
    )


def json_body(request: IRequest, data: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(data).encode("utf-8") + b"\n"


def arg(request: IRequest, name: str, default: str | None = None) -> str | None:
    """A query-string argument, decoded; ``default`` when absent."""
    values = (request.args or {}).get(name.encode())
    if not values:
        return default
    return str(values[0].decode("utf-8", "replace"))


def redirect(request: IRequest, location: str, status: int = 301) -> bytes:
    """Redirect to a path built only from validated, normalised names."""
    request.setResponseCode(status)
    request.setHeader(b"Location", location.encode("ascii"))
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b"Moved to " + location.encode("ascii") + b"\n"
