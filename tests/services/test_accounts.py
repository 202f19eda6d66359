"""The Accounts service: registration, first admin, sign-up tokens, password changes and the
admin operations, on the real SQL backend (in-memory SQLite) and the read-only config one."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.backends._threads import run_synchronously
from pypicloud_tx.backends.access.config import ConfigAccessBackend
from pypicloud_tx.backends.access.sql import SQLAccessBackend
from pypicloud_tx.config.loader import environment_overrides, parse_settings
from pypicloud_tx.config.model import AccessLists
from pypicloud_tx.domain import signup
from pypicloud_tx.domain.models import Identity, Scope
from pypicloud_tx.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    NotFound,
    ReadOnly,
    TooManyAttempts,
    Unauthenticated,
)
from pypicloud_tx.runtime import Runtime
from pypicloud_tx.services.accounts import (
    Accounts,
    Grant,
    GroupInfo,
    InvalidInput,
    PackageAccess,
    Registration,
    UserInfo,
)
from pypicloud_tx.services.auth import Authenticator
from tests.backends.access.conformance import HASHES, PASSWORDS, manual_data

T = TypeVar("T")
KEY = "test-signing-key"
ADMIN = Identity("stevearc", is_admin=True)
#: Names no user may have, each with why.
BAD_NAMES = {
    "": "empty",
    " dave": "leading space",
    "dave ": "trailing space",
    "da\x00ve": "NUL",
    "da\nve": "newline",
    "da\u200bve": "zero-width space",
    "da:ve": "colon (Basic auth, token separator)",
    "da/ve": "slash (URL)",
    "..": "dot-dot",
    "__token__": "the API-token user name",
    "d" * 101: "too long",
}


class HeldRunner:
    """A RunBlocking whose calls wait, while ``hold`` is set, until :meth:`release`: lets
    two operations interleave the way they would on a thread pool."""

    def __init__(self) -> None:
        self.hold = False
        self.queue: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...], Any]] = []

    def __call__(self, f: Callable[..., T], /, *args: Any, **kwargs: Any) -> Deferred[T]:
        if not self.hold:
            return run_synchronously(f, *args, **kwargs)
        d: Deferred[T] = Deferred()
        self.queue.append((d, f, args, kwargs))
        return d

    def release(self) -> None:
        """Run queued calls in order (and those they queue) until none are left."""
        while self.queue:
            d, f, args, kwargs = self.queue.pop(0)
            run_synchronously(f, *args, **kwargs).chainDeferred(d)


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class AccountsCase(SynchronousTestCase):
    """Builds an SQL backend holding ``data`` and an Accounts service on it."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.runner = HeldRunner()

    def build(
        self,
        data: dict[str, Any] | None = None,
        signing_key: str | None = KEY,
        admins: tuple[str, ...] = (),
    ) -> Accounts:
        runtime = Runtime(reactor=self.clock, threads=lambda name, size: self.runner)
        self.access = SQLAccessBackend.from_config(
            SQLAccessBackend.Options(db__url="sqlite://", admins=admins, rounds=1000), runtime
        )
        self.successResultOf(self.access.start())
        self.addCleanup(lambda: self.successResultOf(self.access.stop()))
        if data is not None:
            self.successResultOf(self.access.load(data))
        self.auth = Authenticator(self.access, self.clock, max_failures=3)
        self.accounts = Accounts(
            self.access,
            self.auth,
            backend_name="sql",
            signing_key=signing_key,
            token_expire=3600,
            now=self.clock.seconds,
        )
        return self.accounts

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.successResultOf(Deferred.fromCoroutine(coro))

    def fails(self, coro: Coroutine[Any, Any, Any], error: type[Exception]) -> Any:
        return self.failureResultOf(Deferred.fromCoroutine(coro), error).value

    def dump(self) -> dict[str, Any]:
        return self.successResultOf(self.access.dump())  # type: ignore[no-any-return]

    def login(self, user: str, password: str) -> Identity:
        return self.call(self.auth.identify(basic(user, password), "10.0.0.1"))

    def login_fails(self, user: str, password: str) -> Exception:
        return self.fails(self.auth.identify(basic(user, password), "10.0.0.1"), Exception)  # type: ignore[no-any-return]


