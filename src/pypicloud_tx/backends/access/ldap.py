"""Logging in through an LDAP directory (``pypi.auth = ldap``), pypicloud's ``auth.ldap.*``.

LDAP decides who may log in (a password is checked by binding as the user's entry, never by
reading ``userPassword``) and who is an admin (``admin_field``/``admin_value``,
``admin_group_dn``, ``service_username``, ``auth.admins``).  Groups and package permissions
come from the configuration file's ``group.*`` and ``package.*`` lines when
``auth.ldap.fallback = config``; otherwise there are none beyond the built-in groups.

ldap3 is blocking: every call runs on the ``ldap`` thread pool, each operation on a connection
of its own (opened, bound, used, unbound), with connect and receive timeouts.  User entries
are cached for ``auth.ldap.cache_time`` seconds (forever by default, as in pypicloud); misses
are never cached, so a new directory user can log in at once.
"""

from __future__ import annotations

import ast
import contextlib
import re
import secrets
import ssl
import string
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import attrs
from ldap3 import ANONYMOUS, BASE, LEVEL, NONE, SIMPLE, SUBTREE, SYNC, Connection, Server, Tls
from ldap3.core.exceptions import (
    LDAPCommunicationError,
    LDAPException,
    LDAPInvalidDnError,
    LDAPInvalidFilterError,
    LDAPInvalidValueError,
)
from ldap3.operation.search import parse_filter
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from pypicloud_tx import __version__
from pypicloud_tx.backends._threads import RunBlocking
from pypicloud_tx.backends.access.config import ConfigAccessBackend
from pypicloud_tx.config.model import AccessLists
from pypicloud_tx.config.options import as_bool, as_int, as_list, as_str, one_line, option
from pypicloud_tx.errors import BackendUnavailable, ConfigError, PPCError
from pypicloud_tx.interfaces import IAccessBackend
from pypicloud_tx.runtime import Runtime

log = Logger()
T = TypeVar("T")

THREADS = 4
#: Seconds allowed to open a connection, and to wait for each answer on it.
TIMEOUT = 10
#: Entries per page when listing users (below the usual server size limits of 500 to 1000).
PAGE_SIZE = 200
#: At most this many users are listed (the admin pages list them all).
MAX_LISTED = 10_000
#: What a search asks for when it needs no attribute (RFC 4511 "1.1").
NO_ATTRIBUTES = ["1.1"]

# LDAP result codes (RFC 4511) that are not failures of the server.
_SUCCESS = 0
_SIZE_LIMIT_EXCEEDED = 4
_REFERRAL = 10
_NO_SUCH_OBJECT = 32
_INVALID_CREDENTIALS = 49

#: ldap3's refusals to encode a request: the input's fault, not the server's.
_UNENCODABLE = (LDAPInvalidDnError, LDAPInvalidFilterError, LDAPInvalidValueError)
#: ``(attr={username})``: an equality assertion whose whole value is the user name.
_ASSERTION = re.compile(r"\(\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*\{username\}\s*\)")
#: ``attr={username}``: a first RDN that is the user name.
_FIRST_RDN = re.compile(r"^\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*\{username\}\s*$")


# -- option parsing ------------------------------------------------------------------------------


def _ldap_url(text: str) -> str:
    value = text.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        raise ValueError(f"{value!r} is not an LDAP URL (e.g. ldap://10.0.0.1:389)") from None
    if parts.scheme.lower() not in ("ldap", "ldaps") or not parts.hostname:
        raise ValueError(
            f"{value!r} is not an LDAP URL: use ldap://host[:port] or ldaps://host[:port]"
        )
    if parts.path.strip("/") or parts.query or parts.username:
        raise ValueError(f"{value!r}: give only the scheme, host and port")
    return value


def _dn(text: str) -> str:
    value = text.strip()
    if "=" not in value:
        raise ValueError(f"{value!r} is not a DN (e.g. cn=pypicloud,ou=services,dc=example,dc=org)")
    return value


