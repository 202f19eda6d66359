"""Session stores and the session service: the same records for every process, ids never
stored, logout everywhere; where the store lives; the ``session.*`` options."""

from __future__ import annotations

import os

import sqlalchemy as sa
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

from pypicloud_tx.application import build_sessions, store_location
from pypicloud_tx.backends._threads import run_synchronously
from pypicloud_tx.backends.sessions.memory import MemorySessionStore
from pypicloud_tx.backends.sessions.sql import SQLSessionStore
from pypicloud_tx.config.loader import parse_settings
from pypicloud_tx.domain.models import SessionRecord
from pypicloud_tx.errors import ConfigError
from pypicloud_tx.interfaces import ISessionStore
from pypicloud_tx.services.sessions import Sessions
from tests.web.harness import BASE_OPTIONS, MUTABLE_OPTIONS, _fired
from tests.web.ui.harness import SECRET, UiTestCase, with_sessions


class StoreConformance:
    """What every :class:`ISessionStore` does."""

    def make_store(self) -> ISessionStore:
        raise NotImplementedError

    def test_interface(self) -> None:
        """The store provides the interface."""
        self.assertTrue(verifyObject(ISessionStore, self.make_store()))  # type: ignore[attr-defined]

    def test_records(self) -> None:
        """Add, get, touch, remove, and remove a user's records but one; ended records are
        dropped when a new one is added."""
        store = self.make_store()
        eq = self.assertEqual  # type: ignore[attr-defined]
        a = SessionRecord("a" * 64, "bob", 100, 200, 1000)
        b = SessionRecord("b" * 64, "bob", 100, 200, 1000)
        c = SessionRecord("c" * 64, "carol", 100, 150, 1000)
        for record in (a, b, c):
            _fired(store.add(record))
        eq(_fired(store.get(a.key)), a)
        _fired(store.touch(a.key, 300))
        eq(_fired(store.get(a.key)).expires, 300)
        eq(_fired(store.remove_user("bob", a.key)), 1)
        eq(_fired(store.get(b.key)), None)
        _fired(store.remove(a.key))
        eq(_fired(store.get(a.key)), None)
        _fired(store.add(SessionRecord("d" * 64, "dave", 160, 300, 1000)))
        eq(_fired(store.get(c.key)), None)  # its idle deadline (150) had passed


class MemoryStoreTests(StoreConformance, UiTestCase):
    def make_store(self) -> ISessionStore:
        return MemorySessionStore()


class SQLStoreTests(StoreConformance, UiTestCase):
    def make_store(self) -> ISessionStore:
        path = os.path.abspath(self.mktemp())
        store = SQLSessionStore.from_url(f"sqlite:///{path}", run_synchronously, "session.url")
        self.addCleanup(store.stop)
        return store

    def test_ids_never_stored(self) -> None:
        """The table holds SHA-256 keys; the session id in the cookie is nowhere in it."""
        path = os.path.abspath(self.mktemp())
        store = SQLSessionStore.from_url(f"sqlite:///{path}", run_synchronously, "session.url")
        self.addCleanup(store.stop)
        sessions = Sessions(store, SECRET, 60, 600)
        cookie, _record = _fired(Deferred.fromCoroutine(sessions.start("bob")))
        session_id = cookie.split(".")[0]
        engine = sa.create_engine(f"sqlite:///{path}")
        self.addCleanup(engine.dispose)
        with engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(sa.text("SELECT * FROM ppc_sessions"))]
        self.assertEqual(len(rows), 1)
        self.assertNotIn(session_id, repr(rows))
        self.assertEqual(rows[0][0], Sessions.key_of(session_id))


class SharedStoreTests(UiTestCase):
    def test_two_processes_share_sessions(self) -> None:
        """Two servers on one session database: a login on one works on the other, and a
        logout on the other ends it on the first."""
        path = os.path.abspath(self.mktemp())
        stores = []
        indexes = []
        for _ in range(2):
            store = SQLSessionStore.from_url(f"sqlite:///{path}", run_synchronously, "session.url")
            self.addCleanup(store.stop)
            stores.append(store)
            ix = self.make_index()
            with_sessions(ix, store)
            indexes.append(ix)
        first, second = indexes
        browser = self.browser()
        self.ix = first
        browser.log_in("bob")
        self.ix = second
        self.assertIn("logged in as <strong>bob</strong>", browser.get("/").text)
        copy = self.browser()
        copy.cookies = dict(browser.cookies)
        browser.submit("/account", "/logout", {})
        self.ix = first
        self.assertEqual(copy.get("/account").code, 303)