class RegistrationTests(AccountsCase):
    def test_closed(self) -> None:
        """With registration closed (the default) and an admin present, registering is
        refused and nothing is stored."""
        accounts = self.build(manual_data())
        before = self.dump()
        error = self.fails(accounts.register("dave", "pw"), Forbidden)
        self.assertIn("Registration is closed", error.message)
        self.assertEqual(self.dump(), before)

    def test_open_makes_pending_user(self) -> None:
        """With registration open the user is pending: listed for approval, unable to log in
        until an admin approves them."""
        accounts = self.build(manual_data())
        self.call(accounts.set_allow_register(ADMIN, True))
        self.assertEqual(
            self.call(accounts.register("dave", "davepw")),
            Registration("dave", pending=True, admin=False),
        )
        self.assertEqual(self.call(accounts.pending_users()), ["dave"])
        self.assertIsInstance(self.login_fails("dave", "davepw"), Unauthenticated)
        self.call(accounts.approve_user(ADMIN, "dave"))
        self.assertEqual(self.login("dave", "davepw").username, "dave")

    def test_first_user_becomes_admin(self) -> None:
        """On an index without any admin the first registration (even with registration
        closed) makes an active admin; the next one is treated as usual."""
        accounts = self.build()
        self.assertTrue(self.call(accounts.needs_admin()))
        self.assertEqual(
            self.call(accounts.register("first", "firstpw")),
            Registration("first", pending=False, admin=True),
        )
        self.assertTrue(self.login("first", "firstpw").is_admin)
        self.assertFalse(self.call(accounts.needs_admin()))
        self.fails(accounts.register("second", "pw"), Forbidden)

    def test_auth_admins_who_exist_count(self) -> None:
        """A user named by auth.admins who exists is an admin: no first-admin registration.
        One named by auth.admins who does not exist does not count."""
        data = manual_data()
        for user in data["users"]:
            user["admin"] = False
        accounts = self.build(data, admins=("dsa",))
        self.fails(accounts.register("dave", "pw"), Forbidden)
        accounts = self.build(data, admins=("nobody",))
        self.assertTrue(self.call(accounts.register("dave", "pw")).admin)

    def test_simultaneous_first_registrations(self) -> None:
        """Two registrations racing on an index without admin: exactly one becomes the admin;
        the other is treated as usual (pending here, since registration is open)."""
        accounts = self.build({"users": [], "groups": {}, "packages": {}, "allow_register": True})
        self.runner.hold = True
        first = Deferred.fromCoroutine(accounts.register("ann", "annpw"))
        second = Deferred.fromCoroutine(accounts.register("ben", "benpw"))
        self.runner.release()
        results = [self.successResultOf(first), self.successResultOf(second)]
        self.runner.hold = False
        self.assertEqual([r.admin for r in results], [True, False])
        self.assertEqual([r.pending for r in results], [False, True])
        self.assertEqual([u["username"] for u in self.dump()["users"] if u["admin"]], ["ann"])

    def test_simultaneous_first_registrations_closed(self) -> None:
        """With registration closed, of two racing first registrations one becomes admin and
        the other is refused."""
        accounts = self.build()
        self.runner.hold = True
        first = Deferred.fromCoroutine(accounts.register("ann", "annpw"))
        second = Deferred.fromCoroutine(accounts.register("ben", "benpw"))
        self.runner.release()
        self.runner.hold = False
        self.assertTrue(self.successResultOf(first).admin)
        self.failureResultOf(second, Forbidden)
        self.assertEqual([u["username"] for u in self.dump()["users"]], ["ann"])

    def test_existing_name(self) -> None:
        """Registering an existing (active or pending) name is a Conflict; the stored user
        keeps their password."""
        accounts = self.build(manual_data())
        self.call(accounts.set_allow_register(ADMIN, True))
        self.fails(accounts.register("dsa", "stolen"), Conflict)
        self.call(accounts.register("dave", "davepw"))
        self.fails(accounts.register("dave", "other"), Conflict)
        self.assertEqual(self.login("dsa", PASSWORDS["dsa"]).username, "dsa")

    def test_bad_names(self) -> None:
        """Empty, padded, over-long names, control or invisible characters, ':' and '/', and
        ``__token__`` are refused with InvalidInput, and nothing is stored."""
        accounts = self.build(manual_data())
        self.call(accounts.set_allow_register(ADMIN, True))
        before = self.dump()
        for name, why in BAD_NAMES.items():
            with self.subTest(why):
                self.fails(accounts.register(name, "pw"), InvalidInput)
        self.assertEqual(self.dump(), before)

    def test_good_unusual_names(self) -> None:
        """Names with inner spaces, dots, '@' and non-ASCII letters are fine."""
        accounts = self.build(manual_data())
        self.call(accounts.set_allow_register(ADMIN, True))
        for name in ("Jane Doe", "j.doe@example.com", "Zoë", "d" * 100):
            self.call(accounts.register(name, "pw"))
        self.assertEqual(len(self.call(accounts.pending_users())), 4)

    def test_bad_passwords(self) -> None:
        """An empty password, one with NUL or over 1024 characters is refused."""
        accounts = self.build(manual_data())
        self.call(accounts.set_allow_register(ADMIN, True))
        for password in ("", "a\x00b", "x" * 1025):
            self.fails(accounts.register("dave", password), InvalidInput)
        self.assertEqual(self.call(accounts.pending_users()), [])


