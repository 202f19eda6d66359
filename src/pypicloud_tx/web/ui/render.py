"""Rendering pages: the templates, the security headers, error pages and static files.

Every template is autoescaped (a project's summary or a user name can never become markup);
the only HTML inserted as is comes from ``readme-renderer``, which sanitises it.  Every page
carries a strict Content-Security-Policy (scripts, styles and images from this site only, no
inline script, no framing), and pages are never cached: they hold CSRF tokens and show who is
logged in.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import jinja2
from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from pypicloud_tx import errors
from pypicloud_tx.web.context import WebContext
from pypicloud_tx.web.errors import STATUS, reason_phrase
from pypicloud_tx.web.proxy import prefix_of
from pypicloud_tx.web.ui import csrf
from pypicloud_tx.web.ui.session import Visitor, flash, take_flash, visitor

log = Logger()
R = TypeVar("R")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
SECURITY_HEADERS = {
    b"Content-Security-Policy": CONTENT_SECURITY_POLICY.encode(),
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"same-origin",
    b"Cross-Origin-Opener-Policy": b"same-origin",
}
STATIC_TYPES = {".css": b"text/css; charset=utf-8", ".js": b"text/javascript; charset=utf-8"}


def safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``/``: the page to go to after logging in
    must never be another site (``//evil.example``, ``/\\evil.example``, ``https://...``)."""
    if not target or len(target) > 2000 or not target.startswith("/"):
        return "/"
    if (
        target.startswith(("//", "/\\"))
        or any(c in target for c in "\\\r\n\t")
        or any(ord(c) < 32 or ord(c) == 127 for c in target)
    ):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def status_of(error: errors.PPCError) -> int:
    """The HTTP status of an error (``web/errors.py``'s table; 500 for anything else)."""
    return next((s for cls, s in STATUS.items() if isinstance(error, cls)), 500)


def filesize(size: int) -> str:
    """``1.2 MB`` style sizes (powers of 1000, like pip and PyPI)."""
    value = float(size)
    for unit in ("bytes", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def utc_time(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def utc_date(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d")


def _static_files() -> dict[str, tuple[bytes, bytes, str]]:
    """``{name: (content, content type, version)}`` of ``web/ui/static/``."""
    found = {}
    for entry in resources.files("pypicloud_tx.web.ui").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in STATIC_TYPES:
            data = entry.read_bytes()
            found[entry.name] = (data, STATIC_TYPES[suffix], hashlib.sha256(data).hexdigest()[:12])
    return found


class Pages:
    """What every page handler uses: the visitor, templates, redirects and error pages."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self.static_files = _static_files()
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("pypicloud_tx", "web/templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        self.env.filters.update(filesize=filesize, utc_time=utc_time, utc_date=utc_date)

    # -- who is asking --------------------------------------------------------------------

    async def visitor(self, request: IRequest) -> Visitor:
        return await visitor(self.ctx, request)

    async def logged_in(self, request: IRequest) -> Visitor:
        """The visitor. :raises Unauthenticated: when nobody is logged in."""
        found = await self.visitor(request)
        if not found.logged_in:
            raise errors.Unauthenticated("Log in to continue.")
        return found

    async def admin(self, request: IRequest) -> Visitor:
        """The visitor. :raises Forbidden: unless an admin is logged in (anonymous too: admin
        pages answer 403 to everyone else)."""
        found = await self.visitor(request)
        if not found.logged_in:
            raise errors.Forbidden("This page is for admins; log in as an admin.")
        if not found.identity.is_admin:
            raise errors.Forbidden(f"User {found.identity.username} is not an admin.")
        return found

    def form(self, request: IRequest, visitor: Visitor) -> dict[str, list[str]]:
        """The posted form, its CSRF token checked.  :raises BadCsrfToken:"""
        return csrf.checked_form(self.ctx, request, visitor)

    # -- responses -------------------------------------------------------------------------

    def static_url(self, name: str) -> str:
        return f"/static/{name}?v={self.static_files[name][2]}"

    def render(
        self,
        request: IRequest,
        visitor: Visitor,
        template: str,
        status: int = 200,
        **context: Any,
    ) -> bytes:
        """The page ``template`` with the common context (visitor, CSRF token, message)."""
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        base = self.ctx.base_url(request)
        # Behind a proxy that serves the index under a path (X-Forwarded-Prefix: /pypi), every
        # link of a page starts with it: templates write href="{{ root }}/projects/".
        root = prefix_of(request)
        values = {
            "root": root,
            "static": lambda name: root + self.static_url(name),
            "me": visitor.identity,
            "visitor": visitor,
            "csrf_token": lambda: csrf.token_for(self.ctx, request, visitor),
            "flash": take_flash(self.ctx, request),
            "base_url": base,
            "site": urlsplit(base).netloc or "Package index",
            "query": "",
            "section": "",
        }
        values.update(context)
        return self.env.get_template(template).render(values).encode("utf-8")

    def redirect(self, request: IRequest, location: str, message: str | None = None) -> bytes:
        """303 See Other to a path of this site (after a form: the browser then GETs it)."""
        if message:
            flash(self.ctx, request, message)
        request.setResponseCode(303)
        request.setHeader(b"Location", safe_next(location).encode("utf-8"))
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return b"See " + safe_next(location).encode("utf-8") + b"\n"

    async def error(self, request: IRequest, error: errors.PPCError) -> bytes:
        """The page for a refused request; anonymous visitors of a page that needs a login
        are sent to the login page instead."""
        found = getattr(request, "_ppc_visitor", None) or Visitor()
        if isinstance(error, errors.Unauthenticated):
            target = (
                request.uri.decode("utf-8", "replace")
                if request.method in (b"GET", b"HEAD")
                else "/"
            )
            return self.redirect(request, "/login?" + urlencode({"next": safe_next(target)}))
        status = status_of(error)
        if isinstance(error, errors.TooManyAttempts):
            request.setHeader(b"Retry-After", str(error.retry_after).encode())
        if isinstance(error, errors.BackendUnavailable):
            log.warn("backend unavailable: {message}", message=error.message)
        body = self.render(request, found, "error.html", status, code=status, message=error.message)
        request.setResponseCode(status, reason_phrase(error.message))
        return body

    def route(
        self, app: Klein, path: str, *methods: str
    ) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
        """Register a page handler (wrapped by :meth:`page`) under an endpoint of its own."""

        def register(handler: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
            wrapped: Any = self.page(handler)
            app.route(path, methods=list(methods), endpoint=f"ui_{handler.__name__}")(wrapped)
            return handler

        return register

    def page(self, handler: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R | bytes]]:
        """Wrap a route handler: security headers, and errors answered with a page."""

        @functools.wraps(handler)
        async def run(request: IRequest, *args: Any, **kwargs: Any) -> R | bytes:
            for name, value in SECURITY_HEADERS.items():
                request.setHeader(name, value)
            try:
                return await handler(request, *args, **kwargs)
            except errors.PPCError as e:
                return await self.error(request, e)
            except Exception:
                log.failure(
                    "unexpected error answering {method} {path}",
                    method=request.method,
                    path=request.path,
                )
                return await self.error(
                    request,
                    errors.PPCError("Internal server error; the server log has the details."),
                )

        return run
