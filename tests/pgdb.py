"""A database of its own on the test PostgreSQL server, for one test."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy.engine import URL, make_url
from twisted.trial.unittest import SynchronousTestCase

from tests.realservices import require_service


def new_postgres_database(case: SynchronousTestCase, prefix: str = "e2e") -> URL:
    """The URL of a new empty database on ``PPC_TEST_POSTGRES_URL``'s server, dropped (even
    with connections still open) when ``case`` ends."""
    import psycopg

    url = make_url(require_service("PPC_TEST_POSTGRES_URL", "PostgreSQL"))
    name = f"{prefix}_{secrets.token_hex(6)}"
    params: dict[str, Any] = {
        "host": url.host or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username,
        "dbname": url.database or "postgres",
        "connect_timeout": 10,
    }
    if url.password:
        params["password"] = url.password

    def admin(sql: str) -> None:
        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute(sql)

    admin(f'CREATE DATABASE "{name}"')
    case.addCleanup(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return url.set(database=name)
