"""Logging in and out, registering, and one's own account: password and API tokens."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlencode

from klein import Klein
from twisted.web.iweb import IRequest

from pypicloud_tx.domain.tokens import TOKEN_USERNAME
from pypicloud_tx.errors import InvalidUpload, PPCError, TooManyAttempts, Unauthenticated
from pypicloud_tx.web.context import arg
from pypicloud_tx.web.ui import csrf
from pypicloud_tx.web.ui.render import Pages, safe_next, status_of
from pypicloud_tx.web.ui.session import Visitor, log_in, log_out

#: Token lifetimes offered by the form, in days (empty: until revoked).
TOKEN_DAYS = ("30", "90", "365", "")


def _address(request: IRequest) -> str:
    return str(getattr(request.getClientAddress(), "host", "unknown"))


def _signup_user(token: str) -> str:
    """The user name a sign-up token was issued for (``<username>:<issued>:<signature>``)."""
    return token.rpartition(":")[0].rpartition(":")[0]


def add_account_routes(app: Klein, pages: Pages) -> None:
    ctx = pages.ctx
    accounts = ctx.accounts

    # -- logging in and out --------------------------------------------------------------

    async def login_page(
        request: IRequest, visitor: Visitor, status: int = 200, error: str | None = None, **kw: Any
    ) -> bytes:
        can_register = await accounts.allow_register() or await accounts.needs_admin()
        values: dict[str, Any] = {"username": "", "next": "/"}
        values.update(kw)
        return pages.render(
            request,
            visitor,
            "login.html",
            status,
            section="login",
            error=error,
            can_register=can_register,
            **values,
        )

    @pages.route(app, "/login", "GET", "HEAD")
    async def login_form(request: IRequest) -> bytes:
        """The login form; ``?next=`` is where to go afterwards (a path of this site).  A
        sign-up link (``/login?token=`` or pypicloud's ``/login#/?token=``) leads on to
        registration (the fragment needs the page's script; without it, the page says so)."""
        token = arg(request, "token")
        if token:
            return pages.redirect(request, "/register?" + urlencode({"token": token}))
        visitor = await pages.visitor(request)
        return await login_page(request, visitor, next=safe_next(arg(request, "next")))

    @pages.route(app, "/login", "POST")
    async def login(request: IRequest) -> bytes:
        """Check ``username`` and ``password`` like any login (same throttling), start a
        session, go to ``next``."""
        visitor = await pages.visitor(request)
        fields = pages.form(request, visitor)
        username = csrf.one(fields, "username").strip()
        password = csrf.one(fields, "password")
        target = safe_next(csrf.one(fields, "next", "/"))
        again = {"username": username, "next": target}
        if not username or not password:
            return await login_page(
                request, visitor, 400, "Enter your user name and password.", **again
            )
        if username == TOKEN_USERNAME or ":" in username:
            return await login_page(
                request,
                visitor,
                400,
                "API tokens are for pip, uv and twine; log in with your user name and password.",
                **again,
            )
        credentials = base64.b64encode(f"{username}:{password}".encode())
        try:
            await ctx.auth.identify(b"Basic " + credentials, _address(request))
        except TooManyAttempts as e:
            request.setHeader(b"Retry-After", str(e.retry_after).encode())
            return await login_page(request, visitor, 429, e.message, **again)
        except Unauthenticated:
            return await login_page(
                request, visitor, 401, "Invalid user name or password.", **again
            )
        await log_in(ctx, request, username)
        return pages.redirect(request, target)

    @pages.route(app, "/logout", "GET", "HEAD")
    async def logout_form(request: IRequest) -> bytes:
        """Asks to confirm: logging out changes state, so it takes a form with a token."""
        visitor = await pages.visitor(request)
        if not visitor.logged_in:
            return pages.redirect(request, "/")
        return pages.render(request, visitor, "logout.html", section="account")

    @pages.route(app, "/logout", "POST")
    async def logout(request: IRequest) -> bytes:
        """End the session on the server: its cookie stops working on every process."""
        visitor = await pages.visitor(request)
        if visitor.logged_in:
            pages.form(request, visitor)
            await log_out(ctx, request)
        return pages.redirect(request, "/", "You are logged out.")

    # -- registering ---------------------------------------------------------------------

    async def register_page(
        request: IRequest,
        visitor: Visitor,
        token: str,
        status: int = 200,
        error: str | None = None,
        username: str = "",
        done: str | None = None,
    ) -> bytes:
        first_admin = await accounts.needs_admin()
        open_ = await accounts.allow_register()
        return pages.render(
            request,
            visitor,
            "register.html",
            status,
            section="register",
            mutable=accounts.mutable,
            available=accounts.mutable and bool(open_ or first_admin or token),
            first_admin=first_admin,
            token=token,
            username=username or (_signup_user(token) if token else ""),
            error=error,
            done=done,
        )

    @pages.route(app, "/register", "GET", "HEAD")
    async def register_form(request: IRequest) -> bytes:
        """Registration: open registration (pending until approved), a sign-up ``token``
        (active at once), or the first user of an index without admins (its admin)."""
        visitor = await pages.visitor(request)
        return await register_page(request, visitor, (arg(request, "token") or "").strip())

    @pages.route(app, "/register", "POST")
    async def register(request: IRequest) -> bytes:
        visitor = await pages.visitor(request)
        fields = pages.form(request, visitor)
        username = csrf.one(fields, "username").strip()
        password = csrf.one(fields, "password")
        token = csrf.one(fields, "token").strip()
        try:
            if password != csrf.one(fields, "password2"):
                raise InvalidUpload("The two passwords differ; type the same password twice.")
            done = await accounts.register(username, password, token or None)
        except PPCError as e:
            return await register_page(
                request, visitor, token, status_of(e), e.message, username=username
            )
        if done.pending:
            return await register_page(
                request,
                visitor,
                "",
                done=f"Thank you, {username}: an admin must approve your account before you "
                "can log in.",
            )
        await log_in(ctx, request, username)
        welcome = "You are the first admin of this index." if done.admin else "Welcome!"
        return pages.redirect(request, "/", f"Account {username} created. {welcome}")

    # -- one's own account ---------------------------------------------------------------

    async def account_page(
        request: IRequest, visitor: Visitor, status: int = 200, **extra: Any
    ) -> bytes:
        identity = visitor.identity
        tokens = None
        if accounts.mutable:
            assert identity.username is not None
            tokens = await ctx.tokens.list(identity, identity.username)
        values: dict[str, Any] = {"error": None, "token_error": None, "new_token": None}
        values.update(extra)
        return pages.render(
            request,
            visitor,
            "account.html",
            status,
            section="account",
            mutable=accounts.mutable,
            tokens=tokens,
            token_days=TOKEN_DAYS,
            **values,
        )

    @pages.route(app, "/account", "GET", "HEAD")
    async def account(request: IRequest) -> bytes:
        """The visitor's account: change the password, create and revoke API tokens."""
        return await account_page(request, await pages.logged_in(request))

    @pages.route(app, "/account/password", "POST")
    async def change_password(request: IRequest) -> bytes:
        """Replace the password (proving the old one); every other session of the user ends."""
        visitor = await pages.logged_in(request)
        fields = pages.form(request, visitor)
        new_password = csrf.one(fields, "new_password")
        try:
            if new_password != csrf.one(fields, "new_password2"):
                raise InvalidUpload("The two new passwords differ; type the same one twice.")
            await accounts.change_password(
                visitor.identity, csrf.one(fields, "old_password"), new_password, _address(request)
            )
        except PPCError as e:
            if isinstance(e, TooManyAttempts):
                request.setHeader(b"Retry-After", str(e.retry_after).encode())
            return await account_page(request, visitor, status_of(e), error=e.message)
        assert visitor.identity.username is not None and visitor.record is not None
        await ctx.sessions.end_user(visitor.identity.username, keep=visitor.record.key)
        return pages.redirect(
            request, "/account", "Password changed; your other sessions were logged out."
        )

    @pages.route(app, "/account/tokens", "POST")
    async def create_token(request: IRequest) -> bytes:
        """A new API token; its text is shown on this one page only."""
        visitor = await pages.logged_in(request)
        fields = pages.form(request, visitor)
        assert visitor.identity.username is not None
        permissions = [p for p in fields.get("permissions", []) if p in ("read", "write")]
        packages = csrf.one(fields, "packages").replace(",", " ").split()
        days_text = csrf.one(fields, "expires_days").strip()
        try:
            if days_text and not days_text.isdigit():
                raise InvalidUpload("The lifetime must be a whole number of days.")
            text, token = await ctx.tokens.create(
                visitor.identity,
                visitor.identity.username,
                csrf.one(fields, "name").strip(),
                packages,
                permissions or ["read"],
                int(days_text) if days_text else None,
            )
        except PPCError as e:
            return await account_page(request, visitor, status_of(e), token_error=e.message)
        return await account_page(request, visitor, new_token={"text": text, "name": token.name})

    @pages.route(app, "/account/tokens/<string:token_id>/revoke", "POST")
    async def revoke_token(request: IRequest, token_id: str) -> bytes:
        visitor = await pages.logged_in(request)
        pages.form(request, visitor)
        token = await ctx.tokens.revoke(visitor.identity, token_id)
        return pages.redirect(request, "/account", f"API token {token.name!r} revoked.")
