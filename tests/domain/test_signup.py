"""Sign-up tokens: pypicloud's ``username:issued:hmac`` format, signature and expiry."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.domain.signup import ONE_WEEK, issue, verify

KEY = "c2VjcmV0LWtleQ=="
NOW = 1_522_226_377.75


class SignupTokenTests(SynchronousTestCase):
    def test_format_is_pypiclouds(self) -> None:
        """A token is ``<username>:<issue time, whole seconds>:<hex HMAC-SHA256 of the rest>``,
        exactly as pypicloud computes it, so its tokens stay valid here (and ours there)."""
        token = issue("LordFoobar", KEY, NOW)
        expected = hmac.new(KEY.encode(), b"LordFoobar:1522226377", hashlib.sha256).hexdigest()
        self.assertEqual(token, f"LordFoobar:1522226377:{expected}")

    def test_valid_token(self) -> None:
        """A fresh token verifies and names its user."""
        token = issue("LordFoobar", KEY, NOW)
        self.assertEqual(verify(token, KEY, NOW), "LordFoobar")
        self.assertEqual(verify(token + "\n", KEY, NOW + 10), "LordFoobar")

    def test_expiry(self) -> None:
        """A token is valid for ``lifetime`` seconds after it was issued (a week by default),
        then refused."""
        token = issue("u", KEY, NOW)
        issued = int(NOW)
        self.assertEqual(verify(token, KEY, issued + ONE_WEEK), "u")
        self.assertIsNone(verify(token, KEY, issued + ONE_WEEK + 1))
        self.assertEqual(verify(token, KEY, issued + 3600, lifetime=3600), "u")
        self.assertIsNone(verify(token, KEY, issued + 3601, lifetime=3600))

    def test_other_key(self) -> None:
        """A token signed with another key (or after the key changed) is refused."""
        self.assertIsNone(verify(issue("u", "other", NOW), KEY, NOW))

    def test_tampering(self) -> None:
        """Changing the user name, the time or the signature invalidates the token."""
        token = issue("alice", KEY, NOW)
        name, issued, signature = token.split(":")
        forged = [
            f"mallory:{issued}:{signature}",
            f"{name}:{int(issued) + ONE_WEEK}:{signature}",
            f"{name}:{issued}:{signature[:-1]}0" if signature[-1] != "0" else f"{name}:{issued}:x",
            f"{name}:{issued}:{signature.upper()}",
            f"{name}:{issued}:",
        ]
        for text in forged:
            self.assertIsNone(verify(text, KEY, NOW), text)

    def test_malformed(self) -> None:
        """Texts without the three parts, or with a non-numeric time, are refused (no error)."""
        for text in [
            "",
            ":",
            "::",
            "alice",
            "alice:123",
            ":123:abc",
            "alice:12a:abc",
            "alice:-5:abc",
            "alice:١٢:abc",
        ]:
            self.assertIsNone(verify(text, KEY, NOW), text)

    @given(st.text(min_size=1).filter(lambda s: ":" not in s and s == s.strip()))
    def test_any_name_round_trips(self, name: str) -> None:
        """Any user name without ':' survives the round trip."""
        self.assertEqual(verify(issue(name, KEY, NOW), KEY, NOW), name)
