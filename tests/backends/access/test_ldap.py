"""LDAPAccessBackend against the real slapd: the shared suite, and LDAP's own rules.

Every directory a test uses is an organisational unit of its own under the server's base
(``ou=ppc-<random>``), made here and deleted afterwards with everything under it.  Passwords
are stored in the three forms a directory may hold: ``{CRYPT}`` (the suite's sha512_crypt
hashes), ``{SSHA}`` and clear text; the backend only ever binds with them.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import socket
import ssl
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ldap3 import MODIFY_DELETE, MODIFY_REPLACE, NONE, SUBTREE, Connection, Server
from ldap3.utils.dn import escape_rdn
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from pypicloud_tx.backends._threads import ThreadPoolService
from pypicloud_tx.backends.access import ldap as ldap_module
from pypicloud_tx.backends.access.ldap import Directory, LDAPAccessBackend
from pypicloud_tx.config.loader import parse_settings
from pypicloud_tx.errors import BackendUnavailable, ConfigError
from pypicloud_tx.interfaces import IAccessBackend, IMutableAccessBackend
from pypicloud_tx.runtime import Runtime
from tests.realservices import require_service

from .conformance import PASSWORDS, IAccessConformance, cheap_hash, comparable, manual_data
from .test_config import config_options

SERVICE_PASSWORD = "s3rvice-pw"
ADMIN_MARK = "pypicloud-admin"
#: ManageDsaIT (RFC 3296): act on referral entries themselves instead of following them.
MANAGE_DSA_IT = ("2.16.840.1.113730.3.4.2", True, None)


def ssha(password: str) -> str:
    """``{SSHA}`` as slapd's own ``slappasswd`` writes it."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def crypt(password: str) -> str:
    """``{CRYPT}`` with a cheap sha512_crypt hash, which slapd checks with crypt(3)."""
    return "{CRYPT}" + str(cheap_hash(password))


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Slapd:
    """The test server, driven as its administrator: organisational units for one test each."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.url = require_service("PPC_TEST_LDAP_URL", "OpenLDAP (slapd)")
        self.base = require_service("PPC_TEST_LDAP_BASE", "OpenLDAP (slapd)")
        admin = require_service("PPC_TEST_LDAP_ADMIN", "OpenLDAP (slapd)")
        password = require_service("PPC_TEST_LDAP_PASSWORD", "OpenLDAP (slapd)")
        server = Server(self.url, get_info=NONE, connect_timeout=10)
        self.conn = Connection(
            server, admin, password, receive_timeout=10, auto_bind=True, raise_exceptions=True
        )
        self._units: list[str] = []
        case.addCleanup(self._clean)

    def _clean(self) -> None:
        for unit in self._units:
            self.conn.search(unit, "(objectClass=*)", SUBTREE, controls=[MANAGE_DSA_IT])
            for dn in sorted((e["dn"] for e in self.conn.response), key=len, reverse=True):
                self.conn.delete(dn, controls=[MANAGE_DSA_IT])
        self.conn.unbind()

    def unit(self) -> str:
        """A new, empty ``ou`` with ``ou=people`` and a service account in it."""
        dn = f"ou=ppc-{uuid.uuid4().hex[:12]},{self.base}"
        self.conn.add(dn, ["organizationalUnit"])
        self._units.append(dn)
        self.conn.add(f"ou=people,{dn}", ["organizationalUnit"])
        self.conn.add(
            f"cn=pypicloud,{dn}",
            ["person"],
            {"cn": "pypicloud", "sn": "service", "userPassword": SERVICE_PASSWORD},
        )
        return dn

    def add_user(
        self, unit: str, uid: str, password: str | None, admin: bool = False, under: str = "people"
    ) -> str:
        """``uid=<uid>,ou=<under>,<unit>`` with ``password`` as userPassword (as given);
        ``employeeType: pypicloud-admin`` for an admin."""
        dn = f"uid={escape(uid)},ou={under},{unit}"
        attributes: dict[str, Any] = {"uid": uid, "cn": uid, "sn": "test"}
        if password is not None:
            attributes["userPassword"] = password
        if admin:
            attributes["employeeType"] = ["staff", ADMIN_MARK]
        self.conn.add(dn, ["inetOrgPerson"], attributes)
        return dn

    def add_group(self, dn: str, members: list[str]) -> None:
        self.conn.add(dn, ["groupOfNames"], {"cn": dn.split(",")[0][3:], "member": members})


def escape(value: str) -> str:
    return str(escape_rdn(value))


def build(
    url: str,
    options: dict[str, str],
    data: dict[str, Any] | None = None,
    clock: Clock | None = None,
) -> LDAPAccessBackend:
    """A backend from ``auth.ldap.*`` ``options`` (plus the group and package lines of
    ``data`` when given) read through the settings loader."""
    raw = {"pypi.storage": "memory", "pypi.db": "memory", "pypi.auth": "ldap"}
    raw["auth.ldap.url"] = url
    if data is not None:
        raw.update(
            (k, v)
            for k, v in config_options({**data, "users": []}).items()
            if k.startswith(("group.", "package."))
        )
    raw.update(options)
    settings = parse_settings(raw)
    runtime = Runtime.synchronous(reactor=clock or Clock(), settings=settings)
    return LDAPAccessBackend.from_config(settings.access.options, runtime)


def service(unit: str) -> dict[str, str]:
    return {
        "auth.ldap.service_dn": f"cn=pypicloud,{unit}",
        "auth.ldap.service_password": SERVICE_PASSWORD,
    }


def search_mode(unit: str) -> dict[str, str]:
    """Users found by base_dn + user_search_filter, admins by admin_field/admin_value."""
    return {
        **service(unit),
        "auth.ldap.base_dn": unit,
        "auth.ldap.user_search_filter": "(&(objectClass=inetOrgPerson)(uid={username}))",
        "auth.ldap.admin_field": "employeeType",
        "auth.ldap.admin_value": f"\n{ADMIN_MARK}\npypicloud owners",
    }


def dn_mode(unit: str) -> dict[str, str]:
    """Users found by user_dn_format, admins by admin_group_dn."""
    return {
        **service(unit),
        "auth.ldap.user_dn_format": f"uid={{username}},ou=people,{unit}",
        "auth.ldap.admin_group_dn": f"cn=pypicloud-admins,{unit}",
    }


def without_passwords(data: dict[str, Any]) -> dict[str, Any]:
    for user in data["users"]:
        user.pop("password", None)
    return data


class _LDAPConformance(IAccessConformance):
    """The shared suite with the manual's users in a directory of their own and the manual's
    groups and permissions as config lines (``auth.ldap.fallback = config``)."""

    def mode(self, unit: str) -> dict[str, str]:
        raise NotImplementedError

    def make_backend(self, data: dict[str, Any]) -> LDAPAccessBackend:
        if not hasattr(self, "slapd"):
            self.slapd = Slapd(self)
        unit = self.slapd.unit()
        admins = []
        for user in data["users"]:
            hashed = user.get("password")
            dn = self.slapd.add_user(
                unit, user["username"], hashed and "{CRYPT}" + hashed, admin=user["admin"]
            )
            if user["admin"]:
                admins.append(dn)
        # A groupOfNames must have a member: the service account stands in for "nobody".
        self.slapd.add_group(f"cn=pypicloud-admins,{unit}", admins or [f"cn=pypicloud,{unit}"])
        options = {**self.mode(unit), "auth.ldap.fallback": "config"}
        return build(self.slapd.url, options, data)

    def test_dump(self) -> None:
        """dump() gives users with their admin flags but without password hashes (LDAP keeps
        the passwords; this backend never reads userPassword), and the fallback's groups and
        permissions, in pypicloud's format with a version string."""
        data = self.result(self.backend.dump())
        self.assertIsInstance(data["version"], str)
        self.assertEqual(comparable(data), without_passwords(manual_data()))

    def test_dump_round_trip(self) -> None:
        """A backend made from another's dump (a new directory holding its users, without
        passwords since the dump has none) dumps the same users, admins, groups and
        permissions."""
        again = self.make_backend(self.result(self.backend.dump()))
        self.assertEqual(comparable(self.result(again.dump())), without_passwords(manual_data()))

    def test_read_only(self) -> None:
        """The backend is read-only: it does not claim IMutableAccessBackend."""
        self.assertTrue(verifyObject(IAccessBackend, self.backend))
        self.assertFalse(IMutableAccessBackend.providedBy(self.backend))


