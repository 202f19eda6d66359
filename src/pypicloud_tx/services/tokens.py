"""Creating, listing and revoking API tokens, with the rules of who may do what."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

from twisted.logger import Logger

from pypicloud_tx.domain.models import Identity
from pypicloud_tx.domain.tokens import ApiToken, make_scope, new_token
from pypicloud_tx.errors import Forbidden, InvalidUpload, NotFound, ReadOnly, Unauthenticated
from pypicloud_tx.interfaces import IAccessBackend, IMutableAccessBackend
from pypicloud_tx.services.auth import Authenticator

log = Logger()

#: The longest lifetime a token may be given, in days (ten years).
MAX_DAYS = 3650


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Tokens:
    """API tokens for the caller, or (for admins) for anyone.

    Tokens are managed only by a caller who logged in with a password: a token can never
    create, list or revoke tokens, so a leaked one cannot be used to mint more.
    """

    def __init__(
        self,
        access: IAccessBackend,
        auth: Authenticator,
        now: Callable[[], dt.datetime] = _now,
    ) -> None:
        self._access = access
        self._auth = auth
        self._now = now

    def _backend(self) -> IMutableAccessBackend:
        if not IMutableAccessBackend.providedBy(self._access):
            raise ReadOnly(
                "This server's access backend cannot store API tokens: use a mutable one "
                "(pypi.auth = sql or aws_secrets_manager)."
            )
        return self._access

    @staticmethod
    def _check_caller(caller: Identity, owner: str) -> None:
        if not caller.authenticated:
            raise Unauthenticated("Log in with your password to manage API tokens.")
        if caller.scope is not None:
            raise Forbidden("API tokens cannot manage API tokens; log in with your password.")
        if owner != caller.username and not caller.is_admin:
            raise Forbidden(f"User {caller.username} may not manage the tokens of {owner}.")

    async def create(
        self,
        caller: Identity,
        owner: str,
        name: str,
        packages: Iterable[str],
        permissions: Iterable[str],
        days: int | None = None,
    ) -> tuple[str, ApiToken]:
        """A new token for ``owner``: ``(its text, shown only now; its record)``.

        :param days: lifetime in days (None: until revoked).
        :raises InvalidUpload: for a bad name, permission, package list or lifetime.
        :raises NotFound: if ``owner`` is not an active user.
        """
        self._check_caller(caller, owner)
        backend = self._backend()
        if days is not None and not 1 <= days <= MAX_DAYS:
            raise InvalidUpload(f"expires_days must be between 1 and {MAX_DAYS}.")
        created = self._now()
        expires = None if days is None else created + dt.timedelta(days=days)
        try:
            text, token = new_token(
                owner, name, make_scope(packages, permissions), created, expires
            )
        except ValueError as e:
            raise InvalidUpload(f"Cannot create the token: {e}.") from None
        await backend.save_token(token)
        log.info(
            "{caller} created API token {id} ({name}) for {owner}",
            caller=caller.username,
            id=token.id,
            name=token.name,
            owner=owner,
        )
        return text, token

    async def list(self, caller: Identity, owner: str) -> list[ApiToken]:
        """``owner``'s tokens, oldest first."""
        self._check_caller(caller, owner)
        return await self._backend().tokens(owner)

    async def revoke(self, caller: Identity, token_id: str) -> ApiToken:
        """Delete a token of the caller's (any token, for an admin).

        :raises NotFound: when there is no such token the caller may see.
        """
        if not caller.authenticated or caller.scope is not None:
            self._check_caller(caller, "")
        backend = self._backend()
        token = await backend.find_token(token_id)
        if token is None or (token.username != caller.username and not caller.is_admin):
            raise NotFound(f"There is no API token {token_id!r} of yours.")
        await backend.delete_token(token_id)
        # Remembered logins would keep the token working here for up to a minute.
        self._auth.forget(token.username)
        log.info(
            "{caller} revoked API token {id} of {owner}",
            caller=caller.username,
            id=token_id,
            owner=token.username,
        )
        return token
