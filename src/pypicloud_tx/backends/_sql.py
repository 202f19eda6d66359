"""What the SQL cache and the SQL access backend share: running work against an engine and
turning an unreachable database into :class:`BackendUnavailable`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import MetaData
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from twisted.logger import Logger

from pypicloud_tx.errors import BackendUnavailable

log = Logger()
T = TypeVar("T")


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
    """``work`` wrapped to run in one transaction on an engine (for :func:`run_on_engine`)."""

    def run(engine: Engine) -> T:
        with engine.begin() as conn:
            return work(conn)

    return run
