"""Browser sessions: who is logged in to the web interface, valid on every process.

A session is a random 256-bit id.  The browser keeps it in a cookie signed with the session
key (``session.validate_key``/``session.encrypt_key``); the server keeps a record of it in an
:class:`ISessionStore` shared by every process of the deployment: a SQL table
(``ppc_sessions``) on ``session.url``, else on the access database (``pypi.auth = sql``), else
on the cache database (``pypi.db = sql``); only a deployment with none of these keeps sessions
in the memory of its one process.  The store holds a SHA-256 of the id, never the id itself, so
reading the table (a backup, say) does not let anyone take over a session.

Logging out deletes the record, so a copied cookie stops working at once on every process.
A record ends ``session.timeout`` seconds after its last use and ``session.max_age`` seconds
after it began, whichever comes first.

The same key also derives the CSRF tokens of the forms (bound to the session, or to a random
cookie before logging in) and signs the one-time messages shown after a form is sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.logger import Logger

from pypicloud_tx.config.model import Settings
from pypicloud_tx.domain.models import SessionRecord
from pypicloud_tx.interfaces import ISessionStore

log = Logger()

#: A session's use is written back at most this often (seconds), not on every request.
TOUCH_INTERVAL = 300


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Starting, finding and ending browser sessions; CSRF tokens; signed one-time messages.

    :param secret: the key material (``session.validate_key`` and/or ``session.encrypt_key``).
    :param timeout: seconds a session lasts unused.
    :param max_age: seconds a session lasts at most.
    :param now: seconds since the epoch (a test clock's ``seconds``).
    """

    def __init__(
        self,
        store: ISessionStore,
        secret: bytes,
        timeout: int,
        max_age: int,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.timeout = timeout
        self.max_age = max_age
        self._now = now
        self._cookie_key = hmac.new(secret, b"ppc session cookie", hashlib.sha256).digest()
        self._csrf_key = hmac.new(secret, b"ppc csrf token", hashlib.sha256).digest()
        self._message_key = hmac.new(secret, b"ppc signed message", hashlib.sha256).digest()

    # -- the session cookie ----------------------------------------------------------------

    def _mac(self, session_id: str) -> str:
        return _b64(hmac.new(self._cookie_key, session_id.encode(), hashlib.sha256).digest())

    @staticmethod
    def key_of(session_id: str) -> str:
        """The store key of a session id: its SHA-256, so the store never holds an id."""
        return hashlib.sha256(session_id.encode()).hexdigest()

    async def start(self, username: str) -> tuple[str, SessionRecord]:
        """A new session for ``username``: ``(cookie value, record)``."""
        session_id = secrets.token_urlsafe(32)
        now = int(self._now())
        record = SessionRecord(
            key=self.key_of(session_id),
            username=username,
            created=now,
            expires=now + self.timeout,
            ends=now + self.max_age,
        )
        await self.store.add(record)
        log.info("{user} logged in to the web interface", user=username)
        return f"{session_id}.{self._mac(session_id)}", record

    def session_id(self, cookie: str | None) -> str | None:
        """The session id in a cookie value whose signature is right, else ``None``."""
        if not cookie or cookie.count(".") != 1:
            return None
        session_id, mac = cookie.split(".")
        if len(session_id) != 43 or not hmac.compare_digest(mac, self._mac(session_id)):
            return None
        return session_id

    async def find(self, cookie: str | None) -> SessionRecord | None:
        """The live session behind a cookie value, its idle deadline moved; ``None`` when the
        cookie is forged or its session has ended (an ended record is deleted)."""
        session_id = self.session_id(cookie)
        if session_id is None:
            return None
        key = self.key_of(session_id)
        record = await self.store.get(key)
        if record is None:
            return None
        now = self._now()
        if not record.alive(now):
            await self.store.remove(key)
            return None
        wanted = int(now) + self.timeout
        if wanted - record.expires >= min(TOUCH_INTERVAL, self.timeout // 10):
            await self.store.touch(key, wanted)
            record = attrs.evolve(record, expires=wanted)
        return record

    def seconds_left(self, record: SessionRecord) -> int:
        """Seconds until ``record`` ends at the latest (the cookie's ``Max-Age``)."""
        return max(0, int(record.ends - self._now()))

    async def end(self, cookie: str | None) -> None:
        """Log out: the session behind ``cookie`` stops working everywhere."""
        session_id = self.session_id(cookie)
        if session_id is not None:
            await self.store.remove(self.key_of(session_id))

    async def end_user(self, username: str, keep: str | None = None) -> int:
        """End every session of ``username`` but ``keep`` (a store key); how many ended."""
        count = await self.store.remove_user(username, keep)
        if count:
            log.info("ended {count} web sessions of {user}", count=count, user=username)
        return count

    # -- CSRF ------------------------------------------------------------------------------

    def csrf_token(self, seed: str) -> str:
        """The CSRF token of forms shown to the holder of ``seed`` (a session id, or the
        random pre-login cookie)."""
        return _b64(hmac.new(self._csrf_key, seed.encode(), hashlib.sha256).digest())

    def csrf_ok(self, seed: str | None, token: str | None) -> bool:
        if not seed or not token:
            return False
        return hmac.compare_digest(token, self.csrf_token(seed))

    # -- signed messages (shown once after a form was sent) ---------------------------------

    def sign(self, data: Any) -> str:
        """``data`` (JSON) as a signed, URL- and cookie-safe text; it is not encrypted."""
        body = _b64(json.dumps(data, separators=(",", ":")).encode())
        mac = _b64(hmac.new(self._message_key, body.encode(), hashlib.sha256).digest())
        return f"{body}.{mac}"

    def unsign(self, text: str | None) -> Any:
        """What :meth:`sign` signed, or ``None`` for a missing or forged text."""
        if not text or text.count(".") != 1:
            return None
        body, mac = text.split(".")
        expected = _b64(hmac.new(self._message_key, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(mac, expected):
            return None
        try:
            return json.loads(_unb64(body))
        except ValueError:
            return None


def session_secret(settings: Settings) -> bytes:
    """The key material from ``session.validate_key`` and ``session.encrypt_key``; a random
    one (with a warning) when neither is set."""
    validate, encrypt = settings.session_validate_key, settings.session_encrypt_key
    if validate or encrypt:
        return f"{validate or ''}\x00{encrypt or ''}".encode()
    log.warn(
        "session.validate_key is not set: browser sessions are signed with a random key, so "
        "they end when this process restarts and other processes do not accept them; set "
        "session.validate_key to a long random secret"
    )
    return os.urandom(32)