class ServiceTests(UiTestCase):
    def test_signed_messages(self) -> None:
        """A signed message reads back; a changed one reads as nothing."""
        sessions = Sessions(MemorySessionStore(), SECRET, 60, 600)
        text = sessions.sign({"t": "hello"})
        self.assertEqual(sessions.unsign(text), {"t": "hello"})
        body, mac = text.split(".")
        self.assertIsNone(sessions.unsign(body + "x." + mac))
        self.assertIsNone(Sessions(MemorySessionStore(), b"other", 60, 600).unsign(text))

    def test_csrf_tokens_bound_to_their_seed(self) -> None:
        """A CSRF token is valid for its own seed only, and depends on the key."""
        sessions = Sessions(MemorySessionStore(), SECRET, 60, 600)
        token = sessions.csrf_token("seed-a")
        self.assertTrue(sessions.csrf_ok("seed-a", token))
        self.assertFalse(sessions.csrf_ok("seed-b", token))
        self.assertFalse(sessions.csrf_ok("seed-a", None))
        self.assertFalse(Sessions(MemorySessionStore(), b"x", 60, 600).csrf_ok("seed-a", token))


class LocationTests(UiTestCase):
    def settings(self, **options: str | None) -> object:
        base = {k: v for k, v in BASE_OPTIONS.items() if not k.startswith(("user.", "group."))}
        raw = {k: v for k, v in {**base, **options}.items() if v is not None}
        return parse_settings(raw)

    def test_where_sessions_live(self) -> None:
        """``session.url`` first, then the SQL access database, then the SQL cache database,
        else memory."""
        sql_auth = {k: v for k, v in MUTABLE_OPTIONS.items()}
        self.assertIsNone(store_location(self.settings()))  # type: ignore[arg-type]
        self.assertEqual(
            store_location(self.settings(**{"pypi.db": "sql", "db.url": "sqlite:///c.db"})),  # type: ignore[arg-type]
            ("sqlite:///c.db", "db.url"),
        )
        self.assertEqual(
            store_location(self.settings(**{**sql_auth, "auth.db.url": "sqlite:///a.db"})),  # type: ignore[arg-type]
            ("sqlite:///a.db", "auth.db.url"),
        )
        self.assertEqual(
            store_location(self.settings(**{"session.url": "sqlite:///s.db"})),  # type: ignore[arg-type]
            ("sqlite:///s.db", "session.url"),
        )

    def test_generated_key_warns(self) -> None:
        """Without ``session.validate_key`` a random key is used, with a warning saying what
        that costs; with one, no warning."""
        with capturedLogs() as events:
            build_sessions(self.settings(), run_synchronously)  # type: ignore[arg-type]
        self.assertTrue(
            any("session.validate_key is not set" in str(e.get("log_format")) for e in events)
        )
        with capturedLogs() as events:
            build_sessions(self.settings(**{"session.validate_key": "v"}), run_synchronously)  # type: ignore[arg-type]
        self.assertFalse(any("validate_key" in str(e.get("log_format")) for e in events))

    def test_same_key_same_cookies(self) -> None:
        """Two processes with the same key accept each other's cookies; another key not."""
        one = Sessions(MemorySessionStore(), b"k", 60, 600)
        cookie, _ = _fired(Deferred.fromCoroutine(one.start("bob")))
        self.assertIsNotNone(Sessions(MemorySessionStore(), b"k", 60, 600).session_id(cookie))
        self.assertIsNone(Sessions(MemorySessionStore(), b"j", 60, 600).session_id(cookie))

    def test_options_parsed(self) -> None:
        """The ``session.*`` options reach the settings; bad values name the option."""
        s = self.settings(
            **{
                "session.validate_key": "v",
                "session.encrypt_key": "e",
                "session.secure": "true",
                "session.timeout": "600",
                "session.max_age": "3600",
                "session.url": "sqlite:///s.db",
                "session.invalidate_corrupt": "true",
            }
        )
        self.assertEqual(
            (s.session_secure, s.session_timeout, s.session_max_age, s.session_url),  # type: ignore[attr-defined]
            (True, 600, 3600, "sqlite:///s.db"),
        )
        self.assertNotIn("'v'", repr(s))
        for option, value in (
            ("session.timeout", "0"),
            ("session.secure", "maybe"),
            ("session.validate_key", " "),
        ):
            error = self.assertRaises(ConfigError, self.settings, **{option: value})
            self.assertTrue(error.message.startswith(option + ":"), error.message)
