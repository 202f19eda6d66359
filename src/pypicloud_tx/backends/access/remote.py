"""Users, groups and permissions answered by another HTTP server (``pypi.auth = remote``).

pypicloud's ``RemoteAccessBackend`` (manual §1.6.6): every question is one ``GET`` to
``auth.backend_server`` followed by an ``auth.uri.*`` path, with the query parameters pypicloud
sends (``username``, ``password``, ``group``, ``package``) and HTTP Basic credentials from
``auth.user``/``auth.password``; the server answers JSON.  A server written for pypicloud works
unchanged.  As in pypicloud, ``verify`` receives the password in the query string: use
``https://`` for anything but a server on the same host.

The backend is read-only: the remote server owns its users.  Questions the manual's endpoints
do not answer in one call (every package permission, all users with their groups, the export)
are assembled from several calls, made concurrently over at most :data:`CONNECTIONS`
connections.  Nothing is cached here; concurrent :meth:`~RemoteAccessBackend.package_acls`
calls share one round of requests.

Failures become :class:`~pypicloud_tx.errors.BackendUnavailable` with one line naming the URL
(never the query string, which may hold a password) and the option to check.  A ``404`` to a
question about one user, group or package means "none"; a ``404`` anywhere else means a wrong
``auth.uri.*`` path and is an error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    FirstError,
    ensureDeferred,
    gatherResults,
    succeed,
)
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseDone,
)
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from pypicloud_tx import __version__
from pypicloud_tx.config.options import as_str, option
from pypicloud_tx.domain.names import canonical
from pypicloud_tx.errors import BackendUnavailable, ConfigError
from pypicloud_tx.interfaces import READ, WRITE, IAccessBackend
from pypicloud_tx.netfailures import cancelled, reason
from pypicloud_tx.runtime import Runtime

log = Logger()
T = TypeVar("T")

#: The largest answer read, in bytes: a user list of this size is a misconfigured server.
MAX_BODY = 32 * 2**20
#: At most this many requests to the remote server at once (and as many kept-alive connections).
CONNECTIONS = 10
#: The groups every caller (or every logged-in caller) is in; the server may grant them rights.
BUILTIN_GROUPS = ("everyone", "authenticated")
_PERMS = frozenset({READ, WRITE})

#: Each endpoint with its manual default path.
ENDPOINTS: Mapping[str, str] = {
    "verify": "/verify",
    "groups": "/groups",
    "group_members": "/group_members",
    "admin": "/admin",
    "group_permissions": "/group_permissions",
    "user_permissions": "/user_permissions",
    "user_package_permissions": "/user_package_permissions",
    "group_package_permissions": "/group_package_permissions",
    "user_data": "/user_data",
}


class _Missing:
    """A lookup answered 404: the user, group or package is unknown to the server."""


MISSING = _Missing()


# -- options ----------------------------------------------------------------------------------


def _server(text: str) -> str:
    value = text.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:
        # Never echo the value: it holds a password.
        raise ValueError("put the credentials in auth.user and auth.password, not in the URL")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text.strip()!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{text.strip()!r} must not have a query or fragment")
    return value


def _path(text: str) -> str:
    value = text.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{text!r} is not a URL path (e.g. /verify)")
    return value if value.startswith("/") else "/" + value


def _secret(text: str) -> str:
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text.strip()!r} must be a number of seconds above zero")
    return value


def _cache_seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text.strip()!r} must be 0 (no reuse) or a number of seconds")
    return value


def _uri(name: str) -> Any:
    return option(
        _path, default=ENDPOINTS[name], doc=f"Path of the {name} endpoint under auth.backend_server"
    )


# -- answers ----------------------------------------------------------------------------------


class _Shape(Exception):
    """The server answered JSON, but not the JSON the manual describes."""


def _names(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Shape("a list of names")
    return value


def _flag(value: Any) -> bool:
    # pypicloud only tests the answer's truth; accept 0 and 1 as well as false and true.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _Shape("true or false")


def _perms(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Shape("permission lists such as ['read', 'write']")
    return frozenset(value) & _PERMS


def _grants(value: Any) -> dict[str, frozenset[str]]:
    """``{name: [perms]}`` -> ``{name: perms}``, leaving out empty grants."""
    if not isinstance(value, dict):
        raise _Shape("an object mapping names to permission lists")
    grants = {str(name): _perms(perms) for name, perms in value.items()}
    return {name: perms for name, perms in grants.items() if perms}


def _package_grants(value: Any) -> dict[str, frozenset[str]]:
    """``[{"package", "permissions"}]`` -> ``{canonical package: perms}``."""
    if not isinstance(value, list):
        raise _Shape("a list of {'package': ..., 'permissions': [...]} objects")
    grants: dict[str, frozenset[str]] = {}
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("package"), str):
            raise _Shape("a list of {'package': ..., 'permissions': [...]} objects")
        perms = _perms(entry.get("permissions"))
        if perms:
            package = canonical(entry["package"])
            grants[package] = grants.get(package, frozenset()) | perms
    return grants


def _user(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("username"), str):
        raise _Shape("user objects with 'username' and 'admin'")
    user: dict[str, Any] = {"username": value["username"], "admin": _flag(value.get("admin"))}
    if "groups" in value:
        user["groups"] = sorted(set(_names(value["groups"])))
    return user


def _user_or_none(value: Any) -> dict[str, Any] | None:
    return None if value is None else _user(value)


class _TooLarge(Exception):
    """The answer's body exceeds :data:`MAX_BODY`."""