class SearchConformanceTests(_LDAPConformance, SynchronousTestCase):
    """base_dn + user_search_filter with admin_field/admin_value pass the shared suite."""

    def mode(self, unit: str) -> dict[str, str]:
        return search_mode(unit)


class DNFormatConformanceTests(_LDAPConformance, SynchronousTestCase):
    """user_dn_format with admin_group_dn (a groupOfNames) pass the shared suite."""

    def mode(self, unit: str) -> dict[str, str]:
        return dn_mode(unit)


class _Directory(SynchronousTestCase):
    """A directory with the manual's users, their passwords stored as {SSHA}, clear text and
    {CRYPT}; stevearc is the admin (by attribute and by group)."""

    def setUp(self) -> None:
        self.slapd = Slapd(self)
        self.unit = self.slapd.unit()
        self.dns = {
            "stevearc": self.slapd.add_user(self.unit, "stevearc", ssha("gunface"), admin=True),
            "dsa": self.slapd.add_user(self.unit, "dsa", "paranoia"),
            "donlan": self.slapd.add_user(self.unit, "donlan", crypt("osptony")),
        }
        self.slapd.add_group(f"cn=pypicloud-admins,{self.unit}", [self.dns["stevearc"]])

    def result(self, d: Deferred[Any]) -> Any:
        return self.successResultOf(d)

    def backend(self, mode: str = "search", **extra: str) -> LDAPAccessBackend:
        options = search_mode(self.unit) if mode == "search" else dn_mode(self.unit)
        options.update({f"auth.ldap.{k}": v for k, v in extra.items()})
        return build(self.slapd.url, options, manual_data())

    def both(self, **extra: str) -> list[LDAPAccessBackend]:
        return [self.backend("search", **extra), self.backend("dn", **extra)]


