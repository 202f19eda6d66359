"""RemoteAccessBackend (``pypi.auth = remote``): the shared suite against an in-memory remote
server, then real sockets on 127.0.0.1 for credentials, timeouts and failures."""

from __future__ import annotations

import copy
import time
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from pypicloud_tx.backends.access.remote import CONNECTIONS, RemoteAccessBackend
from pypicloud_tx.config.loader import parse_settings
from pypicloud_tx.config.options import parse_options
from pypicloud_tx.errors import BackendUnavailable, ConfigError
from pypicloud_tx.runtime import Runtime

from .conformance import (
    PASSWORDS,
    RW,
    IAccessConformance,
    R,
    cheap_hash,
    comparable,
    manual_data,
)
from .remote_server import (
    Fixed,
    Hang,
    RemoteAccessServer,
    StalledBody,
    Tracking,
    silent_factory,
)

SERVER = "http://access.test"


def stub_backend(resource: Any, clock: Clock | None = None, **kwargs: Any) -> RemoteAccessBackend:
    """A backend talking to ``resource`` in memory (synchronously) through StubTreq."""
    return RemoteAccessBackend(
        client=StubTreq(resource), reactor=clock or Clock(), server=SERVER, **kwargs
    )


def without_passwords(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as the remote backend can dump it: the server never reveals hashes."""
    data = copy.deepcopy(data)
    for user in data["users"]:
        user["password"] = None
    return data


class RemoteConformanceTests(IAccessConformance, SynchronousTestCase):
    """RemoteAccessBackend passes the shared IAccessBackend suite against a server serving
    the manual's sample data, except that a dump has no password hashes."""

    def make_backend(self, data: dict[str, Any]) -> RemoteAccessBackend:
        return stub_backend(RemoteAccessServer(data).resource())

    def test_dump(self) -> None:
        """dump() gives back everything the server holds in pypicloud's format, the built-in
        groups' grants included, with ``None`` for every password (as pypicloud's remote
        backend does): no endpoint reveals a hash."""
        data = self.result(self.backend.dump())
        self.assertIsInstance(data["version"], str)
        self.assertEqual(comparable(data), without_passwords(manual_data()))

    def test_dump_round_trip(self) -> None:
        """A server serving a dump answers the same; nobody can log in with it (no hashes)."""
        again = self.make_backend(self.result(self.backend.dump()))
        self.assertEqual(comparable(self.result(again.dump())), without_passwords(manual_data()))
        self.assertIs(self.result(again.verify_user("donlan", "osptony")), False)


class InMemoryTests(SynchronousTestCase):
    """Behaviour that needs no socket: options, answers the manual allows, shapes, timeouts."""

    def test_options_defaults(self) -> None:
        """Only auth.backend_server is required; every auth.uri.* has the manual's default,
        no Basic credentials, and a 10 s timeout per call."""
        options = parse_options(
            RemoteAccessBackend.Options, "auth", {"backend_server": "https://acl.example/api/"}
        )
        self.assertEqual(options.backend_server, "https://acl.example/api")
        self.assertEqual(options.timeout, 10.0)
        self.assertIsNone(options.user)
        self.assertEqual(
            {
                name: getattr(options, f"uri__{name}")
                for name in ("verify", "groups", "group_members", "admin", "user_data")
            },
            {
                "verify": "/verify",
                "groups": "/groups",
                "group_members": "/group_members",
                "admin": "/admin",
                "user_data": "/user_data",
            },
        )
        self.assertEqual(options.uri__group_permissions, "/group_permissions")
        self.assertEqual(options.uri__user_permissions, "/user_permissions")
        self.assertEqual(options.uri__user_package_permissions, "/user_package_permissions")
        self.assertEqual(options.uri__group_package_permissions, "/group_package_permissions")

    def test_options_refused(self) -> None:
        """A missing or non-HTTP server URL, credentials inside the URL (refused without
        echoing them), a timeout that is not above zero and a path with spaces are refused,
        naming the option."""
        cases = {
            (): "auth.backend_server: required option is missing",
            (("backend_server", "ftp://acl.example"),): "auth.backend_server: 'ftp://",
            (("backend_server", "https://bob:hunter2@acl.example"),): "auth.user and auth.pass",
            (("backend_server", "http://a.example"), ("timeout", "0")): "auth.timeout: '0' must",
            (("backend_server", "http://a.example"), ("timeout", "soon")): "auth.timeout: 'soon'",
            (("backend_server", "http://a.example"), ("uri.verify", "/a b")): "auth.uri.verify:",
        }
        for raw, expected in cases.items():
            with self.assertRaises(ConfigError) as caught:
                parse_options(RemoteAccessBackend.Options, "auth", dict(raw))
            self.assertIn(expected, caught.exception.message)
            self.assertNotIn("hunter2", caught.exception.message)

    def test_password_without_user(self) -> None:
        """auth.password alone is a configuration error: Basic auth needs a user."""
        options = RemoteAccessBackend.Options(backend_server="http://a.example", password="pw")
        with self.assertRaises(ConfigError) as caught:
            RemoteAccessBackend.from_config(options, Runtime.synchronous(reactor=Clock()))
        self.assertIn("auth.password", caught.exception.message)

    def test_configured_by_name(self) -> None:
        """pypi.auth = remote and pypicloud's dotted paths choose this backend, with the
        auth.* options of the file; building it makes no connection and stop() fires."""
        for name in (
            "remote",
            "pypicloud.access.RemoteAccessBackend",
            "pypicloud.access.remote.RemoteAccessBackend",
        ):
            settings = parse_settings(
                {
                    "pypi.storage": "memory",
                    "pypi.db": "memory",
                    "pypi.auth": name,
                    "auth.backend_server": "http://127.0.0.1:9",
                    "auth.uri.verify": "/api/check",
                    "auth.timeout": "2.5",
                }
            )
            self.assertIs(settings.access.cls, RemoteAccessBackend)
            self.assertEqual(settings.access.options.uri__verify, "/api/check")
            backend = RemoteAccessBackend.from_config(
                settings.access.options, Runtime.synchronous(reactor=Clock(), settings=settings)
            )
            self.successResultOf(backend.stop())

    def test_lookup_404_is_empty(self) -> None:
        """A 404 to a question about one user, group or package means "none": no groups, no
        members, not an admin, no grants, no such user."""
        backend = stub_backend(Fixed(404, b'{"error": "not found"}'))
        self.assertEqual(self.successResultOf(backend.groups("nobody")), [])
        self.assertEqual(self.successResultOf(backend.group_members("nope")), [])
        self.assertIs(self.successResultOf(backend.is_admin("nobody")), False)
        self.assertEqual(self.successResultOf(backend.user_permissions("pkg")), {})
        self.assertEqual(self.successResultOf(backend.group_permissions("pkg")), {})
        self.assertIsNone(self.successResultOf(backend.user_data("nobody")))

    def test_404_elsewhere_is_an_error(self) -> None:
        """A 404 to verify or to a listing means a wrong path: BackendUnavailable naming the
        URL and the auth.uri option to check (never silently failing every login)."""
        backend = stub_backend(Fixed(404, b"{}"))
        for d, option in (
            (backend.verify_user("dsa", "paranoia"), "auth.uri.verify"),
            (backend.groups(), "auth.uri.groups"),
            (backend.user_data(), "auth.uri.user_data"),
            (backend.package_acls(), "auth.uri.user_data"),
        ):
            message = self.failureResultOf(d, BackendUnavailable).value.message
            self.assertIn("404", message)
            self.assertIn(option, message)
            self.assertIn(SERVER, message)
            self.assertNotIn("paranoia", message)
        healthy, why = self.successResultOf(backend.check_health())
        self.assertIs(healthy, False)
        self.assertIn(f"{SERVER}/groups answered 404", why)

    def test_wrong_shape(self) -> None:
        """JSON that is not what the manual describes fails with BackendUnavailable saying
        what was expected."""
        backend = stub_backend(Fixed(200, b'{"surprise": 1}'))
        message = self.failureResultOf(backend.groups(), BackendUnavailable).value.message
        self.assertIn("not a list of names", message)
        message = self.failureResultOf(backend.is_admin("dsa"), BackendUnavailable).value.message
        self.assertIn("not true or false", message)
        backend = stub_backend(Fixed(200, b'{"dsa": "rw"}'))
        message = self.failureResultOf(
            backend.user_permissions("pkg"), BackendUnavailable
        ).value.message
        self.assertIn("permission lists", message)

    def test_truthy_integers(self) -> None:
        """Like pypicloud (which tests the answer's truth), 1 and 0 mean yes and no."""
        self.assertIs(self.successResultOf(stub_backend(Fixed(200, b"1")).is_admin("x")), True)
        self.assertIs(
            self.successResultOf(stub_backend(Fixed(200, b"0")).verify_user("x", "y")), False
        )

    def test_grants_filtered(self) -> None:
        """Unknown permission words are dropped and empty grants left out."""
        backend = stub_backend(Fixed(200, b'{"dsa": ["read", "admin"], "eve": []}'))
        self.assertEqual(self.successResultOf(backend.group_permissions("pkg")), {"dsa": R})

    def test_package_names_canonical(self) -> None:
        """Package names in the per-user and per-group lists are made canonical, and the
        grants of differently spelled names merge."""
        root = Resource()
        root.putChild(b"user_data", Fixed(200, b'[{"username": "a", "admin": false}]'))
        root.putChild(b"groups", Fixed(200, b"[]"))
        root.putChild(
            b"user_package_permissions",
            Fixed(
                200,
                b'[{"package": "Foo_Bar", "permissions": ["read"]},'
                b' {"package": "foo.bar", "permissions": ["write"]}]',
            ),
        )
        root.putChild(b"group_package_permissions", Fixed(200, b"[]"))
        acls = self.successResultOf(stub_backend(root).package_acls())
        self.assertEqual({k: dict(v) for k, v in acls.items()}, {"foo-bar": {"user:a": RW}})

    def test_answer_too_large(self) -> None:
        """An answer longer than the limit is refused with BackendUnavailable, not read into
        memory without end."""
        backend = stub_backend(Fixed(200, b'["' + b"x" * 5000 + b'"]'), max_body=4096)
        message = self.failureResultOf(backend.groups(), BackendUnavailable).value.message
        self.assertIn(f"{SERVER}/groups answered more than 4096 bytes", message)

    def test_failed_round_not_shared_later(self) -> None:
        """When a round of package_acls requests fails, every waiting caller gets the error
        and the next call asks the server again."""
        root = Resource()
        root.putChild(b"user_data", Fixed(500, b""))
        backend = stub_backend(root)
        self.failureResultOf(backend.package_acls(), BackendUnavailable)
        root.putChild(b"user_data", Fixed(200, b"[]"))
        root.putChild(b"groups", Fixed(200, b"[]"))
        root.putChild(b"group_package_permissions", Fixed(200, b"[]"))
        self.assertEqual(self.successResultOf(backend.package_acls()), {})

    def test_package_acls_reused(self) -> None:
        """With auth.acl_cache, one round of package_acls requests answers every check for
        that many seconds; afterwards the server is asked again."""
        clock = Clock()
        root = Resource()
        root.putChild(b"user_data", Fixed(200, b'[{"username": "a", "admin": false}]'))
        root.putChild(b"groups", Fixed(200, b"[]"))
        root.putChild(
            b"user_package_permissions",
            Fixed(200, b'[{"package": "p", "permissions": ["read"]}]'),
        )
        root.putChild(b"group_package_permissions", Fixed(200, b"[]"))
        backend = stub_backend(root, clock, acl_cache=30.0)
        first = self.successResultOf(backend.package_acls())
        root.putChild(b"user_package_permissions", Fixed(200, b"[]"))
        clock.advance(29)
        self.assertEqual(self.successResultOf(backend.package_acls()), first)
        clock.advance(1)
        self.assertEqual(self.successResultOf(backend.package_acls()), {})

    def test_timeout_on_clock(self) -> None:
        """A server that never answers fails the call with BackendUnavailable once
        auth.timeout has passed on the injected clock, not before."""
        clock = Clock()
        backend = stub_backend(Hang(), clock, timeout=3.0)
        d = backend.verify_user("dsa", "paranoia")
        clock.advance(2.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        message = self.failureResultOf(d, BackendUnavailable).value.message
        self.assertIn(f"{SERVER}/verify did not answer within 3 s (auth.timeout)", message)
        self.assertNotIn("paranoia", message)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """A caller that gives up cancels the call: CancelledError, not BackendUnavailable,
        and no timer is left behind."""
        clock = Clock()
        backend = stub_backend(Hang(), clock)
        d = backend.groups()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_groups_in_listing_used(self) -> None:
        """When the server's user list already carries groups, user_data() uses them."""
        listing = b'[{"username": "b", "admin": 0, "groups": ["y", "x"]}, {"username": "a"}]'
        root = Resource()
        root.putChild(b"user_data", Fixed(200, listing))
        root.putChild(b"groups", Fixed(200, b"[]"))
        backend = stub_backend(root)
        message = self.failureResultOf(backend.user_data(), BackendUnavailable).value.message
        self.assertIn("not true or false", message)  # "admin" is missing for user a
        listing = b'[{"username": "b", "admin": 0, "groups": ["y", "x"]}]'
        root.putChild(b"user_data", Fixed(200, listing))
        self.assertEqual(
            self.successResultOf(backend.user_data()),
            [{"username": "b", "admin": False, "groups": ["x", "y"]}],
        )


# -- real sockets --------------------------------------------------------------------------------


def many_users(count: int) -> dict[str, Any]:
    """Export-format data with ``count`` users, each with a grant on their own package."""
    data = manual_data()
    for i in range(count):
        data["users"].append({"username": f"user{i:02}", "password": None, "admin": False})
        data["packages"]["users"][f"pkg-{i:02}"] = {f"user{i:02}": ["read"]}
    return data


class RealSocketTests(TestCase):
    """The backend against servers listening on 127.0.0.1: every call has Basic credentials
    and a timeout, failures name the URL, and stop() leaves no connection open."""

    timeout = 30

    def listen(self, factory: Any) -> tuple[str, Tracking]:
        """Serve ``factory`` on a free port; cleanups wait until it has no connection."""
        from twisted.internet import reactor

        tracked = Tracking(factory)
        port = reactor.listenTCP(0, tracked, interface="127.0.0.1")
        self.addCleanup(self._all_closed, tracked)
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}", tracked

    async def _all_closed(self, tracked: Tracking) -> None:
        from twisted.internet import reactor

        d = tracked.closed()
        d.addTimeout(5, reactor)
        try:
            await d
        except Exception:
            tracked.abort_all()
            await tracked.closed()
            self.fail("the server still had connections open after the backend stopped")

    def backend(self, server: str, **options: Any) -> RemoteAccessBackend:
        """A backend built as the application builds it, stopped in cleanup."""
        from twisted.internet import reactor

        backend = RemoteAccessBackend.from_config(
            RemoteAccessBackend.Options(backend_server=server, **options),
            Runtime.synchronous(reactor=reactor),
        )
        self.addCleanup(backend.stop)
        return backend

    async def test_basic_auth(self) -> None:
        """With auth.user/auth.password every call carries them and the server answers; a
        backend without them, or with a wrong password, gets BackendUnavailable telling the
        operator to check auth.user and auth.password."""
        server = RemoteAccessServer(manual_data(), credentials=("pypi", "s3cret"))
        url, _ = self.listen(Site(server.resource()))
        good = self.backend(url, user="pypi", password="s3cret")
        self.assertIs(await good.verify_user("dsa", "paranoia"), True)
        self.assertEqual(await good.groups("dsa"), ["brotatos", "sharkfest"])
        self.assertEqual(await good.check_health(), (True, ""))
        for bad in (self.backend(url), self.backend(url, user="pypi", password="guess")):
            with self.assertRaises(BackendUnavailable) as caught:
                await bad.verify_user("dsa", "paranoia")
            message = caught.exception.message
            self.assertIn(f"{url}/verify refused the request (401 Unauthorized)", message)
            self.assertIn("check auth.user and auth.password", message)
            self.assertNotIn("paranoia", message)
            self.assertNotIn("guess", message)
            healthy, why = await bad.check_health()
            self.assertIs(healthy, False)
            self.assertIn("auth.user", why)

    async def test_custom_paths(self) -> None:
        """auth.uri.* paths under a backend_server with a path prefix are the ones asked;
        the manual's defaults then answer 404, which health reports."""
        paths = {
            "verify": "/api/login/check",
            "groups": "/api/groups/list",
            "user_data": "/api/people",
            "group_members": "/api/members",
            "user_package_permissions": "/api/perms/by-user",
            "group_package_permissions": "/api/perms/by-group",
        }
        server = RemoteAccessServer(manual_data(), paths=paths)
        url, _ = self.listen(Site(server.resource()))
        custom = self.backend(
            url + "/api/",
            uri__verify="login/check",
            uri__groups="/groups/list",
            uri__user_data="/people",
            uri__group_members="/members",
            uri__user_package_permissions="/perms/by-user",
            uri__group_package_permissions="/perms/by-group",
        )
        self.assertIs(await custom.verify_user("stevearc", "gunface"), True)
        self.assertEqual(
            [u["username"] for u in await custom.user_data()], ["donlan", "dsa", "stevearc"]
        )
        self.assertEqual(
            dict((await custom.package_acls())["pyramid-head"]),
            {"group:brotatos": RW, "everyone": R},
        )
        self.assertEqual(server.hits["verify"], 1)
        healthy, why = await self.backend(url).check_health()
        self.assertIs(healthy, False)
        self.assertIn(f"{url}/groups answered 404 Not Found: check auth.uri.groups", why)

    async def test_timeout_silent_server(self) -> None:
        """A server that accepts the connection and never answers fails the call after
        auth.timeout (0.5 s here), with a message naming the URL and the option."""
        url, _ = self.listen(silent_factory())
        backend = self.backend(url, timeout=0.5)
        started = time.monotonic()
        with self.assertRaises(BackendUnavailable) as caught:
            await backend.verify_user("dsa", "paranoia")
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, 0.45)
        self.assertLess(elapsed, 5)
        self.assertIn(
            f"{url}/verify did not answer within 0.5 s (auth.timeout)", str(caught.exception)
        )

    async def test_timeout_stalled_body(self) -> None:
        """The timeout covers the whole answer: headers that arrive followed by a body that
        stalls still fail after auth.timeout."""
        root = Resource()
        root.putChild(b"groups", StalledBody())
        url, _ = self.listen(Site(root))
        backend = self.backend(url, timeout=0.5)
        started = time.monotonic()
        with self.assertRaises(BackendUnavailable) as caught:
            await backend.groups()
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("did not answer within 0.5 s (auth.timeout)", str(caught.exception))

    async def test_connection_refused(self) -> None:
        """Nothing listening: BackendUnavailable saying the connection was refused and to
        check auth.backend_server; health says the same."""
        from twisted.internet import reactor

        port = reactor.listenTCP(0, silent_factory(), interface="127.0.0.1")
        url = f"http://127.0.0.1:{port.getHost().port}"
        await port.stopListening()
        backend = self.backend(url, timeout=5)
        with self.assertRaises(BackendUnavailable) as caught:
            await backend.is_admin("dsa")
        self.assertEqual(
            caught.exception.message,
            f"remote access server: cannot reach {url}/admin: connection refused "
            "(check auth.backend_server)",
        )
        healthy, why = await backend.check_health()
        self.assertIs(healthy, False)
        self.assertIn("connection refused", why)

    async def test_server_error(self) -> None:
        """A 5xx answer is BackendUnavailable naming the URL and the status."""
        url, _ = self.listen(Site(Fixed(500, b"oops")))
        with self.assertRaises(BackendUnavailable) as caught:
            await self.backend(url).group_members("brotatos")
        self.assertEqual(
            caught.exception.message,
            f"remote access server: {url}/group_members answered 500 Internal Server Error",
        )

    async def test_not_json(self) -> None:
        """A 200 whose body is not JSON (an HTML page from a proxy, say) is BackendUnavailable
        naming the URL and the auth.uri option."""
        url, _ = self.listen(Site(Fixed(200, b"<html>login</html>", b"text/html")))
        with self.assertRaises(BackendUnavailable) as caught:
            await self.backend(url).user_data("dsa")
        self.assertIn(
            f"{url}/user_data answered 200 OK with a body that is not JSON "
            "(check auth.uri.user_data)",
            caught.exception.message,
        )

    async def test_connections_bounded_and_closed(self) -> None:
        """Fetching permissions for many users uses at most CONNECTIONS connections, kept
        alive between calls; stop() closes them all."""
        server = RemoteAccessServer(many_users(40))
        url, tracked = self.listen(Site(server.resource()))
        backend = self.backend(url)
        acls = await backend.package_acls()
        self.assertEqual(dict(acls["pkg-39"]), {"user:user39": R})
        self.assertEqual(server.hits["user_package_permissions"], 43)
        self.assertLessEqual(tracked.accepted, CONNECTIONS)
        accepted = tracked.accepted
        await backend.dump()
        self.assertEqual(tracked.accepted, accepted)  # the same connections, kept alive
        self.assertGreater(tracked.open_connections(), 0)
        await backend.stop()
        d = tracked.closed()
        from twisted.internet import reactor

        d.addTimeout(5, reactor)
        await d
        self.assertEqual(tracked.open_connections(), 0)

    async def test_one_failure_among_many(self) -> None:
        """When one of the many calls behind package_acls fails, the whole answer fails with
        that call's message, and the calls still queued are not sent."""
        server = RemoteAccessServer(many_users(40), broken={"user_package_permissions"})
        url, _ = self.listen(Site(server.resource()))
        with self.assertRaises(BackendUnavailable) as caught:
            await self.backend(url).package_acls()
        self.assertIn("/user_package_permissions answered 500", caught.exception.message)
        self.assertLess(server.hits["user_package_permissions"], 43)

    async def test_package_acls_shared(self) -> None:
        """Callers asking for every permission while a round of requests is under way share
        it: the server lists users once for three callers, and all get the same answer.
        (Without auth.acl_cache, the next call asks again.)"""
        server = RemoteAccessServer(manual_data())
        url, _ = self.listen(Site(server.resource()))
        backend = self.backend(url, acl_cache=0.0)
        first, second, third = (
            backend.package_acls(),
            backend.package_acls(),
            backend.package_acls(),
        )
        results = [await d for d in (first, second, third)]
        self.assertEqual(server.hits["user_data"], 1)
        self.assertEqual(results[0], results[1])
        self.assertEqual(results[0], results[2])
        await backend.package_acls()
        self.assertEqual(server.hits["user_data"], 2)

    async def test_verify_passwords(self) -> None:
        """Over a real socket the server checks the manual's passwords (sent as the
        pypicloud query parameters username and password), including non-ASCII ones."""
        data = manual_data()
        data["users"].append({"username": "zoë", "password": cheap_hash("pässwörd"), "admin": True})
        url, _ = self.listen(Site(RemoteAccessServer(data).resource()))
        backend = self.backend(url)
        for user, password in PASSWORDS.items():
            self.assertIs(await backend.verify_user(user, password), True)
        self.assertIs(await backend.verify_user("zoë", "pässwörd"), True)
        self.assertIs(await backend.verify_user("zoë", "passwort"), False)
        self.assertIs(await backend.is_admin("zoë"), True)
