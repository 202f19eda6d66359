"""API tokens end to end below the web layer: the Tokens service and ``__token__`` logins,
on a real (SQLite) access backend."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.backends.access.config import ConfigAccessBackend
from pypicloud_tx.backends.access.sql import SQLAccessBackend
from pypicloud_tx.config.model import AccessLists
from pypicloud_tx.domain.models import Identity, Scope
from pypicloud_tx.errors import (
    Forbidden,
    InvalidUpload,
    NotFound,
    ReadOnly,
    TooManyAttempts,
    Unauthenticated,
)
from pypicloud_tx.runtime import Runtime
from pypicloud_tx.services.auth import Authenticator
from pypicloud_tx.services.tokens import Tokens

START = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
ALICE = Identity("alice", is_admin=True)
BOB = Identity("bob", frozenset({"devs"}))


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class TokenCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START.timestamp())
        self.access = SQLAccessBackend.from_config(
            SQLAccessBackend.Options(db__url="sqlite://", rounds=1000), Runtime.synchronous()
        )
        self.successResultOf(self.access.start())
        self.addCleanup(lambda: self.successResultOf(self.access.stop()))
        for name, admin in (("alice", True), ("bob", False), ("carol", False)):
            self.successResultOf(self.access.create_user(name, f"{name}pw", admin=admin))
        self.successResultOf(self.access.create_group("devs"))
        self.successResultOf(self.access.edit_user_group("bob", "devs", True))
        self.auth = Authenticator(self.access, self.clock, max_failures=3)
        self.tokens = Tokens(
            self.access,
            self.auth,
            lambda: dt.datetime.fromtimestamp(self.clock.seconds(), dt.UTC),
        )

    def call(self, coroutine: Any) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def refused(self, coroutine: Any, error: type[Exception]) -> Exception:
        return self.failureResultOf(Deferred.fromCoroutine(coroutine), error).value

    def login(self, text: str, address: str = "10.0.0.1") -> Identity:
        return self.call(self.auth.identify(basic("__token__", text), address))  # type: ignore[no-any-return]

    def login_fails(self, text: str, address: str = "10.0.0.1") -> Exception:
        return self.refused(self.auth.identify(basic("__token__", text), address), Unauthenticated)


class TokenServiceTests(TokenCase):
    def test_create_and_log_in(self) -> None:
        """A created token logs in as its owner, with the owner's groups and its scope."""
        text, token = self.call(self.tokens.create(BOB, "bob", "ci", ["My_Pkg"], ["read", "write"]))
        identity = self.login(text)
        self.assertEqual(identity.username, "bob")
        self.assertEqual(identity.groups, {"devs"})
        self.assertEqual(identity.scope, Scope(frozenset({"my-pkg"}), frozenset({"read", "write"})))
        self.assertEqual(self.call(self.tokens.list(BOB, "bob")), [token])

    def test_wrong_secret_or_unknown_id(self) -> None:
        """A token with a changed secret, an unknown id, or no token shape does not log in."""
        text, _ = self.call(self.tokens.create(BOB, "bob", "ci", [], ["read"]))
        tampered = text[:-1] + ("A" if text[-1] != "A" else "B")
        self.assertIn("Invalid or revoked", self.login_fails(tampered).message)
        other = text[:7] + "0" * 16 + text[23:]
        self.assertIn("Invalid or revoked", self.login_fails(other).message)
        self.assertIn("must be an API token", self.login_fails("bobpw").message)

    def test_expiry(self) -> None:
        """A token works until its expiry (even when remembered), then says it expired."""
        text, _ = self.call(self.tokens.create(BOB, "bob", "ci", [], ["read"], days=1))
        self.login(text)
        self.clock.advance(86400 - 1)
        self.login(text)
        self.clock.advance(1)
        self.assertIn("expired", self.login_fails(text).message)

    def test_revoke(self) -> None:
        """A revoked token stops working at once, even though its login was remembered."""
        text, token = self.call(self.tokens.create(BOB, "bob", "ci", [], ["read"]))
        self.login(text)
        self.call(self.tokens.revoke(BOB, token.id))
        self.login_fails(text)
        self.refused(self.tokens.revoke(BOB, token.id), NotFound)

    def test_deleted_owner(self) -> None:
        """The tokens of a deleted user stop working."""
        text, _ = self.call(self.tokens.create(BOB, "bob", "ci", [], ["read"]))
        self.successResultOf(self.access.delete_user("bob"))
        self.auth.forget("bob")
        self.login_fails(text)

    def test_owner_rules(self) -> None:
        """Users manage their own tokens; admins anyone's; others' are invisible."""
        _, token = self.call(self.tokens.create(BOB, "bob", "ci", [], ["read"]))
        self.refused(self.tokens.create(Identity("carol"), "bob", "x", [], ["read"]), Forbidden)
        self.refused(self.tokens.list(Identity("carol"), "bob"), Forbidden)
        self.refused(self.tokens.revoke(Identity("carol"), token.id), NotFound)
        _, for_carol = self.call(self.tokens.create(ALICE, "carol", "by-admin", [], ["write"]))
        self.assertEqual(for_carol.username, "carol")
        self.assertEqual(self.call(self.tokens.list(ALICE, "bob")), [token])
        self.call(self.tokens.revoke(ALICE, token.id))
        self.refused(self.tokens.create(ALICE, "nobody", "x", [], ["read"]), NotFound)

    def test_tokens_cannot_manage_tokens(self) -> None:
        """A caller logged in with a token can neither create, list nor revoke tokens."""
        text, token = self.call(self.tokens.create(ALICE, "alice", "ci", [], ["read", "write"]))
        as_token = self.login(text)
        self.refused(self.tokens.create(as_token, "alice", "more", [], ["read"]), Forbidden)
        self.refused(self.tokens.list(as_token, "alice"), Forbidden)
        self.refused(self.tokens.revoke(as_token, token.id), Forbidden)
        self.refused(self.tokens.list(Identity(), "alice"), Unauthenticated)

    def test_bad_requests(self) -> None:
        """Bad names, permissions and lifetimes are refused and store nothing."""
        for args in [
            ("", [], ["read"], None),
            ("ci", [], ["delete"], None),
            ("ci", [], [], None),
            ("ci", [], ["read"], 0),
            ("ci", [], ["read"], 100_000),
        ]:
            self.refused(self.tokens.create(BOB, "bob", *args), InvalidUpload)
        self.assertEqual(self.call(self.tokens.list(BOB, "bob")), [])

    def test_throttled_per_address_only(self) -> None:
        """Bad tokens from one address get it throttled (429), while other addresses' tokens
        keep working: there is no shared __token__ lock-out."""
        text, _ = self.call(self.tokens.create(BOB, "bob", "ci", [], ["read"]))
        for _ in range(15):
            self.login_fails("pypitx_" + "0" * 16 + "_" + "x" * 43, "10.6.6.6")
        self.refused(self.auth.identify(basic("__token__", text), "10.6.6.6"), TooManyAttempts)
        self.assertEqual(self.login(text, "10.0.0.2").username, "bob")


class ReadOnlyBackendTests(SynchronousTestCase):
    def test_read_only_backend(self) -> None:
        """On the config backend, tokens cannot be created and __token__ logins say why."""
        access = ConfigAccessBackend(
            AccessLists(users={}, groups={}, packages={}), (), Runtime.synchronous().threads("x", 1)
        )
        auth = Authenticator(access, Clock())
        tokens = Tokens(access, auth)
        d = Deferred.fromCoroutine(tokens.create(BOB, "bob", "ci", [], ["read"]))
        self.assertIn("cannot store API tokens", self.failureResultOf(d, ReadOnly).value.message)
        d2 = Deferred.fromCoroutine(
            auth.identify(basic("__token__", "pypitx_" + "0" * 16 + "_" + "x" * 43), "1.2.3.4")
        )
        self.assertIn(
            "cannot hold API tokens", self.failureResultOf(d2, Unauthenticated).value.message
        )
