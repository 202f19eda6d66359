"""Password hashes: what we write, what pypicloud wrote, and what we refuse quietly."""

from __future__ import annotations

from passlib.hash import bcrypt, pbkdf2_sha256, pbkdf2_sha512, sha256_crypt, sha512_crypt
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.domain import passwords
from pypicloud_tx.domain.passwords import (
    DUMMY_HASH,
    MIN_ROUNDS,
    check_rounds,
    hash_password,
    hash_problem,
    password_context,
    verify_password,
)
from tests.config import manual


class VerifyTests(SynchronousTestCase):
    """verify_password accepts every format pypicloud users may have in their config."""

    def setUp(self) -> None:
        self.context = password_context()

    def test_manual_hashes(self) -> None:
        """The manual's sha256_crypt hashes (made by pypicloud's ppc-gen-password) verify
        with the passwords the manual gives, and not with each other's."""
        for user, hashed in manual.HASHES.items():
            self.assertTrue(verify_password(self.context, manual.PASSWORDS[user], hashed), user)
            for other, password in manual.PASSWORDS.items():
                if other != user:
                    self.assertFalse(verify_password(self.context, password, hashed))

    def test_seed_text_glyphs(self) -> None:
        """The seed's PDF text of the manual: dsa's hash survived the conversion and
        verifies; the two with confused glyphs (0/l, x/X, 1/l) do not, which is why the tests
        use the manual's own hashes."""
        seed = manual.SEED_TEXT_HASHES
        self.assertTrue(verify_password(self.context, "paranoia", seed["dsa"]))
        self.assertFalse(verify_password(self.context, "gunface", seed["stevearc"]))
        self.assertFalse(verify_password(self.context, "osptony", seed["donlan"]))

    def test_other_formats(self) -> None:
        """sha512_crypt (pypicloud's later default), bcrypt and pbkdf2 hashes verify."""
        for handler in [
            sha512_crypt.using(rounds=1000),
            sha256_crypt.using(rounds=1000),
            bcrypt.using(rounds=4),
            pbkdf2_sha256.using(rounds=1000),
            pbkdf2_sha512.using(rounds=1000),
        ]:
            hashed = handler.hash("s3cret")
            self.assertTrue(verify_password(self.context, "s3cret", hashed), hashed)
            self.assertFalse(verify_password(self.context, "s3cret!", hashed), hashed)

    def test_garbage(self) -> None:
        """A hash nobody can read gives False, never an exception."""
        for hashed in ["", "gunface", "$5$rounds=80000$short", "$6$", "$2b$12$abc", "\x00"]:
            self.assertFalse(verify_password(self.context, "gunface", hashed), repr(hashed))

    def test_unknown_user(self) -> None:
        """No hash (unknown user): False, after verifying against a real sha512_crypt hash
        with gen-password's rounds (so it costs what a real check costs)."""
        self.assertFalse(verify_password(self.context, "anything", None))
        self.assertIsNone(hash_problem(self.context, DUMMY_HASH))
        self.assertIn("$rounds=656000$", DUMMY_HASH)

    def test_without_crypt3(self) -> None:
        """Where Python has no crypt module (3.13+), passlib gives the same answers."""
        self.patch(passwords, "_crypt", None)
        cheap = sha512_crypt.using(rounds=1000).hash("s3cret")
        self.assertTrue(verify_password(self.context, "s3cret", cheap))
        self.assertFalse(verify_password(self.context, "s3cre", cheap))
        self.assertTrue(verify_password(self.context, "paranoia", manual.HASHES["dsa"]))
        self.assertFalse(verify_password(self.context, "x", "$6$garbage"))

    def test_crypt3_disagreement_falls_back(self) -> None:
        """When crypt(3) reads a hash's settings differently (here: it returns another salt),
        passlib decides instead of a wrong-password answer."""
        cheap = sha512_crypt.using(rounds=1000).hash("s3cret")
        self.patch(passwords, "_crypt", lambda password, salt: "$6$rounds=1000$other$x")
        self.assertTrue(verify_password(self.context, "s3cret", cheap))
        self.patch(passwords, "_crypt", lambda password, salt: None)
        self.assertTrue(verify_password(self.context, "s3cret", cheap))

    def test_nul_in_password(self) -> None:
        """A password with a NUL byte is simply wrong, never an exception."""
        cheap = sha512_crypt.using(rounds=1000).hash("s3cret")
        self.assertFalse(verify_password(self.context, "s3cret\x00", cheap))
        self.assertFalse(verify_password(self.context, "s3cret\x00", None))


