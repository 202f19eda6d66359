"""Errors that cross layers.

Each error carries a message written for the person who caused it: it says what is wrong and,
where it can, what to do instead.  ``web/errors.py`` maps them to HTTP statuses in one table.
"""

from __future__ import annotations


class PPCError(Exception):
    """Base of every error this project raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(PPCError):
    """The project, file or user does not exist (or the caller may not know it does)."""


class Unauthenticated(PPCError):
    """The caller must identify themselves (or their credentials are wrong)."""


class Forbidden(PPCError):
    """The caller is known but lacks the right for this action."""


class Conflict(PPCError):
    """The action collides with what is stored (a duplicate upload)."""


class ReadOnly(PPCError):
    """The access backend cannot change users, groups or permissions (config file, LDAP,
    remote): the message says where they are managed instead."""


class InvalidUpload(PPCError):
    """An upload or form is malformed; nothing was changed."""


class TooLarge(PPCError):
    """A request body exceeds ``pypi.max_upload_size``."""


class TooManyAttempts(PPCError):
    """Too many failed logins; ``retry_after`` says how many seconds to wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BackendUnavailable(PPCError):
    """A storage, cache or access backend cannot be reached right now."""


class UpstreamError(BackendUnavailable):
    """The upstream index failed us: unreachable, an error status, a page we cannot read, a
    file whose hash differs (answered 502 Bad Gateway)."""


class UpstreamTimeout(UpstreamError):
    """The upstream index did not answer in time (answered 504 Gateway Timeout)."""


class ConfigError(PPCError):
    """A configuration option is missing or wrong; the message names it."""
