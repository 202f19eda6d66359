"""``/admin/`` through the real HTTP stack: who may call each route, the response shapes of
pypicloud's manual, forms, and what a read-only access backend answers."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
from typing import Any

from pypicloud_tx.domain import signup
from pypicloud_tx.domain.tokens import make_scope, new_token
from tests.web.harness import RouteTestCase, _fired

KEY = "web-test-key"
#: Every /admin/ route as (method, path written with its trailing slash, form), on the
#: fixture of :meth:`AdminCase.fixture`.  Each succeeds for an admin.
ROUTES: list[tuple[str, str, dict[str, str] | None]] = [
    ("GET", "/admin/rebuild/", None),
    ("POST", "/admin/rebuild/", None),
    ("GET", "/admin/acl.json.gz", None),
    ("GET", "/admin/register/", None),
    ("POST", "/admin/register/", {"allow": "true"}),
    ("GET", "/admin/pending_users/", None),
    ("GET", "/admin/token/frank/", None),
    ("GET", "/admin/user/", None),
    ("GET", "/admin/user/bob/", None),
    ("GET", "/admin/user/bob/permissions/", None),
    ("PUT", "/admin/user/dave/", {"password": "davepw"}),
    ("DELETE", "/admin/user/carol/", None),
    ("POST", "/admin/user/erin/approve/", None),
    ("POST", "/admin/user/bob/admin/", {"admin": "true"}),
    ("PUT", "/admin/user/carol/group/devs/", None),
    ("DELETE", "/admin/user/bob/group/devs/", None),
    ("GET", "/admin/group/", None),
    ("GET", "/admin/group/devs/", None),
    ("PUT", "/admin/group/cool/", None),
    ("DELETE", "/admin/group/devs/", None),
    ("GET", "/admin/package/demo/", None),
    ("PUT", "/admin/package/demo/user/bob/read/", None),
    ("DELETE", "/admin/package/demo/group/devs/write/", None),
]


def variants() -> list[tuple[str, str, dict[str, str] | None]]:
    """Every route with and without its trailing slash."""
    found = []
    for method, path, form in ROUTES:
        for url in dict.fromkeys((path, path.rstrip("/"))):
            found.append((method, url, form))
    return found


class AdminCase(RouteTestCase):
    def fixture(self, options: dict[str, str | None] | None = None) -> Any:
        """A mutable index with a signing key, a pending user ``erin``, write for ``devs`` on
        ``demo`` and an API token of ``alice`` (the admin) in ``self.token``."""
        ix = self.make_mutable_index({"auth.signing_key": KEY, **(options or {})})
        access = ix.backends.access
        _fired(access.create_user("erin", "erinpw", pending=True))
        _fired(access.edit_group_permission("demo", "devs", "write", True))
        self.token, record = new_token(
            "alice",
            "ci",
            make_scope([], ["read", "write"]),
            dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        )
        _fired(access.save_token(record))
        return ix

    def dump(self) -> Any:
        return _fired(self.ix.backends.access.dump())

    def call(
        self,
        method: str,
        path: str,
        user: str | None = "alice",
        form: Any = None,
        password: str | None = None,
        as_json: bool = False,
    ) -> tuple[Any, Any]:
        """A request; ``(response, decoded JSON body or raw bytes)``."""
        headers = {b"Accept": [b"application/json"]}
        data = form
        if as_json:
            headers[b"Content-Type"] = [b"application/json"]
            data = json.dumps(form).encode()
        response, body = self.request(method, path, user, password, headers=headers, data=data)
        try:
            return response, json.loads(body)
        except ValueError:
            return response, body


class AdminAccessTests(AdminCase):
    def test_anonymous_gets_401_everywhere(self) -> None:
        """Every /admin/ route, with or without its slash, answers an anonymous caller 401
        with the Basic challenge, and changes nothing."""
        self.fixture()
        before = self.dump()
        for method, path, form in variants():
            with self.subTest(f"{method} {path}"):
                response, body = self.call(method, path, user=None, form=form)
                self.assertEqual(response.code, 401, (method, path, body))
                self.assertEqual(
                    response.headers.getRawHeaders(b"WWW-Authenticate"), [b'Basic realm="pypi"']
                )
        self.assertEqual(self.dump(), before)

    def test_non_admin_gets_403_everywhere(self) -> None:
        """Every /admin/ route answers a logged-in non-admin 403, and changes nothing."""
        self.fixture()
        before = self.dump()
        for method, path, form in variants():
            with self.subTest(f"{method} {path}"):
                response, body = self.call(method, path, user="bob", form=form)
                self.assertEqual(response.code, 403, (method, path, body))
                self.assertEqual(body, {"message": "User bob is not an admin."})
        self.assertEqual(self.dump(), before)

    def test_api_token_of_an_admin_gets_403_everywhere(self) -> None:
        """An admin's API token opens no /admin/ route: 403 saying to log in with a password."""
        self.fixture()
        before = self.dump()
        for method, path, form in variants():
            with self.subTest(f"{method} {path}"):
                response, body = self.call(method, path, "__token__", form, self.token)
                self.assertEqual(response.code, 403, (method, path, body))
                self.assertEqual(
                    body, {"message": "API tokens cannot use /admin/; log in with a password."}
                )
        self.assertEqual(self.dump(), before)

    def test_wrong_password_gets_401(self) -> None:
        """Wrong admin credentials are 401, not a way in."""
        self.fixture()
        response, _ = self.call("GET", "/admin/user/", "alice", password="wrong")
        self.assertEqual(response.code, 401)

    def test_admin_succeeds_everywhere(self) -> None:
        """Every /admin/ route, with or without its slash, succeeds for an admin (each on a
        fresh index)."""
        for method, path, form in variants():
            with self.subTest(f"{method} {path}"):
                self.fixture()
                response, body = self.call(method, path, form=form)
                self.assertEqual(response.code, 200, (method, path, body))


