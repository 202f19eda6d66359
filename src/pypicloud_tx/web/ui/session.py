"""Who is looking at a page: the session cookie, and the cookies that go with it.

Cookies set here are all ``HttpOnly``, ``SameSite=Lax`` and ``Path=/``; with
``session.secure`` they are also ``Secure`` and the session cookie takes the ``__Host-``
prefix (so no other host, not even a subdomain, can set it).
"""

from __future__ import annotations

from typing import Any, cast

import attrs
from twisted.web.iweb import IRequest

from pypicloud_tx.domain.models import ANONYMOUS, Identity, SessionRecord
from pypicloud_tx.web.context import WebContext

SESSION_COOKIE = "ppc_session"
SECURE_SESSION_COOKIE = "__Host-ppc_session"
#: The random value CSRF tokens are bound to before logging in.
PRELOGIN_COOKIE = "ppc_csrf"
#: A signed message shown once, on the page a form redirects to.
MESSAGE_COOKIE = "ppc_message"


@attrs.frozen
class Visitor:
    """The caller of a page: an identity and, when logged in, the session behind it."""

    identity: Identity = ANONYMOUS
    record: SessionRecord | None = None
    session_id: str | None = None

    @property
    def logged_in(self) -> bool:
        return self.record is not None


def session_cookie_name(ctx: WebContext) -> str:
    return SECURE_SESSION_COOKIE if ctx.settings.session_secure else SESSION_COOKIE


def get_cookie(request: IRequest, name: str) -> str | None:
    value = cast(Any, request).getCookie(name.encode("ascii"))
    if value is None:
        return None
    return str(value.decode("ascii", "replace"))


def set_cookie(
    ctx: WebContext, request: IRequest, name: str, value: str, max_age: int | None = None
) -> None:
    cast(Any, request).addCookie(
        name.encode("ascii"),
        value.encode("ascii"),
        path=b"/",
        max_age=None if max_age is None else str(max_age).encode(),
        secure=ctx.settings.session_secure,
        httpOnly=True,
        sameSite="lax",
    )


def clear_cookie(ctx: WebContext, request: IRequest, name: str) -> None:
    set_cookie(ctx, request, name, "", max_age=0)


async def visitor(ctx: WebContext, request: IRequest) -> Visitor:
    """The caller behind the request's session cookie (memoised on the request).

    The user's groups and admin flag are read afresh on every request, so a change by an admin
    applies at once; a session of a user who no longer exists (or waits for approval again)
    is ended.
    """
    known = getattr(request, "_ppc_visitor", None)
    if known is not None:
        return cast(Visitor, known)
    found = Visitor()
    cookie = get_cookie(request, session_cookie_name(ctx))
    record = await ctx.sessions.find(cookie) if cookie else None
    if record is not None:
        data = cast("dict[str, Any] | None", await ctx.index.access.user_data(record.username))
        if data is None:
            await ctx.sessions.store.remove(record.key)
        else:
            found = Visitor(
                identity=Identity(
                    username=record.username,
                    groups=frozenset(data.get("groups") or ()),
                    is_admin=bool(data.get("admin")),
                ),
                record=record,
                session_id=ctx.sessions.session_id(cookie),
            )
    request._ppc_visitor = found  # type: ignore[attr-defined]
    return found


async def log_in(ctx: WebContext, request: IRequest, username: str) -> Visitor:
    """Start a session for ``username`` and send its cookie (ending the one it replaces)."""
    await ctx.sessions.end(get_cookie(request, session_cookie_name(ctx)))
    cookie, record = await ctx.sessions.start(username)
    set_cookie(ctx, request, session_cookie_name(ctx), cookie, ctx.sessions.seconds_left(record))
    # The pre-login CSRF value has served its purpose; forms are now bound to the session.
    if get_cookie(request, PRELOGIN_COOKIE):
        clear_cookie(ctx, request, PRELOGIN_COOKIE)
    found = Visitor(
        identity=Identity(username=username),
        record=record,
        session_id=ctx.sessions.session_id(cookie),
    )
    request._ppc_visitor = found  # type: ignore[attr-defined]
    return found


async def log_out(ctx: WebContext, request: IRequest) -> None:
    """End the request's session on the server (every process) and drop its cookie."""
    name = session_cookie_name(ctx)
    await ctx.sessions.end(get_cookie(request, name))
    clear_cookie(ctx, request, name)
    request._ppc_visitor = Visitor()  # type: ignore[attr-defined]


def flash(ctx: WebContext, request: IRequest, text: str, kind: str = "ok") -> None:
    """Show ``text`` once on the next page (``kind``: ``ok`` or ``error``)."""
    set_cookie(ctx, request, MESSAGE_COOKIE, ctx.sessions.sign({"t": text, "k": kind}), 120)


def take_flash(ctx: WebContext, request: IRequest) -> dict[str, str] | None:
    """The message left by :func:`flash`, removed so that it shows only once."""
    raw = get_cookie(request, MESSAGE_COOKIE)
    if not raw:
        return None
    clear_cookie(ctx, request, MESSAGE_COOKIE)
    data = ctx.sessions.unsign(raw)
    if not isinstance(data, dict) or not isinstance(data.get("t"), str):
        return None
    kind = "error" if data.get("k") == "error" else "ok"
    return {"text": data["t"], "kind": kind}
