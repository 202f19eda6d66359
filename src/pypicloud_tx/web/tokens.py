"""API token routes: ``/api/tokens/`` for the caller, ``/admin/user/<name>/tokens/`` for admins."""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest

from pypicloud_tx.errors import InvalidUpload, Unauthenticated
from pypicloud_tx.web.admin import require_admin
from pypicloud_tx.web.context import WebContext, json_body
from pypicloud_tx.web.forms import field, listed, read_form

_PERMISSION_NAMES = {"read": "read", "write": "write", "upload": "write"}


def add_token_routes(app: Klein, ctx: WebContext) -> None:
    """Register the token routes."""

    async def owner_of(request: IRequest) -> tuple[Any, str]:
        caller = await ctx.caller(request)
        if caller.username is None:
            raise Unauthenticated("Log in with your password to manage API tokens.")
        return caller, caller.username

    async def create(request: IRequest, caller: Any, owner: str) -> bytes:
        fields = read_form(request)
        name = field(fields, "name") or ""
        permissions = [
            _permission(p) for p in listed(fields, "permissions") + listed(fields, "permission")
        ] or ["read"]
        days_text = field(fields, "expires_days")
        days = None
        if days_text:
            try:
                days = int(days_text)
            except ValueError:
                raise InvalidUpload("expires_days must be a whole number of days.") from None
        packages = listed(fields, "packages") + listed(fields, "package")
        text, token = await ctx.tokens.create(caller, owner, name, packages, permissions, days)
        body = token.describe()
        body["token"] = text
        body["message"] = (
            "Copy the token now: it is not shown again. Use it as the password of user __token__."
        )
        return json_body(request, body, 201)

    @app.route("/api/tokens/", methods=["GET", "HEAD"])
    async def list_own(request: IRequest) -> bytes:
        caller, owner = await owner_of(request)
        tokens = await ctx.tokens.list(caller, owner)
        return json_body(request, {"tokens": [t.describe() for t in tokens]})

    @app.route("/api/tokens/", methods=["POST"])
    async def create_own(request: IRequest) -> bytes:
        caller, owner = await owner_of(request)
        return await create(request, caller, owner)

    @app.route("/api/tokens/<string:token_id>", methods=["DELETE"])
    @app.route("/api/tokens/<string:token_id>/", methods=["DELETE"])
    async def revoke(request: IRequest, token_id: str) -> bytes:
        token = await ctx.tokens.revoke(await ctx.caller(request), token_id)
        return json_body(request, {"message": f"API token {token.name!r} revoked."})

    @app.route("/admin/user/<string:username>/tokens/", methods=["GET", "HEAD"])
    async def list_for(request: IRequest, username: str) -> bytes:
        caller = await ctx.caller(request)
        require_admin(caller)
        tokens = await ctx.tokens.list(caller, username)
        return json_body(request, {"tokens": [t.describe() for t in tokens]})

    @app.route("/admin/user/<string:username>/tokens/", methods=["POST"])
    async def create_for(request: IRequest, username: str) -> bytes:
        caller = await ctx.caller(request)
        require_admin(caller)
        return await create(request, caller, username)


def _permission(text: str) -> str:
    try:
        return _PERMISSION_NAMES[text.lower()]
    except KeyError:
        raise InvalidUpload(
            f"Unknown permission {text!r}: send permissions=read, write (or upload), or both."
        ) from None
