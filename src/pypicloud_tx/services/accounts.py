"""Users, groups and permissions as people manage them: registration, password changes, sign-up
tokens and every ``/admin/`` operation.

The web layer checks that the caller of an admin operation is an admin (``web/admin.py``);
this service applies the rules that hold whoever asks: names and passwords are checked, a
read-only access backend refuses changes with :class:`~pypicloud_tx.errors.ReadOnly`, the
first user to register on an index without any admin becomes its admin, and the last admin
can be neither deleted nor demoted (which would reopen that first-admin door to anyone).

The first-admin decision and the last-admin checks run under one lock, so simultaneous
requests to this process cannot both win.  Several processes sharing one access database can
still race (the interface has no atomic "claim the first admin" step); create the first admin
before scaling out (``pypicloud-tx import`` or a single process).
"""

from __future__ import annotations

import base64
import gzip
import json
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import attrs
from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from pypicloud_tx.domain import signup
from pypicloud_tx.domain.models import Identity
from pypicloud_tx.domain.names import canonical, is_valid_name
from pypicloud_tx.domain.tokens import TOKEN_USERNAME
from pypicloud_tx.errors import (
    Conflict,
    Forbidden,
    InvalidUpload,
    NotFound,
    ReadOnly,
    Unauthenticated,
)
from pypicloud_tx.interfaces import READ, WRITE, IAccessBackend, IMutableAccessBackend
from pypicloud_tx.services.auth import Authenticator

log = Logger()

#: The groups everyone (or every logged-in caller) is in: never created, edited or deleted.
BUILTIN_GROUPS = ("everyone", "authenticated")
PERMISSIONS = (READ, WRITE)
#: Longest user or group name (pypicloud's limit).
MAX_NAME = 100
#: Longest password accepted (hashing a megabyte on purpose would be a cheap attack).
MAX_PASSWORD = 1024
WRONG_PASSWORD = "The old password is wrong."
BAD_SIGNUP_TOKEN = "The sign-up token is invalid, expired, or for another user name."

#: Where a read-only backend's users are managed, by ``pypi.auth`` short name.
_MANAGED_IN = {
    "config": "edit the user.*, group.* and package.* lines of the configuration file",
    "ldap": "they are managed in the LDAP directory",
    "remote": "they are managed by the remote service (auth.backend_server)",
}


class InvalidInput(InvalidUpload):
    """A user name, group name, password, permission or form field is malformed (HTTP 400);
    nothing was changed."""


@attrs.frozen
class UserInfo:
    """One active user: name, effective admin flag (stored or ``auth.admins``), groups."""

    username: str
    admin: bool
    groups: tuple[str, ...] = ()


@attrs.frozen
class Grant:
    """Permissions (sorted ``read``/``write``) of one package, user or group."""

    name: str
    permissions: tuple[str, ...]


@attrs.frozen
class GroupInfo:
    """A group's members and the packages it has explicit permissions on."""

    members: tuple[str, ...]
    packages: tuple[Grant, ...]


@attrs.frozen
class PackageAccess:
    """The explicit permissions on one package, by user and by group."""

    users: tuple[Grant, ...]
    groups: tuple[Grant, ...]


@attrs.frozen
class Registration:
    """What a registration created: a pending user, an active one, or the first admin."""

    username: str
    pending: bool
    admin: bool


def check_name(name: str, what: str = "user name") -> str:
    """``name`` if it can be a user or group name.

    :raises InvalidInput: saying what is wrong with it.
    """
    if not name:
        raise InvalidInput(f"The {what} is empty.")
    if len(name) > MAX_NAME:
        raise InvalidInput(f"The {what} is longer than {MAX_NAME} characters.")
    if name != name.strip():
        raise InvalidInput(f"The {what} must not start or end with spaces.")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise InvalidInput(f"The {what} must not contain control or invisible characters.")
    # ':' cannot travel in HTTP Basic's user name and separates a sign-up token's parts;
    # '/' could never be addressed in /admin/user/<name>/.
    if ":" in name or "/" in name or name in (".", ".."):
        raise InvalidInput(f"The {what} {name!r} must not contain ':' or '/' (or be . or ..).")
    if name == TOKEN_USERNAME:
        raise InvalidInput(f"{TOKEN_USERNAME!r} is reserved for API tokens.")
    return name


