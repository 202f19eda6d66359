"""What every IAccessBackend (and IMutableAccessBackend) must do, as mixins for test cases.

A test case mixes :class:`IAccessConformance` (or :class:`IMutableAccessConformance`) into a
``SynchronousTestCase`` and defines
``make_backend(data)``, returning a backend that holds ``data`` (pypicloud's export format, as
``dump`` writes it).  The data is the manual's sample configuration ("1.6.2 Config File") with
cheap password hashes.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import TYPE_CHECKING, Any

from passlib.hash import sha512_crypt
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pypicloud_tx.domain.tokens import ApiToken, make_scope, new_token, parse_token
from pypicloud_tx.errors import Conflict, NotFound
from pypicloud_tx.interfaces import IAccessBackend, IMutableAccessBackend

R = frozenset({"read"})
RW = frozenset({"read", "write"})
W = frozenset({"write"})

#: Cheap hashes: a thousand rounds instead of hundreds of thousands.
cheap_hash = sha512_crypt.using(rounds=1000).hash

PASSWORDS = {"stevearc": "gunface", "dsa": "paranoia", "donlan": "osptony"}
HASHES = {user: cheap_hash(password) for user, password in PASSWORDS.items()}


def manual_data() -> dict[str, Any]:
    """The manual's sample users, groups and permissions in pypicloud's export format."""
    return {
        "allow_register": False,
        "users": [
            {"username": "donlan", "password": HASHES["donlan"], "admin": False},
            {"username": "dsa", "password": HASHES["dsa"], "admin": False},
            {"username": "stevearc", "password": HASHES["stevearc"], "admin": True},
        ],
        "groups": {"brotatos": ["donlan", "dsa"], "sharkfest": ["dsa", "stevearc"]},
        "packages": {
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
    }


if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object


def comparable(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without what backends may legitimately differ on: the version, the order of
    group members, empty ``pending_users`` and ``tokens`` lists."""
    data = copy.deepcopy(data)
    data.pop("version", None)
    for optional in ("pending_users", "tokens"):
        if not data.get(optional):
            data.pop(optional, None)
    data["groups"] = {g: sorted(m) for g, m in data["groups"].items()}
    return data


