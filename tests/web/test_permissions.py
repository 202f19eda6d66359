"""Who sees and may change what: the pypicloud manual's example, defaults, logins."""

from __future__ import annotations

from tests.web.harness import RouteTestCase, snapshot

#: The access rules of the pypicloud manual's config-file example (section 1.6.2).
MANUAL = {
    "auth.admins": "alice",
    "user.stevearc": "gunface",
    "user.dsa": "paranoia",
    "user.donlan": "osptony",
    "group.devs": None,
    "group.sharkfest": "stevearc\ndsa",
    "group.brotatos": "donlan\ndsa",
    "package.django_unchained.user.stevearc": "rw",
    "package.django_unchained.group.sharkfest": "rw",
    "package.polite_requests.user.dsa": "rw",
    "package.polite_requests.group.authenticated": "r",
    "package.polite_requests.group.brotatos": "rw",
    "package.pyramid_head.group.brotatos": "rw",
    "package.pyramid_head.group.everyone": "r",
}
PASSWORDS = {
    "stevearc": "gunface",
    "dsa": "paranoia",
    "donlan": "osptony",
    "alice": "alicepw",
    "carol": "carolpw",
    None: None,
}
PACKAGES = ("django_unchained", "polite_requests", "pyramid_head")
#: The manual's table: user -> package -> permissions ("" = none).
TABLE = {
    "stevearc": {"django_unchained": "rw", "polite_requests": "r", "pyramid_head": "r"},
    "dsa": {"django_unchained": "rw", "polite_requests": "rw", "pyramid_head": "rw"},
    "donlan": {"django_unchained": "", "polite_requests": "rw", "pyramid_head": "rw"},
    None: {"django_unchained": "", "polite_requests": "", "pyramid_head": "r"},
}


class ManualExampleTests(RouteTestCase):
    """The example with ``pypi.default_read``/``default_write`` left empty, so only the
    package rules (and admin rights) apply."""

    def setUp(self) -> None:
        self.make_index({**MANUAL, "pypi.default_read": "", "pypi.default_write": ""})
        self.files = {}
        for package in PACKAGES:
            filename, data = self.wheel(package, "1.0")
            response, body = self.upload(filename, data, user="alice")
            self.assertEqual(response.code, 200, body)
            self.files[package] = filename

    def get(self, path: str, user: str | None):  # type: ignore[no-untyped-def]
        return self.request("GET", path, user, PASSWORDS[user])

    def test_listings(self) -> None:
        """Each user (and anonymous) sees on /simple/ and /api/package/ exactly the packages
        the manual's table gives them any permission on."""
        for user, row in TABLE.items():
            expected = sorted(p.replace("_", "-") for p, perms in row.items() if perms)
            _, body = self.get("/simple/", user)
            listed = sorted(
                a.split('"')[1].rstrip("/") for a in body.decode().split("<a href=")[1:]
            )
            self.assertEqual(listed, expected, user)
            import json

            _response, body = self.request("GET", "/api/package/", user, PASSWORDS[user])
            self.assertEqual(json.loads(body)["packages"], expected, user)

    def test_read(self) -> None:
        """Reading a project page and a file: 200 with read; without it 401 for anonymous and
        403 for a logged-in user."""
        for user, row in TABLE.items():
            for package, perms in row.items():
                name = package.replace("_", "-")
                expected = 200 if "r" in perms else (401 if user is None else 403)
                self.assertEqual(
                    self.get(f"/simple/{name}/", user)[0].code, expected, (user, package)
                )
                self.assertEqual(
                    self.get(f"/api/package/{name}/{self.files[package]}", user)[0].code,
                    expected,
                    (user, package),
                )

    def test_write(self) -> None:
        """Uploading a new version: 200 with write; 401 anonymous; 403 otherwise, and a refused
        upload stores nothing."""
        for user, row in TABLE.items():
            for package, perms in row.items():
                before = snapshot(self.ix)
                version = f"2.0.post{len(before[0])}"
                response, body = self.upload(
                    *self.wheel(package, version), user=user, password=PASSWORDS[user]
                )
                expected = 200 if "w" in perms else (401 if user is None else 403)
                self.assertEqual(response.code, expected, (user, package, body))
                if expected != 200:
                    self.assertEqual(snapshot(self.ix), before)
                    if user is None:
                        self.assertEqual(
                            response.headers.getRawHeaders(b"www-authenticate"),
                            [b'Basic realm="pypi"'],
                        )

    def test_write_flag(self) -> None:
        """/api/package/<name>/ says ``write`` exactly for those with write permission."""
        import json

        for user in ("stevearc", "dsa", "donlan"):
            for package, perms in TABLE[user].items():
                if "r" not in perms:
                    continue
                _response, body = self.get(f"/api/package/{package.replace('_', '-')}/", user)
                self.assertIs(json.loads(body)["write"], "w" in perms, (user, package))

    def test_admin_sees_all(self) -> None:
        """An admin reads every package."""
        _response, body = self.get("/api/package/", "alice")
        import json

        self.assertEqual(
            json.loads(body)["packages"], ["django-unchained", "polite-requests", "pyramid-head"]
        )


