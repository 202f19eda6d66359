"""API token text, records and scopes."""

from __future__ import annotations

import datetime as dt

from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.domain.models import Scope
from pypicloud_tx.domain.tokens import (
    PREFIX,
    ApiToken,
    make_scope,
    new_token,
    parse_token,
)

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
RW = frozenset({"read", "write"})


class TokenTextTests(SynchronousTestCase):
    def test_new_token_text(self) -> None:
        """A new token's text carries the prefix and its id, parses back to (id, secret), and
        only the secret's hash is kept in the record."""
        text, token = new_token("alice", "ci", make_scope(["Foo_Bar"], ["write"]), NOW)
        self.assertTrue(text.startswith(PREFIX))
        parsed = parse_token(text)
        assert parsed is not None
        token_id, secret = parsed
        self.assertEqual(token_id, token.id)
        self.assertTrue(token.matches(secret))
        self.assertFalse(token.matches(secret[:-1] + ("A" if secret[-1] != "A" else "B")))
        self.assertNotIn(secret, repr(token.to_dict()))
        self.assertEqual(token.scope.packages, frozenset({"foo-bar"}))

    def test_tokens_are_unique(self) -> None:
        """Two tokens never share an id or a secret."""
        made = [new_token("a", "n", make_scope([], ["read"]), NOW)[0] for _ in range(50)]
        self.assertEqual(len(set(made)), 50)
        self.assertEqual(len({parse_token(t)[0] for t in made}), 50)  # type: ignore[index]

    def test_parse_rejects_other_text(self) -> None:
        """Passwords, truncated tokens and other vendors' tokens are not tokens."""
        text, _ = new_token("a", "n", make_scope([], ["read"]), NOW)
        for other in ["hunter2", text[:-1], text + "x", "pypi-AgEIcHlwaS5vcmc", "", PREFIX]:
            self.assertIsNone(parse_token(other), other)
        self.assertIsNotNone(parse_token(f"  {text}\n"))

    def test_record_round_trip(self) -> None:
        """to_dict/from_dict keep every field; describe() hides the hash."""
        _, token = new_token(
            "alice", "deploy", make_scope(["b", "a"], RW), NOW, NOW + dt.timedelta(days=30)
        )
        self.assertEqual(ApiToken.from_dict(token.to_dict()), token)
        self.assertNotIn("secret_sha256", token.describe())
        self.assertEqual(token.describe()["packages"], ["a", "b"])
        with self.assertRaises(ValueError):
            ApiToken.from_dict({"id": "x"})

    def test_expiry(self) -> None:
        """A token expires at its expiry, not before; one without expiry never does."""
        _, token = new_token("a", "n", make_scope([], ["read"]), NOW, NOW + dt.timedelta(hours=1))
        self.assertFalse(token.expired(NOW + dt.timedelta(minutes=59)))
        self.assertTrue(token.expired(NOW + dt.timedelta(hours=1)))
        _, forever = new_token("a", "n", make_scope([], ["read"]), NOW)
        self.assertFalse(forever.expired(NOW + dt.timedelta(days=10_000)))

    def test_bad_requests(self) -> None:
        """Unknown or missing permissions, empty names and past expiries are refused."""
        with self.assertRaises(ValueError):
            make_scope([], ["delete"])
        with self.assertRaises(ValueError):
            make_scope([], [])
        with self.assertRaises(ValueError):
            new_token("a", "  ", make_scope([], ["read"]), NOW)
        with self.assertRaises(ValueError):
            new_token("a", "n", make_scope([], ["read"]), NOW, NOW)

    def test_scope_limit(self) -> None:
        """A scope keeps only its permissions, and only on its packages (all when empty)."""
        self.assertEqual(Scope(frozenset({"p"}), frozenset({"read"})).limit("p", RW), {"read"})
        self.assertEqual(Scope(frozenset({"p"}), RW).limit("q", RW), frozenset())
        self.assertEqual(Scope(frozenset(), RW).limit("q", frozenset({"read"})), {"read"})