class HashTests(SynchronousTestCase):
    """hash_password writes sha512_crypt, with the rounds asked for."""

    def test_round_trip(self) -> None:
        """A new hash is sha512_crypt and verifies with its password only."""
        hashed = hash_password("correct horse", rounds=MIN_ROUNDS)
        self.assertTrue(hashed.startswith("$6$rounds=1000$"), hashed)
        context = password_context()
        self.assertTrue(verify_password(context, "correct horse", hashed))
        self.assertFalse(verify_password(context, "correct horse ", hashed))
        self.assertIsNone(hash_problem(context, hashed))

    def test_default_rounds(self) -> None:
        """Without rounds, new hashes are sha512_crypt with passlib's secure default
        (656000 rounds); with rounds, those."""
        handler = password_context().handler()
        self.assertEqual((handler.name, handler.default_rounds), ("sha512_crypt", 656000))
        self.assertEqual(password_context(2000).handler().default_rounds, 2000)

    def test_rounds_range(self) -> None:
        """Rounds outside sha512_crypt's range are refused rather than silently clamped."""
        self.assertEqual(check_rounds(80000), 80000)
        for rounds in [0, 999, 1_000_000_000]:
            self.assertRaises(ValueError, check_rounds, rounds)
            self.assertRaises(ValueError, hash_password, "x", rounds)

    def test_hash_problem(self) -> None:
        """hash_problem names what is wrong with unusable hashes, in one line."""
        context = password_context()
        for hashed in manual.HASHES.values():
            self.assertIsNone(hash_problem(context, hashed))
        for hashed in ["plain", "$5$rounds=80000$yiWi67QBJLDTvbI/$d6qIG"]:
            problem = hash_problem(context, hashed)
            self.assertIsNotNone(problem)
            assert problem is not None
            self.assertNotIn("\n", problem)
        self.assertIn("sha256_crypt", hash_problem(context, "$5$rounds=80000$x$y") or "")


class HashWithTests(SynchronousTestCase):
    def test_hash_verifies_with_passlib_and_keeps_rounds(self) -> None:
        """A hash made by ``hash_with`` (crypt(3) where available) is a standard
        sha512_crypt hash with the context's rounds that passlib itself verifies."""
        from passlib.hash import sha512_crypt

        from pypicloud_tx.domain.passwords import hash_with, password_context

        hashed = hash_with(password_context(6000), "s3cret")
        self.assertTrue(hashed.startswith("$6$rounds=6000$"), hashed)
        self.assertTrue(sha512_crypt.verify("s3cret", hashed))
        self.assertFalse(sha512_crypt.verify("wrong", hashed))


class UpgradeTests(SynchronousTestCase):
    def test_upgraded_hash(self) -> None:
        """sha256_crypt hashes, and sha512_crypt with fewer rounds than configured, get a fresh
        hash; current ones (and other accepted schemes) do not."""
        context = passwords.password_context(2000)
        fresh = passwords.upgraded_hash(context, "pw", sha256_crypt.using(rounds=1000).hash("pw"))
        self.assertIsNotNone(fresh)
        assert fresh is not None
        self.assertTrue(fresh.startswith("$6$rounds=2000$"))
        self.assertTrue(passwords.verify_password(context, "pw", fresh))
        few = sha512_crypt.using(rounds=1000).hash("pw")
        self.assertIsNotNone(passwords.upgraded_hash(context, "pw", few))
        enough = sha512_crypt.using(rounds=2000).hash("pw")
        self.assertIsNone(passwords.upgraded_hash(context, "pw", enough))
        self.assertIsNone(passwords.upgraded_hash(context, "pw", bcrypt.using(rounds=4).hash("pw")))
        self.assertIsNone(passwords.upgraded_hash(passwords.password_context(), "pw", few))
