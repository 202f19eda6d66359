"""API tokens: credentials for CI, scoped to packages and to reading and/or uploading.

A token is sent as HTTP Basic credentials with the user name ``__token__`` (as PyPI's are), so
pip, uv and twine need no special support.  Its text is ``pypitx_<id>_<secret>``: the fixed
prefix lets secret scanners recognise a leaked token, the id finds the stored record, and only
a SHA-256 of the secret is stored.  The secret holds 256 random bits, so a fast hash is safe
(a slow password hash protects low-entropy secrets; this one is not).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from pypicloud_tx.domain.models import Scope
from pypicloud_tx.domain.names import canonical

#: The user name clients send with a token as the password.
TOKEN_USERNAME = "__token__"
PREFIX = "pypitx_"
_ID_LENGTH = 16
_TOKEN = re.compile(r"pypitx_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_PERMISSIONS = frozenset({"read", "write"})
#: Longest token name accepted.
MAX_NAME = 100


@attrs.frozen
class ApiToken:
    """One stored token: who it acts for, what it may touch, and the hash of its secret."""

    id: str
    username: str
    name: str
    secret_sha256: str
    scope: Scope
    created: dt.datetime
    expires: dt.datetime | None = None

    def expired(self, now: dt.datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is this token's (a constant-time comparison)."""
        return hmac.compare_digest(_sha256(secret), self.secret_sha256)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (the secret's hash included, never the secret)."""
        return {
            "id": self.id,
            "username": self.username,
            "name": self.name,
            "secret_sha256": self.secret_sha256,
            "packages": sorted(self.scope.packages),
            "permissions": sorted(self.scope.permissions),
            "created": self.created.isoformat(),
            "expires": None if self.expires is None else self.expires.isoformat(),
        }

    def describe(self) -> dict[str, Any]:
        """What the owner may see of a token: everything but the hash."""
        data = self.to_dict()
        del data["secret_sha256"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApiToken:
        """The token of a :meth:`to_dict` record.  :raises ValueError: for a malformed one."""
        try:
            expires = data.get("expires")
            return cls(
                id=str(data["id"]),
                username=str(data["username"]),
                name=str(data["name"]),
                secret_sha256=str(data["secret_sha256"]),
                scope=make_scope(data.get("packages", ()), data["permissions"]),
                created=_utc(dt.datetime.fromisoformat(str(data["created"]))),
                expires=None if expires is None else _utc(dt.datetime.fromisoformat(str(expires))),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed API token record: {e}") from None


def make_scope(packages: Iterable[str], permissions: Iterable[str]) -> Scope:
    """A scope from package names (any spelling; none means every package) and permissions.

    :raises ValueError: for an unknown permission or no permission at all.
    """
    perms = frozenset(permissions)
    unknown = perms - _PERMISSIONS
    if unknown:
        raise ValueError(f"unknown permission {sorted(unknown)[0]!r} (use read and/or write)")
    if not perms:
        raise ValueError("a token needs at least one permission (read and/or write)")
    return Scope(packages=frozenset(canonical(p) for p in packages), permissions=perms)


def new_token(
    username: str,
    name: str,
    scope: Scope,
    created: dt.datetime,
    expires: dt.datetime | None = None,
) -> tuple[str, ApiToken]:
    """A fresh token: ``(the text to show once, the record to store)``.

    :raises ValueError: for an empty or over-long name, or an expiry not after ``created``.
    """
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise ValueError(f"a token needs a name of 1 to {MAX_NAME} characters")
    if expires is not None and expires <= created:
        raise ValueError("a token's expiry must be in the future")
    token_id = secrets.token_hex(_ID_LENGTH // 2)
    secret = secrets.token_urlsafe(32)
    record = ApiToken(
        id=token_id,
        username=username,
        name=name,
        secret_sha256=_sha256(secret),
        scope=scope,
        created=created,
        expires=expires,
    )
    return f"{PREFIX}{token_id}_{secret}", record


def parse_token(text: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a token's text, or ``None`` when it is not a token."""
    found = _TOKEN.fullmatch(text.strip())
    return None if found is None else (found.group(1), found.group(2))


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _utc(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