class IAccessConformance(_Base):
    """The read side of :class:`~pypicloud_tx.interfaces.IAccessBackend`.

    A mixin, not a test case, so that trial runs it only through the concrete cases.
    """

    def make_backend(self, data: dict[str, Any]) -> Any:
        """A backend holding ``data``."""
        raise NotImplementedError

    def setUp(self) -> None:
        super().setUp()
        self.backend = self.make_backend(manual_data())

    def result(self, d: Deferred[Any]) -> Any:
        return self.successResultOf(d)

    def test_provides_interface(self) -> None:
        """The backend provides IAccessBackend with every method."""
        self.assertTrue(verifyObject(IAccessBackend, self.backend))

    def test_verify_user(self) -> None:
        """Right passwords verify; wrong ones, empty ones and unknown users do not."""
        for user, password in PASSWORDS.items():
            self.assertIs(self.result(self.backend.verify_user(user, password)), True, user)
        self.assertIs(self.result(self.backend.verify_user("dsa", "gunface")), False)
        self.assertIs(self.result(self.backend.verify_user("dsa", "")), False)
        self.assertIs(self.result(self.backend.verify_user("nobody", "gunface")), False)

    def test_groups(self) -> None:
        """Every group sorted, the sorted groups of one user, none for a stranger."""
        self.assertEqual(self.result(self.backend.groups()), ["brotatos", "sharkfest"])
        self.assertEqual(self.result(self.backend.groups("dsa")), ["brotatos", "sharkfest"])
        self.assertEqual(self.result(self.backend.groups("stevearc")), ["sharkfest"])
        self.assertEqual(self.result(self.backend.groups("nobody")), [])

    def test_group_members(self) -> None:
        """The members of a group; an unknown group has none."""
        self.assertEqual(
            sorted(self.result(self.backend.group_members("sharkfest"))), ["dsa", "stevearc"]
        )
        self.assertEqual(
            sorted(self.result(self.backend.group_members("brotatos"))), ["donlan", "dsa"]
        )
        self.assertEqual(self.result(self.backend.group_members("nope")), [])

    def test_is_admin(self) -> None:
        """Admins are admins; other users and strangers are not."""
        self.assertIs(self.result(self.backend.is_admin("stevearc")), True)
        self.assertIs(self.result(self.backend.is_admin("dsa")), False)
        self.assertIs(self.result(self.backend.is_admin("nobody")), False)

    def test_package_acls(self) -> None:
        """Every explicit permission by canonical package, with prefixed principals and the
        built-in groups bare."""
        self.assertEqual(
            {k: dict(v) for k, v in self.result(self.backend.package_acls()).items()},
            {
                "django-unchained": {"user:stevearc": RW, "group:sharkfest": RW},
                "polite-requests": {"user:dsa": RW, "authenticated": R, "group:brotatos": RW},
                "pyramid-head": {"group:brotatos": RW, "everyone": R},
            },
        )

    def test_user_and_group_permissions(self) -> None:
        """Per package, by user and by group (built-in groups by name), whatever the spelling
        of the package name; nothing for an unknown package."""
        self.assertEqual(
            self.result(self.backend.user_permissions("Django_Unchained")), {"stevearc": RW}
        )
        self.assertEqual(
            self.result(self.backend.group_permissions("polite.requests")),
            {"authenticated": R, "brotatos": RW},
        )
        self.assertEqual(
            self.result(self.backend.group_permissions("pyramid-head")),
            {"brotatos": RW, "everyone": R},
        )
        self.assertEqual(self.result(self.backend.user_permissions("pyramid-head")), {})
        self.assertEqual(self.result(self.backend.group_permissions("unknown")), {})

    def test_user_data(self) -> None:
        """One user with admin flag and sorted groups, all users sorted by name, ``None`` for a
        stranger."""
        self.assertEqual(
            self.result(self.backend.user_data("dsa")),
            {"username": "dsa", "admin": False, "groups": ["brotatos", "sharkfest"]},
        )
        self.assertEqual(
            self.result(self.backend.user_data()),
            [
                {"username": "donlan", "admin": False, "groups": ["brotatos"]},
                {"username": "dsa", "admin": False, "groups": ["brotatos", "sharkfest"]},
                {"username": "stevearc", "admin": True, "groups": ["sharkfest"]},
            ],
        )
        self.assertIsNone(self.result(self.backend.user_data("nobody")))

    def test_health(self) -> None:
        """A working backend reports itself healthy."""
        self.assertEqual(self.result(self.backend.check_health()), (True, ""))

    def test_dump(self) -> None:
        """dump() gives back the data the backend holds, in pypicloud's format, with the
        stored password hashes and a version string."""
        data = self.result(self.backend.dump())
        self.assertIsInstance(data["version"], str)
        self.assertEqual(comparable(data), manual_data())

    def test_dump_round_trip(self) -> None:
        """A backend made from another's dump dumps the same data and verifies the same
        passwords."""
        again = self.make_backend(self.result(self.backend.dump()))
        self.assertEqual(comparable(self.result(again.dump())), manual_data())
        self.assertIs(self.result(again.verify_user("donlan", "osptony")), True)


