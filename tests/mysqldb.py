"""A database of its own on the test MariaDB/MySQL server, for one test."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.pool import NullPool
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.backends._sql import normalise_url
from tests.realservices import require_service


def new_mysql_database(case: SynchronousTestCase, what: str) -> str:
    """The URL of a new empty database on ``PPC_TEST_MYSQL_URL``'s server, dropped when
    ``case`` ends; ``what`` names it in the database name."""
    base = normalise_url(require_service("PPC_TEST_MYSQL_URL", "MariaDB"))
    name = f"ppc_test_{what}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()

    case.addCleanup(drop)
    return base.set(database=name).render_as_string(hide_password=False)
