"""``/admin/`` endpoints (admin only, checked here on the server)."""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest

from pypicloud_tx.domain.models import Identity
from pypicloud_tx.errors import Forbidden, Unauthenticated
from pypicloud_tx.web.context import WebContext, json_body


def require_admin(caller: Identity) -> None:
    if not caller.authenticated:
        raise Unauthenticated("Log in as an admin to use /admin/.")
    if not caller.is_admin:
        raise Forbidden(f"User {caller.username} is not an admin.")


def add_admin_routes(app: Klein, ctx: WebContext) -> None:
    """Register ``/admin/rebuild``."""

    @app.route("/admin/rebuild", methods=["GET", "POST"])
    @app.route("/admin/rebuild/", methods=["GET", "POST"])
    async def rebuild(request: IRequest) -> bytes:
        require_admin(await ctx.caller(request))
        count = await ctx.index.rebuild()
        return json_body(
            request, {"message": f"Cache rebuilt from storage: {count} files.", "files": count}
        )