class LoginTests(_Directory):
    """Passwords are checked by binding as the user's entry."""

    def test_both_ways_of_finding_users(self) -> None:
        """user_dn_format and base_dn + user_search_filter find the same entries; every stored
        password form ({SSHA}, clear text, {CRYPT}) logs in; wrong passwords and strangers
        do not."""
        for backend in self.both(fallback="config"):
            for user, password in PASSWORDS.items():
                self.assertIs(self.result(backend.verify_user(user, password)), True, user)
            self.assertIs(self.result(backend.verify_user("dsa", "gunface")), False)
            self.assertIs(self.result(backend.verify_user("nobody", "gunface")), False)
            self.assertEqual(
                self.result(backend.user_data("stevearc")),
                {"username": "stevearc", "admin": True, "groups": ["sharkfest"]},
            )

    def test_empty_password(self) -> None:
        """An empty password never logs in (LDAP would take a bind with a DN and no password
        as an unauthenticated bind), whatever the user; nor does the directory see it."""
        for backend in self.both():
            for user in PASSWORDS:
                self.assertIs(self.result(backend.verify_user(user, "")), False)
        directory = Directory(self.slapd.url)
        self.assertIs(directory.bind(self.dns["dsa"], ""), False)

    def test_injection(self) -> None:
        """User names are escaped for filters and DNs: wildcards, parentheses, commas and
        backslashes never match another entry, neither for login, admin status nor data."""
        hostile = [
            "*",
            "st*",
            ")(uid=*",
            "stevearc)(uid=*",
            "*)(|(uid=*",
            "stevearc)(|(objectClass=*)",
            "\\2a",
            "uid=stevearc",
            f"stevearc,ou=people,{self.unit}",
            "stevearc\\,ou=people",
            "stevearc+cn=stevearc",
            "stevearc\x00",
            "",
        ]
        for backend in self.both():
            for name in hostile:
                self.assertIs(self.result(backend.verify_user(name, "gunface")), False, name)
                self.assertIs(self.result(backend.is_admin(name)), False, name)
                self.assertIsNone(self.result(backend.user_data(name)), name)

    def test_special_characters(self) -> None:
        """A user name with filter and DN metacharacters is found exactly, in both modes."""
        name = "o'neil, j*(ops)\\+"
        self.slapd.add_user(self.unit, name, "tricky pw")
        for backend in self.both():
            self.assertIs(self.result(backend.verify_user(name, "tricky pw")), True)
            self.assertIs(self.result(backend.verify_user(name, "gunface")), False)
            self.assertEqual(self.result(backend.user_data(name))["username"], name)

    def test_admins(self) -> None:
        """Admins come from admin_field/admin_value (any listed value, regardless of case),
        from admin_group_dn, and from auth.admins; other users are not admins."""
        search, by_dn = self.both()
        for backend in (search, by_dn):
            self.assertIs(self.result(backend.is_admin("stevearc")), True)
            self.assertIs(self.result(backend.is_admin("dsa")), False)
        upper = self.backend("search", admin_value="PYPICLOUD-ADMIN")
        self.assertIs(self.result(upper.is_admin("stevearc")), True)
        self.assertIs(self.result(upper.is_admin("dsa")), False)
        options = {**search_mode(self.unit), "auth.admins": "dsa"}
        with_admins = build(self.slapd.url, options)
        self.assertIs(self.result(with_admins.is_admin("dsa")), True)
        self.assertIs(self.result(with_admins.user_data("dsa"))["admin"], True)

    def test_multiple_results(self) -> None:
        """When two entries match a name, the login is refused (and the user unknown) unless
        ignore_multiple_results is on; then the first entry is used."""
        self.slapd.conn.add(f"ou=contractors,{self.unit}", ["organizationalUnit"])
        self.slapd.add_user(self.unit, "dsa", "other-dsa", under="contractors")
        strict = self.backend("search")
        self.assertIs(self.result(strict.verify_user("dsa", "paranoia")), False)
        self.assertIs(self.result(strict.verify_user("dsa", "other-dsa")), False)
        self.assertIsNone(self.result(strict.user_data("dsa")))
        listed = [u["username"] for u in self.result(strict.user_data())]
        self.assertEqual(listed, ["donlan", "stevearc"])
        lenient = self.backend("search", ignore_multiple_results="true")
        logins = [
            self.result(lenient.verify_user("dsa", password))
            for password in ("paranoia", "other-dsa")
        ]
        self.assertEqual(sorted(logins), [False, True])
        self.assertEqual(self.result(lenient.user_data("dsa"))["username"], "dsa")
        listed = [u["username"] for u in self.result(lenient.user_data())]
        self.assertEqual(listed, ["donlan", "dsa", "stevearc"])

    def test_service_username(self) -> None:
        """service_username logs in with the service account's password and is an admin."""
        for backend in self.both(service_username="ppc-service"):
            self.assertIs(self.result(backend.verify_user("ppc-service", SERVICE_PASSWORD)), True)
            self.assertIs(self.result(backend.verify_user("ppc-service", "wrong")), False)
            self.assertIs(self.result(backend.verify_user("ppc-service", "")), False)
            self.assertIs(self.result(backend.is_admin("ppc-service")), True)
            self.assertEqual(
                self.result(backend.user_data("ppc-service")),
                {"username": "ppc-service", "admin": True, "groups": []},
            )
            listed = [u["username"] for u in self.result(backend.user_data())]
            self.assertEqual(listed, ["donlan", "dsa", "ppc-service", "stevearc"])

    def test_anonymous_service(self) -> None:
        """Without service_dn the searches bind anonymously (the test server lets anyone
        read entries, not passwords), and logins still work."""
        options = search_mode(self.unit)
        del options["auth.ldap.service_dn"], options["auth.ldap.service_password"]
        backend = build(self.slapd.url, options)
        self.assertIs(self.result(backend.verify_user("dsa", "paranoia")), True)
        self.assertEqual(self.result(backend.check_health()), (True, ""))


