"""Who may read or write which package: pypicloud's permission model as pure functions.

Principals: ``everyone`` (any caller), ``authenticated`` (any logged-in caller),
``user:<name>``, ``group:<name>``.  A package with explicit permissions (any user or group
entry) follows only those; a package without any follows ``pypi.default_read`` and
``pypi.default_write``.  Admins may do everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from pypicloud_tx.domain.models import ANONYMOUS, Identity

EVERYONE = "everyone"
AUTHENTICATED = "authenticated"
READ = "read"
WRITE = "write"

ACL = Mapping[str, frozenset[str]]


def group_principal(group: str) -> str:
    """The principal of a group name as written in the config (``everyone`` stays itself)."""
    return group if group in (EVERYONE, AUTHENTICATED) else f"group:{group}"


def principals(identity: Identity) -> frozenset[str]:
    """Every principal the caller acts as."""
    found = {EVERYONE}
    if identity.username is not None:
        found.add(AUTHENTICATED)
        found.add(f"user:{identity.username}")
        found.update(group_principal(g) for g in identity.groups)
    return frozenset(found)


@attrs.frozen
class Policy:
    """The permission rules with this server's defaults."""

    default_read: tuple[str, ...] = (AUTHENTICATED,)
    default_write: tuple[str, ...] = ()

    def effective_acl(self, acl: ACL | None) -> ACL:
        """The package's own ACL, or the defaults when it has none."""
        if acl:
            return acl
        merged: dict[str, set[str]] = {}
        for group in self.default_read:
            merged.setdefault(group_principal(group), set()).add(READ)
        for group in self.default_write:
            merged.setdefault(group_principal(group), set()).add(WRITE)
        return {p: frozenset(v) for p, v in merged.items()}

    def permissions(self, identity: Identity, acl: ACL | None, package: str = "") -> frozenset[str]:
        """The permissions ``identity`` has on ``package`` (canonical), whose explicit ``acl``
        is given (or None).

        An API token's scope narrows what its owner may do, never below what an anonymous
        caller may do (presenting credentials must not lose anything).
        """
        if identity.is_admin:
            granted = frozenset({READ, WRITE})
        else:
            found: set[str] = set()
            effective = self.effective_acl(acl)
            for principal in principals(identity):
                found.update(effective.get(principal, ()))
            granted = frozenset(found)
        if identity.scope is not None:
            anonymous = self.permissions(ANONYMOUS, acl, package)
            return identity.scope.limit(package, granted) | anonymous
        return granted

    def can(self, identity: Identity, perm: str, acl: ACL | None, package: str = "") -> bool:
        return perm in self.permissions(identity, acl, package)

    def readable(
        self, identity: Identity, names: Iterable[str], acls: Mapping[str, ACL]
    ) -> list[str]:
        """The subset of ``names`` the caller may read, in order.

        When the caller may read every name, ``names`` itself is returned (not a copy), so
        callers can recognise an unchanged listing by identity.
        """
        if identity.scope is not None:
            return [n for n in names if self.can(identity, READ, acls.get(n), n)]
        by_default = self.can(identity, READ, None)
        if identity.is_admin or (by_default and not acls):
            return names if isinstance(names, list) else list(names)
        return [
            n for n in names if (by_default if n not in acls else self.can(identity, READ, acls[n]))
        ]
