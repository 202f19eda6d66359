"""The SQL cache against the ICache conformance suite, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as _dt
import json
import socket
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.pool import NullPool, StaticPool
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pypicloud_tx.backends._sql import SQLITE_BUSY_TIMEOUT_MS, normalise_url
from pypicloud_tx.backends._threads import ThreadPoolService
from pypicloud_tx.backends.cache.memo import MemoizedCache
from pypicloud_tx.backends.cache.sql import SQLCache, files_table, upsert_statement
from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.errors import BackendUnavailable, ConfigError
from pypicloud_tx.interfaces import ICache
from pypicloud_tx.runtime import Runtime
from tests.mysqldb import new_mysql_database
from tests.realservices import require_service

from .conformance import ICacheConformance, every_field, make_file


def build(url: str, runtime: Runtime | None = None) -> SQLCache:
    return SQLCache.from_config(SQLCache.Options(url=url), runtime or Runtime.synchronous())


class SynchronousSQLCase(SynchronousTestCase):
    """Builds started caches on the synchronous runtime and stops them afterwards."""

    def started(self, url: str) -> SQLCache:
        cache = build(url)
        self.successResultOf(cache.start())
        self.addCleanup(lambda: self.successResultOf(cache.stop()))
        return cache


class VersionTokenChecks:
    """For a database several processes share: ``shared_url()`` names a new one."""

    def shared_url(self) -> str:
        raise NotImplementedError

    def test_version_token_changes_on_every_write(self: Any) -> None:
        """The token changes with each save, delete, clear and reload (graceful or not) by any
        process, and not with reads: a process may keep what it read until it changes."""
        url = self.shared_url()
        cache, other = self.started(url), self.started(url)
        tokens = [self.successResultOf(cache.version_token())]
        self.assertIsNotNone(tokens[0])

        def changed() -> None:
            token = self.successResultOf(cache.version_token())
            self.assertNotIn(token, tokens)
            tokens.append(token)

        self.successResultOf(other.save(make_file()))
        changed()
        self.successResultOf(cache.distinct())
        self.successResultOf(cache.summary())
        self.successResultOf(cache.all("pkg"))
        self.assertEqual(self.successResultOf(cache.version_token()), tokens[-1])
        self.successResultOf(cache.save(make_file(version="2.0")))
        changed()
        self.successResultOf(other.delete(make_file(version="2.0")))
        changed()
        self.successResultOf(cache.reload_from_storage([make_file("x")], True))
        changed()
        self.successResultOf(cache.reload_from_storage([make_file("y")], False))
        changed()
        self.successResultOf(other.clear_all())
        changed()

    def test_memoised_reads_see_other_processes_writes(self: Any) -> None:
        """A MemoizedCache over the database answers from memory, yet sees a file another
        process saved at once."""
        url = self.shared_url()
        memo, other = MemoizedCache(self.started(url)), self.started(url)
        self.successResultOf(other.save(make_file("a")))
        self.assertEqual(self.successResultOf(memo.distinct()), ["a"])
        self.assertEqual(self.successResultOf(memo.distinct()), ["a"])
        self.successResultOf(other.save(make_file("b")))
        self.assertEqual(self.successResultOf(memo.distinct()), ["a", "b"])


class SQLiteMemoryTests(ICacheConformance, SynchronousSQLCase):
    """SQLCache on in-memory SQLite (``sqlite://``) passes the shared suite."""

    def make_cache(self) -> ICache:
        return self.started("sqlite://")


class SQLiteFileTests(VersionTokenChecks, ICacheConformance, SynchronousSQLCase):
    """SQLCache on a SQLite file passes the shared suite."""

    def make_cache(self) -> ICache:
        return self.started(self.shared_url())

    def shared_url(self) -> str:
        return f"sqlite:///{self.mktemp()}.sqlite"


class SQLiteFileThreadedTests(ICacheConformance, TestCase):
    """SQLCache passes the shared suite with its queries on a real thread pool."""

    def make_cache(self) -> Deferred[ICache]:
        from twisted.internet import reactor

        pool = ThreadPoolService(reactor, "db", 4)  # type: ignore[arg-type]
        pool.startService()
        self.addCleanup(pool.stopService)
        runtime = Runtime(reactor=reactor, threads=lambda name, size: pool.run)
        cache = build(f"sqlite:///{self.mktemp()}.sqlite", runtime)
        # Cleanups run last-registered first: the engine is disposed before the pool stops.
        self.addCleanup(cache.stop)
        return cache.start().addCallback(lambda _: cache)


class MariaDBTests(VersionTokenChecks, ICacheConformance, SynchronousSQLCase):
    """SQLCache on MariaDB passes the shared suite, each test in a database of its own."""

    def shared_url(self) -> str:
        return new_mysql_database(self, "cache")

    def make_cache(self) -> ICache:
        return self.started(new_mysql_database(self, "cache"))

    def test_unicode_round_trip(self) -> None:
        """Unicode names' summaries and records (beyond the BMP too) come back unchanged."""
        cache = self.started(new_mysql_database(self, "cache"))
        self.successResultOf(cache.save(every_field()))
        (found,) = self.successResultOf(cache.all(every_field().name))
        self.assertEqual(found.summary, every_field().summary)
        self.assertEqual(found.metadata, every_field().metadata)


class PostgreSQLTests(VersionTokenChecks, ICacheConformance, SynchronousSQLCase):
    """SQLCache on PostgreSQL passes the shared suite.

    Each cache lives in a schema of its own (made here, dropped afterwards) in the database of
    ``PPC_TEST_POSTGRES_URL``: tests never see each other's tables, and a schema costs far less
    than a database (0.2 s each).
    """

    def setUp(self) -> None:
        self.base_url = normalise_url(require_service("PPC_TEST_POSTGRES_URL", "PostgreSQL"))
        self.admin = sa.create_engine(
            self.base_url, poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )
        self.addCleanup(self.admin.dispose)
        self.schemas: list[str] = []
        self.addCleanup(self._drop_schemas)

    def _drop_schemas(self) -> None:
        with self.admin.connect() as conn:
            for schema in self.schemas:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))

    def new_schema_url(self) -> sa.URL:
        """The test database's URL, with a new empty schema first on the search path."""
        schema = f"ppc_test_cache_{uuid.uuid4().hex[:16]}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        self.schemas.append(schema)
        return self.base_url.update_query_dict({"options": f"-csearch_path={schema}"})

    def make_cache(self) -> ICache:
        return self.started(self.shared_url())

    def shared_url(self) -> str:
        return self.new_schema_url().render_as_string(hide_password=False)

    def test_unicode_stored_as_text(self) -> None:
        """Unicode summaries and records are stored as real UTF-8 text, not escapes."""
        url = self.new_schema_url()
        cache = self.started(url.render_as_string(hide_password=False))
        self.successResultOf(cache.save(every_field()))
        engine = sa.create_engine(url, poolclass=NullPool)
        self.addCleanup(engine.dispose)
        with engine.connect() as conn:
            summary, record = conn.execute(
                sa.select(files_table.c.summary, files_table.c.record)
            ).one()
            encoding = conn.exec_driver_sql("SHOW server_encoding").scalar()
        self.assertEqual(encoding, "UTF8")
        self.assertEqual(summary, every_field().summary)
        self.assertIn("☃", record)
        self.assertEqual(
            json.loads(record)["metadata"]["classifiers"][1], "Natural Language :: 日本語"
        )

    def test_survives_dropped_connections(self) -> None:
        """After the server drops the cache's pooled connection (a restart, a failover), the
        next query reconnects and succeeds instead of failing."""
        cache = self.started(self.new_schema_url().render_as_string(hide_password=False))
        self.successResultOf(cache.save(make_file()))
        with cache._engine.connect() as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        # Only that connection: other test runs may share this server and database.
        with self.admin.connect() as conn:
            killed = conn.execute(sa.text(f"SELECT pg_terminate_backend({int(pid)})")).scalar_one()
        self.assertTrue(killed)
        self.assertEqual(self.successResultOf(cache.distinct()), ["pkg"])