class CacheTests(_Directory):
    """User entries are cached for cache_time seconds on the reactor's clock."""

    def make(self, clock: Clock, **extra: str) -> LDAPAccessBackend:
        options = {**search_mode(self.unit), **{f"auth.ldap.{k}": v for k, v in extra.items()}}
        return build(self.slapd.url, options, clock=clock)

    def demote(self) -> None:
        self.slapd.conn.modify(
            self.dns["stevearc"], {"employeeType": [(MODIFY_DELETE, [ADMIN_MARK])]}
        )

    def test_cache_time(self) -> None:
        """A change in the directory shows once cache_time has passed, not before."""
        clock = Clock()
        backend = self.make(clock, cache_time="60")
        self.assertIs(self.result(backend.is_admin("stevearc")), True)
        self.demote()
        clock.advance(59)
        self.assertIs(self.result(backend.is_admin("stevearc")), True)
        clock.advance(2)
        self.assertIs(self.result(backend.is_admin("stevearc")), False)

    def test_forever_by_default(self) -> None:
        """Without cache_time an entry is kept for the life of the process."""
        clock = Clock()
        backend = self.make(clock)
        self.assertIs(self.result(backend.is_admin("stevearc")), True)
        self.demote()
        clock.advance(365 * 24 * 3600)
        self.assertIs(self.result(backend.is_admin("stevearc")), True)

    def test_zero(self) -> None:
        """cache_time = 0 reads the directory every time."""
        backend = self.make(Clock(), cache_time="0")
        self.assertIs(self.result(backend.is_admin("stevearc")), True)
        self.demote()
        self.assertIs(self.result(backend.is_admin("stevearc")), False)

    def test_misses_not_cached(self) -> None:
        """A user added to the directory can log in at once, even after a failed attempt."""
        backend = self.make(Clock())
        self.assertIs(self.result(backend.verify_user("newbie", "hello")), False)
        self.slapd.add_user(self.unit, "newbie", "hello")
        self.assertIs(self.result(backend.verify_user("newbie", "hello")), True)

    def test_password_change_seen_at_once(self) -> None:
        """Passwords are never cached: a changed password works (and the old one stops
        working) while the entry is still cached."""
        backend = self.make(Clock())
        self.assertIs(self.result(backend.verify_user("dsa", "paranoia")), True)
        self.slapd.conn.modify(self.dns["dsa"], {"userPassword": [(MODIFY_REPLACE, ["n3w"])]})
        self.assertIs(self.result(backend.verify_user("dsa", "paranoia")), False)
        self.assertIs(self.result(backend.verify_user("dsa", "n3w")), True)