class SignupTokenTests(AccountsCase):
    def test_token_registers_active_user_while_closed(self) -> None:
        """A token issued for a name lets that name register while registration is closed;
        the user is active at once."""
        accounts = self.build(manual_data())
        token = self.call(accounts.signup_token(ADMIN, "dave"))
        self.assertEqual(signup.verify(token, KEY, self.clock.seconds()), "dave")
        self.assertEqual(
            self.call(accounts.register("dave", "davepw", token)),
            Registration("dave", pending=False, admin=False),
        )
        self.assertEqual(self.login("dave", "davepw").username, "dave")
        self.fails(accounts.register("dave", "again", token), Conflict)

    def test_token_for_another_name(self) -> None:
        """A token issued for one name does not register another."""
        accounts = self.build(manual_data())
        token = self.call(accounts.signup_token(ADMIN, "dave"))
        error = self.fails(accounts.register("mallory", "pw", token), Forbidden)
        self.assertIn("sign-up token", error.message)
        self.assertEqual(len(self.dump()["users"]), 3)

    def test_expired_token(self) -> None:
        """A token older than auth.token_expire (3600 s here) is refused."""
        accounts = self.build(manual_data())
        token = self.call(accounts.signup_token(ADMIN, "dave"))
        self.clock.advance(3601)
        self.fails(accounts.register("dave", "pw", token), Forbidden)

    def test_forged_token(self) -> None:
        """A token signed with another key is refused."""
        accounts = self.build(manual_data())
        forged = signup.issue("dave", "guessed", self.clock.seconds())
        self.fails(accounts.register("dave", "pw", forged), Forbidden)

    def test_no_signing_key(self) -> None:
        """Without auth.signing_key no token is issued (Conflict naming the option) and a
        token given to register is refused."""
        accounts = self.build(manual_data(), signing_key=None)
        error = self.fails(accounts.signup_token(ADMIN, "dave"), Conflict)
        self.assertIn("auth.signing_key", error.message)
        token = signup.issue("dave", KEY, self.clock.seconds())
        self.fails(accounts.register("dave", "pw", token), Forbidden)

    def test_no_token_for_existing_user(self) -> None:
        """No token is issued for a name that is taken (active or pending), nor a bad name."""
        accounts = self.build(manual_data())
        self.fails(accounts.signup_token(ADMIN, "dsa"), Conflict)
        self.call(accounts.set_allow_register(ADMIN, True))
        self.call(accounts.register("dave", "pw"))
        self.fails(accounts.signup_token(ADMIN, "dave"), Conflict)
        self.fails(accounts.signup_token(ADMIN, "a:b"), InvalidInput)


