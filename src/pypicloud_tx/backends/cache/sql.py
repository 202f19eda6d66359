"""An :class:`~pypicloud_tx.interfaces.ICache` in a SQL database (``pypi.db = sql``, the default).

SQLAlchemy 2 Core, no ORM.  Works with SQLite (a file, or ``sqlite://`` in memory),
PostgreSQL (psycopg 3) and MySQL/MariaDB (PyMySQL).  Every query runs on the ``db`` thread
pool; the reactor thread never waits for the database.

One table, ``ppc_files``, keyed by filename.  The full record is kept as JSON text beside the
columns the queries need, so no field of :class:`~pypicloud_tx.domain.models.PackageFile` is
lost and adding one needs no migration.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from pypicloud_tx.backends._sql import (
    create_tables,
    drop_orphaned_sqlite_journal,
    exact_string,
    in_transaction,
    is_memory_sqlite,
    open_engine,
    run_on_engine,
    unavailable,
)
from pypicloud_tx.backends._threads import RunBlocking
from pypicloud_tx.backends.cache._reload import (
    SummaryRow,
    Tally,
    batches,
    latest_per_filename,
    matches,
    plan_reload,
    record_json,
    search_terms,
    summarize,
)
from pypicloud_tx.config.options import as_str, option
from pypicloud_tx.domain.models import PackageFile, ProjectSummary
from pypicloud_tx.errors import BackendUnavailable
from pypicloud_tx.interfaces import ICache, Progress
from pypicloud_tx.runtime import Runtime

log = Logger()
T = TypeVar("T")

#: Rows written per statement and per transaction by a graceful reload, and filenames per
#: ``IN (...)`` list (SQLite allows a few thousand bound parameters per statement).
BATCH_SIZE = 500
THREADS = 10
metadata = sa.MetaData()

files_table = sa.Table(
    "ppc_files",
    metadata,
    sa.Column("filename", exact_string(255), primary_key=True),
    sa.Column("name", exact_string(255), nullable=False, index=True),
    sa.Column("version", exact_string(255), nullable=False),
    # Naive UTC; MySQL keeps fractions of a second only when asked.
    sa.Column(
        "upload_time",
        sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
        nullable=False,
    ),
    sa.Column("summary", sa.Text(), nullable=False),
    # A long description does not fit MySQL's TEXT (64 KiB).
    sa.Column(
        "record", sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False
    ),
)
#: Locks shared by the processes on this database (one rebuilds an empty cache).  Expiry is
#: wall-clock seconds since the epoch: processes on several hosts share it.
locks_table = sa.Table(
    "ppc_locks",
    metadata,
    sa.Column("name", exact_string(255), primary_key=True),
    sa.Column("token", sa.String(64), nullable=False),
    sa.Column("expires", sa.Double(), nullable=False),
)
#: One row counting the changes to ``ppc_files``: every transaction that writes files adds one,
#: last (so writers wait for each other on it only at the end).  Reading it is how a process
#: knows that what it keeps in memory is still what the database holds (``version_token``).
version_table = sa.Table(
    "ppc_cache_version",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("changes", sa.BigInteger(), nullable=False),
)
_UPDATED = ("name", "version", "upload_time", "summary", "record")


def _count_change(conn: Connection) -> None:
    """Add one to the change counter (in the caller's transaction)."""
    conn.execute(version_table.update().values(changes=version_table.c.changes + 1))


def _naive_utc(when: _dt.datetime) -> _dt.datetime:
    return when.astimezone(_dt.UTC).replace(tzinfo=None)


def _aware_utc(when: _dt.datetime) -> _dt.datetime:
    if when.tzinfo is None:
        return when.replace(tzinfo=_dt.UTC)
    return when.astimezone(_dt.UTC)


def _row(file: PackageFile) -> dict[str, Any]:
    return {
        "filename": file.filename,
        "name": file.name,
        "version": file.version,
        "upload_time": _naive_utc(file.upload_time),
        "summary": file.summary,
        "record": record_json(file),
    }


def _file(record: str) -> PackageFile:
    return PackageFile.from_record(json.loads(record))


def upsert_statement(dialect: str) -> sa.Insert:
    """An INSERT of ``ppc_files`` rows that replaces the row of a filename already there.

    One statement, so two processes saving one filename at once cannot both try to insert it.
    """
    if dialect in ("mysql", "mariadb"):
        my_insert = mysql.insert(files_table)
        return my_insert.on_duplicate_key_update({c: my_insert.inserted[c] for c in _UPDATED})
    insert = (
        postgresql.insert(files_table) if dialect == "postgresql" else sqlite.insert(files_table)
    )
    return insert.on_conflict_do_update(
        index_elements=[files_table.c.filename],
        set_={c: insert.excluded[c] for c in _UPDATED},
    )


class VersionReader:
    """Reads the change counter of a network database on one connection of its own.

    The token is read once per page, so its cost counts: a plain DB-API cursor on an
    autocommit connection (one round trip, no transaction, no SQL compiled) costs a third of
    a pooled SQLAlchemy transaction.  The connection is held apart from the pool, used by one
    thread at a time, and replaced once when it fails (the server restarted, say).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._sql = f"SELECT changes FROM {version_table.name}"

    def read(self) -> object | None:
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None:
                        conn = self._engine.connect()
                        self._conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                    cursor = self._conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                    try:
                        cursor.execute(self._sql)
                        row = cursor.fetchone()
                    finally:
                        cursor.close()
                    return None if row is None else row[0]
                except Exception as e:
                    self._drop(invalidate=True)
                    if attempt == 2:
                        raise unavailable(self._engine, e, "the cache database") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._drop(invalidate=False)

    def _drop(self, invalidate: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            if invalidate:
                conn.invalidate()
            conn.close()


@implementer(ICache)
@attrs.define
class SQLCache:
    """File records in one SQL table.

    :ivar batch_size: rows per statement in reloads and filenames per ``IN`` list.
    """

    @attrs.frozen
    class Options:
        url: str = option(
            as_str,
            doc="SQLAlchemy database URL: sqlite:///path/db.sqlite, sqlite:// (in memory), "
            "postgresql://user:password@host/dbname, mysql://user:password@host/dbname",
        )

    _engine: Engine = attrs.field(alias="engine")
    _run: RunBlocking = attrs.field(alias="run")
    batch_size: int = BATCH_SIZE
    # In-memory SQLite has one connection for all threads: take turns using it.
    _lock: contextlib.AbstractContextManager[Any] = attrs.field(
        alias="lock", factory=contextlib.nullcontext
    )
    _versions: VersionReader = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._versions = VersionReader(self._engine)

    @classmethod
    def from_config(cls, options: SQLCache.Options, runtime: Runtime) -> SQLCache:
        """Build the cache; no connection is made until :meth:`start`.

        :raises ConfigError: for an unreadable URL or a missing database driver.
        """
        # One connection more than threads: the change counter keeps one of its own.
        engine, lock = open_engine(options.url, "db.url", THREADS + 1)
        return cls(engine=engine, run=runtime.threads("db", THREADS), lock=lock)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Create the table and index if they do not exist."""
        return self._run(self._blocking, self._create_tables)

    def stop(self) -> Deferred[None]:
        """Close every pooled connection (and the change counter's)."""

        def close() -> None:
            self._versions.close()
            self._engine.dispose()

        return self._run(close)

    def _create_tables(self, engine: Engine) -> None:
        drop_orphaned_sqlite_journal(engine.url)
        create_tables(engine, metadata, "the cache database")
        try:
            with engine.begin() as conn:
                if conn.execute(sa.select(version_table.c.id)).first() is None:
                    conn.execute(version_table.insert().values(id=1, changes=0))
        except sa_exc.IntegrityError:
            pass  # another process inserted it first

    # -- running blocking work ------------------------------------------------------------------

    def _blocking(self, work: Callable[[Engine], T]) -> T:
        return run_on_engine(self._engine, work, "the cache database", self._lock)

    def _transaction(self, work: Callable[[Connection], T]) -> Deferred[T]:
        return self._run(self._blocking, in_transaction(work))

    def _change(self, work: Callable[[Connection], None]) -> Deferred[None]:
        """A transaction that changes files: the change counter goes up with it."""

        def counted(conn: Connection) -> None:
            work(conn)
            _count_change(conn)

        return self._transaction(counted)

    # -- writing --------------------------------------------------------------------------------

    def _upsert(self, conn: Connection, files: Iterable[PackageFile]) -> None:
        rows = [_row(f) for f in files]
        if rows:
            conn.execute(upsert_statement(conn.dialect.name), rows)

    def save(self, file: PackageFile) -> Deferred[None]:
        return self._change(lambda conn: self._upsert(conn, [file]))

    def delete(self, file: PackageFile) -> Deferred[None]:
        def work(conn: Connection) -> None:
            conn.execute(files_table.delete().where(files_table.c.filename == file.filename))

        return self._change(work)

    def clear_all(self) -> Deferred[None]:
        def work(conn: Connection) -> None:
            conn.execute(files_table.delete())

        return self._change(work)

    def reload_from_storage(
        self, files: Sequence[PackageFile], graceful: bool, progress: Progress | None = None
    ) -> Deferred[None]:
        if graceful:
            return self._run(
                self._blocking, lambda engine: self._reload_gracefully(engine, files, progress)
            )

        def replace(conn: Connection) -> None:
            # One transaction: other connections keep seeing the old rows until it commits.
            conn.execute(files_table.delete())
            rows = [_row(f) for f in latest_per_filename(files).values()]
            tally = Tally(progress, len(rows))
            for batch in batches(rows, self.batch_size):
                conn.execute(files_table.insert(), list(batch))
                tally.add(len(batch))

        return self._change(replace)

    def _reload_gracefully(
        self, engine: Engine, files: Sequence[PackageFile], progress: Progress | None
    ) -> None:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(files_table.c.filename, files_table.c.record))
            current = {filename: record for filename, record in rows}
        write, remove = plan_reload(current, files)
        tally = Tally(progress, len(write) + len(remove))
        # Small transactions: readers and writers are never held up for the whole reload.
        for batch in batches(write, self.batch_size):
            with engine.begin() as conn:
                self._upsert(conn, batch)
                _count_change(conn)
            tally.add(len(batch))
        for names in batches(remove, self.batch_size):
            with engine.begin() as conn:
                conn.execute(files_table.delete().where(files_table.c.filename.in_(names)))
                _count_change(conn)
            tally.add(len(names))
        changed = sum(1 for f in write if f.filename in current)
        log.info(
            "reloaded the cache gracefully: {added} added, {changed} replaced, {removed} removed",
            added=len(write) - changed,
            changed=changed,
            removed=len(remove),
        )

    # -- reading --------------------------------------------------------------------------------

    def fetch(self, filename: str) -> Deferred[PackageFile | None]:
        def work(conn: Connection) -> PackageFile | None:
            record = conn.execute(
                sa.select(files_table.c.record).where(files_table.c.filename == filename)
            ).scalar_one_or_none()
            return None if record is None else _file(record)

        return self._transaction(work)

    def all(self, name: str) -> Deferred[list[PackageFile]]:
        def work(conn: Connection) -> list[PackageFile]:
            records = conn.execute(
                sa.select(files_table.c.record).where(files_table.c.name == name)
            ).scalars()
            return [_file(r) for r in records]

        return self._transaction(work)

    def distinct(self) -> Deferred[list[str]]:
        def work(conn: Connection) -> list[str]:
            names = conn.execute(sa.select(files_table.c.name).distinct()).scalars()
            # Sorted here: database collations disagree about where "-" and "." go.
            return sorted(names)

        return self._transaction(work)

    def summary(self) -> Deferred[list[ProjectSummary]]:
        def work(conn: Connection) -> list[ProjectSummary]:
            rows = conn.execute(
                sa.select(
                    files_table.c.name,
                    files_table.c.version,
                    files_table.c.upload_time,
                    files_table.c.summary,
                )
            ).tuples()
            # Versions are ordered by PEP 440, which no database knows.
            return summarize(
                SummaryRow(name, version, _aware_utc(when), summary)
                for name, version, when, summary in rows
            )

        return self._transaction(work)

    def search(
        self, criteria: Mapping[str, Sequence[str]], query_type: str
    ) -> Deferred[list[PackageFile]]:
        def work(conn: Connection) -> list[PackageFile]:
            terms = search_terms(criteria, query_type)
            if not terms:
                return []
            # Matched here rather than with LIKE: SQLite's lower() only folds ASCII, and
            # collations differ between databases; Python folds every script the same way.
            candidates = conn.execute(
                sa.select(files_table.c.filename, files_table.c.name, files_table.c.summary)
            ).tuples()
            found = [f for f, n, s in candidates if matches(n, s, terms, query_type)]
            result: list[PackageFile] = []
            for names in batches(found, self.batch_size):
                records = conn.execute(
                    sa.select(files_table.c.record).where(files_table.c.filename.in_(names))
                ).scalars()
                result.extend(_file(r) for r in records)
            return result

        return self._transaction(work)

    def version_token(self) -> Deferred[object | None]:
        """For a SQLite file, the state of the database and its write-ahead log: every commit,
        by any process, changes one of them (no query needed).  For other databases, the
        change counter (one primary-key read); ``None`` for in-memory SQLite, whose
        connection is shared, so a read would wait for the lock its writers hold."""
        path = self._sqlite_path
        if path is None:
            if is_memory_sqlite(self._engine.url):
                return succeed(None)

            return self._run(self._versions.read)
        token: list[tuple[int, int, int, int] | None] = []
        for name in (path, path + "-wal"):
            try:
                st = os.stat(name)
                token.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            except OSError:
                token.append(None)
        return succeed(tuple(token))

    @property
    def _sqlite_path(self) -> str | None:
        url = self._engine.url
        if url.get_backend_name() != "sqlite" or is_memory_sqlite(url):
            return None
        return str(url.database)

    def acquire_lock(self, name: str, seconds: float) -> Deferred[str | None]:
        token = secrets.token_hex(16)

        def work(engine: Engine) -> str | None:
            now = time.time()
            with engine.begin() as conn:
                conn.execute(
                    locks_table.delete().where(
                        locks_table.c.name == name, locks_table.c.expires <= now
                    )
                )
                try:
                    # The primary key decides: of two processes, one insert fails.
                    with conn.begin_nested():
                        conn.execute(
                            locks_table.insert().values(
                                name=name, token=token, expires=now + seconds
                            )
                        )
                except sa_exc.IntegrityError:
                    return None
            return token

        return self._run(self._blocking, work)

    def release_lock(self, name: str, token: str) -> Deferred[bool]:
        def work(conn: Connection) -> bool:
            t = locks_table
            done = conn.execute(
                t.delete().where(t.c.name == name, t.c.token == token, t.c.expires > time.time())
            )
            return bool(done.rowcount)

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
