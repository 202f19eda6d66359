"""CSRF protection: every form that changes something carries a token the server checks.

The token is an HMAC (under the session key) of a secret the browser holds in an
``HttpOnly`` cookie: the session id once logged in, a random pre-login value before.  Another
site can make a browser send the cookie, but cannot read it nor compute the token.  On top of
that the session cookie is ``SameSite=Lax``, so other sites' forms do not carry it at all.
"""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs

from twisted.web.iweb import IRequest

from pypicloud_tx.errors import Forbidden, InvalidUpload
from pypicloud_tx.web.context import WebContext
from pypicloud_tx.web.ui.session import PRELOGIN_COOKIE, Visitor, get_cookie, set_cookie

#: The form field that carries the token.
FIELD = "csrf"
#: The largest urlencoded form a page sends.
MAX_FORM = 64 * 1024
STALE_FORM = "This form has expired or was not sent from this site; reload the page and try again."


class BadCsrfToken(Forbidden):
    """A state-changing form came without the right CSRF token (HTTP 403)."""


def _prelogin_seed(ctx: WebContext, request: IRequest, create: bool) -> str | None:
    known = getattr(request, "_ppc_prelogin", None)
    if known is not None:
        return str(known)
    seed = get_cookie(request, PRELOGIN_COOKIE)
    if (seed is None or len(seed) != 43) and create:
        seed = secrets.token_urlsafe(32)
        set_cookie(ctx, request, PRELOGIN_COOKIE, seed)
    if seed is not None:
        request._ppc_prelogin = seed  # type: ignore[attr-defined]
    return seed


def token_for(ctx: WebContext, request: IRequest, visitor: Visitor) -> str:
    """The token to put in the forms of this page (setting the pre-login cookie if needed)."""
    seed = visitor.session_id or _prelogin_seed(ctx, request, create=True)
    assert seed is not None
    return ctx.sessions.csrf_token(seed)


def check(ctx: WebContext, request: IRequest, visitor: Visitor, token: str | None) -> None:
    """:raises BadCsrfToken: unless ``token`` is the one :func:`token_for` gave this browser.

    A token of either seed is accepted: a login form shown before logging in, in another tab,
    stays usable.
    """
    seeds = [visitor.session_id, _prelogin_seed(ctx, request, create=False)]
    if not any(ctx.sessions.csrf_ok(seed, token) for seed in seeds if seed):
        raise BadCsrfToken(STALE_FORM)


def read_body(request: IRequest) -> dict[str, list[str]]:
    """The fields of an ``application/x-www-form-urlencoded`` body (never the query string,
    so no token or password is ever taken from a URL).

    :raises InvalidUpload: for another kind of body or one that is too big.
    """
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/x-www-form-urlencoded":
        raise InvalidUpload("Send this form from its page.")
    request.content.seek(0)
    body = request.content.read(MAX_FORM + 1)
    if len(body) > MAX_FORM:
        raise InvalidUpload(f"The form is larger than {MAX_FORM} bytes.")
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


def checked_form(ctx: WebContext, request: IRequest, visitor: Visitor) -> dict[str, list[str]]:
    """The body's fields, after checking their CSRF token."""
    fields = read_body(request)
    check(ctx, request, visitor, one(fields, FIELD) or None)
    return fields


def one(fields: dict[str, list[str]], name: str, default: str = "") -> str:
    """The first value of ``name`` (``default`` when absent)."""
    values = fields.get(name)
    return values[0] if values else default