class AdminShapeTests(AdminCase):
    def setUp(self) -> None:
        self.fixture()

    def test_users(self) -> None:
        """GET /admin/user/ is a list of {username, admin}, as in the manual."""
        response, body = self.call("GET", "/admin/user/")
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"application/json"])
        self.assertEqual(
            body,
            [
                {"username": "alice", "admin": True},
                {"username": "bob", "admin": False},
                {"username": "carol", "admin": False},
            ],
        )

    def test_user(self) -> None:
        """GET /admin/user/<name>/ is {username, admin, groups}; unknown or pending: 404."""
        self.assertEqual(
            self.call("GET", "/admin/user/bob/")[1],
            {"username": "bob", "admin": False, "groups": ["devs"]},
        )
        for name in ("nobody", "erin"):
            response, body = self.call("GET", f"/admin/user/{name}/")
            self.assertEqual(response.code, 404, body)

    def test_user_permissions(self) -> None:
        """GET /admin/user/<name>/permissions/ lists {package, permissions}; unknown: 404."""
        self.call("PUT", "/admin/package/Fly_Wheel/user/bob/write")
        self.call("PUT", "/admin/package/fly-wheel/user/bob/read")
        self.call("PUT", "/admin/package/pypicloud/user/bob/read")
        self.assertEqual(
            self.call("GET", "/admin/user/bob/permissions/")[1],
            [
                {"package": "fly-wheel", "permissions": ["read", "write"]},
                {"package": "pypicloud", "permissions": ["read"]},
            ],
        )
        self.assertEqual(self.call("GET", "/admin/user/nobody/permissions/")[0].code, 404)

    def test_pending_users(self) -> None:
        """GET /admin/pending_users/ is a list of names; approving empties it and the user
        can log in."""
        self.assertEqual(self.call("GET", "/admin/pending_users/")[1], ["erin"])
        self.assertEqual(self.call("POST", "/admin/user/erin/approve/")[0].code, 200)
        self.assertEqual(self.call("GET", "/admin/pending_users/")[1], [])
        self.assertEqual(self.call("GET", "/admin/user/erin/")[1]["username"], "erin")
        self.assertEqual(self.call("POST", "/admin/user/erin/approve")[0].code, 404)

    def test_groups(self) -> None:
        """GET /admin/group/ lists names; /admin/group/<g>/ is {members, packages}; unknown
        groups are 404."""
        self.call("PUT", "/admin/group/cool_people")
        self.call("PUT", "/admin/user/alice/group/cool_people/")
        self.call("PUT", "/admin/user/bob/group/cool_people")
        self.call("PUT", "/admin/package/flywheel/group/cool_people/read")
        self.call("PUT", "/admin/package/flywheel/group/cool_people/write")
        self.assertEqual(self.call("GET", "/admin/group/")[1], ["cool_people", "devs"])
        self.assertEqual(
            self.call("GET", "/admin/group/cool_people")[1],
            {
                "members": ["alice", "bob"],
                "packages": [{"package": "flywheel", "permissions": ["read", "write"]}],
            },
        )
        self.assertEqual(self.call("GET", "/admin/group/nope/")[0].code, 404)
        self.call("DELETE", "/admin/user/bob/group/cool_people/")
        self.assertEqual(self.call("GET", "/admin/group/cool_people/")[1]["members"], ["alice"])

    def test_package(self) -> None:
        """GET /admin/package/<p>/ is {user: [{username, permissions}], group: [{group,
        permissions}]}, for any spelling of the name; everyone/authenticated are groups."""
        self.call("PUT", "/admin/package/Demo/user/bob/read/")
        self.call("PUT", "/admin/package/DEMO/group/everyone/read")
        self.call("PUT", "/admin/package/demo/group/authenticated/write/")
        self.assertEqual(
            self.call("GET", "/admin/package/DeMo/")[1],
            {
                "user": [{"username": "bob", "permissions": ["read"]}],
                "group": [
                    {"group": "authenticated", "permissions": ["write"]},
                    {"group": "devs", "permissions": ["write"]},
                    {"group": "everyone", "permissions": ["read"]},
                ],
            },
        )
        self.call("DELETE", "/admin/package/demo/group/everyone/read/")
        self.call("DELETE", "/admin/package/demo/user/bob/read")
        body = self.call("GET", "/admin/package/demo")[1]
        self.assertEqual(body["user"], [])
        self.assertNotIn("everyone", [g["group"] for g in body["group"]])

    def test_permissions_take_effect(self) -> None:
        """A permission granted through /admin/ decides access: a public read on a package
        (anonymous may then read its API page)."""
        filename, data = self.wheel("demo", "1.0")
        self.assertEqual(self.upload(filename, data, user="bob")[0].code, 200)
        self.assertEqual(self.call("GET", "/api/package/demo/", user=None)[0].code, 401)
        self.call("PUT", "/admin/package/demo/group/everyone/read")
        self.assertEqual(self.call("GET", "/api/package/demo/", user=None)[0].code, 200)

    def test_acl_download(self) -> None:
        """GET /admin/acl.json.gz is a gzip attachment of the export format (what
        ``pypicloud-tx export`` writes)."""
        response, body = self.call("GET", "/admin/acl.json.gz")
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"application/gzip"])
        self.assertEqual(
            response.headers.getRawHeaders(b"Content-Disposition"),
            [b'attachment; filename="acl.json.gz"'],
        )
        self.assertEqual(json.loads(gzip.decompress(body)), self.dump())

    def test_token(self) -> None:
        """GET /admin/token/<name>/ is {token, token_url}: a valid sign-up token for that name
        and the login page URL carrying it."""
        body = self.call("GET", "/admin/token/frank/")[1]
        self.assertEqual(set(body), {"token", "token_url"})
        self.assertEqual(signup.verify(body["token"], KEY, self.ix.clock.seconds()), "frank")
        self.assertEqual(body["token_url"], f"http://index.test/login#/?token={body['token']}")

    def test_token_refused(self) -> None:
        """No token for an existing user (409) or a bad name (400)."""
        self.assertEqual(self.call("GET", "/admin/token/bob/")[0].code, 409)
        self.assertEqual(self.call("GET", "/admin/token/__token__/")[0].code, 400)

    def test_token_url_uses_download_url(self) -> None:
        """With pypi.download_url set, the token URL starts with it."""
        self.fixture({"pypi.download_url": "https://pypi.example.com/"})
        body = self.call("GET", "/admin/token/frank/")[1]
        self.assertTrue(body["token_url"].startswith("https://pypi.example.com/login#/?token="))

    def test_no_signing_key(self) -> None:
        """Without auth.signing_key the token route is 409 naming the option."""
        self.fixture({"auth.signing_key": None})
        response, body = self.call("GET", "/admin/token/frank/")
        self.assertEqual(response.code, 409)
        self.assertIn("auth.signing_key", body["message"])

    def test_register_toggle(self) -> None:
        """POST /admin/register/ opens and closes registration; GET says which."""
        self.assertEqual(self.call("GET", "/admin/register/")[1], {"allow": False})
        self.assertEqual(self.call("POST", "/admin/register/", form={"allow": "yes"})[0].code, 200)
        self.assertEqual(self.call("GET", "/admin/register")[1], {"allow": True})
        self.call("POST", "/admin/register", form={"allow": "0"})
        self.assertEqual(self.call("GET", "/admin/register/")[1], {"allow": False})

    def test_json_forms(self) -> None:
        """Forms may be JSON objects (what a web UI sends), with JSON booleans."""
        self.call("POST", "/admin/register/", form={"allow": True}, as_json=True)
        self.assertEqual(self.call("GET", "/admin/register/")[1], {"allow": True})
        response, body = self.call(
            "POST", "/admin/user/bob/admin/", form={"admin": True}, as_json=True
        )
        self.assertEqual((response.code, body["admin"]), (200, True))
        response, _ = self.call("PUT", "/admin/user/dave/", form={"password": "pw"}, as_json=True)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.login_status("dave", "pw"), 200)

    def login_status(self, user: str, password: str) -> int:
        token = base64.b64encode(f"{user}:{password}".encode())
        response, _ = self.request(
            "GET", "/api/package/", headers={b"Authorization": [b"Basic " + token]}
        )
        return int(response.code)

    def test_bad_forms(self) -> None:
        """Missing or malformed fields are 400 with a message saying what to send, and change
        nothing."""
        before = self.dump()
        cases = [
            ("POST", "/admin/register/", {"allow": "maybe"}, "true or false"),
            ("POST", "/admin/register/", None, "allow=true"),
            ("POST", "/admin/user/bob/admin/", {"admin": "sure"}, "admin"),
            ("PUT", "/admin/user/dave/", None, "password"),
            ("PUT", "/admin/user/dave/", {"password": ""}, "password"),
            ("PUT", "/admin/user/da:ve/", {"password": "x"}, "':'"),
            ("PUT", "/admin/package/demo/user/bob/admin/", None, "'read' or 'write'"),
            ("PUT", "/admin/package/demo/role/bob/read/", None, "'user' nor 'group'"),
            ("PUT", "/admin/package/not%20valid/user/bob/read/", None, "not a valid project"),
            ("PUT", "/admin/group/everyone/", None, "reserved"),
            ("PUT", "/admin/user/bob/group/authenticated/", None, "built-in"),
        ]
        for method, path, form, needle in cases:
            with self.subTest(f"{method} {path}"):
                response, body = self.call(method, path, form=form)
                self.assertEqual(response.code, 400, body)
                self.assertIn(needle, body["message"])
        response, body = self.request(
            "PUT",
            "/admin/user/dave/?password=x",
            "alice",
            headers={b"Accept": [b"application/json"]},
        )
        self.assertEqual(response.code, 400)
        self.assertIn(b"not in the URL", body)
        self.assertEqual(self.dump(), before)

    def test_not_found(self) -> None:
        """Unknown users and groups are 404 for changes too."""
        for method, path in [
            ("DELETE", "/admin/user/nobody/"),
            ("POST", "/admin/user/nobody/admin/"),
            ("PUT", "/admin/user/nobody/group/devs/"),
            ("PUT", "/admin/user/bob/group/nope/"),
            ("DELETE", "/admin/group/nope/"),
            ("PUT", "/admin/package/demo/user/nobody/read"),
            ("PUT", "/admin/package/demo/group/nope/read"),
        ]:
            with self.subTest(f"{method} {path}"):
                response, body = self.call(method, path, form={"admin": "true"})
                self.assertEqual(response.code, 404, body)

    def test_conflicts(self) -> None:
        """Creating what exists is 409; the last admin can be neither deleted nor demoted."""
        self.assertEqual(self.call("PUT", "/admin/user/bob/", form={"password": "x"})[0].code, 409)
        self.assertEqual(self.call("PUT", "/admin/group/devs/")[0].code, 409)
        response, body = self.call("DELETE", "/admin/user/alice/")
        self.assertEqual(response.code, 409)
        self.assertIn("only admin", body["message"])
        response, _ = self.call("POST", "/admin/user/alice/admin/", form={"admin": "false"})
        self.assertEqual(response.code, 409)
        self.call("POST", "/admin/user/bob/admin/", form={"admin": "true"})
        response, body = self.call("POST", "/admin/user/alice/admin/", form={"admin": "false"})
        self.assertEqual((response.code, body["admin"]), (200, False))

    def test_changes_apply_at_once(self) -> None:
        """Demoting an admin or deleting a user applies to their very next request, although
        their login was remembered."""
        self.call("POST", "/admin/user/bob/admin/", form={"admin": "true"})
        self.assertEqual(self.call("GET", "/admin/user/", user="bob")[0].code, 200)
        self.call("POST", "/admin/user/bob/admin/", form={"admin": "false"})
        self.assertEqual(self.call("GET", "/admin/user/", user="bob")[0].code, 403)
        self.assertEqual(self.call("GET", "/api/package/", user="carol")[0].code, 200)
        self.call("DELETE", "/admin/user/carol/")
        self.assertEqual(self.call("GET", "/api/package/", user="carol")[0].code, 401)

    def test_create_user(self) -> None:
        """PUT /admin/user/<name>/ makes an active user who can log in at once."""
        self.call("PUT", "/admin/user/dave", form={"password": "davepw"})
        self.assertEqual(self.login_status("dave", "davepw"), 200)
        self.assertNotIn("dave", self.call("GET", "/admin/pending_users/")[1])


