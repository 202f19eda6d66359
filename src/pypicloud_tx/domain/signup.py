"""Sign-up tokens: an admin's invitation for one user name to register, even while
registration is closed.

The format is pypicloud's, so tokens it issued keep working with the same
``auth.signing_key``: ``<username>:<issued>:<signature>``, where ``issued`` is the issue time
in whole seconds since the epoch and ``signature`` the hex HMAC-SHA256 of
``<username>:<issued>`` under the signing key (UTF-8).  A token is valid for ``lifetime``
seconds after it was issued (``auth.token_expire``, one week by default), so changing the key
or the lifetime applies to tokens issued before.  Nothing is stored: a token can be used until
it expires (registering the same name twice fails because the user exists).
"""

from __future__ import annotations

import hashlib
import hmac

#: ``auth.token_expire``'s default: one week, in seconds.
ONE_WEEK = 7 * 24 * 60 * 60


def issue(username: str, key: str, now: float) -> str:
    """A token letting ``username`` register, issued at ``now`` (seconds since the epoch)."""
    message = f"{username}:{int(now)}"
    return f"{message}:{_sign(key, message)}"


def verify(token: str, key: str, now: float, lifetime: int = ONE_WEEK) -> str | None:
    """The user name ``token`` was issued for, or ``None`` when it is malformed, signed with
    another key, or older than ``lifetime`` seconds at ``now``.

    The signature is compared in constant time.
    """
    message, sep, signature = token.strip().rpartition(":")
    username, sep2, issued_text = message.rpartition(":")
    if not (sep and sep2 and username and issued_text.isascii() and issued_text.isdigit()):
        return None
    if not hmac.compare_digest(signature.encode("utf-8"), _sign(key, message).encode("utf-8")):
        return None
    if int(issued_text) + lifetime < now:
        return None
    return username


def _sign(key: str, message: str) -> str:
    return hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()