class IMutableAccessConformance(IAccessConformance):
    """The write side of :class:`~pypicloud_tx.interfaces.IMutableAccessBackend`."""

    def test_provides_mutable_interface(self) -> None:
        """The backend provides IMutableAccessBackend with every method."""
        self.assertTrue(verifyObject(IMutableAccessBackend, self.backend))

    def test_create_user(self) -> None:
        """A created user can log in, is listed, and is an admin only when asked."""
        self.result(self.backend.create_user("newbie", "s3cret"))
        self.result(self.backend.create_user("boss", "b0ss", admin=True))
        self.assertIs(self.result(self.backend.verify_user("newbie", "s3cret")), True)
        self.assertIs(self.result(self.backend.verify_user("newbie", "wrong")), False)
        self.assertEqual(
            self.result(self.backend.user_data("newbie")),
            {"username": "newbie", "admin": False, "groups": []},
        )
        self.assertIs(self.result(self.backend.is_admin("boss")), True)
        stored = [u for u in self.result(self.backend.dump())["users"] if u["username"] == "newbie"]
        self.assertNotIn("s3cret", stored[0]["password"])

    def test_create_existing_user(self) -> None:
        """Creating a user who exists (active or pending) fails with Conflict and leaves the
        password as it was."""
        self.failureResultOf(self.backend.create_user("dsa", "other"), Conflict)
        self.result(self.backend.create_user("waiting", "w", pending=True))
        self.failureResultOf(self.backend.create_user("waiting", "x"), Conflict)
        self.assertIs(self.result(self.backend.verify_user("dsa", "paranoia")), True)

    def test_pending_users(self) -> None:
        """A pending user cannot log in, is not listed as a user nor an admin, appears in
        pending_users, and after approval is an ordinary user."""
        self.result(self.backend.create_user("waiting", "w4it", admin=True, pending=True))
        self.assertEqual(self.result(self.backend.pending_users()), ["waiting"])
        self.assertIs(self.result(self.backend.verify_user("waiting", "w4it")), False)
        self.assertIsNone(self.result(self.backend.user_data("waiting")))
        self.assertNotIn("waiting", [u["username"] for u in self.result(self.backend.user_data())])
        self.assertIs(self.result(self.backend.is_admin("waiting")), False)
        self.result(self.backend.approve_user("waiting"))
        self.assertEqual(self.result(self.backend.pending_users()), [])
        self.assertIs(self.result(self.backend.verify_user("waiting", "w4it")), True)
        self.assertIs(self.result(self.backend.is_admin("waiting")), True)

    def test_approve_unknown(self) -> None:
        """Approving someone who is not pending (unknown, or already active) is NotFound."""
        self.failureResultOf(self.backend.approve_user("nobody"), NotFound)
        self.failureResultOf(self.backend.approve_user("dsa"), NotFound)

    def test_set_password(self) -> None:
        """The new password works and the old one no longer does; unknown users NotFound."""
        self.result(self.backend.set_password("dsa", "n3w"))
        self.assertIs(self.result(self.backend.verify_user("dsa", "n3w")), True)
        self.assertIs(self.result(self.backend.verify_user("dsa", "paranoia")), False)
        self.failureResultOf(self.backend.set_password("nobody", "x"), NotFound)

    def test_delete_user(self) -> None:
        """A deleted user cannot log in and vanishes from groups and package permissions."""
        self.result(self.backend.delete_user("dsa"))
        self.assertIs(self.result(self.backend.verify_user("dsa", "paranoia")), False)
        self.assertIsNone(self.result(self.backend.user_data("dsa")))
        self.assertEqual(self.result(self.backend.group_members("brotatos")), ["donlan"])
        self.assertEqual(self.result(self.backend.user_permissions("polite-requests")), {})
        self.failureResultOf(self.backend.delete_user("dsa"), NotFound)

    def test_delete_pending_user(self) -> None:
        """Deleting a pending user rejects the registration."""
        self.result(self.backend.create_user("waiting", "w", pending=True))
        self.result(self.backend.delete_user("waiting"))
        self.assertEqual(self.result(self.backend.pending_users()), [])

    def test_set_admin(self) -> None:
        """Admin rights can be granted and revoked; unknown users NotFound."""
        self.result(self.backend.set_admin("dsa", True))
        self.assertIs(self.result(self.backend.is_admin("dsa")), True)
        self.result(self.backend.set_admin("dsa", False))
        self.assertIs(self.result(self.backend.is_admin("dsa")), False)
        self.failureResultOf(self.backend.set_admin("nobody", True), NotFound)

    def test_create_group(self) -> None:
        """A new group is listed and empty; an existing or built-in name is a Conflict."""
        self.result(self.backend.create_group("devs"))
        self.assertEqual(self.result(self.backend.groups()), ["brotatos", "devs", "sharkfest"])
        self.assertEqual(self.result(self.backend.group_members("devs")), [])
        self.failureResultOf(self.backend.create_group("devs"), Conflict)
        self.failureResultOf(self.backend.create_group("everyone"), Conflict)

    def test_delete_group(self) -> None:
        """A deleted group loses its members and permissions; an unknown one is NotFound."""
        self.result(self.backend.delete_group("brotatos"))
        self.assertEqual(self.result(self.backend.groups()), ["sharkfest"])
        self.assertEqual(self.result(self.backend.groups("donlan")), [])
        self.assertEqual(
            self.result(self.backend.group_permissions("pyramid-head")), {"everyone": R}
        )
        self.failureResultOf(self.backend.delete_group("brotatos"), NotFound)

    def test_edit_user_group(self) -> None:
        """Users join and leave groups (twice is harmless); unknown users or groups are
        NotFound."""
        self.result(self.backend.edit_user_group("donlan", "sharkfest", True))
        self.result(self.backend.edit_user_group("donlan", "sharkfest", True))
        self.assertEqual(self.result(self.backend.groups("donlan")), ["brotatos", "sharkfest"])
        self.result(self.backend.edit_user_group("donlan", "brotatos", False))
        self.result(self.backend.edit_user_group("donlan", "brotatos", False))
        self.assertEqual(self.result(self.backend.groups("donlan")), ["sharkfest"])
        self.failureResultOf(self.backend.edit_user_group("nobody", "sharkfest", True), NotFound)
        self.failureResultOf(self.backend.edit_user_group("dsa", "nope", True), NotFound)

    def test_edit_user_permission(self) -> None:
        """Read and write are granted and revoked one at a time, under the canonical package
        name; a user with neither is no longer listed; unknown users are NotFound."""
        self.result(self.backend.edit_user_permission("New_Pkg", "donlan", "write", True))
        self.assertEqual(self.result(self.backend.user_permissions("new-pkg")), {"donlan": W})
        self.result(self.backend.edit_user_permission("new.pkg", "donlan", "read", True))
        self.assertEqual(self.result(self.backend.user_permissions("new-pkg")), {"donlan": RW})
        self.result(self.backend.edit_user_permission("new-pkg", "donlan", "write", False))
        self.assertEqual(self.result(self.backend.user_permissions("new-pkg")), {"donlan": R})
        self.result(self.backend.edit_user_permission("new-pkg", "donlan", "read", False))
        self.assertEqual(self.result(self.backend.user_permissions("new-pkg")), {})
        self.assertNotIn("new-pkg", self.result(self.backend.package_acls()))
        self.failureResultOf(
            self.backend.edit_user_permission("new-pkg", "nobody", "read", True), NotFound
        )
        self.failureResultOf(
            self.backend.edit_user_permission("new-pkg", "dsa", "admin", True), ValueError
        )

    def test_edit_group_permission(self) -> None:
        """Groups, ``everyone`` and ``authenticated`` gain and lose permissions; unknown groups
        are NotFound."""
        self.result(self.backend.edit_group_permission("pyramid_head", "everyone", "read", False))
        self.result(self.backend.edit_group_permission("pyramid-head", "sharkfest", "read", True))
        self.result(
            self.backend.edit_group_permission("pyramid-head", "authenticated", "write", True)
        )
        self.assertEqual(
            self.result(self.backend.group_permissions("pyramid-head")),
            {"brotatos": RW, "sharkfest": R, "authenticated": W},
        )
        self.failureResultOf(
            self.backend.edit_group_permission("pyramid-head", "nope", "read", True), NotFound
        )

    def test_allow_register(self) -> None:
        """Registration is closed until opened, and can be closed again."""
        self.assertIs(self.result(self.backend.allow_register()), False)
        self.result(self.backend.set_allow_register(True))
        self.assertIs(self.result(self.backend.allow_register()), True)
        self.assertIs(self.result(self.backend.dump())["allow_register"], True)
        self.result(self.backend.set_allow_register(False))
        self.assertIs(self.result(self.backend.allow_register()), False)

    def test_load_never_clobbers(self) -> None:
        """Loading data again changes nothing; a user already present keeps their password
        and flags even when the loaded data says otherwise."""
        before = self.result(self.backend.dump())
        self.result(self.backend.load(manual_data()))
        self.assertEqual(self.result(self.backend.dump()), before)
        other = manual_data()
        other["users"][1] = {"username": "dsa", "password": cheap_hash("x"), "admin": True}
        self.result(self.backend.load(other))
        self.assertIs(self.result(self.backend.verify_user("dsa", "paranoia")), True)
        self.assertIs(self.result(self.backend.is_admin("dsa")), False)

    def test_load_adds(self) -> None:
        """Loading adds users, pending users (keeping their hashes), groups, memberships and
        permissions, and sets allow_register."""
        fay_hash = cheap_hash("f")
        self.result(
            self.backend.load(
                {
                    "allow_register": True,
                    "users": [{"username": "eve", "password": cheap_hash("e"), "admin": False}],
                    "pending_users": [{"username": "fay", "password": fay_hash}],
                    "groups": {"sharkfest": ["eve"], "ops": ["eve"]},
                    "packages": {
                        "users": {"Eve_Pkg": {"eve": ["read", "write"]}},
                        "groups": {"eve-pkg": {"ops": ["read"]}},
                    },
                }
            )
        )
        self.assertIs(self.result(self.backend.verify_user("eve", "e")), True)
        self.assertEqual(self.result(self.backend.pending_users()), ["fay"])
        self.assertEqual(self.result(self.backend.groups("eve")), ["ops", "sharkfest"])
        self.assertEqual(
            sorted(self.result(self.backend.group_members("sharkfest"))),
            ["dsa", "eve", "stevearc"],
        )
        self.assertEqual(
            dict(self.result(self.backend.package_acls())["eve-pkg"]),
            {"user:eve": RW, "group:ops": R},
        )
        self.assertIs(self.result(self.backend.allow_register()), True)
        self.assertEqual(
            self.result(self.backend.dump())["pending_users"],
            [{"username": "fay", "password": fay_hash}],
        )

    # -- API tokens -----------------------------------------------------------------------------

    def _token(self, username: str, name: str = "ci", **extra: Any) -> tuple[str, ApiToken]:
        created = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        return new_token(
            username, name, make_scope(["Polite_Requests"], ["read", "write"]), created, **extra
        )

    def test_save_and_find_token(self) -> None:
        """A saved token is found by id with every field as saved, and its secret matches."""
        text, token = self._token("dsa", expires=dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
        self.result(self.backend.save_token(token))
        found = self.result(self.backend.find_token(token.id))
        self.assertEqual(found, token)
        self.assertEqual(found.scope.packages, frozenset({"polite-requests"}))
        parsed = parse_token(text)
        assert parsed is not None
        self.assertEqual(parsed[0], token.id)
        self.assertTrue(found.matches(parsed[1]))
        self.assertIsNone(self.result(self.backend.find_token("0" * 16)))

    def test_save_token_for_unknown_user(self) -> None:
        """A token for a user who does not exist (or is pending) is refused with NotFound."""
        self.failureResultOf(self.backend.save_token(self._token("nobody")[1]), NotFound)
        self.result(self.backend.create_user("waiting", "w", pending=True))
        self.failureResultOf(self.backend.save_token(self._token("waiting")[1]), NotFound)

    def test_save_token_twice(self) -> None:
        """Saving a token id twice is a Conflict."""
        token = self._token("dsa")[1]
        self.result(self.backend.save_token(token))
        self.failureResultOf(self.backend.save_token(token), Conflict)

    def test_list_tokens(self) -> None:
        """tokens(user) lists that user's tokens oldest first; tokens(None) lists everyone's."""
        first = self._token("dsa", "first")[1]
        second = new_token(
            "dsa",
            "second",
            make_scope([], ["read"]),
            dt.datetime(2026, 2, 1, tzinfo=dt.UTC),
        )[1]
        other = self._token("donlan", "theirs")[1]
        for token in (second, other, first):
            self.result(self.backend.save_token(token))
        self.assertEqual(self.result(self.backend.tokens("dsa")), [first, second])
        self.assertEqual(self.result(self.backend.tokens("stevearc")), [])
        self.assertEqual(
            sorted(t.id for t in self.result(self.backend.tokens(None))),
            sorted([first.id, second.id, other.id]),
        )

    def test_delete_token(self) -> None:
        """A revoked token is gone; revoking it again is NotFound."""
        token = self._token("dsa")[1]
        self.result(self.backend.save_token(token))
        self.result(self.backend.delete_token(token.id))
        self.assertIsNone(self.result(self.backend.find_token(token.id)))
        self.failureResultOf(self.backend.delete_token(token.id), NotFound)

    def test_delete_user_revokes_tokens(self) -> None:
        """Deleting a user deletes their tokens."""
        token = self._token("dsa")[1]
        self.result(self.backend.save_token(token))
        self.result(self.backend.delete_user("dsa"))
        self.assertIsNone(self.result(self.backend.find_token(token.id)))
        self.assertEqual(self.result(self.backend.tokens("dsa")), [])

    def test_tokens_exported_and_loaded(self) -> None:
        """dump() carries tokens as records; load() adds unknown ones and keeps known ones."""
        token = self._token("dsa")[1]
        self.result(self.backend.save_token(token))
        dumped = self.result(self.backend.dump())
        self.assertEqual(dumped["tokens"], [token.to_dict()])
        self.result(self.backend.delete_token(token.id))
        self.result(self.backend.load(dumped))
        self.assertEqual(self.result(self.backend.find_token(token.id)), token)
        self.result(self.backend.load(dumped))
        self.assertEqual(self.result(self.backend.tokens("dsa")), [token])

    def test_rehash_on_login(self) -> None:
        """A login with an outdated hash (pypicloud's sha256_crypt) stores a fresh sha512_crypt
        hash; a failed login changes nothing."""
        from passlib.hash import sha256_crypt

        old = sha256_crypt.using(rounds=1000).hash("0ld-scheme")
        self.result(
            self.backend.load({"users": [{"username": "old", "password": old, "admin": False}]})
        )

        def stored() -> str:
            users = self.result(self.backend.dump())["users"]
            return str(next(u["password"] for u in users if u["username"] == "old"))

        self.assertIs(self.result(self.backend.verify_user("old", "wrong")), False)
        self.assertEqual(stored(), old)
        self.assertIs(self.result(self.backend.verify_user("old", "0ld-scheme")), True)
        self.assertTrue(stored().startswith("$6$"), stored())
        self.assertIs(self.result(self.backend.verify_user("old", "0ld-scheme")), True)

    def test_load_without_password(self) -> None:
        """A user imported without a hash (a remote or LDAP backend's export) exists with their
        groups, cannot log in with any password, and can be given one."""
        self.result(
            self.backend.load(
                {
                    "users": [{"username": "ext", "password": None, "admin": False}],
                    "groups": {"sharkfest": ["ext"]},
                }
            )
        )
        self.assertEqual(self.result(self.backend.groups("ext")), ["sharkfest"])
        for guess in ("", "None", "!"):
            self.assertIs(self.result(self.backend.verify_user("ext", guess)), False)
        self.result(self.backend.set_password("ext", "n0w"))
        self.assertIs(self.result(self.backend.verify_user("ext", "n0w")), True)
