"""Who is calling: HTTP Basic credentials -> :class:`Identity`.

pip and uv send credentials with every request, and a password check costs 150-300 ms of CPU on
purpose.  So a successful check is remembered for a short while under a keyed hash of the
credentials (never the password itself), and repeated failures are throttled per user and per
address before any hashing happens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
from collections import Counter, OrderedDict

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pypicloud_tx.domain.models import ANONYMOUS, Identity
from pypicloud_tx.errors import TooManyAttempts, Unauthenticated
from pypicloud_tx.interfaces import IAccessBackend

log = Logger()


class _Window:
    """Failure counts per key within a sliding time window, bounded in size."""

    def __init__(self, limit: int, seconds: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.seconds = seconds
        self._max_keys = max_keys
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._pending: Counter[str] = Counter()

    def blocked_for(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again (0 when it may now).

        Checks still running count against the limit, so that many simultaneous guesses
        cannot all slip through before the first of them has failed.
        """
        times = [t for t in self._failures.get(key, ()) if now - t < self.seconds]
        if len(times) >= self.limit:
            return self.seconds - (now - times[-self.limit])
        if len(times) + self._pending[key] >= self.limit:
            return 1.0
        return 0.0

    def start(self, key: str) -> None:
        """A check for ``key`` has begun; call :meth:`finish` when it ends."""
        self._pending[key] += 1

    def finish(self, key: str) -> None:
        self._pending[key] -= 1
        if self._pending[key] <= 0:
            del self._pending[key]

    def record(self, key: str, now: float) -> None:
        times = [t for t in self._failures.pop(key, []) if now - t < self.seconds]
        times.append(now)
        self._failures[key] = times[-self.limit :]
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)


class Authenticator:
    """Turns an ``Authorization`` header into an :class:`Identity`.

    :param remember_seconds: how long a successful check is remembered.
    :param max_failures: failed logins per user within ``failure_window`` seconds before
        further attempts are refused with :class:`TooManyAttempts` (five times as many per
        address, since many users may share one address).
    """

    def __init__(
        self,
        access: IAccessBackend,
        clock: IReactorTime,
        remember_seconds: float = 60.0,
        max_failures: int = 10,
        failure_window: float = 60.0,
        max_remembered: int = 10_000,
    ) -> None:
        self._access = access
        self._clock = clock
        self._remember = remember_seconds
        self._max_remembered = max_remembered
        self._key = os.urandom(32)
        self._verified: OrderedDict[bytes, tuple[Identity, float]] = OrderedDict()
        self._checking: dict[bytes, list[Deferred[Identity]]] = {}
        self._by_user = _Window(max_failures, failure_window)
        self._by_address = _Window(max_failures * 5, failure_window)

    def _fingerprint(self, username: str, password: str) -> bytes:
        """A keyed hash of the credentials; the length prefix keeps ``a`` + ``:b`` apart
        from ``a:`` + ``b``."""
        user = username.encode("utf-8", "surrogatepass")
        message = str(len(user)).encode() + b":" + user + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    async def identify(self, authorization: bytes | None, address: str) -> Identity:
        """The caller's identity; anonymous without credentials.

        Simultaneous requests with the same credentials share one password check.

        :raises Unauthenticated: for wrong credentials.
        :raises TooManyAttempts: after too many recent failures for this user or address.
        """
        credentials = parse_basic(authorization)
        if credentials is None:
            return ANONYMOUS
        username, password = credentials
        fingerprint = self._fingerprint(username, password)
        now = self._clock.seconds()
        remembered = self._verified.get(fingerprint)
        if remembered is not None:
            if remembered[1] > now:
                return remembered[0]
            del self._verified[fingerprint]
        waiting = self._checking.get(fingerprint)
        if waiting is not None:
            result: Deferred[Identity] = Deferred()
            waiting.append(result)
            return await result
        wait = max(
            self._by_user.blocked_for(username, now), self._by_address.blocked_for(address, now)
        )
        if wait > 0:
            raise TooManyAttempts(
                "Too many failed logins; wait before trying again.", retry_after=math.ceil(wait)
            )
        waiters: list[Deferred[Identity]] = []
        self._checking[fingerprint] = waiters
        self._by_user.start(username)
        self._by_address.start(address)
        try:
            identity = await self._check(username, password, address)
        except BaseException:
            failure = Failure()
            for waiter in waiters:
                waiter.errback(failure)
            raise
        else:
            self._verified[fingerprint] = (identity, self._clock.seconds() + self._remember)
            while len(self._verified) > self._max_remembered:
                self._verified.popitem(last=False)
            for waiter in waiters:
                waiter.callback(identity)
            return identity
        finally:
            del self._checking[fingerprint]
            self._by_user.finish(username)
            self._by_address.finish(address)

    async def _check(self, username: str, password: str, address: str) -> Identity:
        if not await self._access.verify_user(username, password):
            now = self._clock.seconds()
            self._by_user.record(username, now)
            self._by_address.record(address, now)
            log.info("failed login for {user} from {address}", user=username, address=address)
            raise Unauthenticated("Invalid username or password.")
        self._by_user.forget(username)
        return Identity(
            username=username,
            groups=frozenset(await self._access.groups(username)),
            is_admin=await self._access.is_admin(username),
        )


def parse_basic(header: bytes | None) -> tuple[str, str] | None:
    """``(username, password)`` from a Basic ``Authorization`` header, or ``None``.

    :raises Unauthenticated: for a malformed Basic header (any other scheme is ignored).
    """
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated("Malformed Basic credentials.") from None
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise Unauthenticated("Malformed Basic credentials: expected user:password.")
    return username, password
