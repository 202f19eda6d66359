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
from pypicloud_tx.domain.tokens import TOKEN_USERNAME, parse_token
from pypicloud_tx.errors import TooManyAttempts, Unauthenticated
from pypicloud_tx.interfaces import IAccessBackend, IMutableAccessBackend

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
        # Tokens are throttled per address only: one shared "__token__" window would let anyone
        # lock every CI job out.  Token secrets are 256-bit: guessing them is hopeless anyway.
        user_key = f"user:{username.casefold()}" if username != TOKEN_USERNAME else None
        wait = max(
            self._by_user.blocked_for(user_key, now) if user_key else 0.0,
            self._by_address.blocked_for(address, now),
        )
        if wait > 0:
            raise TooManyAttempts(
                "Too many failed logins; wait before trying again.", retry_after=math.ceil(wait)
            )
        waiters: list[Deferred[Identity]] = []
        self._checking[fingerprint] = waiters
        if user_key:
            self._by_user.start(user_key)
        self._by_address.start(address)
        try:
            identity, expires = await self._check(username, password, address)
        except BaseException:
            failure = Failure()
            for waiter in waiters:
                waiter.errback(failure)
            raise
        else:
            until = self._clock.seconds() + self._remember
            self._verified[fingerprint] = (
                identity,
                until if expires is None else min(until, expires),
            )
            while len(self._verified) > self._max_remembered:
                self._verified.popitem(last=False)
            for waiter in waiters:
                waiter.callback(identity)
            return identity
        finally:
            del self._checking[fingerprint]
            if user_key:
                self._by_user.finish(user_key)
            self._by_address.finish(address)

    def forget(self, username: str) -> None:
        """Drop every remembered login of ``username`` (after a password change, a deletion,
        a revoked token), so that the old credentials stop working at once in this process."""
        for fingerprint, (identity, _) in list(self._verified.items()):
            if identity.username == username:
                del self._verified[fingerprint]

    def _failed(self, username: str | None, address: str, message: str) -> Unauthenticated:
        """Count a failed login (per user unless ``username`` is None, and per address)."""
        now = self._clock.seconds()
        if username is not None:
            self._by_user.record(f"user:{username.casefold()}", now)
        self._by_address.record(address, now)
        log.info(
            "failed login for {user} from {address}",
            user=username or TOKEN_USERNAME,
            address=address,
        )
        return Unauthenticated(message)

    async def _check(
        self, username: str, password: str, address: str
    ) -> tuple[Identity, float | None]:
        """The identity behind the credentials and when it stops being valid (or None)."""
        if username == TOKEN_USERNAME:
            return await self._check_token(password, address)
        if not await self._access.verify_user(username, password):
            raise self._failed(username, address, "Invalid username or password.")
        self._by_user.forget(f"user:{username.casefold()}")
        identity = Identity(
            username=username,
            groups=frozenset(await self._access.groups(username)),
            is_admin=await self._access.is_admin(username),
        )
        return identity, None

    async def _check_token(self, text: str, address: str) -> tuple[Identity, float | None]:
        """An API token (user name ``__token__``): the owner's identity narrowed to its scope."""
        parsed = parse_token(text)
        if parsed is None:
            raise self._failed(
                None,
                address,
                "The password of user __token__ must be an API token (pypitx_...).",
            )
        if not IMutableAccessBackend.providedBy(self._access):
            raise Unauthenticated(
                "This server's access backend cannot hold API tokens; log in with a password."
            )
        token = await self._access.find_token(parsed[0])
        if token is None or not token.matches(parsed[1]):
            raise self._failed(None, address, "Invalid or revoked API token.")
        expires = None if token.expires is None else token.expires.timestamp()
        if expires is not None and self._clock.seconds() >= expires:
            raise Unauthenticated(
                f"API token {token.name!r} expired at {token.expires:%Y-%m-%d %H:%M} UTC; "
                "create a new one."
            )
        if await self._access.user_data(token.username) is None:
            raise self._failed(None, address, "Invalid or revoked API token.")
        identity = Identity(
            username=token.username,
            groups=frozenset(await self._access.groups(token.username)),
            is_admin=await self._access.is_admin(token.username),
            scope=token.scope,
        )
        return identity, expires


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