class PasswordChangeTests(AccountsCase):
    def change(self, caller: Identity, old: str, new: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self.accounts.change_password(caller, old, new, "10.0.0.1"))

    def test_change(self) -> None:
        """The right old password changes it: the new one works and the old one stops working
        at once, although the authenticator had remembered it."""
        self.build(manual_data())
        me = self.login("dsa", "paranoia")
        self.successResultOf(self.change(me, "paranoia", "n3w"))
        self.assertIsInstance(self.login_fails("dsa", "paranoia"), Unauthenticated)
        self.assertEqual(self.login("dsa", "n3w").username, "dsa")

    def test_wrong_old_password(self) -> None:
        """A wrong old password is Forbidden and changes nothing."""
        self.build(manual_data())
        me = self.login("dsa", "paranoia")
        error = self.failureResultOf(self.change(me, "guess", "n3w"), Forbidden).value
        self.assertEqual(error.message, "The old password is wrong.")
        self.assertEqual(self.login("dsa", "paranoia").username, "dsa")

    def test_vanished_user_answers_like_wrong_password(self) -> None:
        """A caller whose account no longer exists gets the same answer as a wrong password."""
        self.build(manual_data())
        ghost = Identity("ghost")
        error = self.failureResultOf(self.change(ghost, "whatever", "n3w"), Forbidden).value
        self.assertEqual(error.message, "The old password is wrong.")

    def test_wrong_old_passwords_are_throttled(self) -> None:
        """Wrong old passwords count as failed logins: after the limit (3 here) further
        guesses, and logins with unremembered credentials, get TooManyAttempts."""
        self.build(manual_data())
        me = self.login("dsa", "paranoia")
        for n in range(3):
            self.failureResultOf(self.change(me, f"guess{n}", "n3w"), Forbidden)
        self.failureResultOf(self.change(me, "guess", "n3w"), TooManyAttempts)
        self.assertIsInstance(self.login_fails("dsa", "other"), TooManyAttempts)

    def test_who_may_change(self) -> None:
        """Anonymous callers are Unauthenticated; API-token callers Forbidden; a missing old or
        new password is InvalidInput."""
        self.build(manual_data())
        self.failureResultOf(self.change(Identity(), "a", "b"), Unauthenticated)
        token_caller = Identity("dsa", scope=Scope(permissions=frozenset({"read"})))
        error = self.failureResultOf(self.change(token_caller, "paranoia", "b"), Forbidden)
        self.assertIn("API tokens", error.value.message)
        me = Identity("dsa")
        self.failureResultOf(self.change(me, "", "b"), InvalidInput)
        self.failureResultOf(self.change(me, "paranoia", ""), InvalidInput)
        self.assertEqual(self.login("dsa", "paranoia").username, "dsa")


