"""Password hashing rules: which hash formats we accept and which one we write."""

from __future__ import annotations

import hmac
import warnings
from collections.abc import Callable

from passlib.context import CryptContext

try:  # glibc's crypt(3): C code that releases the GIL; the stdlib drops it in Python 3.13.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt as _crypt_module

    _crypt: Callable[[str, str], str | None] | None = _crypt_module.crypt
except ImportError:  # pragma: no cover - Python 3.13+
    _crypt = None

#: What ``gen-password`` writes: sha512_crypt, as pypicloud's ``ppc-gen-password`` does.
DEFAULT_SCHEME = "sha512_crypt"
#: Everything pypicloud ever wrote, plus the modern formats an operator might paste in.
SCHEMES = ["sha512_crypt", "sha256_crypt", "bcrypt", "argon2", "pbkdf2_sha512", "pbkdf2_sha256"]
#: Accepted for logins, but replaced by a fresh DEFAULT_SCHEME hash at the next login.
DEPRECATED = ["sha256_crypt"]
#: The rounds sha512_crypt accepts; passlib would silently clamp anything outside.
MIN_ROUNDS = 1000
MAX_ROUNDS = 999_999_999
#: Verified when the user is unknown, so that the answer takes as long as for a real user
#: with a hash as ``gen-password`` writes it (the secret is irrelevant).
DUMMY_HASH = (
    "$6$rounds=656000$dummydummydummy0$qxBVkV2S/8ahelzmQwtnOCmjJEhk2y69rasGATBnQCorswj4Xl..6yL"
    "qqMvqJlzL0MdxQkjvNX6G9dlPVzPaI."
)


#: Stored for a user imported without a password hash (a remote or LDAP backend's export):
#: the user exists, keeps their groups and permissions, and cannot log in until an admin sets a
#: password.
UNUSABLE_HASH = "!"


def imported_hash(value: object) -> str:
    """The hash to store for an export's ``password`` entry (:data:`UNUSABLE_HASH` for none)."""
    return UNUSABLE_HASH if value is None or value == "" else str(value)


def check_rounds(rounds: int) -> int:
    """``rounds`` if sha512_crypt accepts it.

    :raises ValueError: naming the accepted range.
    """
    if not MIN_ROUNDS <= rounds <= MAX_ROUNDS:
        raise ValueError(f"{rounds} rounds is out of range ({MIN_ROUNDS} to {MAX_ROUNDS})")
    return rounds


def password_context(rounds: int | None = None) -> CryptContext:
    """A passlib context that verifies every accepted format and hashes with the default one.

    With ``rounds``, stored hashes of the default scheme with fewer rounds count as outdated
    (see :func:`upgraded_hash`), as do the :data:`DEPRECATED` schemes.

    :raises ValueError: when ``rounds`` is out of range.
    """
    settings: dict[str, object] = {
        "schemes": SCHEMES,
        "default": DEFAULT_SCHEME,
        "deprecated": DEPRECATED,
    }
    if rounds is not None:
        settings[f"{DEFAULT_SCHEME}__default_rounds"] = check_rounds(rounds)
        settings[f"{DEFAULT_SCHEME}__min_rounds"] = rounds
    return CryptContext(**settings)


def upgraded_hash(context: CryptContext, password: str, hashed: str) -> str | None:
    """After ``password`` verified against ``hashed``: a fresh hash to store when ``hashed``
    is outdated (a deprecated scheme, or fewer rounds than configured), else ``None``."""
    try:
        outdated = context.needs_update(hashed)
    except (ValueError, TypeError):
        return None
    return hash_with(context, password) if outdated else None


def hash_password(password: str, rounds: int | None = None) -> str:
    """The hash of ``password`` in :data:`DEFAULT_SCHEME`, for a ``user.<name> =`` line."""
    return hash_with(password_context(rounds), password)


def hash_with(context: CryptContext, password: str) -> str:
    """``password`` hashed by ``context``'s default scheme: with the C library's crypt(3)
    where Python still offers it (libpass's sha512_crypt is pure Python, slower and holding
    the GIL), else with passlib.  Both write the same ``$6$rounds=N$salt$...`` format."""
    if _crypt is not None and "\x00" not in password:
        config = context.genconfig()
        settings = config.rstrip(".").rstrip("$")
        try:
            computed = _crypt(password, settings)
        except (ValueError, OSError):
            computed = None
        if computed is not None and computed.startswith(settings + "$"):
            return computed
    return str(context.hash(password))


def hash_problem(context: CryptContext, hashed: str) -> str | None:
    """What is wrong with ``hashed`` as a stored password hash, or ``None`` when it is usable."""
    scheme = context.identify(hashed, required=False)
    if scheme is None:
        return "not a password hash this server reads (make one with pypicloud-tx gen-password)"
    try:
        context.handler(scheme).from_string(hashed)
    except (ValueError, TypeError) as e:
        return (str(e).splitlines() or [f"malformed {scheme} hash"])[0]
    return None


def verify_password(context: CryptContext, password: str, hashed: str | None) -> bool:
    """Whether ``password`` matches ``hashed``; with no hash, spend the same time and say no.

    sha256_crypt and sha512_crypt (what pypicloud wrote) are checked with the C library's
    ``crypt(3)`` where Python still offers it: libpass only has a pure-Python version of them,
    which is several times slower and holds the GIL (starving the reactor thread).
    """
    if hashed is None:
        _verify(context, password, DUMMY_HASH)
        return False
    return _verify(context, password, hashed)


def _verify(context: CryptContext, password: str, hashed: str) -> bool:
    if _crypt is not None and hashed.startswith(("$5$", "$6$")) and "\x00" not in password:
        try:
            computed = _crypt(password, hashed)
        except (ValueError, OSError):
            computed = None
        if computed is not None:
            if hmac.compare_digest(computed.encode(), hashed.encode()):
                return True
            if computed.rpartition("$")[0] == hashed.rpartition("$")[0]:
                return False  # same salt and rounds, different checksum: a wrong password
        # crypt(3) read the settings differently (or refused them): let passlib decide.
    try:
        return bool(context.verify(password, hashed))
    except (ValueError, TypeError):
        # An unreadable hash in the config: the user cannot log in, the server keeps going.
        return False