class VersionReaderTests(SynchronousSQLCase):
    """The change counter's own connection on PostgreSQL: it comes back after the server drops
    it, and a database that is gone is a BackendUnavailable."""

    def setUp(self) -> None:
        PostgreSQLTests.setUp(self)  # type: ignore[arg-type]

    new_schema_url = PostgreSQLTests.new_schema_url
    _drop_schemas = PostgreSQLTests._drop_schemas

    def test_reconnects_after_the_server_drops_it(self) -> None:
        cache = self.started(self.new_schema_url().render_as_string(hide_password=False))
        self.successResultOf(cache.save(make_file()))
        before = self.successResultOf(cache.version_token())
        with self.admin.connect() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'SELECT changes FROM ppc_cache_version%' "
                    "AND pid <> pg_backend_pid() AND datname = current_database()"
                )
            ).scalars()
            self.assertTrue(any(killed))
        self.assertEqual(self.successResultOf(cache.version_token()), before)
        self.successResultOf(cache.save(make_file(version="2.0")))
        self.assertNotEqual(self.successResultOf(cache.version_token()), before)

    def test_unreachable(self) -> None:
        url = f"postgresql://ppc:s3cretpassw0rd@127.0.0.1:{closed_port()}/ppc?connect_timeout=3"
        cache = build(url)
        failure = self.failureResultOf(cache.version_token(), BackendUnavailable)
        self.assertIn("the cache database is unreachable", failure.value.message)
        self.assertNotIn("s3cretpassw0rd", failure.value.message)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class UnreachableTests(SynchronousTestCase):
    """A database that cannot be reached fails fast with BackendUnavailable."""

    def url(self) -> str:
        return f"postgresql://ppc:s3cretpassw0rd@127.0.0.1:{closed_port()}/ppc?connect_timeout=3"

    def test_start_fails_fast(self) -> None:
        """start() against a closed port fails with BackendUnavailable within seconds, and the
        message names the problem without the password."""
        cache = build(self.url())
        began = time.monotonic()
        failure = self.failureResultOf(cache.start(), BackendUnavailable)
        self.assertLess(time.monotonic() - began, 5)
        message = failure.value.message
        self.assertTrue(message.startswith("the cache database is unreachable: "), message)
        self.assertNotIn("s3cretpassw0rd", message)
        self.assertNotIn("s3cretpassw0rd", str(failure.value))

    def test_queries_fail_fast(self) -> None:
        """Reads and writes against a stopped database fail with BackendUnavailable."""
        cache = build(self.url())
        self.failureResultOf(cache.fetch("pkg-1.0.tar.gz"), BackendUnavailable)
        self.failureResultOf(cache.save(make_file()), BackendUnavailable)
        self.failureResultOf(cache.summary(), BackendUnavailable)

    def test_health_reports_failure(self) -> None:
        """check_health() answers (False, reason) instead of failing, without the password."""
        healthy, reason = self.successResultOf(build(self.url()).check_health())
        self.assertFalse(healthy)
        self.assertIn("unreachable", reason)
        self.assertNotIn("s3cretpassw0rd", reason)

    def test_sqlite_unopenable(self) -> None:
        """A SQLite file that cannot be opened (its folder is missing) is unavailable too."""
        cache = build(f"sqlite:///{self.mktemp()}/missing/db.sqlite")
        self.failureResultOf(cache.start(), BackendUnavailable)