def _template(text: str) -> str:
    """A string with ``{username}`` fields, as pypicloud formats it (``{{`` is a brace)."""
    value = text.strip()
    fields = set()
    try:
        for _, field, spec, conversion in string.Formatter().parse(value):
            if field is not None:
                if field != "username" or spec or conversion:
                    raise ValueError
                fields.add(field)
    except ValueError:
        raise ValueError(
            f"{value!r}: the only placeholder allowed is {{username}} (write a brace as {{{{)"
        ) from None
    if not fields:
        raise ValueError(f"{value!r} has no {{username}} placeholder")
    return value


def _dn_format(text: str) -> str:
    value = _template(text)
    _dn(value)
    return value


def _search_filter(text: str) -> str:
    value = _template(text)
    try:
        parse_filter(value.format(username="x"), None, True, False, None, False)
    except LDAPException:
        raise ValueError(
            f"{value!r} is not an LDAP search filter (e.g. (uid={{username}}) with parentheses)"
        ) from None
    return value


def _or_none(parse: Callable[[str], str]) -> Callable[[str], str | None]:
    """``parse``, except that an empty value means the option is not given (a pypicloud
    ``server.ini`` may carry ``auth.ldap.service_dn =``)."""

    def parse_or_none(text: str) -> str | None:
        return parse(text) if text.strip() else None

    return parse_or_none


def _lines(text: str) -> tuple[str, ...]:
    """One value per line; a value may contain spaces (``cn=pypicloud admins,dc=...``)."""
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _cache_time(text: str) -> int:
    value = as_int(text)
    if value < 0:
        raise ValueError(f"{text.strip()!r} must not be negative")
    return value


def _fallback(text: str) -> str | None:
    value = text.strip().lower()
    if value in ("", "none"):
        return None
    if value != "config":
        raise ValueError(
            f"{text.strip()!r} is not supported: the only fallback is config (the user., "
            "group. and package. lines of this file)"
        )
    return value


# -- the blocking side ---------------------------------------------------------------------------


@attrs.frozen
class LDAPUser:
    """A directory user as this backend sees it."""

    username: str
    dn: str
    admin: bool


def _unescape_dn_value(text: str) -> str:
    """An RDN value with RFC 4514 escapes (``\\,`` and ``\\2C``) resolved."""
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            pair = text[i + 1 : i + 3]
            if len(pair) == 2 and all(c in string.hexdigits for c in pair):
                out.append(int(pair, 16))
                i += 3
                continue
            out += text[i + 1].encode()
            i += 2
            continue
        out += char.encode()
        i += 1
    return out.decode("utf-8", "replace")


def _plausible_username(username: str) -> bool:
    """Names no directory entry can have (empty, control characters) are never looked up."""
    return bool(username) and not any(ord(c) < 32 or ord(c) == 127 for c in username)


@attrs.frozen
class _Listing:
    """Where and how to find every user: the search, and which attribute names them."""

    base: str
    scope: str
    filter: str
    name_attribute: str
    #: The user name is the value of the entry's first RDN (user_dn_format) rather than
    #: every value of ``name_attribute`` (base_dn + user_search_filter).
    from_dn: bool


