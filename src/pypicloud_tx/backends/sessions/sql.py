"""Browser sessions in a ``ppc_sessions`` table: every process on the database sees them."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from twisted.internet.defer import Deferred
from zope.interface import implementer

from pypicloud_tx.backends._sql import (
    create_tables,
    exact_string,
    in_transaction,
    open_engine,
    run_on_engine,
)
from pypicloud_tx.backends._threads import RunBlocking
from pypicloud_tx.domain.models import SessionRecord
from pypicloud_tx.interfaces import ISessionStore

#: Threads of the session database's connection pool.
THREADS = 4

sessions_metadata = sa.MetaData()
sessions_table = sa.Table(
    "ppc_sessions",
    sessions_metadata,
    sa.Column("key", exact_string(64), primary_key=True),
    sa.Column("username", exact_string(255), nullable=False, index=True),
    sa.Column("created", sa.BigInteger(), nullable=False),
    sa.Column("expires", sa.BigInteger(), nullable=False),
    sa.Column("ends", sa.BigInteger(), nullable=False, index=True),
)


@implementer(ISessionStore)
class SQLSessionStore:
    """Records in the ``ppc_sessions`` table of a SQL database (SQLite, PostgreSQL, MySQL).

    The table is created on first use, so a database that is down at start-up only makes the
    web interface answer 503 until it is back.
    """

    def __init__(
        self,
        engine: Engine,
        run: RunBlocking,
        lock: contextlib.AbstractContextManager[Any] | None = None,
        option: str = "session.url",
    ) -> None:
        self._engine = engine
        self._run = run
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._what = f"the session database ({option})"
        self._ready = False
        self._ready_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, run: RunBlocking, option: str) -> SQLSessionStore:
        """:raises ConfigError: for an unreadable URL or a missing driver."""
        engine, lock = open_engine(url, option, THREADS)
        return cls(engine, run, lock, option)

    def _blocking(self, work: Callable[[Any], Any]) -> Any:
        def run(engine: Engine) -> Any:
            if not self._ready:
                with self._ready_lock:
                    if not self._ready:
                        create_tables(engine, sessions_metadata, "the session table")
                        self._ready = True
            return in_transaction(work)(engine)

        return run_on_engine(self._engine, run, self._what, self._lock)

    def add(self, record: SessionRecord) -> Deferred[None]:
        def work(conn: Any) -> None:
            t = sessions_table.c
            conn.execute(
                sessions_table.delete().where(
                    sa.or_(t.ends <= record.created, t.expires <= record.created)
                )
            )
            conn.execute(sessions_table.insert().values(**attrs.asdict(record)))

        return self._run(self._blocking, work)

    def get(self, key: str) -> Deferred[SessionRecord | None]:
        def work(conn: Any) -> SessionRecord | None:
            row = conn.execute(sa.select(sessions_table).where(sessions_table.c.key == key)).first()
            if row is None:
                return None
            return SessionRecord(
                key=row.key,
                username=row.username,
                created=int(row.created),
                expires=int(row.expires),
                ends=int(row.ends),
            )

        return self._run(self._blocking, work)

    def touch(self, key: str, expires: int) -> Deferred[None]:
        def work(conn: Any) -> None:
            conn.execute(
                sessions_table.update().where(sessions_table.c.key == key).values(expires=expires)
            )

        return self._run(self._blocking, work)

    def remove(self, key: str) -> Deferred[None]:
        def work(conn: Any) -> None:
            conn.execute(sessions_table.delete().where(sessions_table.c.key == key))

        return self._run(self._blocking, work)

    def remove_user(self, username: str, keep: str | None) -> Deferred[int]:
        def work(conn: Any) -> int:
            condition = sessions_table.c.username == username
            if keep is not None:
                condition = sa.and_(condition, sessions_table.c.key != keep)
            return int(conn.execute(sessions_table.delete().where(condition)).rowcount or 0)

        return self._run(self._blocking, work)

    def stop(self) -> None:
        self._engine.dispose()