class URLTests(SynchronousTestCase):
    """pypicloud-style URLs are given the drivers this project installs."""

    def test_postgres_aliases(self) -> None:
        """postgres:// and postgresql:// use psycopg 3; an explicit driver is kept."""
        for text in ("postgres://u:p@h/db", "postgresql://u:p@h/db"):
            self.assertEqual(normalise_url(text).drivername, "postgresql+psycopg")
        self.assertEqual(
            normalise_url("postgresql+psycopg://u@h/db").drivername, "postgresql+psycopg"
        )

    def test_mysql_alias(self) -> None:
        """mysql:// uses PyMySQL with utf8mb4 unless the URL names a charset."""
        url = normalise_url("mysql://u:p@h/db")
        self.assertEqual((url.drivername, url.query["charset"]), ("mysql+pymysql", "utf8mb4"))
        url = normalise_url("mysql+pymysql://u:p@h/db?charset=latin1")
        self.assertEqual(url.query["charset"], "latin1")

    def test_bad_url(self) -> None:
        """A URL SQLAlchemy cannot read is a configuration error naming db.url."""
        with self.assertRaises(ConfigError) as raised:
            build("not a url")
        self.assertIn("db.url", str(raised.exception))

    def test_unsupported_database(self) -> None:
        """A database without an upsert we know is refused at configuration time."""
        with self.assertRaises(ConfigError) as raised:
            build("mssql+pyodbc://u:p@h/db")
        self.assertIn("db.url", str(raised.exception))

    def test_upsert_statements(self) -> None:
        """save() is one INSERT that updates on a duplicate filename, on every database."""
        for name, dialect, clause in [
            ("sqlite", sqlite.dialect(), "ON CONFLICT (filename) DO UPDATE"),
            ("postgresql", postgresql.dialect(), "ON CONFLICT (filename) DO UPDATE"),
            ("mysql", mysql.dialect(), "ON DUPLICATE KEY UPDATE"),
            ("mariadb", mysql.dialect(is_mariadb=True), "ON DUPLICATE KEY UPDATE"),
        ]:
            sql = str(upsert_statement(name).compile(dialect=dialect))
            self.assertIn("INSERT INTO ppc_files", sql)
            self.assertIn(clause, sql)
            self.assertIn("record", sql.split(clause)[1])

    def test_from_config_does_no_io(self) -> None:
        """Building the cache connects to nothing: a closed port only fails on use."""
        build(f"postgresql://u:p@127.0.0.1:{closed_port()}/db")

    def test_memory_sqlite_shares_one_connection(self) -> None:
        """In-memory SQLite uses one connection for every thread, or tables would vanish."""
        for text in ("sqlite://", "sqlite:///:memory:"):
            cache = build(text)
            self.assertIsInstance(cache._engine.pool, StaticPool)