class DefaultPermissionTests(RouteTestCase):
    """``pypi.default_read``/``default_write`` apply to packages without their own rules."""

    def setUp(self) -> None:
        self.make_index()

    def seed(self, options: dict) -> None:
        self.make_index(options)
        response, body = self.upload(*self.wheel("open", "1.0"), user="alice")
        self.assertEqual(response.code, 200, body)

    def test_default_read_everyone(self) -> None:
        """default_read = everyone: anonymous callers list and read."""
        self.seed({"pypi.default_read": "everyone"})
        self.assertEqual(self.get_json("/api/package/")[1]["packages"], ["open"])
        self.assertEqual(self.request("GET", "/simple/open/")[0].code, 200)

    def test_default_read_authenticated(self) -> None:
        """default_read = authenticated: anonymous sees nothing and gets 401; users read."""
        self.seed({"pypi.default_read": "authenticated"})
        self.assertEqual(self.get_json("/api/package/")[1]["packages"], [])
        self.assertEqual(self.request("GET", "/simple/open/")[0].code, 401)
        self.assertEqual(self.request("GET", "/simple/open/", "carol")[0].code, 200)

    def test_default_read_group(self) -> None:
        """default_read = a group: members read, other users get 403."""
        self.seed({"pypi.default_read": "devs"})
        self.assertEqual(self.request("GET", "/simple/open/", "bob")[0].code, 200)
        self.assertEqual(self.request("GET", "/simple/open/", "carol")[0].code, 403)
        self.assertEqual(self.get_json("/api/package/", user="carol")[1]["packages"], [])

    def test_default_write_variations(self) -> None:
        """default_write = everyone lets anonymous upload; = devs only group members."""
        self.make_index({"pypi.default_write": "everyone"})
        self.assertEqual(self.upload(*self.wheel("a", "1.0"), user=None)[0].code, 200)
        self.make_index({"pypi.default_write": "devs"})
        self.assertEqual(self.upload(*self.wheel("a", "1.0"), user="carol")[0].code, 403)
        self.assertEqual(self.upload(*self.wheel("a", "1.0"), user="bob")[0].code, 200)

    def test_package_rules_replace_defaults(self) -> None:
        """A package with its own rules ignores default_read: everyone-readable defaults do
        not open a package restricted to one user."""
        self.make_index({"pypi.default_read": "everyone", "package.secret.user.carol": "rw"})
        self.assertEqual(self.upload(*self.wheel("secret", "1.0"), user="alice")[0].code, 200)
        self.assertEqual(self.request("GET", "/simple/secret/")[0].code, 401)
        self.assertEqual(self.request("GET", "/simple/secret/", "bob")[0].code, 403)
        self.assertEqual(self.request("GET", "/simple/secret/", "carol")[0].code, 200)


class LoginTests(RouteTestCase):
    def setUp(self) -> None:
        self.make_index()

    def test_wrong_password_401(self) -> None:
        """A wrong password is 401 "Invalid username or password", even on public pages."""
        response, body = self.request("GET", "/simple/", "bob", "wrong")
        self.assertEqual(response.code, 401)
        self.assertIn(b"Invalid username or password", body)
        self.assertEqual(
            response.headers.getRawHeaders(b"www-authenticate"), [b'Basic realm="pypi"']
        )

    def test_unknown_user_401(self) -> None:
        """An unknown user is answered exactly like a wrong password."""
        response, body = self.request("GET", "/simple/", "mallory", "x")
        self.assertEqual(response.code, 401)
        self.assertIn(b"Invalid username or password", body)

    def test_malformed_basic_401(self) -> None:
        """A malformed Basic header is 401, not a crash."""
        response, _ = self.request("GET", "/simple/", headers={b"Authorization": [b"Basic !!!"]})
        self.assertEqual(response.code, 401)

    def test_throttled_then_recovers(self) -> None:
        """After too many failures the user gets 429 with Retry-After (even with the right
        password, and without a password check); once that time passes, logins work again."""
        for _ in range(10):
            self.assertEqual(self.request("GET", "/simple/", "bob", "wrong")[0].code, 401)
        response, _body = self.request("GET", "/simple/", "bob")
        self.assertEqual(response.code, 429)
        (retry,) = response.headers.getRawHeaders(b"retry-after")
        self.assertGreater(int(retry), 0)
        self.assertEqual(self.request("GET", "/simple/", "carol")[0].code, 200)
        self.ix.clock.advance(int(retry))
        self.assertEqual(self.request("GET", "/simple/", "bob")[0].code, 200)