class ListingTests(_Directory):
    """user_data() lists the directory's users."""

    def test_listed_in_both_modes(self) -> None:
        """Both modes list every user under the search base / the DN format's parent, with
        admin flags and the fallback's groups."""
        expected = [
            {"username": "donlan", "admin": False, "groups": ["brotatos"]},
            {"username": "dsa", "admin": False, "groups": ["brotatos", "sharkfest"]},
            {"username": "stevearc", "admin": True, "groups": ["sharkfest"]},
        ]
        for backend in self.both(fallback="config"):
            self.assertEqual(self.result(backend.user_data()), expected)

    def test_unlistable_filter(self) -> None:
        """A filter that cannot be turned into a listing gives the users this process knows
        of (the fallback's group members) that exist in the directory."""
        options = {
            **search_mode(self.unit),
            "auth.ldap.user_search_filter": "(|(uid={username})(cn=x-{username}))",
            "auth.ldap.fallback": "config",
        }
        data = manual_data()
        data["groups"]["ghosts"] = ["casper"]
        backend = build(self.slapd.url, options, data)
        self.assertEqual(
            [u["username"] for u in self.result(backend.user_data())],
            ["donlan", "dsa", "stevearc"],
        )

    def test_no_fallback(self) -> None:
        """Without a fallback there are no groups and no package permissions, even with
        group and package lines in the file."""
        backend = self.backend("search")
        self.assertEqual(self.result(backend.groups()), [])
        self.assertEqual(self.result(backend.groups("dsa")), [])
        self.assertEqual(self.result(backend.group_members("sharkfest")), [])
        self.assertEqual(dict(self.result(backend.package_acls())), {})
        self.assertEqual(self.result(backend.user_permissions("django-unchained")), {})
        self.assertEqual(self.result(backend.group_permissions("pyramid-head")), {})
        self.assertEqual(
            self.result(backend.user_data("dsa")),
            {"username": "dsa", "admin": False, "groups": []},
        )
        dump = self.result(backend.dump())
        self.assertEqual(dump["groups"], {})
        self.assertEqual(dump["packages"], {"users": {}, "groups": {}})
        self.assertEqual(
            dump["users"],
            [
                {"username": "donlan", "admin": False},
                {"username": "dsa", "admin": False},
                {"username": "stevearc", "admin": True},
            ],
        )