class AdminOperationTests(AccountsCase):
    def test_reads(self) -> None:
        """Users, one user, groups, a group, a package and a user's permissions, as the admin
        API shows them."""
        accounts = self.build(manual_data())
        self.assertEqual(
            self.call(accounts.users()),
            [
                UserInfo("donlan", False, ("brotatos",)),
                UserInfo("dsa", False, ("brotatos", "sharkfest")),
                UserInfo("stevearc", True, ("sharkfest",)),
            ],
        )
        self.assertEqual(
            self.call(accounts.user("dsa")), UserInfo("dsa", False, ("brotatos", "sharkfest"))
        )
        self.fails(accounts.user("nobody"), NotFound)
        self.assertEqual(self.call(accounts.groups()), ["brotatos", "sharkfest"])
        self.assertEqual(
            self.call(accounts.group("brotatos")),
            GroupInfo(
                ("donlan", "dsa"),
                (
                    Grant("polite-requests", ("read", "write")),
                    Grant("pyramid-head", ("read", "write")),
                ),
            ),
        )
        self.assertEqual(
            self.call(accounts.group("everyone")),
            GroupInfo((), (Grant("pyramid-head", ("read",)),)),
        )
        self.fails(accounts.group("nobody"), NotFound)
        self.assertEqual(
            self.call(accounts.package("Polite_Requests")),
            PackageAccess(
                (Grant("dsa", ("read", "write")),),
                (Grant("authenticated", ("read",)), Grant("brotatos", ("read", "write"))),
            ),
        )
        self.assertEqual(
            self.call(accounts.user_permissions("dsa")),
            [Grant("polite-requests", ("read", "write"))],
        )
        self.fails(accounts.user_permissions("nobody"), NotFound)

    def test_export_is_gzip_of_dump(self) -> None:
        """The export is the gzip-compressed JSON of ``dump()``."""
        accounts = self.build(manual_data())
        self.assertEqual(json.loads(gzip.decompress(self.call(accounts.export()))), self.dump())

    def test_create_and_delete_user(self) -> None:
        """An admin-created user is active at once; deleting them makes their remembered login
        stop working at once."""
        accounts = self.build(manual_data())
        self.call(accounts.create_user(ADMIN, "dave", "davepw"))
        self.assertEqual(self.login("dave", "davepw").username, "dave")
        self.fails(accounts.create_user(ADMIN, "dave", "x"), Conflict)
        self.fails(accounts.create_user(ADMIN, "da:ve", "x"), InvalidInput)
        self.fails(accounts.create_user(ADMIN, "eve", ""), InvalidInput)
        self.call(accounts.delete_user(ADMIN, "dave"))
        self.assertIsInstance(self.login_fails("dave", "davepw"), Unauthenticated)
        self.fails(accounts.delete_user(ADMIN, "dave"), NotFound)

    def test_demotion_takes_effect_at_once(self) -> None:
        """Revoking admin (or changing groups) drops the remembered identity: the next request
        sees the change."""
        accounts = self.build(manual_data())
        self.call(accounts.set_admin(ADMIN, "dsa", True))
        self.assertTrue(self.login("dsa", "paranoia").is_admin)
        self.assertFalse(self.call(accounts.set_admin(ADMIN, "dsa", False)))
        self.assertFalse(self.login("dsa", "paranoia").is_admin)
        self.call(accounts.edit_user_group(ADMIN, "dsa", "brotatos", False))
        self.assertEqual(self.login("dsa", "paranoia").groups, frozenset({"sharkfest"}))

    def test_last_admin_stays(self) -> None:
        """The only admin can be neither deleted nor demoted (409); once another admin exists,
        both work."""
        accounts = self.build(manual_data())
        error = self.fails(accounts.delete_user(ADMIN, "stevearc"), Conflict)
        self.assertIn("only admin", error.message)
        self.fails(accounts.set_admin(ADMIN, "stevearc", False), Conflict)
        self.assertTrue(self.call(accounts.set_admin(ADMIN, "stevearc", True)))
        self.call(accounts.set_admin(ADMIN, "dsa", True))
        self.assertFalse(self.call(accounts.set_admin(ADMIN, "stevearc", False)))
        self.fails(accounts.delete_user(ADMIN, "dsa"), Conflict)
        self.call(accounts.delete_user(ADMIN, "stevearc"))

    def test_simultaneous_demotions_leave_an_admin(self) -> None:
        """Two admins demoting each other at the same moment: one succeeds, the other is
        refused, and an admin remains."""
        accounts = self.build(manual_data())
        self.call(accounts.set_admin(ADMIN, "dsa", True))
        self.runner.hold = True
        one = Deferred.fromCoroutine(accounts.set_admin(ADMIN, "dsa", False))
        two = Deferred.fromCoroutine(accounts.set_admin(ADMIN, "stevearc", False))
        self.runner.release()
        self.runner.hold = False
        self.assertFalse(self.successResultOf(one))
        self.failureResultOf(two, Conflict)
        self.assertEqual([u.username for u in self.call(accounts.users()) if u.admin], ["stevearc"])

    def test_auth_admins_survive_demotion(self) -> None:
        """Clearing the stored flag of a user named by auth.admins leaves them admin, and says
        so."""
        accounts = self.build(manual_data(), admins=("dsa",))
        self.assertTrue(self.call(accounts.set_admin(ADMIN, "dsa", False)))

    def test_groups(self) -> None:
        """Groups are created, joined, left and deleted; built-in groups cannot be created,
        joined or deleted; bad names are refused."""
        accounts = self.build(manual_data())
        self.call(accounts.create_group(ADMIN, "cool"))
        self.fails(accounts.create_group(ADMIN, "cool"), Conflict)
        for name in ("everyone", "authenticated", "", "a/b"):
            self.fails(accounts.create_group(ADMIN, name), InvalidInput)
        self.call(accounts.edit_user_group(ADMIN, "dsa", "cool", True))
        self.assertEqual(self.call(accounts.group("cool")).members, ("dsa",))
        self.fails(accounts.edit_user_group(ADMIN, "dsa", "everyone", True), InvalidInput)
        self.fails(accounts.edit_user_group(ADMIN, "nobody", "cool", True), NotFound)
        self.fails(accounts.edit_user_group(ADMIN, "dsa", "nope", True), NotFound)
        self.assertIn("cool", self.login("dsa", "paranoia").groups)
        self.call(accounts.delete_group(ADMIN, "cool"))
        self.assertNotIn("cool", self.login("dsa", "paranoia").groups)
        self.fails(accounts.delete_group(ADMIN, "cool"), NotFound)
        self.fails(accounts.delete_group(ADMIN, "everyone"), InvalidInput)

    def test_permissions(self) -> None:
        """Permissions are granted and revoked on the canonical package name, for users,
        groups and the built-in groups; bad kinds, permissions and names are refused."""
        accounts = self.build(manual_data())
        self.call(accounts.edit_permission(ADMIN, "Fly_Wheel", "user", "dsa", "read", True))
        self.call(accounts.edit_permission(ADMIN, "fly.wheel", "group", "everyone", "read", True))
        self.call(accounts.edit_permission(ADMIN, "FLY-WHEEL", "group", "brotatos", "write", True))
        self.assertEqual(
            self.call(accounts.package("fly-wheel")),
            PackageAccess(
                (Grant("dsa", ("read",)),),
                (Grant("brotatos", ("write",)), Grant("everyone", ("read",))),
            ),
        )
        self.call(accounts.edit_permission(ADMIN, "fly_wheel", "user", "dsa", "read", False))
        self.assertEqual(self.call(accounts.package("fly-wheel")).users, ())
        before = self.dump()
        for args in [
            ("fly-wheel", "role", "dsa", "read"),
            ("fly-wheel", "user", "dsa", "admin"),
            ("fly wheel!", "user", "dsa", "read"),
        ]:
            self.fails(accounts.edit_permission(ADMIN, *args, True), InvalidInput)
        self.fails(accounts.edit_permission(ADMIN, "x", "user", "nobody", "read", True), NotFound)
        self.fails(accounts.edit_permission(ADMIN, "x", "group", "nope", "read", True), NotFound)
        self.assertEqual(self.dump(), before)


