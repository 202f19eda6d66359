"""An access backend kept in one JSON document, shared by the memory and AWS Secrets Manager
backends.

The document is pypicloud's AWS Secrets Manager format (manual §1.6.5), so a secret written by
pypicloud loads here and one written here still works with pypicloud, which ignores the keys it
does not know::

    {
      "users": {"alice": "<password hash>"},
      "groups": {"devs": ["alice"]},
      "admins": ["alice"],
      "packages": {"mypackage": {"groups": {"devs": ["read", "write"]},
                                 "users": {"alice": ["read"]}}},
      "pending_users": {"bob": "<password hash>"},
      "allow_registration": false,
      "tokens": [<ApiToken.to_dict() records>]
    }

``pending_users`` and ``allow_registration`` are pypicloud's own keys for registrations;
``tokens`` is ours.  Package names are stored canonical and a principal left with no
permission is removed; unknown top-level keys are kept as they are.

A subclass provides two operations: fetch the document (``fresh`` when it is about to be
changed, so that a cached copy is never the base of an edit) and store it.  Every change in
one process takes a lock, re-reads the document, applies the change and stores the result
(only when something changed).  Password hashing and checking run in a thread pool.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import attrs
from passlib.context import CryptContext
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger
from zope.interface import implementer

from pypicloud_tx import __version__
from pypicloud_tx.backends._threads import RunBlocking
from pypicloud_tx.config.options import as_int, as_list, option
from pypicloud_tx.domain.names import canonical
from pypicloud_tx.domain.passwords import (
    check_rounds,
    hash_with,
    imported_hash,
    password_context,
    upgraded_hash,
    verify_password,
)
from pypicloud_tx.domain.tokens import ApiToken
from pypicloud_tx.errors import BackendUnavailable, Conflict, NotFound
from pypicloud_tx.interfaces import READ, WRITE, IMutableAccessBackend

log = Logger()
T = TypeVar("T")

#: The groups every caller (or every logged-in caller) is in; they are never stored.
BUILTIN_GROUPS = ("everyone", "authenticated")
_PERMS = (READ, WRITE)
#: The keys this module reads and writes; any other top-level key is kept untouched.
_KNOWN_KEYS = frozenset(
    {
        "users",
        "groups",
        "admins",
        "packages",
        "pending_users",
        "allow_registration",
        "allow_register",
        "tokens",
    }
)


def _rounds(text: str) -> int:
    return check_rounds(as_int(text))


@attrs.frozen
class DocumentOptions:
    """The ``auth.`` options every document backend accepts."""

    admins: tuple[str, ...] = option(
        as_list, default=(), doc="Users with admin rights, besides those stored as admins"
    )
    rounds: int | None = option(_rounds, default=None, doc="Hash rounds for new passwords")


class DocumentError(ValueError):
    """The document is not an access document; the message says where and why."""


def _check_perm(perm: str) -> None:
    if perm not in _PERMS:
        raise ValueError(f"{perm!r} is not a permission (use read or write)")


def _principal(group: str) -> str:
    return group if group in BUILTIN_GROUPS else f"group:{group}"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _object(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DocumentError(f"{where} must be a JSON object, not {_kind(value)}")
    return value


def _strings(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DocumentError(f"{where} must be a list of strings")
    return list(dict.fromkeys(value))


def _hashes(value: object, where: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, hashed in _object(value, where).items():
        if not isinstance(hashed, str):
            raise DocumentError(f"{where}.{name} must be a password hash (a string)")
        found[name] = hashed
    return found


def _grants(value: object, where: str, into: dict[str, set[str]]) -> None:
    for who, perms in _object(value, where).items():
        names = _strings(perms, f"{where}.{who}")
        unknown = [p for p in names if p not in _PERMS]
        if unknown:
            raise DocumentError(f"{where}.{who}: {unknown[0]!r} is not a permission")
        if names:
            into.setdefault(who, set()).update(names)


@attrs.define
class AccessDocument:
    """The parsed document: users, groups, permissions and tokens, changed in place."""

    users: dict[str, str] = attrs.Factory(dict)
    pending: dict[str, str] = attrs.Factory(dict)
    groups: dict[str, list[str]] = attrs.Factory(dict)
    admins: set[str] = attrs.Factory(set)
    user_perms: dict[str, dict[str, set[str]]] = attrs.Factory(dict)
    group_perms: dict[str, dict[str, set[str]]] = attrs.Factory(dict)
    allow_register: bool = False
    tokens: dict[str, ApiToken] = attrs.Factory(dict)
    extra: dict[str, Any] = attrs.Factory(dict)

    # -- the JSON form --------------------------------------------------------------------------

    @classmethod
    def from_json(cls, raw: object) -> AccessDocument:
        """The document of ``raw`` (parsed JSON; ``None`` for an absent document).

        :raises DocumentError: naming the first key that has the wrong shape.
        """
        data = _object(raw, "the document")
        doc = cls(
            users=_hashes(data.get("users"), "users"),
            pending=_hashes(data.get("pending_users"), "pending_users"),
            groups={
                g: _strings(m, f"groups.{g}")
                for g, m in _object(data.get("groups"), "groups").items()
            },
            admins=set(_strings(data.get("admins"), "admins")),
            extra={k: copy.deepcopy(v) for k, v in data.items() if k not in _KNOWN_KEYS},
        )
        for name, entry in _object(data.get("packages"), "packages").items():
            where = f"packages.{name}"
            entry = _object(entry, where)
            # Names written by hand (or by old pypicloud versions) may not be canonical.
            package = canonical(name)
            users = doc.user_perms.setdefault(package, {})
            groups = doc.group_perms.setdefault(package, {})
            _grants(entry.get("users"), f"{where}.users", users)
            _grants(entry.get("groups"), f"{where}.groups", groups)
        doc.user_perms = {p: g for p, g in doc.user_perms.items() if g}
        doc.group_perms = {p: g for p, g in doc.group_perms.items() if g}
        allow = data.get("allow_registration", data.get("allow_register", False))
        if not isinstance(allow, bool):
            raise DocumentError(f"allow_registration must be true or false, not {_kind(allow)}")
        doc.allow_register = allow
        tokens = data.get("tokens") or []
        if not isinstance(tokens, list):
            raise DocumentError(f"tokens must be a list, not {_kind(tokens)}")
        for i, record in enumerate(tokens):
            try:
                token = ApiToken.from_dict(_object(record, f"tokens[{i}]"))
            except ValueError as e:
                raise DocumentError(f"tokens[{i}]: {e}") from None
            doc.tokens[token.id] = token
        return doc

    def to_json(self) -> dict[str, Any]:
        """The JSON form, with every list and key in a stable order."""
        packages: dict[str, dict[str, dict[str, list[str]]]] = {}
        for package in sorted(set(self.user_perms) | set(self.group_perms)):
            packages[package] = {
                "groups": {
                    g: sorted(p) for g, p in sorted(self.group_perms.get(package, {}).items())
                },
                "users": {
                    u: sorted(p) for u, p in sorted(self.user_perms.get(package, {}).items())
                },
            }
        return {
            "users": dict(sorted(self.users.items())),
            "groups": {g: list(m) for g, m in sorted(self.groups.items())},
            "admins": sorted(self.admins),
            "packages": packages,
            "pending_users": dict(sorted(self.pending.items())),
            "allow_registration": self.allow_register,
            "tokens": [t.to_dict() for t in self.sorted_tokens(None)],
            **copy.deepcopy(self.extra),
        }

    # -- questions ------------------------------------------------------------------------------

    def exists(self, username: str) -> bool:
        return username in self.users or username in self.pending

    def require_user(self, username: str) -> None:
        if not self.exists(username):
            raise NotFound(f"there is no user named {username!r}")

    def require_group(self, group: str) -> None:
        if group not in self.groups:
            raise NotFound(f"there is no group named {group!r}")

    def groups_of(self, username: str) -> list[str]:
        """The sorted groups of an active user."""
        if username not in self.users:
            return []
        return sorted(g for g, members in self.groups.items() if username in members)

    def members(self, group: str) -> list[str]:
        """The sorted active members of ``group``."""
        return sorted(u for u in self.groups.get(group, ()) if u in self.users)

    def package_acls(self) -> dict[str, dict[str, frozenset[str]]]:
        acls: dict[str, dict[str, frozenset[str]]] = {}
        for package, grants in self.user_perms.items():
            for username, perms in grants.items():
                acls.setdefault(package, {})[f"user:{username}"] = frozenset(perms)
        for package, grants in self.group_perms.items():
            for group, perms in grants.items():
                acls.setdefault(package, {})[_principal(group)] = frozenset(perms)
        return acls

    def sorted_tokens(self, username: str | None) -> list[ApiToken]:
        """The tokens of ``username`` (everyone's for ``None``), oldest first."""
        return sorted(
            (t for t in self.tokens.values() if username is None or t.username == username),
            key=lambda t: (t.created, t.id),
        )

    # -- changes --------------------------------------------------------------------------------

    def add_user(self, username: str, hashed: str, admin: bool, pending: bool) -> None:
        if self.exists(username):
            raise Conflict(f"a user named {username!r} already exists")
        (self.pending if pending else self.users)[username] = hashed
        if admin:
            self.admins.add(username)

    def approve(self, username: str) -> None:
        if username not in self.pending:
            raise NotFound(f"there is no pending user named {username!r}")
        self.users[username] = self.pending.pop(username)

    def set_password(self, username: str, hashed: str) -> None:
        self.require_user(username)
        (self.pending if username in self.pending else self.users)[username] = hashed

    def delete_user(self, username: str) -> None:
        self.require_user(username)
        self.users.pop(username, None)
        self.pending.pop(username, None)
        self.admins.discard(username)
        for members in self.groups.values():
            if username in members:
                members.remove(username)
        for grants in self.user_perms.values():
            grants.pop(username, None)
        self.user_perms = {p: g for p, g in self.user_perms.items() if g}
        self.tokens = {i: t for i, t in self.tokens.items() if t.username != username}

    def set_admin(self, username: str, admin: bool) -> None:
        self.require_user(username)
        if admin:
            self.admins.add(username)
        else:
            self.admins.discard(username)

    def add_group(self, group: str) -> None:
        if group in BUILTIN_GROUPS:
            raise Conflict(f"{group!r} is a built-in group")
        if group in self.groups:
            raise Conflict(f"a group named {group!r} already exists")
        self.groups[group] = []

    def delete_group(self, group: str) -> None:
        self.require_group(group)
        del self.groups[group]
        for grants in self.group_perms.values():
            grants.pop(group, None)
        self.group_perms = {p: g for p, g in self.group_perms.items() if g}

    def set_member(self, username: str, group: str, add: bool) -> None:
        self.require_user(username)
        self.require_group(group)
        members = self.groups[group]
        if add and username not in members:
            members.append(username)
        elif not add and username in members:
            members.remove(username)

    @staticmethod
    def _edit(
        table: dict[str, dict[str, set[str]]], package: str, who: str, perm: str, add: bool
    ) -> None:
        package = canonical(package)
        grants = table.setdefault(package, {})
        perms = grants.setdefault(who, set())
        if add:
            perms.add(perm)
        else:
            perms.discard(perm)
        if not perms:
            del grants[who]
        if not grants:
            del table[package]

    def edit_user_permission(self, package: str, username: str, perm: str, add: bool) -> None:
        _check_perm(perm)
        self.require_user(username)
        self._edit(self.user_perms, package, username, perm, add)

    def edit_group_permission(self, package: str, group: str, perm: str, add: bool) -> None:
        _check_perm(perm)
        if group not in BUILTIN_GROUPS:
            self.require_group(group)
        self._edit(self.group_perms, package, group, perm, add)

    def save_token(self, token: ApiToken) -> None:
        if token.username not in self.users:
            raise NotFound(f"there is no user named {token.username!r}")
        if token.id in self.tokens:
            raise Conflict(f"a token with id {token.id!r} already exists")
        self.tokens[token.id] = token

    def delete_token(self, token_id: str) -> None:
        if self.tokens.pop(token_id, None) is None:
            raise NotFound(f"there is no token with id {token_id!r}")

    def load(self, data: Mapping[str, Any]) -> None:
        """Add what ``data`` (the export format) holds and this document lacks.

        :raises ValueError: for a malformed entry or an unknown permission.
        """
        entries = [(u, False) for u in data.get("users", [])]
        entries += [(u, True) for u in data.get("pending_users", [])]
        for entry, pending in entries:
            try:
                username, hashed = str(entry["username"]), imported_hash(entry.get("password"))
            except (KeyError, TypeError):
                # Never the entry itself in the message: it holds a password hash.
                raise ValueError("a user entry needs a username and a password") from None
            if not self.exists(username):
                self.add_user(username, hashed, bool(entry.get("admin")), pending)
        for group, members in dict(data.get("groups", {})).items():
            if group in BUILTIN_GROUPS:
                continue
            self.groups.setdefault(group, [])
            for username in members:
                if self.exists(username):
                    self.set_member(username, group, True)
        packages = dict(data.get("packages", {}))
        for package, grants in dict(packages.get("users", {})).items():
            for username, perms in dict(grants).items():
                for perm in perms:
                    _check_perm(perm)
                    if self.exists(username):
                        self._edit(self.user_perms, package, username, perm, True)
        for package, grants in dict(packages.get("groups", {})).items():
            for group, perms in dict(grants).items():
                if group not in BUILTIN_GROUPS:
                    self.groups.setdefault(group, [])
                for perm in perms:
                    _check_perm(perm)
                    self._edit(self.group_perms, package, group, perm, True)
        if "allow_register" in data:
            self.allow_register = bool(data["allow_register"])
        for record in data.get("tokens") or []:
            token = ApiToken.from_dict(record)
            if token.id not in self.tokens and token.username in self.users:
                self.tokens[token.id] = token


@implementer(IMutableAccessBackend)
class DocumentAccessBackend:
    """:class:`IMutableAccessBackend` over one JSON document; subclasses say where it lives.

    :param run_blocking: where passwords are hashed and checked.
    :param admins: user names that are admins besides those the document lists.
    :param rounds: sha512_crypt rounds for new password hashes.
    :param source: what holds the document, for error messages (``"the secret 'x'
        (auth.secret_id)"``).
    """

    Options = DocumentOptions

    def __init__(
        self,
        run_blocking: RunBlocking,
        admins: Iterable[str] = (),
        rounds: int | None = None,
        source: str = "the access document",
    ) -> None:
        self._run = run_blocking
        self._admins = frozenset(admins)
        self._context: CryptContext = password_context(rounds)
        self._source = source
        self._lock = DeferredLock()
        # The last document parsed on the read path, and the raw object it came from.
        self._parsed: AccessDocument | None = None
        self._parsed_from: object = None

    # -- what a subclass provides ---------------------------------------------------------------

    async def fetch(self, fresh: bool) -> Mapping[str, Any] | None:
        """The document as parsed JSON, or ``None`` when there is none yet.

        Must return a new object whenever the document may have changed: the read path keeps
        the parse of the last object it saw.  ``fresh`` asks for the stored state, bypassing
        any cache (a change is about to be made from it).

        :raises BackendUnavailable: when the store cannot be read.
        """
        raise NotImplementedError

    async def store(self, document: dict[str, Any]) -> None:
        """Replace the stored document with ``document`` (JSON-ready; never modified later).

        :raises BackendUnavailable: when the store cannot be written.
        """
        raise NotImplementedError

    # -- reading and changing -------------------------------------------------------------------

    def _parse(self, raw: object) -> AccessDocument:
        try:
            return AccessDocument.from_json(raw)
        except DocumentError as e:
            raise BackendUnavailable(
                f"{self._source} is not a valid access document: {e}"
            ) from None

    async def _current(self) -> AccessDocument:
        """The document for answering questions (never to be changed)."""
        raw = await self.fetch(fresh=False)
        if self._parsed is None or raw is not self._parsed_from:
            self._parsed = self._parse(raw)
            self._parsed_from = raw
        return self._parsed

    def _reading(self, read: Callable[[AccessDocument], T]) -> Deferred[T]:
        async def work() -> T:
            return read(await self._current())

        return Deferred.fromCoroutine(work())

    async def _change(self, change: Callable[[AccessDocument], T]) -> T:
        async with self._lock:
            doc = self._parse(await self.fetch(fresh=True))
            before = doc.to_json()
            result = change(doc)
            after = doc.to_json()
            if after != before:
                await self.store(after)
            return result

    def _changing(self, change: Callable[[AccessDocument], T]) -> Deferred[T]:
        return Deferred.fromCoroutine(self._change(change))

    def _hashing(
        self, password: str, change: Callable[[AccessDocument, str], None]
    ) -> Deferred[None]:
        """Hash ``password`` off the reactor thread (before taking the lock), then change."""

        async def work() -> None:
            hashed = await self._run(hash_with, self._context, password)
            await self._change(lambda doc: change(doc, hashed))

        return Deferred.fromCoroutine(work())

    def _is_admin(self, doc: AccessDocument, username: str) -> bool:
        return username in doc.users and (username in doc.admins or username in self._admins)

    def _user_record(self, doc: AccessDocument, username: str) -> dict[str, Any]:
        return {
            "username": username,
            "admin": self._is_admin(doc, username),
            "groups": doc.groups_of(username),
        }

    # -- IAccessBackend -------------------------------------------------------------------------

    def verify_user(self, username: str, password: str) -> Deferred[bool]:
        async def work() -> bool:
            doc = await self._current()
            # Unknown and pending users are checked against a dummy hash: same time, no answer.
            hashed = doc.users.get(username)
            if not await self._run(verify_password, self._context, password, hashed):
                return False
            assert hashed is not None
            fresh = await self._run(upgraded_hash, self._context, password, hashed)
            if fresh is not None:
                await self._change(lambda doc: self._rehash(doc, username, hashed, fresh))
            return True

        return Deferred.fromCoroutine(work())

    @staticmethod
    def _rehash(doc: AccessDocument, username: str, old: str, fresh: str) -> None:
        """Store ``fresh`` for an outdated hash, unless the password changed meanwhile."""
        if doc.users.get(username) == old:
            doc.users[username] = fresh
            log.info("rehashed the outdated password hash of {user}", user=username)

    def groups(self, username: str | None = None) -> Deferred[list[str]]:
        if username is None:
            return self._reading(lambda doc: sorted(doc.groups))
        return self._reading(lambda doc: doc.groups_of(username))

    def group_members(self, group: str) -> Deferred[list[str]]:
        return self._reading(lambda doc: doc.members(group))

    def is_admin(self, username: str) -> Deferred[bool]:
        return self._reading(lambda doc: self._is_admin(doc, username))

    def package_acls(self) -> Deferred[Mapping[str, Mapping[str, frozenset[str]]]]:
        return self._reading(AccessDocument.package_acls)

    def user_permissions(self, package: str) -> Deferred[dict[str, frozenset[str]]]:
        return self._reading(
            lambda doc: {
                u: frozenset(p) for u, p in doc.user_perms.get(canonical(package), {}).items()
            }
        )

    def group_permissions(self, package: str) -> Deferred[dict[str, frozenset[str]]]:
        return self._reading(
            lambda doc: {
                g: frozenset(p) for g, p in doc.group_perms.get(canonical(package), {}).items()
            }
        )

    def user_data(self, username: str | None = None) -> Deferred[object]:
        def read(doc: AccessDocument) -> object:
            if username is None:
                return [self._user_record(doc, u) for u in sorted(doc.users)]
            if username not in doc.users:
                return None
            return self._user_record(doc, username)

        return self._reading(read)

    def check_health(self) -> Deferred[tuple[bool, str]]:
        """Reads the stored document (bypassing any cache) and checks its shape."""

        async def work() -> tuple[bool, str]:
            try:
                self._parse(await self.fetch(fresh=True))
            except BackendUnavailable as e:
                return (False, e.message)
            return (True, "")

        return Deferred.fromCoroutine(work())

    def dump(self) -> Deferred[dict[str, object]]:
        """pypicloud's export format, with ``pending_users`` and ``tokens``."""

        def read(doc: AccessDocument) -> dict[str, object]:
            groups = {g: list(m) for g, m in sorted(doc.groups.items())}
            return {
                "allow_register": doc.allow_register,
                "version": __version__,
                "users": [
                    {"username": u, "password": h, "admin": self._is_admin(doc, u)}
                    for u, h in sorted(doc.users.items())
                ],
                "pending_users": [
                    {"username": u, "password": h} for u, h in sorted(doc.pending.items())
                ],
                "groups": groups,
                "packages": {
                    "users": _export_grants(doc.user_perms),
                    "groups": _export_grants(doc.group_perms),
                },
                "tokens": [t.to_dict() for t in doc.sorted_tokens(None)],
            }

        return self._reading(read)

    # -- IMutableAccessBackend ------------------------------------------------------------------

    def create_user(
        self, username: str, password: str, admin: bool = False, pending: bool = False
    ) -> Deferred[None]:
        return self._hashing(
            password, lambda doc, hashed: doc.add_user(username, hashed, admin, pending)
        )

    def approve_user(self, username: str) -> Deferred[None]:
        return self._changing(lambda doc: doc.approve(username))

    def pending_users(self) -> Deferred[list[str]]:
        return self._reading(lambda doc: sorted(doc.pending))

    def set_password(self, username: str, password: str) -> Deferred[None]:
        return self._hashing(password, lambda doc, hashed: doc.set_password(username, hashed))

    def delete_user(self, username: str) -> Deferred[None]:
        return self._changing(lambda doc: doc.delete_user(username))

    def set_admin(self, username: str, admin: bool) -> Deferred[None]:
        return self._changing(lambda doc: doc.set_admin(username, admin))

    def create_group(self, group: str) -> Deferred[None]:
        return self._changing(lambda doc: doc.add_group(group))

    def delete_group(self, group: str) -> Deferred[None]:
        return self._changing(lambda doc: doc.delete_group(group))

    def edit_user_group(self, username: str, group: str, add: bool) -> Deferred[None]:
        return self._changing(lambda doc: doc.set_member(username, group, add))

    def edit_user_permission(
        self, package: str, username: str, perm: str, add: bool
    ) -> Deferred[None]:
        return self._changing(lambda doc: doc.edit_user_permission(package, username, perm, add))

    def edit_group_permission(
        self, package: str, group: str, perm: str, add: bool
    ) -> Deferred[None]:
        return self._changing(lambda doc: doc.edit_group_permission(package, group, perm, add))

    def allow_register(self) -> Deferred[bool]:
        return self._reading(lambda doc: doc.allow_register)

    def set_allow_register(self, allow: bool) -> Deferred[None]:
        def change(doc: AccessDocument) -> None:
            doc.allow_register = allow

        return self._changing(change)

    def save_token(self, token: ApiToken) -> Deferred[None]:
        return self._changing(lambda doc: doc.save_token(token))

    def find_token(self, token_id: str) -> Deferred[ApiToken | None]:
        return self._reading(lambda doc: doc.tokens.get(token_id))

    def tokens(self, username: str | None = None) -> Deferred[list[ApiToken]]:
        return self._reading(lambda doc: doc.sorted_tokens(username))

    def delete_token(self, token_id: str) -> Deferred[None]:
        return self._changing(lambda doc: doc.delete_token(token_id))

    def load(self, data: Mapping[str, object]) -> Deferred[None]:
        return self._changing(lambda doc: doc.load(data))


def _export_grants(table: Mapping[str, Mapping[str, set[str]]]) -> dict[str, dict[str, list[str]]]:
    return {
        package: {who: sorted(perms) for who, perms in sorted(grants.items())}
        for package, grants in sorted(table.items())
    }
