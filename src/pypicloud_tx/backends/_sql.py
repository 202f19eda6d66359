"""What the SQL cache and the SQL access backend share: reading database URLs (pypicloud's
included), making engines, running work against them, and turning an unreachable database into
:class:`BackendUnavailable`."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import MetaData
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool
from twisted.logger import Logger

from pypicloud_tx.errors import BackendUnavailable, ConfigError, Conflict

log = Logger()
T = TypeVar("T")

#: Seconds to wait for a PostgreSQL or MySQL connection unless the URL says otherwise.
CONNECT_TIMEOUT = 10
#: Milliseconds a SQLite writer waits for another process's lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 5000

# pypicloud's URLs name no driver, or one we do not install; these are the ones we support.
_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
_SUPPORTED = ("sqlite", "postgresql", "mysql", "mariadb")
_EXTRAS = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}


def run_on_engine(
    engine: Engine,
    work: Callable[[Engine], T],
    what: str,
    lock: contextlib.AbstractContextManager[Any] | None = None,
) -> T:
    """``work(engine)`` (call it on a pool thread); an unreachable database, described as
    ``what`` ("the cache database"), fails with :class:`BackendUnavailable`."""
    with lock if lock is not None else contextlib.nullcontext():
        try:
            return work(engine)
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as e:
            raise unavailable(engine, e, what) from None
        except sa_exc.DBAPIError as e:
            if e.connection_invalidated:
                raise unavailable(engine, e, what) from None
            raise


def unavailable(engine: Engine, error: Exception, what: str) -> BackendUnavailable:
    """A :class:`BackendUnavailable` whose message never carries the URL's password."""
    original = getattr(error, "orig", None) or error
    lines = str(original).strip().splitlines()
    reason = lines[0] if lines else type(original).__name__
    password = engine.url.password
    if password:
        reason = reason.replace(str(password), "***")
    log.warn("{what} is unreachable: {reason}", what=what, reason=reason)
    return BackendUnavailable(f"{what} is unreachable: {reason}")


def exact_string(length: int) -> sa.types.TypeEngine[str]:
    """A string column compared byte for byte everywhere: MySQL/MariaDB compare strings without
    regard to case by default (``FOO`` would find ``foo``), SQLite and PostgreSQL do not."""
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def create_tables(engine: Engine, metadata: MetaData, what: str) -> None:
    """Create ``metadata``'s tables that do not exist yet; another process may race us."""
    try:
        metadata.create_all(engine)
    except (sa_exc.ProgrammingError, sa_exc.IntegrityError):
        # Another process created them between our check and our CREATE; check again.
        metadata.create_all(engine)
    log.info(
        "{what} ready at {url}", what=what, url=engine.url.render_as_string(hide_password=True)
    )


def in_transaction(work: Callable[[Connection], T]) -> Callable[[Engine], T]:
    """``work`` wrapped to run in one transaction on an engine (for :func:`run_on_engine`).

    Two requests changing the same rows at the same moment (two admins granting the same
    permission) can collide on a unique key: the loser's transaction is run once more, when it
    sees the winner's rows; a second collision fails with :class:`Conflict`.
    """

    def run(engine: Engine) -> T:
        for attempt in (1, 2):
            try:
                with engine.begin() as conn:
                    return work(conn)
            except sa_exc.IntegrityError as e:
                if attempt == 2:
                    log.warn("concurrent change failed twice: {error}", error=e.orig)
                    raise Conflict(
                        "Another request changed the same data at the same moment; try again."
                    ) from None
        raise AssertionError("unreachable")

    return run


def normalise_url(text: str, option: str = "db.url") -> URL:
    """The SQLAlchemy URL for ``text``, with pypicloud-style driverless URLs given our drivers.

    ``postgres://`` and ``postgresql://`` use psycopg 3; ``mysql://`` uses PyMySQL with the
    ``utf8mb4`` character set unless the URL names one.

    :raises ConfigError: if SQLAlchemy cannot read the URL.
    """
    try:
        url = make_url(text)
    except sa_exc.ArgumentError:
        raise ConfigError(
            f"{option}: not a database URL (examples: sqlite:///%(here)s/db.sqlite, "
            "postgresql://user:password@host/dbname, mysql://user:password@host/dbname)"
        ) from None
    if url.drivername in _DRIVERS:
        url = url.set(drivername=_DRIVERS[url.drivername])
    if url.get_backend_name() in ("mysql", "mariadb") and "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    return url


def is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers keep reading the old rows while a reload rewrites the table.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def create_engine(url: URL, option: str = "db.url", pool_size: int = 10) -> Engine:
    """An engine for ``url`` with the settings this cache relies on.  Connects to nothing.

    :raises ConfigError: for a database other than SQLite, PostgreSQL and MySQL/MariaDB (each
        needs its own upsert), or if the database's driver is not installed.
    """
    backend = url.get_backend_name()
    if backend not in _SUPPORTED:
        raise ConfigError(
            f"{option}: {backend} databases are not supported "
            "(use sqlite, postgresql or mysql/mariadb)"
        )
    # One pooled connection per worker thread, so none is opened per request.
    kwargs: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 0}
    connect_args: dict[str, Any] = {}
    if backend != "sqlite":
        # A network database may have restarted: test a connection before using it.
        kwargs["pool_pre_ping"] = True
    if backend == "sqlite":
        connect_args["check_same_thread"] = False
        if is_memory_sqlite(url):
            # One connection for every thread, or each would see its own empty database.
            kwargs = {"poolclass": StaticPool}
    elif backend in ("postgresql", "mysql", "mariadb"):
        if backend == "postgresql":
            connect_args["client_encoding"] = "utf8"
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT
    try:
        engine = sa.create_engine(url, connect_args=connect_args, **kwargs)
    except ImportError as e:
        extra = _EXTRAS.get(backend)
        hint = f"; install it with: pip install 'pypicloud-tx[{extra}]'" if extra else ""
        raise ConfigError(f"{option}: the database driver is not installed ({e}){hint}") from None
    except sa_exc.ArgumentError as e:
        raise ConfigError(f"{option}: {e}") from None
    if backend == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def drop_orphaned_sqlite_journal(url: URL) -> None:
    """Remove ``-wal``/``-shm`` files left beside a deleted SQLite database.

    Deleting ``db.sqlite`` to force a rebuild is a documented way to recover; SQLite would
    otherwise meet the old journal and fail with "disk I/O error".
    """
    if url.get_backend_name() != "sqlite" or is_memory_sqlite(url):
        return
    path = str(url.database)
    if os.path.exists(path):
        return
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            os.remove(path + suffix)
            log.info("removed {path} left behind by a deleted database", path=path + suffix)
        except FileNotFoundError:
            pass


def open_engine(
    text: str, option: str = "db.url", pool_size: int = 10
) -> tuple[Engine, contextlib.AbstractContextManager[Any]]:
    """An engine for the URL ``text`` and the lock its users must hold: in-memory SQLite has
    one connection for every thread, so they take turns; anything else needs no lock.

    :raises ConfigError: naming ``option`` for an unreadable URL or a missing driver.
    """
    url = normalise_url(text, option)
    lock: contextlib.AbstractContextManager[Any] = (
        threading.Lock() if is_memory_sqlite(url) else contextlib.nullcontext()
    )
    return create_engine(url, option, pool_size), lock
