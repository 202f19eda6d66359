"""Users, groups and package permissions written in the configuration file (the default)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from pypicloud_tx import __version__
from pypicloud_tx.backends._threads import RunBlocking
from pypicloud_tx.config.model import AccessLists, Settings
from pypicloud_tx.config.options import as_int, as_list, option
from pypicloud_tx.domain.names import canonical
from pypicloud_tx.domain.passwords import (
    check_rounds,
    hash_problem,
    password_context,
    verify_password,
)
from pypicloud_tx.errors import ConfigError
from pypicloud_tx.interfaces import IAccessBackend
from pypicloud_tx.runtime import Runtime


def _rounds(text: str) -> int:
    return check_rounds(as_int(text))


@implementer(IAccessBackend)
class ConfigAccessBackend:
    """Read-only access rules from ``user.*``, ``group.*``, ``package.*`` and ``auth.admins``."""

    @attrs.frozen
    class Options:
        admins: tuple[str, ...] = option(as_list, default=(), doc="Users with admin rights")
        rounds: int | None = option(_rounds, default=None, doc="Hash rounds for new passwords")

    def __init__(
        self,
        lists: AccessLists,
        admins: tuple[str, ...],
        run_blocking: RunBlocking,
        rounds: int | None = None,
    ) -> None:
        self._lists = lists
        self._admins = frozenset(admins)
        self._run_blocking = run_blocking
        self._context = password_context(rounds)
        members: dict[str, set[str]] = {}
        for group, users in lists.groups.items():
            for user in users:
                members.setdefault(user, set()).add(group)
        self._user_groups = {u: sorted(g) for u, g in members.items()}

    @classmethod
    def from_config(cls, options: Options, runtime: Runtime) -> ConfigAccessBackend:
        return cls(
            runtime.settings.access_lists,
            options.admins,
            runtime.threads("passwords", 4),
            options.rounds,
        )

    @classmethod
    def check_settings(cls, settings: Settings) -> None:
        """Refuse ``user.<name>`` lines whose hash no login could ever match.

        :raises ConfigError: naming the first such line.
        """
        context = password_context()
        for username, hashed in sorted(settings.access_lists.users.items()):
            problem = hash_problem(context, hashed)
            if problem is not None:
                raise ConfigError(f"user.{username}: {problem}")

    def verify_user(self, username: str, password: str) -> Deferred[bool]:
        hashed = self._lists.users.get(username)
        return self._run_blocking(verify_password, self._context, password, hashed)

    def groups(self, username: str | None = None) -> Deferred[list[str]]:
        if username is None:
            return succeed(sorted(self._lists.groups))
        return succeed(list(self._user_groups.get(username, [])))

    def group_members(self, group: str) -> Deferred[list[str]]:
        return succeed(list(self._lists.groups.get(group, ())))

    def is_admin(self, username: str) -> Deferred[bool]:
        return succeed(username in self._admins)

    def package_acls(self) -> Deferred[Mapping[str, Mapping[str, frozenset[str]]]]:
        return succeed(self._lists.packages)

    def user_permissions(self, package: str) -> Deferred[dict[str, frozenset[str]]]:
        acl = self._lists.packages.get(canonical(package), {})
        return succeed({p[5:]: v for p, v in acl.items() if p.startswith("user:")})

    def group_permissions(self, package: str) -> Deferred[dict[str, frozenset[str]]]:
        acl = self._lists.packages.get(canonical(package), {})
        return succeed(
            {
                (p[6:] if p.startswith("group:") else p): v
                for p, v in acl.items()
                if not p.startswith("user:")
            }
        )

    def _user(self, username: str) -> dict[str, Any]:
        return {
            "username": username,
            "admin": username in self._admins,
            "groups": list(self._user_groups.get(username, [])),
        }

    def user_data(self, username: str | None = None) -> Deferred[object]:
        if username is None:
            return succeed([self._user(u) for u in sorted(self._lists.users)])
        if username not in self._lists.users:
            return succeed(None)
        return succeed(self._user(username))

    def check_health(self) -> Deferred[tuple[bool, str]]:
        return succeed((True, ""))

    def dump(self) -> Deferred[dict[str, object]]:
        """pypicloud's export format: users with their hashes, groups, package permissions."""
        users = [
            {"username": u, "password": h, "admin": u in self._admins}
            for u, h in sorted(self._lists.users.items())
        ]
        by_user: dict[str, dict[str, list[str]]] = {}
        by_group: dict[str, dict[str, list[str]]] = {}
        for package, acl in sorted(self._lists.packages.items()):
            for principal, perms in acl.items():
                kind, _, name = principal.partition(":")
                target = by_user if kind == "user" else by_group
                target.setdefault(package, {})[name or kind] = sorted(perms)
        return succeed(
            {
                # pypicloud's import reads allow_register; a config file never lets anyone register.
                "allow_register": False,
                "version": __version__,
                "users": users,
                "groups": {g: list(m) for g, m in sorted(self._lists.groups.items())},
                "packages": {"users": by_user, "groups": by_group},
            }
        )
