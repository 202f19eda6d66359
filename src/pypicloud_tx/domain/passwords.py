"""Password hashing rules: which hash formats we accept and which one we write."""

from __future__ import annotations

from passlib.context import CryptContext

#: What ``gen-password`` writes: sha512_crypt, as pypicloud's ``ppc-gen-password`` does.
DEFAULT_SCHEME = "sha512_crypt"
#: Everything pypicloud ever wrote, plus the modern formats an operator might paste in.
SCHEMES = ["sha512_crypt", "sha256_crypt", "bcrypt", "argon2", "pbkdf2_sha512", "pbkdf2_sha256"]


def password_context(rounds: int | None = None) -> CryptContext:
    """A passlib context that verifies every accepted format and hashes with the default one."""
    settings: dict[str, object] = {"schemes": SCHEMES, "default": DEFAULT_SCHEME}
    if rounds is not None:
        settings[f"{DEFAULT_SCHEME}__default_rounds"] = rounds
    return CryptContext(**settings)  # type: ignore[arg-type]


def hash_password(password: str, rounds: int | None = None) -> str:
    return password_context(rounds).hash(password)


def verify_password(context: CryptContext, password: str, hashed: str | None) -> bool:
    """Whether ``password`` matches ``hashed``; with no hash, spend the same time and say no."""
    if hashed is None:
        context.dummy_verify()
        return False
    try:
        return bool(context.verify(password, hashed))
    except (ValueError, TypeError):
        # An unreadable hash in the config: the user cannot log in, the server keeps going.
        return False
