"""The SQL access backend against the shared access suites, on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pypicloud_tx.backends._sql import normalise_url
from pypicloud_tx.backends._threads import ThreadPoolService
from pypicloud_tx.backends.access.sql import SQLAccessBackend
from pypicloud_tx.config.loader import parse_settings
from pypicloud_tx.errors import BackendUnavailable, ConfigError
from pypicloud_tx.runtime import Runtime
from tests.mysqldb import new_mysql_database
from tests.realservices import require_service

from .conformance import IMutableAccessConformance, cheap_hash, manual_data


def build(url: str, runtime: Runtime | None = None, **options: Any) -> SQLAccessBackend:
    """A backend on ``url``; new passwords get cheap hashes unless ``rounds`` says otherwise."""
    options.setdefault("rounds", 1000)
    return SQLAccessBackend.from_config(
        SQLAccessBackend.Options(db__url=url, **options), runtime or Runtime.synchronous()
    )


class SynchronousSQLCase(SynchronousTestCase):
    """Builds started backends on the synchronous runtime and stops them afterwards."""

    def started(self, url: str, **options: Any) -> SQLAccessBackend:
        backend = build(url, **options)
        self.successResultOf(backend.start())
        self.addCleanup(lambda: self.successResultOf(backend.stop()))
        return backend

    def loaded(self, url: str, data: dict[str, Any], **options: Any) -> SQLAccessBackend:
        backend = self.started(url, **options)
        self.successResultOf(backend.load(data))
        return backend


class SQLiteMemoryTests(IMutableAccessConformance, SynchronousSQLCase):
    """SQLAccessBackend on in-memory SQLite passes the shared suites."""

    def make_backend(self, data: dict[str, Any]) -> SQLAccessBackend:
        return self.loaded("sqlite://", data)


class SQLiteFileTests(IMutableAccessConformance, SynchronousSQLCase):
    """SQLAccessBackend on a SQLite file passes the shared suites."""

    def make_backend(self, data: dict[str, Any]) -> SQLAccessBackend:
        return self.loaded(f"sqlite:///{self.mktemp()}.sqlite", data)

    def test_persists(self) -> None:
        """A second backend on the same file (another process, or a restart) sees users,
        groups, permissions and the registration switch written by the first."""
        url = f"sqlite:///{self.mktemp()}.sqlite"
        first = self.loaded(url, manual_data())
        self.successResultOf(first.create_user("newbie", "s3cret", pending=True))
        self.successResultOf(first.set_allow_register(True))
        second = self.started(url)
        self.assertIs(self.successResultOf(second.verify_user("dsa", "paranoia")), True)
        self.assertEqual(self.successResultOf(second.pending_users()), ["newbie"])
        self.assertIs(self.successResultOf(second.allow_register()), True)
        self.assertEqual(self.successResultOf(second.dump()), self.successResultOf(first.dump()))


class ThreadedTests(TestCase):
    """With a real thread pool, queries and password hashing happen off the reactor thread
    and the answers arrive back on it."""

    def test_threaded(self) -> None:
        """create_user, verify_user and user_data work through a real pool."""
        from twisted.internet import reactor

        pool = ThreadPoolService(reactor, "auth-db", 4)  # type: ignore[arg-type]
        pool.startService()
        self.addCleanup(pool.stopService)
        seen: list[str] = []
        runtime = Runtime(reactor=reactor, threads=lambda name, size: seen.append(name) or pool.run)
        backend = build(f"sqlite:///{self.mktemp()}.sqlite", runtime)
        self.addCleanup(backend.stop)

        async def scenario() -> None:
            await backend.start()
            await backend.create_user("alice", "wonderland")
            self.assertIs(await backend.verify_user("alice", "wonderland"), True)
            self.assertIs(await backend.verify_user("alice", "looking-glass"), False)
            self.assertEqual(
                await backend.user_data("alice"),
                {"username": "alice", "admin": False, "groups": []},
            )
            self.assertEqual(seen, ["auth-db"])

        return Deferred.fromCoroutine(scenario())


class OptionTests(SynchronousSQLCase):
    """How the configuration reaches the backend."""

    def test_from_settings(self) -> None:
        """``pypi.auth = sql`` (or pypicloud's class paths) with ``auth.db.url``,
        ``auth.admins``, ``auth.rounds`` and pypicloud's token options is accepted."""
        for choice in (
            "sql",
            "pypicloud.access.sql.SQLAccessBackend",
            "pypicloud.access.SQLAccessBackend",
        ):
            settings = parse_settings(
                {
                    "pypi.storage": "memory",
                    "pypi.db": "memory",
                    "pypi.auth": choice,
                    "auth.db.url": "sqlite://",
                    "auth.admins": "root, boss",
                    "auth.rounds": "1000",
                    "auth.signing_key": "c2VjcmV0",
                    "auth.token_expire": "3600",
                }
            )
            self.assertIs(settings.access.cls, SQLAccessBackend)
            self.assertEqual(settings.access.name, "sql")
            options = settings.access.options
            self.assertEqual(
                (options.db__url, options.admins, options.rounds),
                ("sqlite://", ("root", "boss"), 1000),
            )

    def test_url_required(self) -> None:
        """Without auth.db.url start-up stops with a message naming it."""
        with self.assertRaises(ConfigError) as caught:
            parse_settings({"pypi.storage": "memory", "pypi.db": "memory", "pypi.auth": "sql"})
        self.assertIn("auth.db.url", caught.exception.message)

    def test_option_admins(self) -> None:
        """Users named in auth.admins are admins besides the stored ones, in is_admin,
        user_data and dump; pending ones are not."""
        backend = self.loaded("sqlite://", manual_data(), admins=("dsa", "waiting"))
        self.successResultOf(backend.create_user("waiting", "w", pending=True))
        self.assertIs(self.successResultOf(backend.is_admin("dsa")), True)
        self.assertIs(self.successResultOf(backend.is_admin("stevearc")), True)
        self.assertIs(self.successResultOf(backend.is_admin("waiting")), False)
        self.assertIs(self.successResultOf(backend.user_data("dsa"))["admin"], True)
        admins = [
            u["username"] for u in self.successResultOf(backend.dump())["users"] if u["admin"]
        ]
        self.assertEqual(admins, ["dsa", "stevearc"])

    def test_rounds(self) -> None:
        """auth.rounds sets the rounds of the hashes written for new passwords."""
        backend = self.started("sqlite://", rounds=1234)
        self.successResultOf(backend.create_user("alice", "pw"))
        (user,) = self.successResultOf(backend.dump())["users"]
        self.assertTrue(user["password"].startswith("$6$rounds=1234$"), user["password"])

    def test_pypicloud_hashes(self) -> None:
        """Hashes imported from pypicloud (sha256_crypt) verify."""
        from passlib.hash import sha256_crypt

        data = manual_data()
        data["users"][0]["password"] = sha256_crypt.using(rounds=1000).hash("osptony")
        backend = self.loaded("sqlite://", data)
        self.assertIs(self.successResultOf(backend.verify_user("donlan", "osptony")), True)

    def test_rehash_on_login(self) -> None:
        """An outdated hash (pypicloud's sha256_crypt, or fewer rounds than auth.rounds) is
        replaced by a fresh sha512_crypt hash at the next successful login, and only then."""
        from passlib.hash import sha256_crypt

        data = manual_data()
        old = sha256_crypt.using(rounds=1000).hash("osptony")
        data["users"][0]["password"] = old
        backend = self.loaded("sqlite://", data, rounds=2000)

        def stored(user: str) -> str:
            users = self.successResultOf(backend.dump())["users"]
            return next(u["password"] for u in users if u["username"] == user)

        self.assertIs(self.successResultOf(backend.verify_user("donlan", "wrong")), False)
        self.assertEqual(stored("donlan"), old)
        self.assertIs(self.successResultOf(backend.verify_user("donlan", "osptony")), True)
        self.assertTrue(stored("donlan").startswith("$6$rounds=2000$"), stored("donlan"))
        self.assertIs(self.successResultOf(backend.verify_user("donlan", "osptony")), True)
        # The manual's users have 1000 rounds, fewer than auth.rounds = 2000.
        self.assertIs(self.successResultOf(backend.verify_user("dsa", "paranoia")), True)
        self.assertTrue(stored("dsa").startswith("$6$rounds=2000$"), stored("dsa"))

    def test_unknown_user_costs_a_hash(self) -> None:
        """An unknown or pending user takes about as long to refuse as a wrong password for
        a real user: a dummy hash is checked (no timing oracle for user names)."""
        backend = self.loaded(
            "sqlite://",
            {"users": [{"username": "real", "password": cheap_hash("x"), "admin": False}]},
        )
        began = time.monotonic()
        self.assertIs(self.successResultOf(backend.verify_user("nobody", "pw")), False)
        # The dummy hash has gen-password's default rounds: tens of milliseconds at least.
        self.assertGreater(time.monotonic() - began, 0.02)


class PostgreSQLTests(IMutableAccessConformance, SynchronousSQLCase):
    """SQLAccessBackend on PostgreSQL passes the shared suites, each test in a schema of its
    own (made here, dropped afterwards)."""

    def setUp(self) -> None:
        self.base_url = normalise_url(require_service("PPC_TEST_POSTGRES_URL", "PostgreSQL"))
        self.admin = sa.create_engine(
            self.base_url, poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )
        self.addCleanup(self.admin.dispose)
        self.schemas: list[str] = []
        self.addCleanup(self._drop_schemas)
        super().setUp()

    def _drop_schemas(self) -> None:
        with self.admin.connect() as conn:
            for schema in self.schemas:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))

    def make_backend(self, data: dict[str, Any]) -> SQLAccessBackend:
        schema = f"ppc_test_auth_{uuid.uuid4().hex[:16]}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        self.schemas.append(schema)
        url = self.base_url.update_query_dict({"options": f"-csearch_path={schema}"})
        return self.loaded(url.render_as_string(hide_password=False), data)


