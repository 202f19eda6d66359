"""The in-memory access backend (and the JSON-document code it shares with AWS Secrets
Manager) against the shared access suites."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.backends.access.memory import MemoryAccessBackend
from pypicloud_tx.config.loader import parse_settings
from pypicloud_tx.errors import BackendUnavailable
from pypicloud_tx.runtime import Runtime

from .conformance import IMutableAccessConformance, cheap_hash, manual_data

R = frozenset({"read"})
RW = frozenset({"read", "write"})


def build(**options: Any) -> MemoryAccessBackend:
    """A backend whose new passwords get cheap hashes unless ``rounds`` says otherwise."""
    options.setdefault("rounds", 1000)
    return MemoryAccessBackend.from_config(
        MemoryAccessBackend.Options(**options), Runtime.synchronous()
    )


class MemoryConformanceTests(IMutableAccessConformance, SynchronousTestCase):
    """MemoryAccessBackend passes the shared suites."""

    def make_backend(self, data: dict[str, Any]) -> MemoryAccessBackend:
        backend = build()
        self.successResultOf(backend.load(data))
        return backend


class DocumentTests(SynchronousTestCase):
    """What the shared JSON-document code does with the document itself."""

    def test_pypicloud_document(self) -> None:
        """A document in pypicloud's format (non-canonical package names, empty permission
        lists, pending users, ``allow_registration``) is read as pypicloud meant it."""
        backend = MemoryAccessBackend(
            Runtime.synchronous().threads("passwords", 1),
            document={
                "users": {"alice": cheap_hash("a"), "bob": cheap_hash("b")},
                "groups": {"devs": ["alice"], "ops": []},
                "admins": ["alice"],
                "packages": {
                    "My_Package": {
                        "groups": {"devs": ["read", "write"], "ops": []},
                        "users": {"bob": ["read"]},
                    },
                    "my.package": {"users": {"alice": ["write"]}},
                },
                "pending_users": {"carol": cheap_hash("c")},
                "allow_registration": True,
            },
        )
        self.assertIs(self.successResultOf(backend.verify_user("alice", "a")), True)
        self.assertIs(self.successResultOf(backend.is_admin("alice")), True)
        self.assertEqual(self.successResultOf(backend.pending_users()), ["carol"])
        self.assertIs(self.successResultOf(backend.allow_register()), True)
        self.assertEqual(
            {k: dict(v) for k, v in self.successResultOf(backend.package_acls()).items()},
            {"my-package": {"group:devs": RW, "user:bob": R, "user:alice": frozenset({"write"})}},
        )

    def test_written_document(self) -> None:
        """Changes are written in pypicloud's layout: canonical package names, users and
        pending users as name -> hash, pypicloud's ``allow_registration`` key, entries with
        no permission left removed, and keys of other programs kept."""
        backend = MemoryAccessBackend(
            Runtime.synchronous().threads("passwords", 1),
            rounds=1000,
            document={"users": {"alice": cheap_hash("a")}, "x-other-tool": {"keep": [1]}},
        )
        self.successResultOf(backend.create_group("devs"))
        self.successResultOf(backend.edit_user_group("alice", "devs", True))
        self.successResultOf(backend.edit_group_permission("Some_Pkg", "devs", "read", True))
        self.successResultOf(backend.edit_user_permission("Some_Pkg", "alice", "write", True))
        self.successResultOf(backend.edit_user_permission("gone", "alice", "read", True))
        self.successResultOf(backend.edit_user_permission("gone", "alice", "read", False))
        self.successResultOf(backend.set_admin("alice", True))
        self.successResultOf(backend.create_user("bob", "b", pending=True))
        self.successResultOf(backend.set_allow_register(True))
        document = self.successResultOf(backend.fetch(fresh=True))
        assert document is not None
        self.assertEqual(document["x-other-tool"], {"keep": [1]})
        self.assertEqual(list(document["users"]), ["alice"])
        self.assertEqual(document["groups"], {"devs": ["alice"]})
        self.assertEqual(document["admins"], ["alice"])
        self.assertEqual(
            document["packages"],
            {"some-pkg": {"groups": {"devs": ["read"]}, "users": {"alice": ["write"]}}},
        )
        self.assertTrue(document["pending_users"]["bob"].startswith("$6$rounds=1000$"))
        self.assertIs(document["allow_registration"], True)

    def test_wrong_shape(self) -> None:
        """A document of the wrong shape makes every call fail with BackendUnavailable
        naming the key at fault; health says so."""
        for document, key in (
            ({"users": ["alice"]}, "users"),
            ({"groups": {"devs": "alice"}}, "groups.devs"),
            ({"packages": {"p": {"users": {"a": ["admin"]}}}}, "packages.p.users.a"),
            ({"allow_registration": "yes"}, "allow_registration"),
            ({"tokens": [{"id": "x"}]}, "tokens[0]"),
        ):
            backend = MemoryAccessBackend(
                Runtime.synchronous().threads("passwords", 1), document=document
            )
            failure = self.failureResultOf(backend.groups(), BackendUnavailable)
            self.assertIn(key, failure.value.message)
            self.failureResultOf(backend.create_group("x"), BackendUnavailable)
            healthy, reason = self.successResultOf(backend.check_health())
            self.assertEqual((healthy, reason), (False, failure.value.message))

    def test_no_write_without_change(self) -> None:
        """An edit that changes nothing (joining a group twice) does not store anything."""
        backend = build()
        self.successResultOf(backend.load(manual_data()))
        stored = self.successResultOf(backend.fetch(fresh=True))
        self.successResultOf(backend.edit_user_group("dsa", "brotatos", True))
        self.assertIs(self.successResultOf(backend.fetch(fresh=True)), stored)

    def test_load_is_all_or_nothing(self) -> None:
        """A load that fails half-way (an unknown permission) changes nothing."""
        backend = build()
        self.successResultOf(backend.load(manual_data()))
        before = self.successResultOf(backend.dump())
        data = manual_data()
        data["users"].append({"username": "eve", "password": cheap_hash("e"), "admin": False})
        data["packages"]["groups"]["pyramid-head"]["everyone"] = ["admin"]
        self.failureResultOf(backend.load(data), ValueError)
        self.assertEqual(self.successResultOf(backend.dump()), before)

    def test_option_admins(self) -> None:
        """Users named in auth.admins are admins besides the stored ones (active users only)."""
        backend = build(admins=("dsa", "waiting"))
        self.successResultOf(backend.load(manual_data()))
        self.successResultOf(backend.create_user("waiting", "w", pending=True))
        self.assertIs(self.successResultOf(backend.is_admin("dsa")), True)
        self.assertIs(self.successResultOf(backend.is_admin("waiting")), False)
        admins = [
            u["username"] for u in self.successResultOf(backend.dump())["users"] if u["admin"]
        ]
        self.assertEqual(admins, ["dsa", "stevearc"])

    def test_rounds(self) -> None:
        """auth.rounds sets the rounds of the hashes written for new passwords."""
        backend = build(rounds=1234)
        self.successResultOf(backend.create_user("alice", "pw"))
        (user,) = self.successResultOf(backend.dump())["users"]
        self.assertTrue(user["password"].startswith("$6$rounds=1234$"), user["password"])


class OptionTests(SynchronousTestCase):
    """How the configuration reaches the backend."""

    def test_from_settings(self) -> None:
        """``pypi.auth = memory`` needs no option and accepts auth.admins, auth.rounds and
        pypicloud's token options."""
        settings = parse_settings(
            {"pypi.storage": "memory", "pypi.db": "memory", "pypi.auth": "memory"}
        )
        self.assertIs(settings.access.cls, MemoryAccessBackend)
        settings = parse_settings(
            {
                "pypi.storage": "memory",
                "pypi.db": "memory",
                "pypi.auth": "memory",
                "auth.admins": "root boss",
                "auth.rounds": "2000",
                "auth.signing_key": "c2VjcmV0",
                "auth.token_expire": "3600",
            }
        )
        options = settings.access.options
        self.assertEqual((options.admins, options.rounds), (("root", "boss"), 2000))