class ReadOnlyBackendTests(SynchronousTestCase):
    """On the config backend every change is ReadOnly with a message saying where users are
    managed; every read works."""

    def setUp(self) -> None:
        lists = AccessLists(
            users={"stevearc": HASHES["stevearc"], "dsa": HASHES["dsa"]},
            groups={"sharkfest": ("dsa", "stevearc")},
            packages={"django-unchained": {"group:sharkfest": frozenset({"read", "write"})}},
        )
        access = ConfigAccessBackend(lists, ("stevearc",), run_synchronously)
        self.accounts = Accounts(
            access, Authenticator(access, Clock()), backend_name="config", signing_key=KEY
        )

    def test_changes_refused(self) -> None:
        """Registration, tokens, password changes and every admin change raise ReadOnly naming
        ``pypi.auth = config`` and the configuration file."""
        a = self.accounts
        me = Identity("dsa")
        for coro in [
            a.register("dave", "pw"),
            a.register("dave", "pw", "token"),
            a.signup_token(ADMIN, "dave"),
            a.change_password(me, "paranoia", "new", "10.0.0.1"),
            a.set_allow_register(ADMIN, True),
            a.create_user(ADMIN, "dave", "pw"),
            a.approve_user(ADMIN, "dave"),
            a.delete_user(ADMIN, "dsa"),
            a.set_admin(ADMIN, "dsa", True),
            a.edit_user_group(ADMIN, "dsa", "sharkfest", False),
            a.create_group(ADMIN, "cool"),
            a.delete_group(ADMIN, "sharkfest"),
            a.edit_permission(ADMIN, "x", "user", "dsa", "read", True),
        ]:
            error = self.failureResultOf(Deferred.fromCoroutine(coro), ReadOnly).value
            self.assertIn("pypi.auth = config", error.message)
            self.assertIn("configuration file", error.message)

    def test_reads_work(self) -> None:
        """Users, groups, packages, pending users (none), registration (closed), first-admin
        (never needed) and the export all answer."""
        a = self.accounts

        def run(coro: Coroutine[Any, Any, T]) -> T:
            return self.successResultOf(Deferred.fromCoroutine(coro))

        self.assertEqual([u.username for u in run(a.users())], ["dsa", "stevearc"])
        self.assertEqual(run(a.user("stevearc")).admin, True)
        self.assertEqual(run(a.groups()), ["sharkfest"])
        self.assertEqual(run(a.group("sharkfest")).members, ("dsa", "stevearc"))
        self.assertEqual(
            run(a.package("Django_Unchained")).groups, (Grant("sharkfest", ("read", "write")),)
        )
        self.assertEqual(run(a.pending_users()), [])
        self.assertFalse(run(a.allow_register()))
        self.assertFalse(run(a.needs_admin()))
        self.assertEqual(
            [u["username"] for u in json.loads(gzip.decompress(run(a.export())))["users"]],
            ["dsa", "stevearc"],
        )