@attrs.frozen
class Directory:
    """The blocking conversation with the LDAP server: call its methods off the reactor.

    Every method opens its own connection and closes it before returning, so there is no
    shared connection state between threads and no reconnect logic: a server restart costs
    nothing.  Failures to reach or use the server raise :class:`BackendUnavailable`.
    """

    url: str
    service_dn: str | None = None
    service_password: str = attrs.field(default="", repr=False)
    user_dn_format: str | None = None
    base_dn: str | None = None
    user_search_filter: str | None = None
    admin_field: str | None = None
    admin_values: frozenset[str] = frozenset()  # casefolded
    admin_group_dn: str | None = None
    ignore_cert: bool = False
    ignore_referrals: bool = False
    ignore_multiple_results: bool = False
    timeout: int = TIMEOUT  # whole seconds: ldap3 packs it into a C struct

    # -- connections ---------------------------------------------------------------------------

    def _server(self) -> Any:
        parts = urlsplit(self.url)
        secure = parts.scheme.lower() == "ldaps"
        host = parts.hostname or ""
        if self.ignore_cert:
            tls = Tls(validate=ssl.CERT_NONE)
        else:
            tls = Tls(validate=ssl.CERT_REQUIRED, sni=host)
        return Server(
            host,
            port=parts.port or (636 if secure else 389),
            use_ssl=secure,
            tls=tls,
            get_info=NONE,
            connect_timeout=self.timeout,
            # Referrals are followed with anonymous binds (as libldap does): the service
            # account's password never goes to a server named by the directory's data.
            allowed_referral_hosts=[("*", False)],
        )

    def _unavailable(self, error: Exception) -> BackendUnavailable:
        reason = _reason(error)
        if isinstance(error, LDAPCommunicationError):
            check = "auth.ldap.url"
            if "certificate" in reason.lower():
                check += " and the server's certificate, or set auth.ldap.ignore_cert"
            return BackendUnavailable(
                f"cannot reach the LDAP server {self.url} (check {check}): {reason}"
            )
        return BackendUnavailable(f"the LDAP server {self.url} failed: {reason}")

    def _bound(self, dn: str | None, password: str) -> Any | None:
        """A connection bound as ``dn`` (anonymously for ``None``), or ``None`` when the
        server refuses the credentials."""
        conn = Connection(
            self._server(),
            user=dn,
            password=password if dn else None,
            authentication=SIMPLE if dn else ANONYMOUS,
            client_strategy=SYNC,
            read_only=True,
            receive_timeout=self.timeout,
            auto_referrals=not self.ignore_referrals,
            # The server parses DNs; ldap3's own parser refuses "ou=users, dc=example".
            check_names=False,
            raise_exceptions=False,
        )
        try:
            if conn.bind():
                return conn
            result = conn.result or {}
        except LDAPException as e:
            _close(conn)
            raise self._unavailable(e) from None
        _close(conn)
        if result.get("result") == _INVALID_CREDENTIALS:
            return None
        if dn is not None and dn != self.service_dn:
            # The account exists but may not log in now (locked, disabled, expired password):
            # a refusal for this user, not a broken server.
            log.info(
                "the LDAP server refused a bind as {dn}: {reason}",
                dn=dn,
                reason=result.get("description", "unknown error"),
            )
            return None
        raise BackendUnavailable(self._refusal(dn, result))

    def _refusal(self, dn: str | None, result: Mapping[str, Any]) -> str:
        why = one_line(f"{result.get('description', '')} {result.get('message') or ''}".strip())
        if dn is None:
            return (
                f"the LDAP server {self.url} refused an anonymous bind ({why}): set "
                "auth.ldap.service_dn and auth.ldap.service_password"
            )
        return (
            f"the LDAP server {self.url} refused the service account ({why}): check "
            "auth.ldap.service_dn and auth.ldap.service_password"
        )

    def _service(self) -> Any:
        conn = self._bound(self.service_dn, self.service_password)
        if conn is None:
            raise BackendUnavailable(
                self._refusal(self.service_dn, {"description": "invalidCredentials"})
            )
        return conn

    def _search(
        self,
        conn: Any,
        base: str,
        scope: str,
        search_filter: str,
        attributes: list[str],
        size_limit: int = 0,
        paged_cookie: bytes | None = None,
    ) -> tuple[list[tuple[str, Mapping[str, Any]]], dict[str, Any]]:
        """``([(dn, attributes)], result)``; a base that does not exist gives no entries."""
        try:
            conn.search(
                base,
                search_filter,
                search_scope=scope,
                attributes=attributes,
                size_limit=size_limit,
                time_limit=int(self.timeout),
                paged_size=PAGE_SIZE if paged_cookie is not None else None,
                paged_cookie=paged_cookie or None,
            )
        except _UNENCODABLE:
            raise  # the caller's input, not the server
        except LDAPException as e:
            raise self._unavailable(e) from None
        result = conn.result or {}
        code = result.get("result")
        if code not in (_SUCCESS, _SIZE_LIMIT_EXCEEDED, _REFERRAL, _NO_SUCH_OBJECT):
            why = f"{result.get('description')} {result.get('message') or ''}".strip()
            raise BackendUnavailable(
                f"the LDAP server {self.url} refused a search under {base}: {one_line(why)}"
            )
        entries = [
            (str(r["dn"]), r.get("attributes") or {})
            for r in conn.response or ()
            if r.get("type") == "searchResEntry"
        ]
        return entries, result

    # -- operations ----------------------------------------------------------------------------

    def check(self) -> None:
        """Bind as the service account (or anonymously).

        :raises BackendUnavailable: when that fails.
        """
        _close(self._service())

    def bind(self, dn: str, password: str) -> bool:
        """Whether ``password`` is the password of the entry ``dn`` (a bind as it succeeds).

        An empty password is refused here, never sent: LDAP treats a simple bind with a DN
        and no password as an *unauthenticated* bind, which many servers let succeed.
        """
        if not password or not dn:
            return False
        conn = self._bound(dn, password)
        if conn is None:
            return False
        _close(conn)
        return True

    def nobody_dn(self) -> str:
        """A DN where no entry can be: binding to it fails as a wrong password does."""
        nobody = "ppc-no-such-user-" + secrets.token_hex(8)
        if self.user_dn_format is not None:
            return self.user_dn_format.format(username=escape_rdn(nobody))
        return f"cn={nobody},{self.base_dn}"

    def find_user(self, username: str) -> LDAPUser | None:
        """The entry of ``username``, or ``None`` when there is none (or more than one and
        ``ignore_multiple_results`` is off)."""
        if not _plausible_username(username):
            return None
        attributes = [self.admin_field] if self.admin_field else NO_ATTRIBUTES
        conn = self._service()
        try:
            try:
                if self.user_dn_format is not None:
                    dn = self.user_dn_format.format(username=escape_rdn(username))
                    entries, _ = self._search(conn, dn, BASE, "(objectClass=*)", attributes)
                else:
                    assert self.base_dn is not None and self.user_search_filter is not None
                    search_filter = self.user_search_filter.format(
                        username=escape_filter_chars(username)
                    )
                    # Two entries are enough to know that the name is ambiguous.
                    entries, result = self._search(
                        conn, self.base_dn, SUBTREE, search_filter, attributes, size_limit=2
                    )
                    if result.get("result") == _NO_SUCH_OBJECT:
                        log.warn(
                            "auth.ldap.base_dn {base_dn} does not exist on {url}",
                            base_dn=self.base_dn,
                            url=self.url,
                        )
            except _UNENCODABLE:
                return None  # a name ldap3 cannot even encode matches no entry
            if not entries:
                return None
            if len(entries) > 1:
                dns = [dn for dn, _ in entries]
                if not self.ignore_multiple_results:
                    log.error(
                        "more than one LDAP entry matches {username} ({dns}, maybe more): "
                        "refusing it (auth.ldap.ignore_multiple_results = true would use "
                        "the first)",
                        username=username,
                        dns=dns,
                    )
                    return None
                log.warn(
                    "more than one LDAP entry matches {username} ({dns}, maybe more): "
                    "using the first",
                    username=username,
                    dns=dns,
                )
            dn, values = entries[0]
            return LDAPUser(username, dn, self._is_admin(conn, dn, values))
        finally:
            _close(conn)

    def _is_admin(self, conn: Any, dn: str, values: Mapping[str, Any]) -> bool:
        """The entry has an ``admin_field`` value among ``admin_value`` (compared without
        regard to case), or is a member of ``admin_group_dn``."""
        if self.admin_field:
            found = values.get(self.admin_field) or []
            if isinstance(found, (str, bytes)):
                found = [found]
            if any(_text(v).casefold() in self.admin_values for v in found):
                return True
        if self.admin_group_dn:
            # The server matches the DNs (case, spacing, escapes) by its own rules.
            member = escape_filter_chars(dn)
            try:
                entries, result = self._search(
                    conn,
                    self.admin_group_dn,
                    BASE,
                    f"(|(member={member})(uniqueMember={member}))",
                    NO_ATTRIBUTES,
                )
            except _UNENCODABLE:
                return False
            if result.get("result") == _NO_SUCH_OBJECT:
                log.warn(
                    "auth.ldap.admin_group_dn {group} does not exist on {url}",
                    group=self.admin_group_dn,
                    url=self.url,
                )
            return bool(entries)
        return False

    def listing(self) -> _Listing | None:
        """How to list every user, or ``None`` when the configuration does not say."""
        if self.user_dn_format is not None:
            first, rest = _split_first_rdn(self.user_dn_format)
            match = _FIRST_RDN.match(first)
            if match is None or "{username}" in rest:
                return None
            attribute = match.group(1)
            return _Listing(rest.format(), LEVEL, f"({attribute}=*)", attribute, True)
        assert self.base_dn is not None and self.user_search_filter is not None
        found = _ASSERTION.findall(self.user_search_filter)
        if not found or len(found) != self.user_search_filter.count("{username}"):
            return None
        return _Listing(
            self.base_dn, SUBTREE, self.user_search_filter.format(username="*"), found[0], False
        )

    def list_users(self) -> list[LDAPUser] | None:
        """Every user the directory holds (up to :data:`MAX_LISTED`), or ``None`` when the
        configuration gives no way to list them."""
        plan = self.listing()
        if plan is None:
            return None
        attributes = [plan.name_attribute] + ([self.admin_field] if self.admin_field else [])
        conn = self._service()
        try:
            found: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
            for dn, values in self._paged(conn, plan, attributes):
                for name in self._names(plan, dn, values):
                    found.setdefault(name, []).append((dn, values))
            users = []
            for name, entries in sorted(found.items()):
                if len(entries) == 1:
                    dn, values = entries[0]
                    users.append(LDAPUser(name, dn, self._is_admin(conn, dn, values)))
                    continue
                # An ambiguous name: the same rule as at login (and the same log line).
                user = self.find_user(name)
                if user is not None:
                    users.append(user)
            return users
        finally:
            _close(conn)

    def _paged(
        self, conn: Any, plan: _Listing, attributes: list[str]
    ) -> Iterable[tuple[str, Mapping[str, Any]]]:
        cookie = b""
        count = 0
        while True:
            entries, result = self._search(
                conn, plan.base, plan.scope, plan.filter, attributes, paged_cookie=cookie
            )
            for entry in entries:
                if count >= MAX_LISTED:
                    log.warn(
                        "more than {limit} LDAP users: listing only the first {limit}",
                        limit=MAX_LISTED,
                    )
                    return
                count += 1
                yield entry
            try:
                cookie = result["controls"]["1.2.840.113556.1.4.319"]["value"]["cookie"]
            except (KeyError, TypeError):
                cookie = b""
            if not cookie:
                return

    @staticmethod
    def _names(plan: _Listing, dn: str, values: Mapping[str, Any]) -> list[str]:
        if plan.from_dn:
            try:
                attribute, value, separator = parse_dn(dn)[0]
            except (LDAPInvalidDnError, IndexError):
                return []
            if attribute.lower() != plan.name_attribute.lower() or separator == "+":
                return []
            return [_unescape_dn_value(value)]
        found = values.get(plan.name_attribute) or []
        if isinstance(found, (str, bytes)):
            found = [found]
        return [name for name in (_text(v) for v in found) if _plausible_username(name)]