class HealthTests(_Directory):
    """check_health binds as the service account."""

    def test_healthy(self) -> None:
        """A reachable server that accepts the service account is healthy."""
        for backend in self.both():
            self.assertEqual(self.result(backend.check_health()), (True, ""))

    def test_wrong_service_password(self) -> None:
        """A refused service account makes the backend unhealthy, and logins unavailable,
        with a message naming the options to check and not the password."""
        backend = self.backend("search", service_password="not-the-password")
        healthy, reason = self.result(backend.check_health())
        self.assertFalse(healthy)
        self.assertIn("auth.ldap.service_password", reason)
        self.assertNotIn("not-the-password", reason)
        failure = self.failureResultOf(backend.verify_user("dsa", "paranoia"), BackendUnavailable)
        self.assertIn("service account", failure.value.message)

    def test_start_never_fails(self) -> None:
        """start() only warns about an unusable server: the process must still come up."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        backend = self.backend("search", service_password="not-the-password")
        self.assertIsNone(self.result(backend.start()))
        self.assertTrue(any("not usable" in e.get("log_format", "") for e in events))


class UnreachableTests(SynchronousTestCase):
    """A server that cannot be reached fails fast with BackendUnavailable."""

    def setUp(self) -> None:
        require_service("PPC_TEST_LDAP_URL", "OpenLDAP (slapd)")
        self.url = f"ldap://127.0.0.1:{closed_port()}"
        self.backend = build(
            self.url,
            {
                "auth.ldap.service_dn": "cn=pypicloud,dc=example",
                "auth.ldap.service_password": "s3cretpassw0rd",
                "auth.ldap.user_dn_format": "uid={username},ou=people,dc=example",
            },
        )

    def test_calls_fail(self) -> None:
        """Logins, admin checks and user data fail at once with a one-line message naming
        the URL and the option, without the service password."""
        began = time.monotonic()
        failure = self.failureResultOf(
            self.backend.verify_user("dsa", "paranoia"), BackendUnavailable
        )
        self.assertLess(time.monotonic() - began, 5)
        message = failure.value.message
        self.assertIn(self.url, message)
        self.assertIn("auth.ldap.url", message)
        self.assertNotIn("\n", message)
        self.assertNotIn("s3cretpassw0rd", message)
        self.failureResultOf(self.backend.is_admin("dsa"), BackendUnavailable)
        self.failureResultOf(self.backend.user_data("dsa"), BackendUnavailable)
        self.failureResultOf(self.backend.user_data(), BackendUnavailable)

    def test_empty_password_needs_no_server(self) -> None:
        """An empty password is refused before the server is asked."""
        self.assertIs(self.successResultOf(self.backend.verify_user("dsa", "")), False)

    def test_health(self) -> None:
        """check_health() answers (False, reason) instead of failing."""
        healthy, reason = self.successResultOf(self.backend.check_health())
        self.assertFalse(healthy)
        self.assertIn(self.url, reason)

    def test_ldaps_to_plain_port(self) -> None:
        """ldaps:// to a server that does not speak TLS fails as unavailable, not as a
        crash."""
        url = require_service("PPC_TEST_LDAP_URL", "OpenLDAP (slapd)")
        backend = build(
            url.replace("ldap://", "ldaps://"),
            {"auth.ldap.user_dn_format": "uid={username},ou=people,dc=example"},
        )
        healthy, reason = self.successResultOf(backend.check_health())
        self.assertFalse(healthy)
        self.assertIn("ldaps://", reason)


class ReferralTests(_Directory):
    """Referrals: ``ou=partners`` refers to the users of another unit on the same server,
    ``ou=elsewhere`` to a server that is down."""

    def setUp(self) -> None:
        super().setUp()
        other = self.slapd.unit()
        self.slapd.add_user(other, "partner", "partner-pw")
        for ou, target in (
            ("partners", f"{self.slapd.url}/ou=people,{other}"),
            ("elsewhere", f"ldap://127.0.0.1:{closed_port()}/ou=people,dc=x"),
        ):
            self.slapd.conn.add(
                f"ou={ou},{self.unit}",
                ["referral", "extensibleObject"],
                {"ou": ou, "ref": target},
                controls=[MANAGE_DSA_IT],
            )

    def partners(self, **extra: str) -> list[LDAPAccessBackend]:
        partners = f"ou=partners,{self.unit}"
        return [
            self.backend("search", base_dn=partners, **extra),
            self.backend("dn", user_dn_format=f"uid={{username}},{partners}", **extra),
        ]

    def test_followed(self) -> None:
        """By default a referral is followed: users found there log in and are listed."""
        for backend in self.partners():
            self.assertIs(self.result(backend.verify_user("partner", "partner-pw")), True)
            self.assertIs(self.result(backend.verify_user("partner", "wrong")), False)
            self.assertEqual([u["username"] for u in self.result(backend.user_data())], ["partner"])

    def test_ignored(self) -> None:
        """With ignore_referrals a referral leads nowhere: its users are unknown."""
        for backend in self.partners(ignore_referrals="true"):
            self.assertIs(self.result(backend.verify_user("partner", "partner-pw")), False)
            self.assertEqual(self.result(backend.user_data()), [])

    def test_dead_referral_in_subtree(self) -> None:
        """A referral to a dead server inside the searched subtree does not stop the local
        users from logging in or being listed, whether referrals are followed or not."""
        for extra in ({}, {"ignore_referrals": "true"}):
            backend = self.backend("search", **extra)
            self.assertIs(self.result(backend.verify_user("dsa", "paranoia")), True)
            self.assertEqual(
                [u["username"] for u in self.result(backend.user_data())],
                ["donlan", "dsa", "stevearc"],
            )


def self_signed(directory: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 signed by its own key: ``(certificate file, key file)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(directory, exist_ok=True)
    cert_file, key_file = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_file, key_file


class TLSProxy:
    """``ldaps://127.0.0.1:<port>`` in front of the test slapd: TLS with a self-signed
    certificate on one side, the plain LDAP port on the other (threads, for blocking tests)."""

    def __init__(self, case: SynchronousTestCase, target: str, cert_file: str, key_file: str):
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 389)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert_file, key_file)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: list[socket.socket] = []
        self.url = f"ldaps://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        case.addCleanup(self._close)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            client.settimeout(10)
            try:
                secure = self._context.wrap_socket(client, server_side=True)
            except (OSError, ssl.SSLError):
                client.close()  # the client refused the certificate
                continue
            upstream = socket.create_connection(self._target, timeout=10)
            self._sockets += [secure, upstream]
            for source, sink in ((secure, upstream), (upstream, secure)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _close(self) -> None:
        # shutdown() wakes the accept() blocked in the other thread; close() alone does not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(10)
        for s in self._sockets:
            s.close()


def restore_environ(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class CertificateTests(_Directory):
    """ldaps:// checks the server's certificate unless ignore_cert is set."""

    def setUp(self) -> None:
        super().setUp()
        self.cert_file, key_file = self_signed(self.mktemp())
        self.proxy = TLSProxy(self, self.slapd.url, self.cert_file, key_file)

    def tls_backend(self, **extra: str) -> LDAPAccessBackend:
        options = {**search_mode(self.unit), "auth.ldap.url": self.proxy.url}
        options.update({f"auth.ldap.{k}": v for k, v in extra.items()})
        return build(self.proxy.url, options)

    def test_untrusted_refused(self) -> None:
        """A certificate no trusted authority signed is refused: logins are unavailable and
        the message points at the certificate and ignore_cert."""
        backend = self.tls_backend()
        failure = self.failureResultOf(backend.verify_user("dsa", "paranoia"), BackendUnavailable)
        self.assertIn("auth.ldap.ignore_cert", failure.value.message)
        self.assertFalse(self.result(backend.check_health())[0])

    def test_ignore_cert(self) -> None:
        """With ignore_cert the same server is used."""
        backend = self.tls_backend(ignore_cert="true")
        self.assertIs(self.result(backend.verify_user("dsa", "paranoia")), True)
        self.assertIs(self.result(backend.verify_user("dsa", "wrong")), False)
        self.assertEqual(self.result(backend.check_health()), (True, ""))

    def test_trusted(self) -> None:
        """A certificate trusted by the system's store (SSL_CERT_FILE here) is accepted
        without ignore_cert: verification is on, not merely failing."""
        previous = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = self.cert_file
        self.addCleanup(restore_environ, "SSL_CERT_FILE", previous)
        backend = self.tls_backend()
        self.assertIs(self.result(backend.verify_user("dsa", "paranoia")), True)


