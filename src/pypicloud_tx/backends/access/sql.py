"""Users, groups and package permissions in a SQL database (``pypi.auth = sql``).

SQLAlchemy 2 Core on the ``auth-db`` thread pool, with the engine settings of the SQL cache
(:func:`pypicloud_tx.backends._sql.create_engine`): SQLite, PostgreSQL and MySQL/MariaDB.
``auth.db.url`` may name the same database as ``db.url``: every table here is named
``ppc_auth_*``, apart from the cache's ``ppc_files``.

Password hashes are passlib strings (pypicloud's own hashes keep working), computed and checked
on the pool's threads, never on the reactor thread.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import attrs
import sqlalchemy as sa
from passlib.context import CryptContext
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from pypicloud_tx import __version__
from pypicloud_tx.backends._sql import (
    create_tables,
    exact_string,
    in_transaction,
    open_engine,
    run_on_engine,
)
from pypicloud_tx.backends._threads import RunBlocking
from pypicloud_tx.config.options import as_int, as_list, as_str, option
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
from pypicloud_tx.runtime import Runtime

log = Logger()
T = TypeVar("T")

THREADS = 4
#: The groups every caller (or every logged-in caller) is in; they are never stored.
BUILTIN_GROUPS = ("everyone", "authenticated")
_PERMS = (READ, WRITE)

metadata = sa.MetaData()

users_table = sa.Table(
    "ppc_auth_users",
    metadata,
    sa.Column("username", exact_string(255), primary_key=True),
    sa.Column("password", sa.String(1024), nullable=False),
    sa.Column("admin", sa.Boolean(), nullable=False, default=False),
    sa.Column("pending", sa.Boolean(), nullable=False, default=False),
)
groups_table = sa.Table(
    "ppc_auth_groups",
    metadata,
    sa.Column("name", exact_string(255), primary_key=True),
)
members_table = sa.Table(
    "ppc_auth_members",
    metadata,
    sa.Column("username", exact_string(255), primary_key=True),
    sa.Column("group", exact_string(255), primary_key=True, index=True),
)
user_perms_table = sa.Table(
    "ppc_auth_user_permissions",
    metadata,
    sa.Column("package", exact_string(255), primary_key=True),
    sa.Column("username", exact_string(255), primary_key=True, index=True),
    sa.Column("read", sa.Boolean(), nullable=False),
    sa.Column("write", sa.Boolean(), nullable=False),
)
group_perms_table = sa.Table(
    "ppc_auth_group_permissions",
    metadata,
    sa.Column("package", exact_string(255), primary_key=True),
    sa.Column("group", exact_string(255), primary_key=True, index=True),
    sa.Column("read", sa.Boolean(), nullable=False),
    sa.Column("write", sa.Boolean(), nullable=False),
)
#: API tokens: the id and owner as columns for lookups, the rest as an ApiToken.to_dict record.
tokens_table = sa.Table(
    "ppc_auth_tokens",
    metadata,
    sa.Column("id", exact_string(32), primary_key=True),
    sa.Column("username", exact_string(255), nullable=False, index=True),
    sa.Column("record", sa.Text(), nullable=False),
)
settings_table = sa.Table(
    "ppc_auth_settings",
    metadata,
    sa.Column("key", exact_string(255), primary_key=True),
    sa.Column("value", sa.Text(), nullable=False),
)


def _rounds(text: str) -> int:
    return check_rounds(as_int(text))


def _perms(read: bool, write: bool) -> frozenset[str]:
    return frozenset(p for p, on in ((READ, read), (WRITE, write)) if on)


def _check_perm(perm: str) -> None:
    if perm not in _PERMS:
        raise ValueError(f"{perm!r} is not a permission (use read or write)")


def _names(names: Iterable[str]) -> frozenset[str]:
    return frozenset(names)


def _principal(group: str) -> str:
    return group if group in BUILTIN_GROUPS else f"group:{group}"


@implementer(IMutableAccessBackend)
@attrs.define
class SQLAccessBackend:
    """Users (with pending registrations), groups and package permissions in SQL tables."""

    @attrs.frozen
    class Options:
        # parse_options maps the field db__url to the option name db.url (auth.db.url).
        db__url: str = option(
            as_str,
            doc="SQLAlchemy database URL for users and permissions (may be the cache's db.url)",
        )
        admins: tuple[str, ...] = option(
            as_list, default=(), doc="Users with admin rights, besides those stored as admins"
        )
        rounds: int | None = option(_rounds, default=None, doc="Hash rounds for new passwords")

    _engine: Engine = attrs.field(alias="engine")
    _run: RunBlocking = attrs.field(alias="run")
    _admins: frozenset[str] = attrs.field(alias="admins", converter=_names, factory=frozenset)
    _context: CryptContext = attrs.field(alias="context", factory=password_context)
    # In-memory SQLite has one connection for all threads: take turns using it.
    _lock: contextlib.AbstractContextManager[Any] = attrs.field(
        alias="lock", factory=contextlib.nullcontext
    )

    @classmethod
    def from_config(cls, options: SQLAccessBackend.Options, runtime: Runtime) -> SQLAccessBackend:
        """Build the backend; no connection is made until :meth:`start`.

        :raises ConfigError: for an unreadable URL or a missing database driver.
        """
        engine, lock = open_engine(options.db__url, "auth.db.url", THREADS)
        return cls(
            engine=engine,
            run=runtime.threads("auth-db", THREADS),
            admins=options.admins,
            context=password_context(options.rounds),
            lock=lock,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Create the tables if they do not exist."""
        return self._run(self._blocking, self._create_tables)

    def stop(self) -> Deferred[None]:
        """Close every pooled connection."""
        return self._run(self._engine.dispose)

    def _create_tables(self, engine: Engine) -> None:
        create_tables(engine, metadata, "the access database")

    # -- running blocking work ------------------------------------------------------------------

    def _blocking(self, work: Callable[[Engine], T]) -> T:
        return run_on_engine(self._engine, work, "the access database", self._lock)

    def _transaction(self, work: Callable[[Connection], T]) -> Deferred[T]:
        return self._run(self._blocking, in_transaction(work))

    # -- reading helpers (inside a transaction) -------------------------------------------------

    @staticmethod
    def _user_row(conn: Connection, username: str) -> Any:
        return conn.execute(
            sa.select(users_table).where(users_table.c.username == username)
        ).one_or_none()

    def _require_user(self, conn: Connection, username: str, pending: bool | None = None) -> Any:
        row = self._user_row(conn, username)
        if row is None or (pending is not None and row.pending != pending):
            what = "pending user" if pending else "user"
            raise NotFound(f"there is no {what} named {username!r}")
        return row

    @staticmethod
    def _group_exists(conn: Connection, group: str) -> bool:
        found = conn.execute(
            sa.select(groups_table.c.name).where(groups_table.c.name == group)
        ).one_or_none()
        return found is not None

    def _require_group(self, conn: Connection, group: str) -> None:
        if not self._group_exists(conn, group):
            raise NotFound(f"there is no group named {group!r}")

    @staticmethod
    def _active_users(conn: Connection) -> list[Any]:
        return list(
            conn.execute(
                sa.select(users_table)
                .where(users_table.c.pending == sa.false())
                .order_by(users_table.c.username)
            )
        )

    @staticmethod
    def _memberships(conn: Connection) -> dict[str, list[str]]:
        """``{username: sorted groups}`` for active users."""
        rows = conn.execute(
            sa.select(members_table.c.username, members_table.c.group)
            .join(users_table, users_table.c.username == members_table.c.username)
            .where(users_table.c.pending == sa.false())
        ).tuples()
        found: dict[str, list[str]] = {}
        for username, group in rows:
            found.setdefault(username, []).append(group)
        return {u: sorted(g) for u, g in found.items()}

    def _is_admin_row(self, row: Any) -> bool:
        return bool(row.admin) or row.username in self._admins

    def _user_record(self, row: Any, groups: Iterable[str]) -> dict[str, Any]:
        return {"username": row.username, "admin": self._is_admin_row(row), "groups": list(groups)}

    # -- IAccessBackend -------------------------------------------------------------------------

    def verify_user(self, username: str, password: str) -> Deferred[bool]:
        def work(engine: Engine) -> bool:
            with engine.connect() as conn:
                hashed = conn.execute(
                    sa.select(users_table.c.password).where(
                        users_table.c.username == username, users_table.c.pending == sa.false()
                    )
                ).scalar_one_or_none()
            # Unknown and pending users are checked against a dummy hash: same time, no answer.
            if not verify_password(self._context, password, hashed):
                return False
            assert hashed is not None
            fresh = upgraded_hash(self._context, password, hashed)
            if fresh is not None:
                # Only if nobody changed the password meanwhile.
                with engine.begin() as conn:
                    conn.execute(
                        users_table.update()
                        .where(users_table.c.username == username, users_table.c.password == hashed)
                        .values(password=fresh)
                    )
                log.info("rehashed the outdated password hash of {user}", user=username)
            return True

        return self._run(self._blocking, work)

    def groups(self, username: str | None = None) -> Deferred[list[str]]:
        def work(conn: Connection) -> list[str]:
            if username is None:
                return sorted(conn.execute(sa.select(groups_table.c.name)).scalars())
            return self._memberships(conn).get(username, [])

        return self._transaction(work)

    def group_members(self, group: str) -> Deferred[list[str]]:
        def work(conn: Connection) -> list[str]:
            return sorted(
                conn.execute(
                    sa.select(members_table.c.username)
                    .join(users_table, users_table.c.username == members_table.c.username)
                    .where(members_table.c.group == group, users_table.c.pending == sa.false())
                ).scalars()
            )

        return self._transaction(work)

    def is_admin(self, username: str) -> Deferred[bool]:
        def work(conn: Connection) -> bool:
            row = self._user_row(conn, username)
            return row is not None and not row.pending and self._is_admin_row(row)

        return self._transaction(work)

    def package_acls(self) -> Deferred[Mapping[str, Mapping[str, frozenset[str]]]]:
        def work(conn: Connection) -> Mapping[str, Mapping[str, frozenset[str]]]:
            acls: dict[str, dict[str, frozenset[str]]] = {}
            for package, username, read, write in conn.execute(
                sa.select(user_perms_table)
            ).tuples():
                acls.setdefault(package, {})[f"user:{username}"] = _perms(read, write)
            for package, group, read, write in conn.execute(sa.select(group_perms_table)).tuples():
                acls.setdefault(package, {})[_principal(group)] = _perms(read, write)
            return acls

        return self._transaction(work)

    def user_permissions(self, package: str) -> Deferred[dict[str, frozenset[str]]]:
        def work(conn: Connection) -> dict[str, frozenset[str]]:
            t = user_perms_table
            rows = conn.execute(
                sa.select(t.c.username, t.c.read, t.c.write).where(
                    t.c.package == canonical(package)
                )
            ).tuples()
            return {username: _perms(read, write) for username, read, write in rows}

        return self._transaction(work)

    def group_permissions(self, package: str) -> Deferred[dict[str, frozenset[str]]]:
        def work(conn: Connection) -> dict[str, frozenset[str]]:
            t = group_perms_table
            rows = conn.execute(
                sa.select(t.c.group, t.c.read, t.c.write).where(t.c.package == canonical(package))
            ).tuples()
            return {group: _perms(read, write) for group, read, write in rows}

        return self._transaction(work)

    def user_data(self, username: str | None = None) -> Deferred[object]:
        def work(conn: Connection) -> object:
            if username is None:
                members = self._memberships(conn)
                return [
                    self._user_record(row, members.get(row.username, []))
                    for row in self._active_users(conn)
                ]
            row = self._user_row(conn, username)
            if row is None or row.pending:
                return None
            return self._user_record(row, self._memberships(conn).get(username, []))

        return self._transaction(work)

    def check_health(self) -> Deferred[tuple[bool, str]]:
        def work(conn: Connection) -> tuple[bool, str]:
            conn.execute(sa.text("SELECT 1"))
            return (True, "")

        def unhealthy(failure: Any) -> tuple[bool, str]:
            failure.trap(BackendUnavailable, sa_exc.SQLAlchemyError)
            message = getattr(failure.value, "message", None) or str(failure.value)
            return (False, message.strip().splitlines()[0] if message.strip() else "error")

        return self._transaction(work).addErrback(unhealthy)

    def dump(self) -> Deferred[dict[str, object]]:
        """pypicloud's export format, with ``pending_users`` as pypicloud writes them."""

        def work(conn: Connection) -> dict[str, object]:
            rows = list(conn.execute(sa.select(users_table).order_by(users_table.c.username)))
            users = [
                {"username": r.username, "password": r.password, "admin": self._is_admin_row(r)}
                for r in rows
                if not r.pending
            ]
            pending = [{"username": r.username, "password": r.password} for r in rows if r.pending]
            groups: dict[str, list[str]] = {
                g: [] for g in sorted(conn.execute(sa.select(groups_table.c.name)).scalars())
            }
            for username, group in conn.execute(
                sa.select(members_table.c.username, members_table.c.group).order_by(
                    members_table.c.username
                )
            ).tuples():
                groups.setdefault(group, []).append(username)
            by_user: dict[str, dict[str, list[str]]] = {}
            for package, username, read, write in conn.execute(
                sa.select(user_perms_table).order_by(user_perms_table.c.package)
            ).tuples():
                by_user.setdefault(package, {})[username] = sorted(_perms(read, write))
            by_group: dict[str, dict[str, list[str]]] = {}
            for package, group, read, write in conn.execute(
                sa.select(group_perms_table).order_by(group_perms_table.c.package)
            ).tuples():
                by_group.setdefault(package, {})[group] = sorted(_perms(read, write))
            return {
                "allow_register": self._allow_register(conn),
                "version": __version__,
                "users": users,
                "pending_users": pending,
                "groups": groups,
                "packages": {"users": by_user, "groups": by_group},
                "tokens": [t.to_dict() for t in self._tokens(conn, None)],
            }

        return self._transaction(work)

    # -- IMutableAccessBackend ------------------------------------------------------------------

    def _hash(self, password: str) -> str:
        return hash_with(self._context, password)

    def create_user(
        self, username: str, password: str, admin: bool = False, pending: bool = False
    ) -> Deferred[None]:
        def work(engine: Engine) -> None:
            hashed = self._hash(password)
            with engine.begin() as conn:
                self._insert_user(conn, username, hashed, admin, pending)

        return self._run(self._blocking, work)

    def _insert_user(
        self, conn: Connection, username: str, hashed: str, admin: bool, pending: bool
    ) -> None:
        # The primary key makes the decision: two registrations of one name cannot both win.
        try:
            with conn.begin_nested():
                conn.execute(
                    users_table.insert().values(
                        username=username, password=hashed, admin=admin, pending=pending
                    )
                )
        except sa_exc.IntegrityError:
            raise Conflict(f"a user named {username!r} already exists") from None

    def approve_user(self, username: str) -> Deferred[None]:
        def work(conn: Connection) -> None:
            self._require_user(conn, username, pending=True)
            conn.execute(
                users_table.update().where(users_table.c.username == username).values(pending=False)
            )

        return self._transaction(work)

    def pending_users(self) -> Deferred[list[str]]:
        def work(conn: Connection) -> list[str]:
            return list(
                conn.execute(
                    sa.select(users_table.c.username)
                    .where(users_table.c.pending == sa.true())
                    .order_by(users_table.c.username)
                ).scalars()
            )

        return self._transaction(work)

    def set_password(self, username: str, password: str) -> Deferred[None]:
        def work(engine: Engine) -> None:
            hashed = self._hash(password)
            with engine.begin() as conn:
                self._require_user(conn, username)
                conn.execute(
                    users_table.update()
                    .where(users_table.c.username == username)
                    .values(password=hashed)
                )

        return self._run(self._blocking, work)

    def delete_user(self, username: str) -> Deferred[None]:
        def work(conn: Connection) -> None:
            self._require_user(conn, username)
            for table in (members_table, user_perms_table, tokens_table, users_table):
                conn.execute(table.delete().where(table.c.username == username))

        return self._transaction(work)

    def set_admin(self, username: str, admin: bool) -> Deferred[None]:
        def work(conn: Connection) -> None:
            self._require_user(conn, username)
            conn.execute(
                users_table.update().where(users_table.c.username == username).values(admin=admin)
            )

        return self._transaction(work)

    def create_group(self, group: str) -> Deferred[None]:
        def work(conn: Connection) -> None:
            if group in BUILTIN_GROUPS:
                raise Conflict(f"{group!r} is a built-in group")
            try:
                with conn.begin_nested():
                    conn.execute(groups_table.insert().values(name=group))
            except sa_exc.IntegrityError:
                raise Conflict(f"a group named {group!r} already exists") from None

        return self._transaction(work)

    def delete_group(self, group: str) -> Deferred[None]:
        def work(conn: Connection) -> None:
            self._require_group(conn, group)
            for table in (members_table, group_perms_table):
                conn.execute(table.delete().where(table.c.group == group))
            conn.execute(groups_table.delete().where(groups_table.c.name == group))

        return self._transaction(work)

    def edit_user_group(self, username: str, group: str, add: bool) -> Deferred[None]:
        def work(conn: Connection) -> None:
            self._require_user(conn, username)
            self._require_group(conn, group)
            self._set_member(conn, username, group, add)

        return self._transaction(work)

    @staticmethod
    def _set_member(conn: Connection, username: str, group: str, add: bool) -> None:
        t = members_table
        conn.execute(t.delete().where(t.c.username == username, t.c.group == group))
        if add:
            conn.execute(t.insert().values(username=username, group=group))

    def edit_user_permission(
        self, package: str, username: str, perm: str, add: bool
    ) -> Deferred[None]:
        def work(conn: Connection) -> None:
            _check_perm(perm)
            self._require_user(conn, username)
            self._edit_permission(conn, user_perms_table, "username", package, username, perm, add)

        return self._transaction(work)

    def edit_group_permission(
        self, package: str, group: str, perm: str, add: bool
    ) -> Deferred[None]:
        def work(conn: Connection) -> None:
            _check_perm(perm)
            if group not in BUILTIN_GROUPS:
                self._require_group(conn, group)
            self._edit_permission(conn, group_perms_table, "group", package, group, perm, add)

        return self._transaction(work)

    @staticmethod
    def _edit_permission(
        conn: Connection,
        table: sa.Table,
        column: str,
        package: str,
        who: str,
        perm: str,
        add: bool,
    ) -> None:
        key = (table.c.package == canonical(package), table.c[column] == who)
        row = conn.execute(sa.select(table.c.read, table.c.write).where(*key)).one_or_none()
        current = set() if row is None else set(_perms(row.read, row.write))
        if add:
            current.add(perm)
        else:
            current.discard(perm)
        # Written as a delete and an insert so that no row ever holds no permission.
        conn.execute(table.delete().where(*key))
        if current:
            conn.execute(
                table.insert().values(
                    package=canonical(package),
                    **{column: who},
                    read=READ in current,
                    write=WRITE in current,
                )
            )

    @staticmethod
    def _allow_register(conn: Connection) -> bool:
        value = conn.execute(
            sa.select(settings_table.c.value).where(settings_table.c.key == "allow_register")
        ).scalar_one_or_none()
        return value == "true"

    def allow_register(self) -> Deferred[bool]:
        return self._transaction(self._allow_register)

    @staticmethod
    def _set_allow_register(conn: Connection, allow: bool) -> None:
        conn.execute(settings_table.delete().where(settings_table.c.key == "allow_register"))
        conn.execute(
            settings_table.insert().values(key="allow_register", value="true" if allow else "false")
        )

    def set_allow_register(self, allow: bool) -> Deferred[None]:
        return self._transaction(lambda conn: self._set_allow_register(conn, allow))

    def load(self, data: Mapping[str, object]) -> Deferred[None]:
        def work(conn: Connection) -> None:
            self._load(conn, data)

        return self._transaction(work)

    def _load(self, conn: Connection, data: Mapping[str, Any]) -> None:
        for entry, pending in [(u, False) for u in data.get("users", [])] + [
            (u, True) for u in data.get("pending_users", [])
        ]:
            username = str(entry["username"])
            if self._user_row(conn, username) is None:
                self._insert_user(
                    conn,
                    username,
                    imported_hash(entry.get("password")),
                    bool(entry.get("admin")),
                    pending,
                )
        for group, members in dict(data.get("groups", {})).items():
            if group in BUILTIN_GROUPS:
                continue
            if not self._group_exists(conn, group):
                conn.execute(groups_table.insert().values(name=group))
            for username in members:
                if self._user_row(conn, username) is not None:
                    self._set_member(conn, username, group, True)
        packages = dict(data.get("packages", {}))
        for package, grants in dict(packages.get("users", {})).items():
            for username, perms in dict(grants).items():
                if self._user_row(conn, username) is None:
                    continue
                for perm in perms:
                    _check_perm(perm)
                    self._edit_permission(
                        conn, user_perms_table, "username", package, username, perm, True
                    )
        for package, grants in dict(packages.get("groups", {})).items():
            for group, perms in dict(grants).items():
                if group not in BUILTIN_GROUPS and not self._group_exists(conn, group):
                    conn.execute(groups_table.insert().values(name=group))
                for perm in perms:
                    _check_perm(perm)
                    self._edit_permission(
                        conn, group_perms_table, "group", package, group, perm, True
                    )
        if "allow_register" in data:
            self._set_allow_register(conn, bool(data["allow_register"]))
        for record in data.get("tokens", []):
            token = ApiToken.from_dict(record)
            row = self._user_row(conn, token.username)
            if row is not None and not row.pending and self._token_row(conn, token.id) is None:
                self._insert_token(conn, token)

    # -- API tokens -----------------------------------------------------------------------------

    @staticmethod
    def _token_row(conn: Connection, token_id: str) -> Any:
        return conn.execute(
            sa.select(tokens_table.c.record).where(tokens_table.c.id == token_id)
        ).one_or_none()

    @staticmethod
    def _insert_token(conn: Connection, token: ApiToken) -> None:
        try:
            with conn.begin_nested():
                conn.execute(
                    tokens_table.insert().values(
                        id=token.id,
                        username=token.username,
                        record=json.dumps(token.to_dict(), sort_keys=True),
                    )
                )
        except sa_exc.IntegrityError:
            raise Conflict(f"an API token with id {token.id!r} already exists") from None

    @staticmethod
    def _tokens(conn: Connection, username: str | None) -> list[ApiToken]:
        query = sa.select(tokens_table.c.record)
        if username is not None:
            query = query.where(tokens_table.c.username == username)
        found = [ApiToken.from_dict(json.loads(r)) for r in conn.execute(query).scalars()]
        return sorted(found, key=lambda t: (t.created, t.id))

    def save_token(self, token: ApiToken) -> Deferred[None]:
        def work(conn: Connection) -> None:
            self._require_user(conn, token.username, pending=False)
            self._insert_token(conn, token)

        return self._transaction(work)

    def find_token(self, token_id: str) -> Deferred[ApiToken | None]:
        def work(conn: Connection) -> ApiToken | None:
            row = self._token_row(conn, token_id)
            return None if row is None else ApiToken.from_dict(json.loads(row.record))

        return self._transaction(work)

    def tokens(self, username: str | None = None) -> Deferred[list[ApiToken]]:
        return self._transaction(lambda conn: self._tokens(conn, username))

    def delete_token(self, token_id: str) -> Deferred[None]:
        def work(conn: Connection) -> None:
            deleted = conn.execute(tokens_table.delete().where(tokens_table.c.id == token_id))
            if deleted.rowcount == 0:
                raise NotFound(f"there is no API token with id {token_id!r}")

        return self._transaction(work)