def _reason(error: Exception) -> str:
    """The message of an ldap3 error, unwrapped: ldap3 nests the socket error's text in the
    ``repr`` of a tuple, sometimes twice (``("('socket ssl wrapping error: ...',)",)``)."""
    text = str(error)
    for _ in range(3):
        if not text.startswith("("):
            break
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            break
        if not isinstance(parsed, tuple) or not parsed:
            break
        text = str(parsed[0])
    return one_line(text) or type(error).__name__


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _close(conn: Any) -> None:
    with contextlib.suppress(LDAPException):
        conn.unbind()


def _split_first_rdn(dn: str) -> tuple[str, str]:
    """``("uid={username}", "ou=people,dc=example")`` from the DN template (an escaped comma
    does not split)."""
    escaped = False
    for i, char in enumerate(dn):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            return dn[:i], dn[i + 1 :].strip()
    return dn, ""


# -- the backend ---------------------------------------------------------------------------------


@implementer(IAccessBackend)
class LDAPAccessBackend:
    """Logins and admin status from an LDAP directory; groups and package permissions from
    the config file (``auth.ldap.fallback = config``) or none.  Read-only."""

    @attrs.frozen
    class Options:
        # parse_options maps the field ldap__url to the option name ldap.url (auth.ldap.url).
        ldap__url: str = option(_ldap_url, doc="ldap:// or ldaps:// URL with host and port")
        ldap__service_dn: str | None = option(
            _or_none(_dn), default=None, doc="DN to bind as for searches (anonymous when absent)"
        )
        ldap__service_password: str | None = option(
            _or_none(as_str), default=None, doc="Password of the service account"
        )
        ldap__service_username: str | None = option(
            _or_none(as_str),
            default=None,
            doc="A user name that logs in as the service account (admin)",
        )
        ldap__user_dn_format: str | None = option(
            _or_none(_dn_format),
            default=None,
            doc="DN of a user, e.g. uid={username},ou=people,dc=org",
        )
        ldap__base_dn: str | None = option(
            _or_none(_dn), default=None, doc="Where to search for users"
        )
        ldap__user_search_filter: str | None = option(
            _or_none(_search_filter),
            default=None,
            doc="Filter finding one user, e.g. (uid={username})",
        )
        ldap__admin_field: str | None = option(
            _or_none(as_str), default=None, doc="Attribute of the user entry that marks admins"
        )
        ldap__admin_value: tuple[str, ...] = option(
            _lines, default=(), doc="Values of admin_field that make an admin (one per line)"
        )
        ldap__admin_group_dn: str | None = option(
            _or_none(_dn), default=None, doc="A group (groupOfNames/groupOfUniqueNames) of admins"
        )
        ldap__cache_time: int | None = option(
            _cache_time, default=None, doc="Seconds to cache user entries (default: forever)"
        )
        ldap__ignore_cert: bool = option(
            as_bool, default=False, doc="Do not verify the server's TLS certificate"
        )
        ldap__ignore_referrals: bool = option(as_bool, default=False, doc="Do not follow referrals")
        ldap__ignore_multiple_results: bool = option(
            as_bool, default=False, doc="Use the first entry when several match a user"
        )
        ldap__fallback: str | None = option(
            _fallback, default=None, doc="config: groups and permissions from this file"
        )
        admins: tuple[str, ...] = option(as_list, default=(), doc="Users with admin rights")

        def __attrs_post_init__(self) -> None:
            by_dn = self.ldap__user_dn_format is not None
            by_search = self.ldap__base_dn is not None or self.ldap__user_search_filter is not None
            if by_dn and by_search:
                raise ConfigError(
                    "auth.ldap.user_dn_format: give either it or auth.ldap.base_dn with "
                    "auth.ldap.user_search_filter, not both"
                )
            if not by_dn and not by_search:
                raise ConfigError(
                    "auth.ldap: say how to find users: auth.ldap.user_dn_format, or "
                    "auth.ldap.base_dn with auth.ldap.user_search_filter"
                )
            if by_search and (self.ldap__base_dn is None or self.ldap__user_search_filter is None):
                missing = "base_dn" if self.ldap__base_dn is None else "user_search_filter"
                raise ConfigError(
                    f"auth.ldap.{missing}: required with auth.ldap.base_dn and "
                    "auth.ldap.user_search_filter (give both)"
                )
            if self.ldap__admin_group_dn is not None and not by_dn:
                raise ConfigError(
                    "auth.ldap.admin_group_dn: needs auth.ldap.user_dn_format (use "
                    "auth.ldap.admin_field and auth.ldap.admin_value with base_dn)"
                )
            if bool(self.ldap__admin_field) != bool(self.ldap__admin_value):
                given, missing = (
                    ("admin_field", "admin_value")
                    if self.ldap__admin_field
                    else ("admin_value", "admin_field")
                )
                raise ConfigError(f"auth.ldap.{given}: needs auth.ldap.{missing} as well")
            if self.ldap__service_dn is None:
                for name in ("service_password", "service_username"):
                    if getattr(self, f"ldap__{name}") is not None:
                        raise ConfigError(f"auth.ldap.{name}: needs auth.ldap.service_dn")
            elif not self.ldap__service_password:
                raise ConfigError(
                    "auth.ldap.service_password: required with auth.ldap.service_dn (an empty "
                    "password would be an unauthenticated bind)"
                )

    def __init__(
        self,
        directory: Directory,
        run_blocking: RunBlocking,
        clock: IReactorTime | None = None,
        cache_time: int | None = None,
        admins: Iterable[str] = (),
        service_username: str | None = None,
        fallback: IAccessBackend | None = None,
    ) -> None:
        self._directory = directory
        self._run_blocking = run_blocking
        self._clock = clock
        self._cache_time = cache_time
        self._admins = frozenset(admins)
        self._service_username = service_username
        self._fallback = fallback
        #: username -> (entry, expiry or None for never); touched on the reactor thread only.
        self._cache: dict[str, tuple[LDAPUser, float | None]] = {}

    @classmethod
    def from_config(cls, options: Options, runtime: Runtime) -> LDAPAccessBackend:
        lists = getattr(runtime.settings, "access_lists", None) or AccessLists()
        run_blocking = runtime.threads("ldap", THREADS)
        fallback = None
        if options.ldap__fallback == "config":
            # Only its rules are used (never its passwords), so it needs no pool of its own.
            fallback = ConfigAccessBackend(lists, options.admins, run_blocking)
        elif lists.groups or lists.packages:
            log.warn(
                "group.* and package.* lines are ignored with pypi.auth = ldap unless "
                "auth.ldap.fallback = config"
            )
        directory = Directory(
            url=options.ldap__url,
            service_dn=options.ldap__service_dn,
            service_password=options.ldap__service_password or "",
            user_dn_format=options.ldap__user_dn_format,
            base_dn=options.ldap__base_dn,
            user_search_filter=options.ldap__user_search_filter,
            admin_field=options.ldap__admin_field,
            admin_values=frozenset(v.casefold() for v in options.ldap__admin_value),
            admin_group_dn=options.ldap__admin_group_dn,
            ignore_cert=options.ldap__ignore_cert,
            ignore_referrals=options.ldap__ignore_referrals,
            ignore_multiple_results=options.ldap__ignore_multiple_results,
        )
        return cls(
            directory,
            run_blocking,
            clock=runtime.reactor,
            cache_time=options.ldap__cache_time,
            admins=options.admins,
            service_username=options.ldap__service_username,
            fallback=fallback,
        )

    def start(self) -> Deferred[None]:
        """Check the server once, to tell the operator early; never fails: logins answer
        "unavailable" until the server can be used."""

        async def check() -> None:
            healthy, reason = await self.check_health()
            if not healthy:
                log.warn("LDAP is not usable yet: {reason}", reason=reason)

        return Deferred.fromCoroutine(check())

    # -- helpers ---------------------------------------------------------------------------------

    def _call(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        return self._run_blocking(f, *args)

    def _now(self) -> float:
        return self._clock.seconds() if self._clock is not None else time.monotonic()

    def _remember(self, user: LDAPUser) -> None:
        expiry = None if self._cache_time is None else self._now() + self._cache_time
        self._cache[user.username] = (user, expiry)

    def _service_user(self) -> LDAPUser | None:
        if self._service_username is None or self._directory.service_dn is None:
            return None
        return LDAPUser(self._service_username, self._directory.service_dn, True)

    async def _lookup(self, username: str) -> LDAPUser | None:
        service = self._service_user()
        if service is not None and username == service.username:
            return service
        cached = self._cache.get(username)
        if cached is not None:
            user, expiry = cached
            if expiry is None or self._now() < expiry:
                return user
            del self._cache[username]
        found = await self._call(self._directory.find_user, username)
        if found is not None:
            self._remember(found)
        return found

    def _admin(self, user: LDAPUser) -> bool:
        return user.admin or user.username in self._admins

    async def _data(self, user: LDAPUser) -> dict[str, Any]:
        return {
            "username": user.username,
            "admin": self._admin(user),
            "groups": sorted(await self.groups(user.username)),
        }

    async def _all_users(self) -> list[LDAPUser]:
        listed = await self._call(self._directory.list_users)
        if listed is None:
            # No way to search for everyone: the users this process knows of.
            known = set(self._cache) | self._admins
            if self._fallback is not None:
                entries = cast(list[dict[str, Any]], await self._fallback.user_data(None))
                known.update(entry["username"] for entry in entries)
                for group in await self._fallback.groups(None):
                    known.update(await self._fallback.group_members(group))
            listed = []
            for name in sorted(known):
                user = await self._lookup(name)
                if user is not None:
                    listed.append(user)
        else:
            for user in listed:
                self._remember(user)
        users = {u.username: u for u in listed}
        service = self._service_user()
        if service is not None:
            users[service.username] = service
        return [users[name] for name in sorted(users)]

    # -- IAccessBackend --------------------------------------------------------------------------

    def verify_user(self, username: str, password: str) -> Deferred[bool]:
        async def verify() -> bool:
            if not password:
                return False  # never an unauthenticated bind
            user = await self._lookup(username)
            if user is None:
                # A bind that must fail, so that an unknown name costs the same round trip
                # as a wrong password (the answer time must not say who exists).
                await self._call(self._directory.bind, self._directory.nobody_dn(), password)
                return False
            return await self._call(self._directory.bind, user.dn, password)

        return Deferred.fromCoroutine(verify())

    def groups(self, username: str | None = None) -> Deferred[list[str]]:
        if self._fallback is not None:
            return self._fallback.groups(username)
        return succeed([])

    def group_members(self, group: str) -> Deferred[list[str]]:
        if self._fallback is not None:
            return self._fallback.group_members(group)
        return succeed([])

    def is_admin(self, username: str) -> Deferred[bool]:
        async def admin() -> bool:
            if username in self._admins:
                return True
            user = await self._lookup(username)
            return user is not None and user.admin

        return Deferred.fromCoroutine(admin())

    def package_acls(self) -> Deferred[Mapping[str, Mapping[str, frozenset[str]]]]:
        if self._fallback is not None:
            return self._fallback.package_acls()
        return succeed({})

    def user_permissions(self, package: str) -> Deferred[dict[str, frozenset[str]]]:
        if self._fallback is not None:
            return self._fallback.user_permissions(package)
        return succeed({})

    def group_permissions(self, package: str) -> Deferred[dict[str, frozenset[str]]]:
        if self._fallback is not None:
            return self._fallback.group_permissions(package)
        return succeed({})

    def user_data(self, username: str | None = None) -> Deferred[object]:
        async def data() -> object:
            if username is None:
                return [await self._data(u) for u in await self._all_users()]
            user = await self._lookup(username)
            return None if user is None else await self._data(user)

        return Deferred.fromCoroutine(data())

    def check_health(self) -> Deferred[tuple[bool, str]]:
        async def health() -> tuple[bool, str]:
            try:
                await self._call(self._directory.check)
            except PPCError as e:
                return (False, e.message)
            return (True, "")

        return Deferred.fromCoroutine(health())

    def dump(self) -> Deferred[dict[str, object]]:
        """pypicloud's export format.  Users carry no ``password``: LDAP keeps the passwords
        and this backend never reads them."""

        async def dump() -> dict[str, object]:
            users = [
                {"username": u.username, "admin": self._admin(u)} for u in await self._all_users()
            ]
            groups: object = {}
            packages: object = {"users": {}, "groups": {}}
            if self._fallback is not None:
                rules = await self._fallback.dump()
                groups, packages = rules["groups"], rules["packages"]
            return {
                "allow_register": False,
                "version": __version__,
                "users": users,
                "groups": groups,
                "packages": packages,
            }

        return Deferred.fromCoroutine(dump())