class AccountSettingsTests(SynchronousTestCase):
    """``auth.signing_key`` and ``auth.token_expire`` are general settings, accepted with every
    access backend."""

    BASE: ClassVar[dict[str, str]] = {"pypi.storage": "memory", "pypi.db": "memory"}

    def test_parsed_for_every_backend(self) -> None:
        """Both options parse into Settings with the config and the SQL backend, whose own
        option lists never see (and so never refuse) them."""
        for backend in ({"pypi.auth": "config"}, {"pypi.auth": "sql", "auth.db.url": "sqlite://"}):
            settings = parse_settings(
                {**self.BASE, **backend, "auth.signing_key": " k3y ", "auth.token_expire": "60"}
            )
            self.assertEqual((settings.signing_key, settings.token_expire), ("k3y", 60))

    def test_defaults_and_secrecy(self) -> None:
        """Without them: no key, a week's lifetime.  The key never shows in a repr."""
        settings = parse_settings(self.BASE)
        self.assertEqual((settings.signing_key, settings.token_expire), (None, signup.ONE_WEEK))
        settings = parse_settings({**self.BASE, "auth.signing_key": "hunter2"})
        self.assertNotIn("hunter2", repr(settings))

    def test_environment(self) -> None:
        """PPC_AUTH_SIGNING_KEY and PPC_AUTH_TOKEN_EXPIRE override the file."""
        overrides = environment_overrides(
            {"PPC_AUTH_SIGNING_KEY": "env-key", "PPC_AUTH_TOKEN_EXPIRE": "120"}
        )
        settings = parse_settings({**self.BASE, "auth.signing_key": "file-key", **overrides})
        self.assertEqual((settings.signing_key, settings.token_expire), ("env-key", 120))

    def test_bad_values(self) -> None:
        """An empty key or a non-positive lifetime stops start-up naming the option (and not
        echoing the key)."""
        for option, value in [
            ("auth.signing_key", "  "),
            ("auth.token_expire", "0"),
            ("auth.token_expire", "soon"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                parse_settings({**self.BASE, option: value})
            self.assertTrue(caught.exception.message.startswith(option + ":"))