class MariaDBTests(IMutableAccessConformance, SynchronousSQLCase):
    """SQLAccessBackend on MariaDB passes the shared suites, each test in a database of its own
    (unicode names included: the tables are utf8mb4)."""

    def make_backend(self, data: dict[str, Any]) -> SQLAccessBackend:
        return self.loaded(new_mysql_database(self, "auth"), data)

    def test_unicode_names(self) -> None:
        """User and group names beyond Latin-1 (and beyond the BMP) round-trip."""
        self.result(self.backend.create_user("zoë-日本-🐍", "pw"))
        self.result(self.backend.create_group("グループ"))
        self.result(self.backend.edit_user_group("zoë-日本-🐍", "グループ", True))
        self.assertEqual(self.result(self.backend.group_members("グループ")), ["zoë-日本-🐍"])
        self.assertIs(self.result(self.backend.verify_user("zoë-日本-🐍", "pw")), True)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class UnreachableTests(SynchronousTestCase):
    """A database that cannot be reached fails with BackendUnavailable, without secrets."""

    def url(self) -> str:
        return f"postgresql://ppc:s3cretpassw0rd@127.0.0.1:{closed_port()}/ppc?connect_timeout=3"

    def test_start_and_queries(self) -> None:
        """start(), logins and edits fail with BackendUnavailable; the message hides the
        password."""
        backend = build(self.url())
        failure = self.failureResultOf(backend.start(), BackendUnavailable)
        self.assertTrue(failure.value.message.startswith("the access database is unreachable: "))
        self.assertNotIn("s3cretpassw0rd", failure.value.message)
        self.failureResultOf(backend.verify_user("dsa", "paranoia"), BackendUnavailable)
        self.failureResultOf(backend.create_user("dsa", "paranoia"), BackendUnavailable)
        self.failureResultOf(backend.package_acls(), BackendUnavailable)

    def test_health(self) -> None:
        """check_health() answers (False, reason) instead of failing."""
        healthy, reason = self.successResultOf(build(self.url()).check_health())
        self.assertFalse(healthy)
        self.assertIn("unreachable", reason)
        self.assertNotIn("s3cretpassw0rd", reason)