class SQLiteBehaviourTests(SynchronousSQLCase):
    """What the SQL cache does beyond the shared suite."""

    def test_wal_and_busy_timeout(self) -> None:
        """SQLite files use write-ahead logging and wait for locks instead of failing."""
        cache = self.started(f"sqlite:///{self.mktemp()}.sqlite")
        with cache._engine.connect() as conn:
            self.assertEqual(conn.exec_driver_sql("PRAGMA journal_mode").scalar(), "wal")
            self.assertEqual(
                conn.exec_driver_sql("PRAGMA busy_timeout").scalar(), SQLITE_BUSY_TIMEOUT_MS
            )

    def test_start_twice(self) -> None:
        """Starting against a database that already has the table keeps its rows."""
        path = f"sqlite:///{self.mktemp()}.sqlite"
        first = self.started(path)
        self.successResultOf(first.save(make_file()))
        second = self.started(path)
        self.assertEqual(self.successResultOf(second.distinct()), ["pkg"])

    def test_graceful_reload_in_batches(self) -> None:
        """A graceful reload larger than one batch writes, keeps and removes the right files."""
        cache = self.started("sqlite://")
        cache.batch_size = 3
        old = [make_file("old", f"1.{i}") for i in range(8)]
        kept = [make_file("kept", f"2.{i}") for i in range(5)]
        for f in old + kept:
            self.successResultOf(cache.save(f))
        new = [make_file("new", f"3.{i}", summary="n") for i in range(10)]
        self.successResultOf(cache.reload_from_storage(kept + new, True))
        self.assertEqual(self.successResultOf(cache.distinct()), ["kept", "new"])
        self.assertEqual(len(self.successResultOf(cache.all("new"))), 10)
        self.assertEqual(len(self.successResultOf(cache.all("kept"))), 5)

    def test_readers_see_old_rows_during_reload(self) -> None:
        """Until a full reload commits, another connection still sees the old files."""
        path = f"sqlite:///{self.mktemp()}.sqlite"
        cache = self.started(path)
        self.successResultOf(cache.save(make_file("before", "1.0")))
        reader = build(path)
        self.addCleanup(lambda: self.successResultOf(reader.stop()))
        seen: list[list[str]] = []
        original_insert = cache._engine.dialect.do_executemany

        def spy(cursor, statement, parameters, context=None):  # type: ignore[no-untyped-def]
            # Mid-transaction: the old rows are deleted and new ones being inserted.
            seen.append(self.successResultOf(reader.distinct()))
            return original_insert(cursor, statement, parameters, context)

        cache._engine.dialect.do_executemany = spy  # type: ignore[method-assign]
        files = [make_file("after", f"1.{i}") for i in range(3)]
        self.successResultOf(cache.reload_from_storage(files, False))
        self.assertEqual(seen, [["before"]])
        self.assertEqual(self.successResultOf(reader.distinct()), ["after"])


class OrphanedJournalTests(SynchronousTestCase):
    """A deleted SQLite file's leftover journal does not stop the cache from starting."""

    def test_start_after_database_deleted(self) -> None:
        """With db.sqlite deleted but -wal/-shm left behind, start() makes a fresh database."""
        import os

        from pypicloud_tx.backends.cache.sql import SQLCache
        from pypicloud_tx.runtime import Runtime

        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, "db.sqlite")
        options = SQLCache.Options(url=f"sqlite:///{path}")
        first = SQLCache.from_config(options, Runtime.synchronous())
        self.successResultOf(first.start())
        self.successResultOf(first.distinct())
        self.successResultOf(first.save(_orphan_file()))
        # Copy the live journal while the first cache still holds it open, as a crashed
        # server would leave it; then delete everything and put only the journal back.
        import shutil

        for suffix in ("-wal", "-shm"):
            shutil.copy(path + suffix, path + suffix + ".keep")
        self.successResultOf(first.stop())
        for name in os.listdir(folder):
            if not name.endswith(".keep"):
                os.remove(os.path.join(folder, name))
        for suffix in ("-wal", "-shm"):
            os.rename(path + suffix + ".keep", path + suffix)
        second = SQLCache.from_config(options, Runtime.synchronous())
        self.successResultOf(second.start())
        self.assertEqual(self.successResultOf(second.distinct()), [])
        self.successResultOf(second.stop())


def _orphan_file() -> PackageFile:
    return PackageFile(
        name="orphan",
        version="1.0",
        filename="orphan-1.0.tar.gz",
        size=1,
        sha256="0" * 64,
        upload_time=_dt.datetime(2020, 1, 1, tzinfo=_dt.UTC),
    )
