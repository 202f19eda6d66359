"""``/admin/`` endpoints (admin only, checked here on the server).

Every route is registered with and without its trailing slash (pypicloud's manual writes
both), checks the caller first (401 anonymous, 403 not an admin or an API token), then reads
its input (``web/forms.py``; 400 for a bad one), then calls one
:class:`~pypicloud_tx.services.accounts.Accounts` method.  Changes answer
``{"message": ...}``; reads answer the shapes of pypicloud's manual.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from klein import Klein
from twisted.web.iweb import IRequest

from pypicloud_tx.domain.models import Identity
from pypicloud_tx.domain.names import canonical
from pypicloud_tx.errors import Forbidden, Unauthenticated
from pypicloud_tx.services.accounts import Grant, InvalidInput
from pypicloud_tx.web.context import WebContext, json_body
from pypicloud_tx.web.forms import as_bool, field, read_form, required

F = TypeVar("F", bound=Callable[..., Any])


def require_admin(caller: Identity) -> None:
    """:raises Unauthenticated: for an anonymous caller.
    :raises Forbidden: for a non-admin, or any API-token caller (tokens are for packages)."""
    if not caller.authenticated:
        raise Unauthenticated("Log in as an admin to use /admin/.")
    if caller.scope is not None:
        raise Forbidden("API tokens cannot use /admin/; log in with a password.")
    if not caller.is_admin:
        raise Forbidden(f"User {caller.username} is not an admin.")


def refuse_secrets_in_url(request: IRequest, *names: str) -> None:
    """Passwords and tokens travel in the body only: URLs end up in access logs and browser
    history.  :raises InvalidInput: when one of ``names`` is in the query string."""
    for name in names:
        if name.encode() in (request.args or {}):
            raise InvalidInput(f"Send {name} in the request body, not in the URL.")


def _grants(grants: list[Grant] | tuple[Grant, ...], key: str) -> list[dict[str, Any]]:
    return [{key: g.name, "permissions": list(g.permissions)} for g in grants]


def _message(request: IRequest, text: str, **extra: Any) -> bytes:
    return json_body(request, {"message": text, **extra})


def add_admin_routes(app: Klein, ctx: WebContext) -> None:
    """Register every ``/admin/`` route."""

    def route(path: str, *methods: str) -> Callable[[F], F]:
        """``path`` (written with its trailing slash) with and without that slash."""

        def register(f: F) -> F:
            endpoint = f"admin_{f.__name__}"
            for url in dict.fromkeys((path, path.rstrip("/"))):
                app.route(url, methods=list(methods), endpoint=endpoint)(f)
            return f

        return register

    async def admin(request: IRequest) -> Identity:
        caller = await ctx.caller(request)
        require_admin(caller)
        return caller

    def name_change(
        path: str, method: str, work: Callable[[Identity, str], Awaitable[None]], done: str
    ) -> None:
        """``method path``, whose one URL variable is a user or group name: ``work(caller,
        name)``, answered with ``done`` (a ``str.format`` text) filled in with that name.  The
        endpoint is named for ``work`` (``delete_user`` and so on)."""

        async def change(request: IRequest, **url: str) -> bytes:
            caller = await admin(request)
            (name,) = url.values()
            await work(caller, name)
            return _message(request, done.format(name))

        change.__name__ = work.__name__
        route(path, method)(change)

    accounts = ctx.accounts

    @route("/admin/rebuild/", "GET", "POST")
    async def rebuild(request: IRequest) -> bytes:
        await admin(request)
        count = await ctx.index.rebuild()
        return json_body(
            request, {"message": f"Cache rebuilt from storage: {count} files.", "files": count}
        )

    @route("/admin/acl.json.gz", "GET")
    async def acl(request: IRequest) -> bytes:
        await admin(request)
        blob = await accounts.export()
        request.setHeader(b"Content-Type", b"application/gzip")
        request.setHeader(b"Content-Disposition", b'attachment; filename="acl.json.gz"')
        request.setHeader(b"Cache-Control", b"no-store")
        return blob

    @route("/admin/register/", "GET")
    async def get_register(request: IRequest) -> bytes:
        await admin(request)
        return json_body(request, {"allow": await accounts.allow_register()})

    @route("/admin/register/", "POST")
    async def set_register(request: IRequest) -> bytes:
        caller = await admin(request)
        allow = as_bool(field(read_form(request), "allow"), "allow")
        await accounts.set_allow_register(caller, allow)
        return _message(request, f"Registration {'opened' if allow else 'closed'}.", allow=allow)

    @route("/admin/pending_users/", "GET")
    async def pending_users(request: IRequest) -> bytes:
        await admin(request)
        return json_body(request, await accounts.pending_users())

    @route("/admin/token/<string:username>/", "GET")
    async def signup_token(request: IRequest, username: str) -> bytes:
        caller = await admin(request)
        token = await accounts.signup_token(caller, username)
        url = f"{ctx.base_url(request)}login#/?token={quote(token, safe=':')}"
        request.setHeader(b"Cache-Control", b"no-store")
        return json_body(request, {"token": token, "token_url": url})

    @route("/admin/user/", "GET")
    async def users(request: IRequest) -> bytes:
        await admin(request)
        found = await accounts.users()
        return json_body(request, [{"username": u.username, "admin": u.admin} for u in found])

    @route("/admin/user/<string:username>/", "GET")
    async def user(request: IRequest, username: str) -> bytes:
        await admin(request)
        found = await accounts.user(username)
        return json_body(
            request,
            {"username": found.username, "admin": found.admin, "groups": list(found.groups)},
        )

    @route("/admin/user/<string:username>/permissions/", "GET")
    async def user_permissions(request: IRequest, username: str) -> bytes:
        await admin(request)
        return json_body(request, _grants(await accounts.user_permissions(username), "package"))

    @route("/admin/user/<string:username>/", "PUT")
    async def create_user(request: IRequest, username: str) -> bytes:
        caller = await admin(request)
        refuse_secrets_in_url(request, "password")
        password = required(read_form(request), "password", "the new user's password")
        await accounts.create_user(caller, username, password)
        return _message(request, f"User {username} created.")

    name_change(
        "/admin/user/<string:username>/", "DELETE", accounts.delete_user, "User {} deleted."
    )
    name_change(
        "/admin/user/<string:username>/approve/", "POST", accounts.approve_user, "User {} approved."
    )

    @route("/admin/user/<string:username>/admin/", "POST")
    async def set_admin(request: IRequest, username: str) -> bytes:
        caller = await admin(request)
        wanted = as_bool(field(read_form(request), "admin"), "admin")
        now_admin = await accounts.set_admin(caller, username, wanted)
        if now_admin and not wanted:
            text = f"{username} is still an admin: auth.admins in the configuration names them."
        else:
            text = f"{username} is {'now' if now_admin else 'no longer'} an admin."
        return _message(request, text, admin=now_admin)

    @route("/admin/user/<string:username>/group/<string:group>/", "PUT", "DELETE")
    async def user_group(request: IRequest, username: str, group: str) -> bytes:
        caller = await admin(request)
        add = request.method == b"PUT"
        await accounts.edit_user_group(caller, username, group, add)
        verb = "added to" if add else "removed from"
        return _message(request, f"{username} {verb} group {group}.")

    @route("/admin/group/", "GET")
    async def groups(request: IRequest) -> bytes:
        await admin(request)
        return json_body(request, await accounts.groups())

    @route("/admin/group/<string:group>/", "GET")
    async def group(request: IRequest, group: str) -> bytes:
        await admin(request)
        found = await accounts.group(group)
        return json_body(
            request,
            {"members": list(found.members), "packages": _grants(found.packages, "package")},
        )

    name_change("/admin/group/<string:group>/", "PUT", accounts.create_group, "Group {} created.")
    name_change(
        "/admin/group/<string:group>/", "DELETE", accounts.delete_group, "Group {} deleted."
    )

    @route("/admin/package/<string:package>/", "GET")
    async def package(request: IRequest, package: str) -> bytes:
        await admin(request)
        found = await accounts.package(package)
        return json_body(
            request,
            {"user": _grants(found.users, "username"), "group": _grants(found.groups, "group")},
        )

    @route(
        "/admin/package/<string:package>/<string:kind>/<string:name>/<string:perm>/",
        "PUT",
        "DELETE",
    )
    async def package_permission(
        request: IRequest, package: str, kind: str, name: str, perm: str
    ) -> bytes:
        caller = await admin(request)
        add = request.method == b"PUT"
        await accounts.edit_permission(caller, package, kind, name, perm, add)
        verb = "granted to" if add else "revoked from"
        return _message(request, f"{perm} on {canonical(package)} {verb} {kind} {name}.")
