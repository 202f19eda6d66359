"""The Authenticator: Basic credentials, remembering successes, throttling failures."""

from __future__ import annotations

import base64

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.domain.models import ANONYMOUS, Identity
from pypicloud_tx.errors import TooManyAttempts, Unauthenticated
from pypicloud_tx.services.auth import Authenticator, parse_basic

PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}


class CountingAccess:
    """An access backend that counts password checks; ``hold`` makes checks wait."""

    def __init__(self) -> None:
        self.checks: list[tuple[str, str]] = []
        self.hold = False
        self.waiting: list[tuple[Deferred[bool], bool]] = []

    def verify_user(self, username: str, password: str) -> Deferred[bool]:
        self.checks.append((username, password))
        ok = PASSWORDS.get(username) == password
        if self.hold:
            d: Deferred[bool] = Deferred()
            self.waiting.append((d, ok))
            return d
        return succeed(ok)

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d, ok in waiting:
            d.callback(ok)

    def groups(self, username: str | None = None) -> Deferred[list[str]]:
        return succeed(["devs"] if username == "bob" else [])

    def is_admin(self, username: str) -> Deferred[bool]:
        return succeed(username == "alice")


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class AuthenticatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.access = CountingAccess()
        self.auth = Authenticator(
            self.access, self.clock, remember_seconds=60, max_failures=3, failure_window=60
        )

    def identify(self, header: bytes | None, address: str = "10.0.0.1") -> Identity:
        return self.successResultOf(Deferred.fromCoroutine(self.auth.identify(header, address)))

    def failure(self, header: bytes | None, address: str = "10.0.0.1") -> Exception:
        d = Deferred.fromCoroutine(self.auth.identify(header, address))
        return self.failureResultOf(d).value

    def test_no_header(self) -> None:
        """No Authorization header (or another scheme): anonymous, without any check."""
        self.assertIs(self.identify(None), ANONYMOUS)
        self.assertIs(self.identify(b""), ANONYMOUS)
        self.assertIs(self.identify(b"Bearer abc"), ANONYMOUS)
        self.assertEqual(self.access.checks, [])

    def test_good_credentials(self) -> None:
        """Right credentials: the user's identity with groups and admin flag."""
        self.assertEqual(
            self.identify(basic("bob", "bob-secret")),
            Identity("bob", frozenset({"devs"}), is_admin=False),
        )
        self.assertEqual(
            self.identify(basic("alice", "alice-secret")),
            Identity("alice", frozenset(), is_admin=True),
        )

    def test_case_insensitive_scheme(self) -> None:
        """The scheme name is case-insensitive (``basic``, ``BASIC``)."""
        header = basic("bob", "bob-secret").replace(b"Basic", b"bAsIc")
        self.assertEqual(self.identify(header).username, "bob")

    def test_bad_credentials(self) -> None:
        """A wrong password or an unknown user: Unauthenticated."""
        self.assertIsInstance(self.failure(basic("bob", "wrong")), Unauthenticated)
        self.assertIsInstance(self.failure(basic("nobody", "x")), Unauthenticated)

    def test_malformed(self) -> None:
        """Basic with bad base64, no colon, no user or bad UTF-8: Unauthenticated, no check."""
        for header in [
            b"Basic !!!notbase64",
            b"Basic " + base64.b64encode(b"nocolon"),
            b"Basic " + base64.b64encode(b":pw"),
            b"Basic " + base64.b64encode(b"\xff\xfe:x"),
        ]:
            self.assertIsInstance(self.failure(header), Unauthenticated, header)
        self.assertEqual(self.access.checks, [])

    def test_password_with_colon(self) -> None:
        """Only the first colon separates user and password."""
        self.assertEqual(parse_basic(basic("u", "a:b:c")), ("u", "a:b:c"))

    def test_success_remembered(self) -> None:
        """A success is remembered for the window: no second check until it expires."""
        header = basic("bob", "bob-secret")
        self.identify(header)
        self.clock.advance(59)
        self.identify(header)
        self.assertEqual(len(self.access.checks), 1)
        self.clock.advance(2)
        self.assertEqual(self.identify(header).username, "bob")
        self.assertEqual(len(self.access.checks), 2)

    def test_other_password_not_remembered(self) -> None:
        """Remembering is per credentials: another password for the same user is checked."""
        self.identify(basic("bob", "bob-secret"))
        self.assertIsInstance(self.failure(basic("bob", "bob-secret2")), Unauthenticated)
        self.assertEqual(len(self.access.checks), 2)

    def test_failures_not_remembered(self) -> None:
        """A failure is not remembered as a success: each retry is checked."""
        self.failure(basic("bob", "wrong"))
        self.failure(basic("bob", "wrong"))
        self.assertEqual(len(self.access.checks), 2)

    def test_credentials_boundary(self) -> None:
        """User ``a`` with password ``\\0b`` and user ``a\\0`` with password ``b`` are
        different credentials: remembering one never lets the other in."""
        PASSWORDS["a"] = "\x00b"
        self.addCleanup(PASSWORDS.pop, "a")
        self.assertEqual(self.identify(basic("a", "\x00b")).username, "a")
        self.assertIsInstance(self.failure(basic("a\x00", "b")), Unauthenticated)

    def test_throttle_per_user(self) -> None:
        """After max_failures failures for a user, further attempts (even right ones) are
        refused before any check, with retry_after; after the window they work again."""
        for address in ["1.1.1.1", "2.2.2.2", "3.3.3.3"]:
            self.clock.advance(1)
            self.failure(basic("bob", "wrong"), address)
        checks = len(self.access.checks)
        error = self.failure(basic("bob", "bob-secret"), "4.4.4.4")
        self.assertIsInstance(error, TooManyAttempts)
        assert isinstance(error, TooManyAttempts)
        self.assertEqual(error.retry_after, 58)  # the oldest (t=1) leaves the window at t=61
        self.assertEqual(len(self.access.checks), checks)
        self.assertEqual(self.identify(basic("alice", "alice-secret"), "4.4.4.4").username, "alice")
        self.clock.advance(error.retry_after - 1)
        self.assertIsInstance(self.failure(basic("bob", "bob-secret"), "4.4.4.4"), TooManyAttempts)
        self.clock.advance(1)
        self.assertEqual(self.identify(basic("bob", "bob-secret"), "4.4.4.4").username, "bob")

    def test_throttle_ignores_case(self) -> None:
        """Spelling a user name in other cases (which LDAP directories match as one entry)
        does not get around the per-user limit."""
        for address, name in [("1.1.1.1", "bob"), ("2.2.2.2", "BOB"), ("3.3.3.3", "Bob")]:
            self.failure(basic(name, "wrong"), address)
        self.assertIsInstance(self.failure(basic("bOb", "x"), "4.4.4.4"), TooManyAttempts)

    def test_throttle_per_address(self) -> None:
        """Failures from one address across many users are throttled too (5x the per-user
        limit), and the address recovers after the window."""
        for i in range(15):
            self.failure(basic(f"user{i}", "wrong"), "6.6.6.6")
        error = self.failure(basic("alice", "alice-secret"), "6.6.6.6")
        self.assertIsInstance(error, TooManyAttempts)
        self.assertEqual(self.identify(basic("alice", "alice-secret"), "7.7.7.7").username, "alice")
        self.clock.advance(60)
        self.assertEqual(self.identify(basic("alice", "alice-secret"), "6.6.6.6").username, "alice")

    def test_success_clears_user_failures(self) -> None:
        """A successful login forgets the user's earlier failures."""
        self.failure(basic("bob", "wrong"))
        self.failure(basic("bob", "wrong"))
        self.identify(basic("bob", "bob-secret"))
        self.failure(basic("bob", "wrong"))
        self.failure(basic("bob", "wrong"))
        self.assertIsInstance(self.failure(basic("bob", "wrong")), Unauthenticated)

    def test_concurrent_same_credentials_share_one_check(self) -> None:
        """Simultaneous requests with the same credentials (pip, uv) cause one check."""
        self.access.hold = True
        header = basic("bob", "bob-secret")
        pending = [Deferred.fromCoroutine(self.auth.identify(header, "1.1.1.1")) for _ in range(5)]
        self.assertEqual(len(self.access.checks), 1)
        self.access.release()
        for d in pending:
            self.assertEqual(self.successResultOf(d).username, "bob")

    def test_concurrent_failure_shared(self) -> None:
        """Waiters on a failing check all fail with Unauthenticated; it counts once."""
        self.access.hold = True
        header = basic("bob", "wrong")
        pending = [Deferred.fromCoroutine(self.auth.identify(header, "1.1.1.1")) for _ in range(3)]
        self.access.release()
        for d in pending:
            self.failureResultOf(d, Unauthenticated)
        self.access.hold = False
        self.assertIsInstance(self.failure(basic("bob", "wrong")), Unauthenticated)

    def test_concurrent_guesses_limited(self) -> None:
        """Many simultaneous different guesses cannot all reach the hasher: checks still
        running count against the limit."""
        self.access.hold = True
        pending = [
            Deferred.fromCoroutine(self.auth.identify(basic("bob", f"guess{i}"), "1.1.1.1"))
            for i in range(10)
        ]
        self.assertEqual(len(self.access.checks), 3)
        for d in pending[3:]:
            self.assertIsInstance(self.failureResultOf(d).value, TooManyAttempts)
        self.access.release()
        for d in pending[:3]:
            self.failureResultOf(d, Unauthenticated)

    def test_password_never_stored(self) -> None:
        """Nothing the authenticator keeps holds the password in clear (or its UTF-8)."""
        secret = "alice-secret"
        self.identify(basic("alice", secret))
        self.failure(basic("bob", "another-secret-guess"))
        kept = (
            repr(vars(self.auth))
            + repr(vars(self.auth._by_user))
            + repr(vars(self.auth._by_address))
        )
        for key in self.auth._verified:
            self.assertIsInstance(key, bytes)
            self.assertNotIn(secret.encode(), key)
            self.assertEqual(len(key), 32)
        self.assertNotIn(secret, kept)
        self.assertNotIn("another-secret-guess", kept)

    def test_remembered_bounded(self) -> None:
        """At most max_remembered successes are kept (oldest dropped first)."""
        auth = Authenticator(self.access, self.clock, max_remembered=1)
        d = Deferred.fromCoroutine(auth.identify(basic("alice", "alice-secret"), "a"))
        self.successResultOf(d)
        self.successResultOf(Deferred.fromCoroutine(auth.identify(basic("bob", "bob-secret"), "a")))
        self.successResultOf(
            Deferred.fromCoroutine(auth.identify(basic("alice", "alice-secret"), "a"))
        )
        self.assertEqual([u for u, _ in self.access.checks], ["alice", "bob", "alice"])