def check_password(password: str, field: str = "password") -> str:
    """``password`` if it can be set.  :raises InvalidInput: for an empty or absurd one."""
    if not password:
        raise InvalidInput(f"The {field} is empty; send a non-empty {field}.")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(f"The {field} is longer than {MAX_PASSWORD} characters.")
    if "\x00" in password:
        raise InvalidInput(f"The {field} must not contain NUL characters.")
    return password


def _perms(perms: Iterable[str]) -> tuple[str, ...]:
    return tuple(p for p in PERMISSIONS if p in perms)


class Accounts:
    """Registration, password changes, sign-up tokens and the admin operations.

    :param access: the access backend; changes need an :class:`IMutableAccessBackend`.
    :param auth: the authenticator, whose remembered logins are dropped after each change of a
        user (and which checks and counts ``old_password`` like a login).
    :param backend_name: ``pypi.auth``'s value, for the messages of a read-only backend.
    :param signing_key: ``auth.signing_key``; ``None`` disables sign-up tokens.
    :param token_expire: ``auth.token_expire``, seconds.
    :param now: seconds since the epoch (the reactor's clock in tests).
    """

    def __init__(
        self,
        access: IAccessBackend,
        auth: Authenticator,
        backend_name: str,
        signing_key: str | None = None,
        token_expire: int = signup.ONE_WEEK,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._access = access
        self._auth = auth
        self._backend_name = backend_name
        self._signing_key = signing_key
        self._token_expire = token_expire
        self._now = now
        self._admins_lock = DeferredLock()

    @property
    def mutable(self) -> bool:
        return IMutableAccessBackend.providedBy(self._access)

    def _mutable(self) -> Any:
        """The backend, if it can change.  :raises ReadOnly: naming where users are managed."""
        if not self.mutable:
            where = _MANAGED_IN.get(self._backend_name, "it is read-only")
            raise ReadOnly(
                f"pypi.auth = {self._backend_name} cannot change users, groups or permissions: "
                f"{where}."
            )
        return self._access

    # -- reading -------------------------------------------------------------------------

    async def _user_records(self) -> list[Mapping[str, Any]]:
        return cast(list[Mapping[str, Any]], await self._access.user_data(None))

    async def _admin_names(self) -> list[str]:
        return [u["username"] for u in await self._user_records() if u.get("admin")]

    async def needs_admin(self) -> bool:
        """Whether a mutable backend has no active admin (stored, or named by ``auth.admins``
        and existing): the next registration then makes its user the admin."""
        return self.mutable and not await self._admin_names()

    async def users(self) -> list[UserInfo]:
        """Every active user, sorted by name (pending users are not listed)."""
        records = await self._user_records()
        found = [
            UserInfo(str(u["username"]), bool(u.get("admin")), tuple(u.get("groups", ())))
            for u in records
        ]
        return sorted(found, key=lambda u: u.username)

    async def user(self, username: str) -> UserInfo:
        """One active user with their groups.  :raises NotFound:"""
        record = cast("Mapping[str, Any] | None", await self._access.user_data(username))
        if record is None:
            raise NotFound(
                f"There is no active user named {username!r} (users waiting for approval are "
                "listed at /admin/pending_users/)."
            )
        return UserInfo(
            str(record["username"]), bool(record.get("admin")), tuple(record.get("groups", ()))
        )

    async def pending_users(self) -> list[str]:
        """Users waiting for approval, sorted (none for a read-only backend)."""
        if not self.mutable:
            return []
        return list(await self._access.pending_users())  # type: ignore[attr-defined]

    async def allow_register(self) -> bool:
        """Whether anyone may register (never, for a read-only backend)."""
        if not self.mutable:
            return False
        return bool(await self._access.allow_register())  # type: ignore[attr-defined]

    async def _exists(self, username: str) -> bool:
        if await self._access.user_data(username) is not None:
            return True
        return username in await self.pending_users()

    async def user_permissions(self, username: str) -> list[Grant]:
        """The packages ``username`` has explicit permissions on, sorted.  :raises NotFound:"""
        if not await self._exists(username):
            raise NotFound(f"There is no user named {username!r}.")
        return self._grants_of(await self._access.package_acls(), f"user:{username}")

    @staticmethod
    def _grants_of(acls: Mapping[str, Mapping[str, frozenset[str]]], principal: str) -> list[Grant]:
        return [
            Grant(package, _perms(acl[principal]))
            for package, acl in sorted(acls.items())
            if acl.get(principal)
        ]

    async def groups(self) -> list[str]:
        """Every group's name, sorted (the built-in ``everyone`` and ``authenticated`` are not
        listed)."""
        return sorted(await self._access.groups(None))

    async def group(self, group: str) -> GroupInfo:
        """A group's members and package permissions; ``everyone`` and ``authenticated``
        have permissions but no listed members.  :raises NotFound:"""
        if group in BUILTIN_GROUPS:
            members: list[str] = []
            principal = group
        else:
            if group not in await self._access.groups(None):
                raise NotFound(f"There is no group named {group!r}.")
            members = sorted(await self._access.group_members(group))
            principal = f"group:{group}"
        packages = self._grants_of(await self._access.package_acls(), principal)
        return GroupInfo(tuple(members), tuple(packages))

    async def package(self, package: str) -> PackageAccess:
        """The explicit user and group permissions on ``package`` (any spelling)."""
        name = _package_name(package)
        users = await self._access.user_permissions(name)
        groups = await self._access.group_permissions(name)
        return PackageAccess(
            tuple(Grant(u, _perms(p)) for u, p in sorted(users.items()) if p),
            tuple(Grant(g, _perms(p)) for g, p in sorted(groups.items()) if p),
        )

    async def export(self) -> bytes:
        """The access data as gzip-compressed JSON in pypicloud's export format (password
        hashes included), as ``pypicloud-tx export`` writes it."""
        data = await self._access.dump()
        return gzip.compress(json.dumps(data, sort_keys=True).encode("utf-8"))

    # -- registration --------------------------------------------------------------------

    async def register(
        self, username: str, password: str, token: str | None = None
    ) -> Registration:
        """Register ``username``.

        On an index without any admin the user becomes an active admin at once.  Otherwise a
        valid sign-up ``token`` issued for this name makes an active user even while
        registration is closed; without one, open registration makes a pending user.

        :raises ReadOnly: for a read-only backend.
        :raises InvalidInput: for a bad name or password.
        :raises Forbidden: when registration is closed (or the token is bad).
        :raises Conflict: if the name is taken.
        """
        access = self._mutable()
        check_name(username)
        check_password(password)
        invited = False
        if token:
            if self._signing_key is None:
                raise Forbidden(
                    "This server issues no sign-up tokens (auth.signing_key is not set)."
                )
            owner = signup.verify(token, self._signing_key, self._now(), self._token_expire)
            if owner != username:
                raise Forbidden(BAD_SIGNUP_TOKEN)
            invited = True
        if await self.needs_admin():
            async with self._admins_lock:
                # Checked again under the lock: of simultaneous first registrations in this
                # process, one becomes the admin and the others are treated as usual.
                if await self.needs_admin():
                    await access.create_user(username, password, admin=True, pending=False)
                    log.info("{user} registered as the first admin", user=username)
                    return Registration(username, pending=False, admin=True)
        if invited:
            await access.create_user(username, password, admin=False, pending=False)
            log.info("{user} registered with a sign-up token", user=username)
            return Registration(username, pending=False, admin=False)
        if not await access.allow_register():
            raise Forbidden("Registration is closed; ask an admin for a sign-up token.")
        await access.create_user(username, password, admin=False, pending=True)
        log.info("{user} registered and waits for approval", user=username)
        return Registration(username, pending=True, admin=False)

    async def signup_token(self, actor: Identity, username: str) -> str:
        """A sign-up token for ``username`` (see :mod:`pypicloud_tx.domain.signup`).

        :raises ReadOnly: / :raises InvalidInput: / :raises Conflict: when the name is taken
            or no ``auth.signing_key`` is configured.
        """
        self._mutable()
        check_name(username)
        if self._signing_key is None:
            raise Conflict("Sign-up tokens need auth.signing_key in the server's configuration.")
        if await self._exists(username):
            raise Conflict(f"A user named {username!r} already exists.")
        log.info("{actor} issued a sign-up token for {user}", actor=actor.username, user=username)
        return signup.issue(username, self._signing_key, self._now())

    async def change_password(
        self, caller: Identity, old_password: str, new_password: str, address: str
    ) -> None:
        """The caller replaces their own password, proving the old one.

        The old password is checked like a login (failures count towards the login throttle);
        a wrong one and a vanished user answer alike.  Every remembered login of the user is
        forgotten, so the old password stops working at once (in this process).

        :raises Unauthenticated: for an anonymous caller.
        :raises Forbidden: for an API token, or a wrong old password.
        :raises ReadOnly: / :raises InvalidInput: / :raises TooManyAttempts:
        """
        if caller.username is None:
            raise Unauthenticated("Log in to change your password.")
        if caller.scope is not None:
            raise Forbidden("API tokens cannot change passwords; log in with your password.")
        access = self._mutable()
        if not old_password:
            raise InvalidInput("Send old_password (your current password) and new_password.")
        check_password(new_password, "new_password")
        username = caller.username
        credentials = base64.b64encode(f"{username}:{old_password}".encode())
        try:
            # The authenticator's own check: same throttling and failure counting as a login.
            await self._auth.identify(b"Basic " + credentials, address)
        except Unauthenticated:
            raise Forbidden(WRONG_PASSWORD) from None
        try:
            await access.set_password(username, new_password)
        except NotFound:
            raise Forbidden(WRONG_PASSWORD) from None
        finally:
            self._auth.forget(username)
        log.info("{user} changed their password", user=username)

    # -- admin operations (the caller has been checked to be an admin) ------------------

    async def set_allow_register(self, actor: Identity, allow: bool) -> None:
        await self._mutable().set_allow_register(allow)
        log.info(
            "{actor} {what} registration",
            actor=actor.username,
            what="opened" if allow else "closed",
        )

    async def create_user(self, actor: Identity, username: str, password: str) -> None:
        """An active, non-admin user.  :raises Conflict: if the name is taken."""
        access = self._mutable()
        check_name(username)
        check_password(password)
        await access.create_user(username, password, admin=False, pending=False)
        log.info("{actor} created user {user}", actor=actor.username, user=username)

    async def approve_user(self, actor: Identity, username: str) -> None:
        """:raises NotFound: if no such user is pending."""
        await self._mutable().approve_user(username)
        log.info("{actor} approved user {user}", actor=actor.username, user=username)

    async def _refuse_last_admin(self, username: str, action: str) -> None:
        if await self._admin_names() == [username]:
            raise Conflict(
                f"{username} is the only admin and cannot be {action}; make another user an "
                "admin first."
            )

    async def delete_user(self, actor: Identity, username: str) -> None:
        """Delete a user (active or pending) with their memberships, permissions and tokens.

        :raises Conflict: for the last admin.  :raises NotFound:
        """
        access = self._mutable()
        async with self._admins_lock:
            await self._refuse_last_admin(username, "deleted")
            try:
                await access.delete_user(username)
            finally:
                self._auth.forget(username)
        log.info("{actor} deleted user {user}", actor=actor.username, user=username)

    async def set_admin(self, actor: Identity, username: str, admin: bool) -> bool:
        """Grant or revoke the stored admin flag; whether the user is an admin afterwards
        (``auth.admins`` keeps a user admin whatever the flag says).

        :raises Conflict: when demoting the last admin.  :raises NotFound:
        """
        access = self._mutable()
        async with self._admins_lock:
            if not admin:
                await self._refuse_last_admin(username, "demoted")
            try:
                await access.set_admin(username, admin)
            finally:
                self._auth.forget(username)
        log.info(
            "{actor} set the admin flag of {user} to {admin}",
            actor=actor.username,
            user=username,
            admin=admin,
        )
        return bool(await access.is_admin(username))

    async def edit_user_group(self, actor: Identity, username: str, group: str, add: bool) -> None:
        """Add ``username`` to ``group`` or remove them.  :raises NotFound:"""
        access = self._mutable()
        if group in BUILTIN_GROUPS:
            raise InvalidInput(f"{group!r} is a built-in group: its members cannot be changed.")
        try:
            await access.edit_user_group(username, group, add)
        finally:
            self._auth.forget(username)
        log.info(
            "{actor} {what} {user} {where} group {group}",
            actor=actor.username,
            what="added" if add else "removed",
            user=username,
            where="to" if add else "from",
            group=group,
        )

    async def create_group(self, actor: Identity, group: str) -> None:
        """:raises InvalidInput: for a bad or built-in name.  :raises Conflict: if it exists."""
        access = self._mutable()
        if group in BUILTIN_GROUPS:
            raise InvalidInput(f"{group!r} is a reserved name (a built-in group).")
        check_name(group, "group name")
        await access.create_group(group)
        log.info("{actor} created group {group}", actor=actor.username, group=group)

    async def delete_group(self, actor: Identity, group: str) -> None:
        """Delete a group with its memberships and permissions.  :raises NotFound:"""
        access = self._mutable()
        if group in BUILTIN_GROUPS:
            raise InvalidInput(f"{group!r} is a built-in group and cannot be deleted.")
        members = await access.group_members(group) if group in await access.groups(None) else []
        await access.delete_group(group)
        for member in members:
            self._auth.forget(member)
        log.info("{actor} deleted group {group}", actor=actor.username, group=group)

    async def edit_permission(
        self, actor: Identity, package: str, kind: str, name: str, perm: str, add: bool
    ) -> None:
        """Grant (``add``) or revoke ``perm`` on ``package`` for a user (``kind`` ``user``) or
        a group (``group``; ``everyone`` and ``authenticated`` included).

        :raises InvalidInput: for a bad package name, kind or permission.  :raises NotFound:
        """
        access = self._mutable()
        if kind not in ("user", "group"):
            raise InvalidInput(f"{kind!r} is neither 'user' nor 'group'.")
        if perm not in PERMISSIONS:
            raise InvalidInput(f"{perm!r} is not a permission; use 'read' or 'write'.")
        package = _package_name(package)
        if kind == "user":
            await access.edit_user_permission(package, name, perm, add)
        else:
            await access.edit_group_permission(package, name, perm, add)
        log.info(
            "{actor} {what} {perm} on {package} {where} {kind} {name}",
            actor=actor.username,
            what="granted" if add else "revoked",
            perm=perm,
            package=package,
            where="to" if add else "from",
            kind=kind,
            name=name,
        )


def _package_name(package: str) -> str:
    if not is_valid_name(package):
        raise InvalidInput(
            f"{package!r} is not a valid project name (ASCII letters, digits, '.', '_', '-')."
        )
    return canonical(package)