class ReadOnlyAdminTests(AdminCase):
    """On the config backend (the harness default) reads work and changes are 409."""

    def setUp(self) -> None:
        self.make_index({"auth.signing_key": KEY})

    def test_changes_are_409(self) -> None:
        """Every changing /admin/ route is 409 with a message naming pypi.auth = config."""
        for method, path, form in ROUTES:
            if (method == "GET" and path != "/admin/token/frank/") or "rebuild" in path:
                continue
            with self.subTest(f"{method} {path}"):
                response, body = self.call(method, path, form=form)
                self.assertEqual(response.code, 409, body)
                self.assertIn("pypi.auth = config cannot change users", body["message"])
                self.assertIn("configuration file", body["message"])

    def test_reads_work(self) -> None:
        """Every reading /admin/ route answers 200 on the config backend."""
        for method, path, form in ROUTES:
            if method != "GET" or "token" in path:
                continue
            with self.subTest(path):
                response, body = self.call(method, path, form=form)
                self.assertEqual(response.code, 200, body)
        self.assertEqual(self.call("GET", "/admin/pending_users/")[1], [])
        self.assertEqual(self.call("GET", "/admin/register/")[1], {"allow": False})
        self.assertEqual(
            self.call("GET", "/admin/user/alice/")[1],
            {"username": "alice", "admin": True, "groups": []},
        )
