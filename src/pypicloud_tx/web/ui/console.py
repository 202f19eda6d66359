"""The admin console (``/console/``): users, pending users, groups, package permissions,
registration, sign-up tokens, cache rebuild and the access-list download.

Every page answers 403 to anyone but a logged-in admin, anonymous visitors included.  The
operations are :class:`~pypicloud_tx.services.accounts.Accounts`' (the rules live there: the
last admin stays, names are checked, a read-only backend refuses changes saying where users
are managed); on a read-only backend the pages show the data and no forms.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from klein import Klein
from twisted.web.iweb import IRequest

from pypicloud_tx.domain.models import Identity
from pypicloud_tx.errors import NotFound, PPCError
from pypicloud_tx.services.accounts import BUILTIN_GROUPS
from pypicloud_tx.web.ui import csrf
from pypicloud_tx.web.ui.browse import project_name
from pypicloud_tx.web.ui.render import Pages, status_of
from pypicloud_tx.web.ui.session import Visitor, flash

#: A posted form's fields.
Fields = dict[str, list[str]]
#: Where a successful change sends the browser, and the message it shows there.
Done = tuple[str, str]


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(p, safe="") for p in parts) + "/"


def add_console_routes(app: Klein, pages: Pages) -> None:
    ctx = pages.ctx
    accounts = ctx.accounts

    def render(
        request: IRequest, visitor: Visitor, template: str, status: int = 200, **kw: Any
    ) -> bytes:
        return pages.render(
            request,
            visitor,
            template,
            status,
            section="console",
            mutable=accounts.mutable,
            backend=ctx.settings.access.name,
            **kw,
        )

    def failed(request: IRequest, back: str, error: PPCError) -> bytes:
        """Back to ``back``, showing why the change was refused (server faults are raised)."""
        if status_of(error) >= 500:
            raise error
        flash(ctx, request, error.message, "error")
        return pages.redirect(request, back)

    async def change(
        request: IRequest, back: str, work: Callable[[Identity, Fields], Awaitable[Done]]
    ) -> bytes:
        """One :class:`Accounts` change by an admin with a checked form: ``work(caller,
        fields)`` makes it and says where to go with what message; a refusal goes to ``back``
        showing why."""
        visitor = await pages.admin(request)
        fields = pages.form(request, visitor)
        try:
            location, text = await work(visitor.identity, fields)
        except PPCError as e:
            return failed(request, back, e)
        return pages.redirect(request, location, text)

    async def membership(
        request: IRequest, back: str, username: str | None = None, group: str | None = None
    ) -> bytes:
        """Add a user to a group, or take them out with ``action=remove``; the one of
        ``username`` and ``group`` the URL does not give comes from the form field of that
        name."""

        async def work(caller: Identity, fields: Fields) -> Done:
            who = csrf.one(fields, "username").strip() if username is None else username
            where = csrf.one(fields, "group").strip() if group is None else group
            add = csrf.one(fields, "action") != "remove"
            await accounts.edit_user_group(caller, who, where, add)
            verb = "added to" if add else "removed from"
            return back, f"{who} {verb} group {where}."

        return await change(request, back, work)

    async def console_page(
        request: IRequest,
        visitor: Visitor,
        status: int = 200,
        signup: dict[str, str] | None = None,
        signup_error: str | None = None,
    ) -> bytes:
        """The overview page, with the sign-up token just made (or why it was refused)."""
        return render(
            request,
            visitor,
            "console.html",
            status,
            allow_register=await accounts.allow_register(),
            pending=await accounts.pending_users(),
            signing=ctx.settings.signing_key is not None,
            user_count=len(await accounts.users()),
            group_count=len(await accounts.groups()),
            signup=signup,
            signup_error=signup_error,
        )

    # -- overview ------------------------------------------------------------------------

    @pages.route(app, "/console/", "GET", "HEAD")
    async def overview(request: IRequest) -> bytes:
        """Registration, pending users, sign-up tokens, cache rebuild, ACL download."""
        return await console_page(request, await pages.admin(request))

    @pages.route(app, "/console", "GET", "HEAD")
    async def overview_slash(request: IRequest) -> bytes:
        await pages.admin(request)
        return pages.redirect(request, "/console/")

    @pages.route(app, "/console/register", "POST")
    async def set_register(request: IRequest) -> bytes:
        visitor = await pages.admin(request)
        fields = pages.form(request, visitor)
        allow = csrf.one(fields, "allow") == "true"
        await accounts.set_allow_register(visitor.identity, allow)
        return pages.redirect(
            request, "/console/", f"Registration {'opened' if allow else 'closed'}."
        )

    @pages.route(app, "/console/rebuild", "POST")
    async def rebuild(request: IRequest) -> bytes:
        visitor = await pages.admin(request)
        pages.form(request, visitor)
        count = await ctx.index.rebuild()
        return pages.redirect(request, "/console/", f"Cache rebuilt from storage: {count} files.")

    @pages.route(app, "/console/acl.json.gz", "GET", "HEAD")
    async def acl(request: IRequest) -> bytes:
        """Users (with password hashes), groups, permissions: the ``pypicloud-tx export``
        format."""
        await pages.admin(request)
        blob = await accounts.export()
        request.setHeader(b"Content-Type", b"application/gzip")
        request.setHeader(b"Content-Disposition", b'attachment; filename="acl.json.gz"')
        request.setHeader(b"Cache-Control", b"no-store")
        return blob

    @pages.route(app, "/console/signup", "POST")
    async def signup(request: IRequest) -> bytes:
        """A sign-up token for a user name, shown on this page only."""
        visitor = await pages.admin(request)
        fields = pages.form(request, visitor)
        username = csrf.one(fields, "username").strip()
        signup: dict[str, str] | None = None
        error = None
        try:
            token = await accounts.signup_token(visitor.identity, username)
        except PPCError as e:
            if status_of(e) >= 500:
                raise
            error = e.message
        else:
            base = ctx.base_url(request)
            signup = {
                "username": username,
                "token": token,
                "url": f"{base}register?token={quote(token, safe=':')}",
            }
        return await console_page(request, visitor, 200 if error is None else 400, signup, error)

    # -- users -----------------------------------------------------------------------------

    @pages.route(app, "/console/users/", "GET", "HEAD")
    async def users(request: IRequest) -> bytes:
        visitor = await pages.admin(request)
        return render(
            request,
            visitor,
            "console_users.html",
            users=await accounts.users(),
            pending=await accounts.pending_users(),
        )

    @pages.route(app, "/console/users/", "POST")
    async def create_user(request: IRequest) -> bytes:
        async def work(caller: Identity, fields: Fields) -> Done:
            username = csrf.one(fields, "username").strip()
            await accounts.create_user(caller, username, csrf.one(fields, "password"))
            return _path("console", "users", username), f"User {username} created."

        return await change(request, "/console/users/", work)

    @pages.route(app, "/console/users/<string:username>/", "GET", "HEAD")
    async def user(request: IRequest, username: str) -> bytes:
        visitor = await pages.admin(request)
        found = await accounts.user(username)
        tokens = await ctx.tokens.list(visitor.identity, username) if accounts.mutable else None
        return render(
            request,
            visitor,
            "console_user.html",
            user=found,
            grants=await accounts.user_permissions(username),
            groups=await accounts.groups(),
            tokens=tokens,
            is_self=username == visitor.identity.username,
        )

    @pages.route(app, "/console/users/<string:username>/approve", "POST")
    async def approve(request: IRequest, username: str) -> bytes:
        async def work(caller: Identity, fields: Fields) -> Done:
            await accounts.approve_user(caller, username)
            return "/console/users/", f"User {username} approved."

        return await change(request, "/console/users/", work)

    @pages.route(app, "/console/users/<string:username>/delete", "GET", "HEAD")
    async def confirm_delete_user(request: IRequest, username: str) -> bytes:
        visitor = await pages.admin(request)
        if username not in await accounts.pending_users():
            await accounts.user(username)
        return render(request, visitor, "console_delete.html", what="user", name=username)

    @pages.route(app, "/console/users/<string:username>/delete", "POST")
    async def delete_user(request: IRequest, username: str) -> bytes:
        async def work(caller: Identity, fields: Fields) -> Done:
            await accounts.delete_user(caller, username)
            # Their sessions end with them (a new user of the same name must not inherit them).
            await ctx.sessions.end_user(username)
            return "/console/users/", f"User {username} deleted."

        return await change(request, _path("console", "users", username), work)

    @pages.route(app, "/console/users/<string:username>/admin", "POST")
    async def set_admin(request: IRequest, username: str) -> bytes:
        back = _path("console", "users", username)

        async def work(caller: Identity, fields: Fields) -> Done:
            wanted = csrf.one(fields, "admin") == "true"
            now_admin = await accounts.set_admin(caller, username, wanted)
            if now_admin and not wanted:
                return back, (
                    f"{username} is still an admin: auth.admins in the configuration names them."
                )
            return back, f"{username} is {'now' if now_admin else 'no longer'} an admin."

        return await change(request, back, work)

    @pages.route(app, "/console/users/<string:username>/groups", "POST")
    async def user_group(request: IRequest, username: str) -> bytes:
        return await membership(request, _path("console", "users", username), username=username)

    # -- groups ----------------------------------------------------------------------------

    @pages.route(app, "/console/groups/", "GET", "HEAD")
    async def groups(request: IRequest) -> bytes:
        visitor = await pages.admin(request)
        return render(
            request,
            visitor,
            "console_groups.html",
            groups=await accounts.groups(),
            builtin=BUILTIN_GROUPS,
        )

    @pages.route(app, "/console/groups/", "POST")
    async def create_group(request: IRequest) -> bytes:
        async def work(caller: Identity, fields: Fields) -> Done:
            group = csrf.one(fields, "group").strip()
            await accounts.create_group(caller, group)
            return _path("console", "groups", group), f"Group {group} created."

        return await change(request, "/console/groups/", work)

    @pages.route(app, "/console/groups/<string:group>/", "GET", "HEAD")
    async def group(request: IRequest, group: str) -> bytes:
        visitor = await pages.admin(request)
        found = await accounts.group(group)
        return render(
            request,
            visitor,
            "console_group.html",
            group=group,
            info=found,
            builtin=group in BUILTIN_GROUPS,
            users=[u.username for u in await accounts.users()],
        )

    @pages.route(app, "/console/groups/<string:group>/members", "POST")
    async def group_member(request: IRequest, group: str) -> bytes:
        return await membership(request, _path("console", "groups", group), group=group)

    @pages.route(app, "/console/groups/<string:group>/delete", "GET", "HEAD")
    async def confirm_delete_group(request: IRequest, group: str) -> bytes:
        visitor = await pages.admin(request)
        if group not in await accounts.groups():
            raise NotFound(f"There is no group named {group!r}.")
        return render(request, visitor, "console_delete.html", what="group", name=group)

    @pages.route(app, "/console/groups/<string:group>/delete", "POST")
    async def delete_group(request: IRequest, group: str) -> bytes:
        async def work(caller: Identity, fields: Fields) -> Done:
            await accounts.delete_group(caller, group)
            return "/console/groups/", f"Group {group} deleted."

        return await change(request, _path("console", "groups", group), work)

    # -- package permissions ---------------------------------------------------------------

    @pages.route(app, "/console/packages/", "GET", "HEAD")
    async def package_lookup(request: IRequest) -> bytes:
        """``?name=`` leads to that package's permissions."""
        visitor = await pages.admin(request)
        name = (request.args or {}).get(b"name", [b""])[0].decode("utf-8", "replace").strip()
        if name:
            return pages.redirect(request, _path("console", "packages", project_name(name)))
        return render(request, visitor, "console_packages.html")

    @pages.route(app, "/console/packages/<string:package>/", "GET", "HEAD")
    async def package(request: IRequest, package: str) -> bytes:
        visitor = await pages.admin(request)
        name = project_name(package)
        return render(
            request,
            visitor,
            "console_package.html",
            package=name,
            access=await accounts.package(name),
            users=[u.username for u in await accounts.users()],
            groups=[*BUILTIN_GROUPS, *await accounts.groups()],
        )

    @pages.route(app, "/console/packages/<string:package>/permissions", "POST")
    async def package_permission(request: IRequest, package: str) -> bytes:
        """Grant (``action=grant``) or revoke ``perm`` for ``kind`` (user/group) ``name``."""
        visitor = await pages.admin(request)
        fields = pages.form(request, visitor)
        name = project_name(package)
        kind = csrf.one(fields, "kind")
        who = csrf.one(fields, "name").strip()
        perm = csrf.one(fields, "perm")
        add = csrf.one(fields, "action") != "revoke"
        back = _path("console", "packages", name)
        try:
            await accounts.edit_permission(visitor.identity, name, kind, who, perm, add)
        except PPCError as e:
            return failed(request, back, e)
        verb = "granted to" if add else "revoked from"
        return pages.redirect(request, back, f"{perm} on {name} {verb} {kind} {who}.")
