"""``/api/user/``: registering an account and changing one's own password."""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest

from pypicloud_tx.web.admin import refuse_secrets_in_url
from pypicloud_tx.web.context import WebContext, json_body
from pypicloud_tx.web.forms import field, read_form, required


def add_user_routes(app: Klein, ctx: WebContext) -> None:
    """Register ``PUT /api/user/<username>/`` and ``POST /api/user/password``."""

    @app.route("/api/user/<string:username>", methods=["PUT"], endpoint="user_register")
    @app.route("/api/user/<string:username>/", methods=["PUT"], endpoint="user_register")
    async def register(request: IRequest, username: str) -> bytes:
        """Open registration (pending user), a sign-up ``token`` (active user), or the first
        user of an index without admins (active admin)."""
        refuse_secrets_in_url(request, "password", "token")
        form = read_form(request)
        password = required(form, "password", "the password for the new account")
        token = field(form, "token")
        done = await ctx.accounts.register(username, password, token)
        if done.admin:
            message = f"User {username} created as the first admin of this index."
        elif done.pending:
            message = f"User {username} registered; an admin must approve the account."
        else:
            message = f"User {username} created."
        return json_body(
            request,
            {
                "message": message,
                "username": done.username,
                "pending": done.pending,
                "admin": done.admin,
            },
        )

    @app.route("/api/user/password", methods=["POST"], endpoint="user_change_password")
    @app.route("/api/user/password/", methods=["POST"], endpoint="user_change_password")
    async def change_password(request: IRequest) -> bytes:
        """The caller (logged in with their password) replaces it, giving the old one."""
        caller = await ctx.caller(request)
        refuse_secrets_in_url(request, "old_password", "new_password")
        form = read_form(request)
        # Missing fields are the service's to report, after it has checked who is asking.
        old_password = field(form, "old_password") or ""
        new_password = field(form, "new_password") or ""
        address = getattr(request.getClientAddress(), "host", "unknown")
        await ctx.accounts.change_password(caller, old_password, new_password, address)
        return json_body(request, {"message": "Password changed."})
