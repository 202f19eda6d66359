"""ConfigAccessBackend: the manual's sample config, read through the loader."""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pypicloud_tx.backends.access.config import ConfigAccessBackend
from pypicloud_tx.config.loader import parse_settings
from pypicloud_tx.interfaces import IAccessBackend
from pypicloud_tx.runtime import Runtime
from tests.config import manual

from .conformance import IAccessConformance

R = frozenset({"read"})
RW = frozenset({"read", "write"})


class ConfigAccessBackendTests(SynchronousTestCase):
    def setUp(self) -> None:
        settings = parse_settings(manual.raw_options({"auth.admins": "stevearc"}))
        self.backend = ConfigAccessBackend.from_config(
            settings.access.options, Runtime.synchronous(settings=settings)
        )

    def result(self, d):  # type: ignore[no-untyped-def]
        return self.successResultOf(d)

    def test_interface(self) -> None:
        """It provides IAccessBackend."""
        self.assertTrue(verifyObject(IAccessBackend, self.backend))

    def test_verify_user(self) -> None:
        """The manual's passwords verify; wrong ones and unknown users do not."""
        for user, password in manual.PASSWORDS.items():
            self.assertTrue(self.result(self.backend.verify_user(user, password)), user)
        self.assertFalse(self.result(self.backend.verify_user("dsa", "gunface")))
        self.assertFalse(self.result(self.backend.verify_user("nobody", "gunface")))

    def test_groups(self) -> None:
        """Every group, or the groups of one user (sorted); none for a stranger."""
        self.assertEqual(self.result(self.backend.groups()), ["brotatos", "sharkfest"])
        self.assertEqual(self.result(self.backend.groups("dsa")), ["brotatos", "sharkfest"])
        self.assertEqual(self.result(self.backend.groups("stevearc")), ["sharkfest"])
        self.assertEqual(self.result(self.backend.groups("nobody")), [])

    def test_group_members(self) -> None:
        """Members in the config's order; an unknown group has none."""
        self.assertEqual(self.result(self.backend.group_members("sharkfest")), ["stevearc", "dsa"])
        self.assertEqual(self.result(self.backend.group_members("nope")), [])

    def test_is_admin(self) -> None:
        """auth.admins lists the admins."""
        self.assertTrue(self.result(self.backend.is_admin("stevearc")))
        self.assertFalse(self.result(self.backend.is_admin("dsa")))

    def test_package_acls(self) -> None:
        """Canonical package names, principals with prefixes, built-in groups bare."""
        self.assertEqual(
            dict(self.result(self.backend.package_acls())),
            {
                "django-unchained": {"user:stevearc": RW, "group:sharkfest": RW},
                "polite-requests": {"user:dsa": RW, "authenticated": R, "group:brotatos": RW},
                "pyramid-head": {"group:brotatos": RW, "everyone": R},
            },
        )

    def test_user_and_group_permissions(self) -> None:
        """Per package, by user and by group (built-in groups by their names); the package
        name may be given as written in the config."""
        self.assertEqual(
            self.result(self.backend.user_permissions("django_unchained")), {"stevearc": RW}
        )
        self.assertEqual(
            self.result(self.backend.group_permissions("polite-requests")),
            {"authenticated": R, "brotatos": RW},
        )
        self.assertEqual(self.result(self.backend.user_permissions("pyramid-head")), {})
        self.assertEqual(self.result(self.backend.group_permissions("unknown")), {})

    def test_user_data(self) -> None:
        """One user (with groups) or all users sorted; None for an unknown one."""
        self.assertEqual(
            self.result(self.backend.user_data("dsa")),
            {"username": "dsa", "admin": False, "groups": ["brotatos", "sharkfest"]},
        )
        self.assertEqual(
            [u["username"] for u in self.result(self.backend.user_data())],
            ["donlan", "dsa", "stevearc"],
        )
        self.assertIsNone(self.result(self.backend.user_data("nobody")))

    def test_health(self) -> None:
        """Always healthy: there is nothing to reach."""
        self.assertEqual(self.result(self.backend.check_health()), (True, ""))

    def test_dump(self) -> None:
        """pypicloud's export format: allow_register, version, users with hashes and admin
        flag, groups with members, package permissions by user and by group, as JSON."""
        data = self.result(self.backend.dump())
        self.assertEqual(json.loads(json.dumps(data)), data)
        self.assertIs(data["allow_register"], False)
        self.assertIsInstance(data["version"], str)
        self.assertEqual(
            data["users"],
            [
                {"username": "donlan", "password": manual.HASHES["donlan"], "admin": False},
                {"username": "dsa", "password": manual.HASHES["dsa"], "admin": False},
                {"username": "stevearc", "password": manual.HASHES["stevearc"], "admin": True},
            ],
        )
        self.assertEqual(
            data["groups"], {"brotatos": ["donlan", "dsa"], "sharkfest": ["stevearc", "dsa"]}
        )
        self.assertEqual(
            data["packages"],
            {
                "users": {
                    "django-unchained": {"stevearc": ["read", "write"]},
                    "polite-requests": {"dsa": ["read", "write"]},
                },
                "groups": {
                    "django-unchained": {"sharkfest": ["read", "write"]},
                    "polite-requests": {"authenticated": ["read"], "brotatos": ["read", "write"]},
                    "pyramid-head": {"brotatos": ["read", "write"], "everyone": ["read"]},
                },
            },
        )


def config_options(data: dict[str, Any]) -> dict[str, str]:
    """``user.*``, ``group.*``, ``package.*`` and ``auth.admins`` lines holding ``data``."""
    raw = {"pypi.storage": "memory", "pypi.db": "memory"}
    for user in data["users"]:
        raw[f"user.{user['username']}"] = user["password"]
    raw["auth.admins"] = " ".join(u["username"] for u in data["users"] if u["admin"])
    for group, members in data["groups"].items():
        raw[f"group.{group}"] = "\n".join(members)
    for kind in ("users", "groups"):
        for package, grants in data["packages"][kind].items():
            for who, perms in grants.items():
                text = "rw" if "write" in perms else "r"
                raw[f"package.{package}.{kind[:-1]}.{who}"] = text
    return raw


class ConfigAccessConformanceTests(IAccessConformance, SynchronousTestCase):
    """ConfigAccessBackend passes the shared IAccessBackend suite."""

    def make_backend(self, data: dict[str, Any]) -> ConfigAccessBackend:
        settings = parse_settings(config_options(data))
        return ConfigAccessBackend.from_config(
            settings.access.options, Runtime.synchronous(settings=settings)
        )