def _timed_out(result: object, timeout: float) -> NoReturn:
    # Whatever the cancelled exchange failed with (treq wraps the CancelledError), it was ours.
    raise DeferredTimeout(f"no answer within {timeout} s")


class _Body(Protocol):
    """Collects a response body up to ``limit`` bytes; cancelling drops the connection."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._chunks: list[bytes] = []
        self.finished: Deferred[bytes] | None = Deferred(self._cancel)

    def _cancel(self, d: Deferred[bytes]) -> None:
        # A stalled body would otherwise hold its connection open until the server gives up.
        self.finished = None
        self._drop()

    def _drop(self) -> None:
        # Body protocols get a producer proxy of the connection: stopping it closes it.
        stop = getattr(self.transport, "stopProducing", None)
        if stop is not None:
            stop()

    def dataReceived(self, data: bytes) -> None:
        if self.finished is None:
            return
        self._size += len(data)
        if self._size > self._limit:
            finished, self.finished = self.finished, None
            self._drop()
            finished.errback(_TooLarge())
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        finished, self.finished = self.finished, None
        if finished is None:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            finished.callback(b"".join(self._chunks))
        else:
            finished.errback(reason)


def _read_body(response: Any, limit: int) -> Deferred[bytes]:
    body = _Body(limit)
    assert body.finished is not None
    finished = body.finished
    response.deliverBody(body)
    return finished


# -- the backend ------------------------------------------------------------------------------


@implementer(IAccessBackend)
class RemoteAccessBackend:
    """Read-only access rules fetched over HTTP from ``auth.backend_server``."""

    @attrs.frozen
    class Options:
        backend_server: str = option(
            _server, doc="Base URL of the server answering access questions"
        )
        user: str | None = option(as_str, default=None, doc="HTTP Basic user for every call")
        password: str | None = option(
            _secret, default=None, doc="HTTP Basic password (with auth.user)"
        )
        timeout: float = option(
            _seconds, default=10.0, doc="Seconds one call may take, connecting included"
        )
        acl_cache: float = option(
            _cache_seconds,
            default=30.0,
            doc="Seconds fetched package permissions are reused (0: fetch every time)",
        )
        uri__verify: str = _uri("verify")
        uri__groups: str = _uri("groups")
        uri__group_members: str = _uri("group_members")
        uri__admin: str = _uri("admin")
        uri__group_permissions: str = _uri("group_permissions")
        uri__user_permissions: str = _uri("user_permissions")
        uri__user_package_permissions: str = _uri("user_package_permissions")
        uri__group_package_permissions: str = _uri("group_package_permissions")
        uri__user_data: str = _uri("user_data")

    def __init__(
        self,
        client: Any,
        reactor: Any,
        server: str,
        paths: Mapping[str, str] | None = None,
        credentials: tuple[str, str] | None = None,
        timeout: float = 10.0,
        pool: HTTPConnectionPool | None = None,
        max_body: int = MAX_BODY,
        acl_cache: float = 0.0,
    ) -> None:
        """
        :param client: a :class:`treq.client.HTTPClient` (or ``treq.testing.StubTreq``).
        :param reactor: the clock every call's timeout runs on.
        :param server: the base URL, without a trailing slash.
        :param paths: endpoint name -> path, for the endpoints not at their manual default.
        :param credentials: HTTP Basic ``(user, password)`` sent with every call.
        :param pool: the client's connection pool, closed by :meth:`stop`.
        :param max_body: the largest answer accepted, in bytes.
        :param acl_cache: seconds a fetched :meth:`package_acls` answer is reused.
        """
        self._client = client
        self._reactor = reactor
        self._server = server.rstrip("/")
        self._paths = {
            name: path if path.startswith("/") else "/" + path
            for name, path in {**ENDPOINTS, **(paths or {})}.items()
        }
        self._credentials = credentials
        self._timeout = timeout
        self._pool = pool
        self._max_body = max_body
        self._slots = DeferredSemaphore(CONNECTIONS)
        self._acl_waiters: list[Deferred[Mapping[str, Mapping[str, frozenset[str]]]]] = []
        self._acl_cache = acl_cache
        self._acls: tuple[float, Mapping[str, Mapping[str, frozenset[str]]]] | None = None

    @classmethod
    def from_config(cls, options: Options, runtime: Runtime) -> RemoteAccessBackend:
        """A backend with its own pool of kept-alive connections on ``runtime.reactor``.

        :raises ConfigError: when ``auth.password`` is given without ``auth.user``.
        """
        if options.password is not None and options.user is None:
            raise ConfigError("auth.password: set auth.user too (HTTP Basic needs both)")
        pool = HTTPConnectionPool(runtime.reactor, persistent=True)
        pool.maxPersistentPerHost = CONNECTIONS
        agent = Agent(runtime.reactor, connectTimeout=options.timeout, pool=pool)
        credentials = None
        if options.user is not None:
            credentials = (options.user, options.password or "")
        return cls(
            client=HTTPClient(agent),
            reactor=runtime.reactor,
            server=options.backend_server,
            paths={name: getattr(options, f"uri__{name}") for name in ENDPOINTS},
            credentials=credentials,
            timeout=options.timeout,
            pool=pool,
            acl_cache=options.acl_cache,
        )

    def stop(self) -> Deferred[None]:
        """Close the kept-alive connections to the server."""
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()  # type: ignore[no-any-return]

    # -- one call ---------------------------------------------------------------------------

    def _url(self, endpoint: str) -> str:
        return self._server + self._paths[endpoint]

    def _unavailable(self, endpoint: str, problem: str) -> BackendUnavailable:
        log.warn(
            "remote access server: {problem}",
            problem=problem,
            endpoint=endpoint,
            url=self._url(endpoint),
        )
        return BackendUnavailable(f"remote access server: {problem}")

    async def _exchange(self, url: str, params: list[tuple[str, str]]) -> tuple[int, str, bytes]:
        response = await self._client.get(
            url,
            params=params,
            auth=self._credentials,
            headers={"Accept": ["application/json"]},
            unbuffered=True,
        )
        body = await _read_body(response, self._max_body)
        phrase = response.phrase
        if isinstance(phrase, bytes):
            phrase = phrase.decode("latin-1")
        return response.code, phrase, body

    async def _get(
        self, endpoint: str, params: Mapping[str, str] | None = None, lookup: bool = False
    ) -> Any:
        """The JSON answer of ``endpoint``; :data:`MISSING` when a ``lookup`` answers 404.

        The timeout covers the whole exchange (connecting, the answer's headers and body),
        not the wait for a free connection slot.

        :raises BackendUnavailable: for every other failure.
        """
        url = self._url(endpoint)
        option_name = f"auth.uri.{endpoint}"
        await self._slots.acquire()
        try:
            exchange = Deferred.fromCoroutine(self._exchange(url, list((params or {}).items())))
            exchange.addTimeout(self._timeout, self._reactor, onTimeoutCancel=_timed_out)
            try:
                code, phrase, body = await exchange
            except DeferredTimeout:
                raise self._unavailable(
                    endpoint, f"{url} did not answer within {self._timeout:g} s (auth.timeout)"
                ) from None
            except _TooLarge:
                raise self._unavailable(
                    endpoint, f"{url} answered more than {self._max_body} bytes"
                ) from None
            except Exception as e:
                if cancelled(e):
                    raise CancelledError() from None  # our caller gave up: not an outage
                raise self._unavailable(
                    endpoint, f"cannot reach {url}: {reason(e)} (check auth.backend_server)"
                ) from None
        finally:
            self._slots.release()
        status = f"{code} {phrase}".strip()
        if code == 404 and lookup:
            return MISSING
        if code in (401, 403):
            raise self._unavailable(
                endpoint, f"{url} refused the request ({status}): check auth.user and auth.password"
            )
        if code == 404:
            raise self._unavailable(endpoint, f"{url} answered {status}: check {option_name}")
        if not 200 <= code < 300:
            raise self._unavailable(endpoint, f"{url} answered {status}")
        try:
            return json.loads(body)
        except ValueError:
            raise self._unavailable(
                endpoint,
                f"{url} answered {status} with a body that is not JSON (check {option_name})",
            ) from None

    async def _answer(
        self,
        endpoint: str,
        params: Mapping[str, str] | None,
        lookup: bool,
        missing: Any,
        parse: Any,
    ) -> Any:
        """:meth:`_get`, then ``parse`` the JSON (``missing`` for a 404 to a lookup).

        :raises BackendUnavailable: when the JSON is not what the manual describes.
        """
        value = await self._get(endpoint, params, lookup)
        if value is MISSING:
            return missing
        try:
            return parse(value)
        except _Shape as e:
            raise self._unavailable(
                endpoint,
                f"{self._url(endpoint)} answered JSON that is not {e} "
                f"(check auth.uri.{endpoint} and the server)",
            ) from None

    @staticmethod
    async def _each(calls: Iterable[Coroutine[Any, Any, T] | Deferred[T]]) -> list[T]:
        """Run ``calls`` concurrently; the first failure is raised as itself and the calls
        still waiting or running are cancelled (one outage, one error, not one per call)."""
        running = [ensureDeferred(c) for c in calls]
        try:
            return await gatherResults(running, consumeErrors=True)
        except FirstError as e:
            for d in running:
                d.cancel()
            e.subFailure.raiseException()

    # -- IAccessBackend -----------------------------------------------------------------------

    def verify_user(self, username: str, password: str) -> Deferred[bool]:
        # A 404 is not "no such user" here: the manual's verify answers false for strangers,
        # so a 404 means the path is wrong and every login would fail without saying why.
        params = {"username": username, "password": password}
        return Deferred.fromCoroutine(self._answer("verify", params, False, False, _flag))

    async def _groups(self, username: str | None) -> list[str]:
        if username is None:
            return sorted(set(await self._answer("groups", None, False, [], _names)))
        found = await self._answer("groups", {"username": username}, True, [], _names)
        return sorted(set(found))

    def groups(self, username: str | None = None) -> Deferred[list[str]]:
        return Deferred.fromCoroutine(self._groups(username))

    def group_members(self, group: str) -> Deferred[list[str]]:
        return Deferred.fromCoroutine(
            self._answer("group_members", {"group": group}, True, [], _names)
        )

    def is_admin(self, username: str) -> Deferred[bool]:
        return Deferred.fromCoroutine(
            self._answer("admin", {"username": username}, True, False, _flag)
        )

    def user_permissions(self, package: str) -> Deferred[dict[str, frozenset[str]]]:
        params = {"package": canonical(package)}
        return Deferred.fromCoroutine(self._answer("user_permissions", params, True, {}, _grants))

    def group_permissions(self, package: str) -> Deferred[dict[str, frozenset[str]]]:
        params = {"package": canonical(package)}
        return Deferred.fromCoroutine(self._answer("group_permissions", params, True, {}, _grants))

    async def _user_package_permissions(self, username: str) -> dict[str, frozenset[str]]:
        params = {"username": username}
        found = await self._answer("user_package_permissions", params, True, {}, _package_grants)
        return dict(found)

    async def _group_package_permissions(self, group: str) -> dict[str, frozenset[str]]:
        params = {"group": group}
        found = await self._answer("group_package_permissions", params, True, {}, _package_grants)
        return dict(found)

    async def _all_users(self) -> list[dict[str, Any]]:
        """Every user (``username``, ``admin``) sorted by name, as the server lists them."""

        def parse(value: Any) -> list[dict[str, Any]]:
            if not isinstance(value, list):
                raise _Shape("a list of user objects")
            return [_user(v) for v in value]

        users: list[dict[str, Any]] = await self._answer("user_data", None, False, [], parse)
        return sorted(users, key=lambda u: u["username"])

    async def _members(self, groups: Iterable[str]) -> dict[str, list[str]]:
        groups = list(groups)
        members = await self._each(self.group_members(g) for g in groups)
        return dict(zip(groups, members, strict=True))

    async def _user_data(self, username: str | None) -> object:
        if username is not None:
            user = await self._answer(
                "user_data", {"username": username}, True, None, _user_or_none
            )
            if user is None:
                return None
            if "groups" not in user:
                user["groups"] = await self._groups(username)
            return {"username": user["username"], "admin": user["admin"], "groups": user["groups"]}
        users = await self._all_users()
        if any("groups" not in u for u in users):
            # The manual's list has no groups: invert the memberships, one call per group.
            by_user: dict[str, set[str]] = {}
            for group, members in (await self._members(await self._groups(None))).items():
                for member in members:
                    by_user.setdefault(member, set()).add(group)
            for user in users:
                user.setdefault("groups", sorted(by_user.get(user["username"], ())))
        return [
            {"username": u["username"], "admin": u["admin"], "groups": u["groups"]} for u in users
        ]

    def user_data(self, username: str | None = None) -> Deferred[object]:
        return Deferred.fromCoroutine(self._user_data(username))

    async def _permission_lists(
        self, usernames: list[str], groups: list[str]
    ) -> tuple[dict[str, dict[str, frozenset[str]]], dict[str, dict[str, frozenset[str]]]]:
        """``({package: {user: perms}}, {package: {group: perms}})`` over every user and every
        group (the built-in ones included), one call each."""
        groups = [g for g in groups if g not in BUILTIN_GROUPS] + list(BUILTIN_GROUPS)
        user_lists = await self._each(self._user_package_permissions(u) for u in usernames)
        group_lists = await self._each(self._group_package_permissions(g) for g in groups)
        by_user: dict[str, dict[str, frozenset[str]]] = {}
        by_group: dict[str, dict[str, frozenset[str]]] = {}
        for target, names, lists in (
            (by_user, usernames, user_lists),
            (by_group, groups, group_lists),
        ):
            for name, grants in zip(names, lists, strict=True):
                for package, perms in grants.items():
                    target.setdefault(package, {})[name] = perms
        return by_user, by_group

    async def _users_and_groups(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every user and every group, asked at the same time."""
        users, groups = ensureDeferred(self._all_users()), ensureDeferred(self._groups(None))
        try:
            return await users, await groups
        finally:
            groups.cancel()  # when listing the users failed; a no-op once it has an answer
            groups.addErrback(lambda f: f.trap(CancelledError, BackendUnavailable) and None)

    async def _package_acls(self) -> Mapping[str, Mapping[str, frozenset[str]]]:
        users, groups = await self._users_and_groups()
        usernames = [u["username"] for u in users]
        by_user, by_group = await self._permission_lists(usernames, groups)
        acls: dict[str, dict[str, frozenset[str]]] = {}
        for package, grants in by_user.items():
            for user, perms in grants.items():
                acls.setdefault(package, {})[f"user:{user}"] = perms
        for package, grants in by_group.items():
            for group, perms in grants.items():
                principal = group if group in BUILTIN_GROUPS else f"group:{group}"
                acls.setdefault(package, {})[principal] = perms
        return acls

    def package_acls(self) -> Deferred[Mapping[str, Mapping[str, frozenset[str]]]]:
        """Every explicit permission: one call per user and per group, so callers arriving
        while a round is under way share its answer instead of starting another."""
        if self._acls is not None and self._reactor.seconds() < self._acls[0]:
            return succeed(self._acls[1])
        waiter: Deferred[Mapping[str, Mapping[str, frozenset[str]]]] = Deferred()
        self._acl_waiters.append(waiter)
        if len(self._acl_waiters) == 1:
            Deferred.fromCoroutine(self._package_acls()).addBoth(self._acls_done)
        return waiter

    def _acls_done(self, result: Any) -> None:
        waiters, self._acl_waiters = self._acl_waiters, []
        if not isinstance(result, Failure) and self._acl_cache > 0:
            self._acls = (self._reactor.seconds() + self._acl_cache, result)
        for waiter in waiters:
            if waiter.called:  # this caller gave up (cancelled) meanwhile
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _check_health(self) -> tuple[bool, str]:
        try:
            await self._groups(None)
        except BackendUnavailable as e:
            return False, e.message
        return True, ""

    def check_health(self) -> Deferred[tuple[bool, str]]:
        """Healthy when the server lists its groups (the address, credentials and path work)."""
        return Deferred.fromCoroutine(self._check_health())

    async def _dump(self) -> dict[str, object]:
        users, groups = await self._users_and_groups()
        usernames = [u["username"] for u in users]
        members = await self._members(groups)
        by_user, by_group = await self._permission_lists(usernames, groups)

        def export(grants: dict[str, dict[str, frozenset[str]]]) -> dict[str, object]:
            return {
                package: {name: sorted(perms) for name, perms in sorted(names.items())}
                for package, names in sorted(grants.items())
            }

        return {
            "allow_register": False,
            "version": __version__,
            # The server never reveals password hashes; pypicloud's export has None here too.
            "users": [
                {"username": u["username"], "password": None, "admin": u["admin"]} for u in users
            ],
            "groups": {g: list(members[g]) for g in groups},
            "packages": {"users": export(by_user), "groups": export(by_group)},
        }

    def dump(self) -> Deferred[dict[str, object]]:
        """pypicloud's export format from what the endpoints answer; ``password`` is ``None``
        for every user, since the server only ever says whether a password is right."""
        return Deferred.fromCoroutine(self._dump())
