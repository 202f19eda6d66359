"""A stand-in for the server that ``pypi.auth = remote`` asks (manual §1.6.6), for tests.

:class:`RemoteAccessServer` answers the manual's endpoints from pypicloud's export format (the
data the access conformance suite uses), checks passwords against the stored hashes, and can
demand HTTP Basic credentials, serve its endpoints at other paths, or answer 500 on some.
Unknown users in ``user_data`` and unknown groups in ``group_members`` are answered 404, as
some real servers do; everything else about a stranger is an empty answer.

The other classes are servers that misbehave, and a factory wrapper that tells when every
connection it accepted has closed (so real-socket tests can leave a clean reactor).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from pypicloud_tx.domain.passwords import password_context

#: The manual's default path of each endpoint.
DEFAULT_PATHS = {
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

_NOT_FOUND = object()


class RemoteAccessServer:
    """The manual's remote access API over ``data`` (pypicloud's export format)."""

    def __init__(
        self,
        data: Mapping[str, Any],
        credentials: tuple[str, str] | None = None,
        paths: Mapping[str, str] | None = None,
        broken: Iterable[str] = (),
    ) -> None:
        self.data = data
        #: Endpoints that answer 500.
        self.broken = frozenset(broken)
        self.credentials = credentials
        #: Requests received per endpoint, refused ones included.
        self.hits: Counter[str] = Counter()
        self.app = Klein()
        self._context = password_context()
        for name, path in {**DEFAULT_PATHS, **(paths or {})}.items():
            self.app.route(path, methods=["GET"], endpoint=name)(
                self._endpoint(name, getattr(self, f"_{name}"))
            )

    def resource(self) -> Any:
        return self.app.resource()

    def _endpoint(
        self, name: str, answer: Callable[[dict[str, str]], Any]
    ) -> Callable[[Request], bytes]:
        def serve(request: Request) -> bytes:
            self.hits[name] += 1
            request.setHeader("Content-Type", "application/json")
            if self.credentials is not None:
                given = (
                    request.getUser().decode("utf-8"),
                    request.getPassword().decode("utf-8"),
                )
                if given != self.credentials:
                    request.setResponseCode(401)
                    request.setHeader("WWW-Authenticate", 'Basic realm="access"')
                    return b'{"error": "unauthorized"}'
            if name in self.broken:
                request.setResponseCode(500)
                return b'{"error": "broken"}'
            args = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
            result = answer(args)
            if result is _NOT_FOUND:
                request.setResponseCode(404)
                return b'{"error": "not found"}'
            return json.dumps(result).encode()

        return serve

    # -- the data -----------------------------------------------------------------------------

    def _users(self) -> dict[str, dict[str, Any]]:
        return {u["username"]: u for u in self.data["users"]}

    def _groups_of(self, username: str) -> list[str]:
        return sorted(g for g, members in self.data["groups"].items() if username in members)

    def _package_grants(self, kind: str, who: str) -> list[dict[str, Any]]:
        return [
            {"package": package, "permissions": grants[who]}
            for package, grants in sorted(self.data["packages"][kind].items())
            if who in grants
        ]

    # -- the endpoints --------------------------------------------------------------------------

    def _verify(self, args: dict[str, str]) -> bool:
        user = self._users().get(args.get("username", ""))
        hashed = user and user.get("password")
        return bool(hashed and self._context.verify(args.get("password", ""), hashed))

    def _groups(self, args: dict[str, str]) -> list[str]:
        if "username" in args:
            return self._groups_of(args["username"])
        return sorted(self.data["groups"])

    def _group_members(self, args: dict[str, str]) -> Any:
        return self.data["groups"].get(args.get("group"), _NOT_FOUND)

    def _admin(self, args: dict[str, str]) -> bool:
        user = self._users().get(args.get("username", ""))
        return bool(user and user["admin"])

    def _group_permissions(self, args: dict[str, str]) -> dict[str, list[str]]:
        return dict(self.data["packages"]["groups"].get(args.get("package"), {}))

    def _user_permissions(self, args: dict[str, str]) -> dict[str, list[str]]:
        return dict(self.data["packages"]["users"].get(args.get("package"), {}))

    def _user_package_permissions(self, args: dict[str, str]) -> list[dict[str, Any]]:
        return self._package_grants("users", args.get("username", ""))

    def _group_package_permissions(self, args: dict[str, str]) -> list[dict[str, Any]]:
        return self._package_grants("groups", args.get("group", ""))

    def _user_data(self, args: dict[str, str]) -> Any:
        users = self._users()
        if "username" not in args:
            # The manual's list: username and admin only.
            return [{"username": u["username"], "admin": u["admin"]} for u in users.values()]
        user = users.get(args["username"])
        if user is None:
            return _NOT_FOUND
        return {
            "username": user["username"],
            "admin": user["admin"],
            "groups": self._groups_of(user["username"]),
        }


# -- servers that misbehave -----------------------------------------------------------------------


class Fixed(Resource):
    """Answers every GET with one status and body."""

    isLeaf = True

    def __init__(self, code: int, body: bytes, content_type: bytes = b"application/json") -> None:
        super().__init__()
        self.code = code
        self.body = body
        self.content_type = content_type

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"Content-Type", self.content_type)
        return self.body


class Hang(Resource):
    """Never answers (for in-memory tests that advance a clock)."""

    isLeaf = True

    def render_GET(self, request: Request) -> object:
        return NOT_DONE_YET


class StalledBody(Resource):
    """Sends a 200 and the start of a body, then nothing more (until the client gives up)."""

    isLeaf = True

    def render_GET(self, request: Request) -> object:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"100")
        request.write(b'["brot')
        return NOT_DONE_YET


class Silent(Protocol):
    """Accepts the connection and never says a word."""


def silent_factory() -> Factory:
    return Factory.forProtocol(Silent)


class Tracking(WrappingFactory):
    """Wraps a server factory; :meth:`closed` fires once no accepted connection is open."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.accepted = 0
        self._waiting: list[Deferred[None]] = []

    def registerProtocol(self, p: Any) -> None:
        super().registerProtocol(p)
        self.accepted += 1

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def open_connections(self) -> int:
        return len(self.protocols)

    def closed(self) -> Deferred[None]:
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def abort_all(self) -> None:
        for p in list(self.protocols):
            p.transport.abortConnection()