class ThreadedTests(TestCase):
    """With a real thread pool, the LDAP calls run off the reactor thread and the answers
    arrive back on it."""

    def test_threaded(self) -> None:
        """verify_user, is_admin, user_data and check_health work through the ``ldap``
        pool; every LDAP connection is opened on a pool thread, none on the reactor's."""
        from twisted.internet import reactor

        slapd = Slapd(self)
        unit = slapd.unit()
        slapd.add_user(unit, "dsa", "paranoia", admin=True)
        pool = ThreadPoolService(reactor, "ldap", 4)  # type: ignore[arg-type]
        pool.startService()
        self.addCleanup(pool.stopService)
        seen: list[str] = []
        settings = parse_settings(
            {
                "pypi.storage": "memory",
                "pypi.db": "memory",
                "pypi.auth": "ldap",
                "auth.ldap.url": slapd.url,
                **search_mode(unit),
            }
        )
        runtime = Runtime(
            reactor=reactor,
            threads=lambda name, size: seen.append(name) or pool.run,
            settings=settings,
        )
        backend = LDAPAccessBackend.from_config(settings.access.options, runtime)
        opened_on: list[int] = []

        class RecordingConnection(Connection):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                opened_on.append(threading.get_ident())
                super().__init__(*args, **kwargs)

        self.patch(ldap_module, "Connection", RecordingConnection)

        async def scenario() -> None:
            self.assertIs(await backend.verify_user("dsa", "paranoia"), True)
            self.assertIs(await backend.verify_user("dsa", "wrong"), False)
            self.assertIs(await backend.is_admin("dsa"), True)
            self.assertEqual(len(await backend.user_data()), 1)
            self.assertEqual(await backend.check_health(), (True, ""))
            self.assertEqual(seen, ["ldap"])
            self.assertTrue(opened_on)
            self.assertNotIn(threading.get_ident(), opened_on)

        return Deferred.fromCoroutine(scenario())


def options_error(**options: str) -> str:
    raw = {"pypi.storage": "memory", "pypi.db": "memory", "pypi.auth": "ldap"}
    raw.update({k.replace("__", "."): v for k, v in options.items()})
    try:
        parse_settings(raw)
    except ConfigError as e:
        return e.message
    raise AssertionError(f"no ConfigError for {options}")


