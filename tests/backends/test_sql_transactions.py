"""The shared SQL transaction helper: collisions on a unique key are retried once."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.backends._sql import in_transaction
from pypicloud_tx.errors import Conflict

metadata = sa.MetaData()
rows = sa.Table("t", metadata, sa.Column("key", sa.String(10), primary_key=True))


class InTransactionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.engine = sa.create_engine(f"sqlite:///{self.mktemp()}.sqlite")
        self.addCleanup(self.engine.dispose)
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            conn.execute(rows.insert().values(key="taken"))
        self.calls = 0

    def keys(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(conn.execute(sa.select(rows.c.key)).scalars())

    def test_retried_once(self) -> None:
        """A transaction that collides with another's row runs again (the collision rolled
        back what it had done), and its second run's result is returned."""

        def work(conn: Connection) -> str:
            self.calls += 1
            conn.execute(rows.insert().values(key=f"mine{self.calls}"))
            if self.calls == 1:
                conn.execute(rows.insert().values(key="taken"))
            return "done"

        self.assertEqual(in_transaction(work)(self.engine), "done")
        self.assertEqual(self.calls, 2)
        self.assertEqual(self.keys(), ["mine2", "taken"])

    def test_conflict_after_two_collisions(self) -> None:
        """A transaction that collides twice fails with Conflict and changes nothing."""

        def work(conn: Connection) -> None:
            self.calls += 1
            conn.execute(rows.insert().values(key="mine"))
            conn.execute(rows.insert().values(key="taken"))

        with self.assertRaises(Conflict) as raised:
            in_transaction(work)(self.engine)
        self.assertIn("try again", raised.exception.message)
        self.assertEqual(self.calls, 2)
        self.assertEqual(self.keys(), ["taken"])