class OptionTests(SynchronousTestCase):
    """How the configuration reaches the backend, and the mistakes it refuses."""

    URL = "ldap://127.0.0.1:389"

    def test_from_settings(self) -> None:
        """``pypi.auth = ldap`` and pypicloud's class paths choose this backend; every
        auth.ldap.* option is read, admin_value one value per line (spaces kept)."""
        for choice in (
            "ldap",
            "pypicloud.access.ldap_.LDAPAccessBackend",
            "pypicloud.access.LDAPAccessBackend",
        ):
            settings = parse_settings(
                {
                    "pypi.storage": "memory",
                    "pypi.db": "memory",
                    "pypi.auth": choice,
                    "auth.ldap.url": "ldaps://ldap.example.org:636",
                    "auth.ldap.service_dn": "cn=svc,dc=example,dc=org",
                    "auth.ldap.service_password": "pw",
                    "auth.ldap.service_username": "svc",
                    "auth.ldap.base_dn": "ou=users, dc=example, dc=org",
                    "auth.ldap.user_search_filter": "(&(objectClass=person)(name={username}))",
                    "auth.ldap.admin_field": "memberOf",
                    "auth.ldap.admin_value": "\ncn=pypicloud admins,dc=example,dc=org\nroot",
                    "auth.ldap.cache_time": "300",
                    "auth.ldap.ignore_cert": "true",
                    "auth.ldap.ignore_referrals": "yes",
                    "auth.ldap.ignore_multiple_results": "on",
                    "auth.ldap.fallback": "config",
                    "auth.admins": "alice bob",
                }
            )
            self.assertIs(settings.access.cls, LDAPAccessBackend)
            options = settings.access.options
            self.assertEqual(
                options.ldap__admin_value, ("cn=pypicloud admins,dc=example,dc=org", "root")
            )
            self.assertEqual(
                (
                    options.ldap__cache_time,
                    options.ldap__ignore_cert,
                    options.ldap__ignore_referrals,
                    options.ldap__ignore_multiple_results,
                    options.ldap__fallback,
                    options.admins,
                ),
                (300, True, True, True, "config", ("alice", "bob")),
            )

    def test_blank_means_absent(self) -> None:
        """Options left empty (``auth.ldap.service_dn =`` in a pypicloud server.ini) count as
        not given."""
        settings = parse_settings(
            {
                "pypi.storage": "memory",
                "pypi.db": "memory",
                "pypi.auth": "ldap",
                "auth.ldap.url": self.URL,
                "auth.ldap.user_dn_format": "uid={username},dc=x",
                "auth.ldap.service_dn": "",
                "auth.ldap.service_password": " ",
                "auth.ldap.base_dn": "",
                "auth.ldap.user_search_filter": "",
                "auth.ldap.admin_field": "",
                "auth.ldap.admin_value": "",
                "auth.ldap.fallback": "",
            }
        )
        options = settings.access.options
        self.assertIsNone(options.ldap__service_dn)
        self.assertIsNone(options.ldap__base_dn)
        self.assertIsNone(options.ldap__fallback)

    def test_environment_style_names(self) -> None:
        """PPC_AUTH_LDAP_URL arrives as auth.ldap_url and still sets auth.ldap.url."""
        settings = parse_settings(
            {
                "pypi.storage": "memory",
                "pypi.db": "memory",
                "pypi.auth": "ldap",
                "auth.ldap_url": self.URL,
                "auth.ldap_user_dn_format": "uid={username},dc=x",
            }
        )
        self.assertEqual(settings.access.options.ldap__url, self.URL)

    def test_errors(self) -> None:
        """Each mistake stops start-up with one line naming the option(s) to fix."""
        dn = {"auth__ldap__user_dn_format": "uid={username},ou=people,dc=x"}
        search = {
            "auth__ldap__base_dn": "ou=people,dc=x",
            "auth__ldap__user_search_filter": "(uid={username})",
        }
        cases: list[tuple[dict[str, str], list[str]]] = [
            ({}, ["auth.ldap.url", "required"]),
            ({"auth__ldap__url": self.URL}, ["auth.ldap.user_dn_format", "auth.ldap.base_dn"]),
            ({"auth__ldap__url": self.URL, **dn, **search}, ["not both"]),
            (
                {"auth__ldap__url": self.URL, "auth__ldap__base_dn": "dc=x"},
                ["auth.ldap.user_search_filter"],
            ),
            (
                {"auth__ldap__url": self.URL, **search, "auth__ldap__admin_group_dn": "cn=a,dc=x"},
                ["auth.ldap.admin_group_dn", "auth.ldap.user_dn_format"],
            ),
            (
                {"auth__ldap__url": self.URL, **dn, "auth__ldap__admin_field": "memberOf"},
                ["auth.ldap.admin_field", "auth.ldap.admin_value"],
            ),
            (
                {"auth__ldap__url": self.URL, **dn, "auth__ldap__admin_value": "x"},
                ["auth.ldap.admin_value", "auth.ldap.admin_field"],
            ),
            (
                {"auth__ldap__url": self.URL, **dn, "auth__ldap__service_password": "pw"},
                ["auth.ldap.service_password", "auth.ldap.service_dn"],
            ),
            (
                {"auth__ldap__url": self.URL, **dn, "auth__ldap__service_username": "svc"},
                ["auth.ldap.service_username", "auth.ldap.service_dn"],
            ),
            (
                {"auth__ldap__url": self.URL, **dn, "auth__ldap__service_dn": "cn=svc,dc=x"},
                ["auth.ldap.service_password", "unauthenticated"],
            ),
            ({"auth__ldap__url": "http://ldap.example.org", **dn}, ["auth.ldap.url", "ldap://"]),
            ({"auth__ldap__url": "ldap://", **dn}, ["auth.ldap.url"]),
            ({"auth__ldap__url": "ldap://host:port", **dn}, ["auth.ldap.url"]),
            (
                {"auth__ldap__url": self.URL, "auth__ldap__user_dn_format": "uid=bob,dc=x"},
                ["auth.ldap.user_dn_format", "{username}"],
            ),
            (
                {"auth__ldap__url": self.URL, "auth__ldap__user_dn_format": "uid={user},dc=x"},
                ["auth.ldap.user_dn_format", "{username}"],
            ),
            (
                {"auth__ldap__url": self.URL, "auth__ldap__user_dn_format": "{username}"},
                ["auth.ldap.user_dn_format", "not a DN"],
            ),
            (
                {**search, "auth__ldap__url": self.URL, "auth__ldap__user_search_filter": "uid="},
                ["auth.ldap.user_search_filter"],
            ),
            (
                {
                    **search,
                    "auth__ldap__url": self.URL,
                    "auth__ldap__user_search_filter": "(uid={username}",
                },
                ["auth.ldap.user_search_filter", "not an LDAP search filter"],
            ),
            ({"auth__ldap__url": self.URL, **dn, "auth__ldap__fallback": "sql"}, ["fallback"]),
            ({"auth__ldap__url": self.URL, **dn, "auth__ldap__cache_time": "-1"}, ["cache_time"]),
            ({"auth__ldap__url": self.URL, **dn, "auth__ldap__cache_time": "soon"}, ["cache_time"]),
            ({"auth__ldap__url": self.URL, **dn, "auth__ldap__ignore_cert": "maybe"}, ["ignore"]),
            ({"auth__ldap__url": self.URL, **dn, "auth__ldap__nope": "x"}, ["auth.ldap.nope"]),
        ]
        for options, fragments in cases:
            message = options_error(**options)
            self.assertNotIn("\n", message)
            for fragment in fragments:
                self.assertIn(fragment, message, (options, message))
