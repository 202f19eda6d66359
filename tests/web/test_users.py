"""``/api/user/`` through the real HTTP stack: registration (open, closed, first admin,
sign-up tokens) and changing one's own password."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from pypicloud_tx.domain import signup
from pypicloud_tx.domain.tokens import make_scope, new_token
from tests.web.harness import RouteTestCase, _fired

KEY = "web-test-key"


class UsersCase(RouteTestCase):
    def call(
        self,
        method: str,
        path: str,
        user: str | None = None,
        form: Any = None,
        password: str | None = None,
        as_json: bool = False,
    ) -> tuple[Any, Any]:
        headers = {b"Accept": [b"application/json"]}
        data = form
        if as_json:
            headers[b"Content-Type"] = [b"application/json"]
            data = json.dumps(form).encode()
        response, body = self.request(method, path, user, password, headers=headers, data=data)
        return response, json.loads(body) if body else None

    def status_as(self, user: str, password: str) -> int:
        """The status of an authenticated read (200 when the credentials work, 401 if not)."""
        return int(self.call("GET", "/api/package/", user, password=password)[0].code)

    def dump(self) -> Any:
        return _fired(self.ix.backends.access.dump())


class RegisterTests(UsersCase):
    def setUp(self) -> None:
        self.make_mutable_index({"auth.signing_key": KEY})

    def test_closed(self) -> None:
        """Registration is closed by default: 403 saying so, nothing stored."""
        before = self.dump()
        response, body = self.call("PUT", "/api/user/dave/", form={"password": "pw"})
        self.assertEqual(response.code, 403)
        self.assertIn("Registration is closed", body["message"])
        self.assertEqual(self.dump(), before)

    def test_open(self) -> None:
        """With registration open, ``curl -X PUT -d password=...`` (with or without the
        slash) makes a pending user who cannot log in until approved."""
        self.call("POST", "/admin/register/", "alice", form={"allow": "true"})
        response, body = self.call("PUT", "/api/user/LordFoobar", form={"password": "foobar"})
        self.assertEqual(response.code, 200, body)
        self.assertEqual(
            (body["username"], body["pending"], body["admin"]), ("LordFoobar", True, False)
        )
        self.assertEqual(self.call("PUT", "/api/user/dave/", form={"password": "pw"})[0].code, 200)
        self.assertEqual(
            self.call("GET", "/admin/pending_users/", "alice")[1], ["LordFoobar", "dave"]
        )
        self.assertEqual(self.status_as("dave", "pw"), 401)
        self.call("POST", "/admin/user/dave/approve/", "alice")
        self.assertEqual(self.status_as("dave", "pw"), 200)

    def test_existing_user(self) -> None:
        """Registering a taken name (active or pending) is 409; the user keeps their
        password."""
        self.call("POST", "/admin/register/", "alice", form={"allow": "true"})
        self.assertEqual(self.call("PUT", "/api/user/bob/", form={"password": "x"})[0].code, 409)
        self.call("PUT", "/api/user/dave/", form={"password": "pw"})
        self.assertEqual(self.call("PUT", "/api/user/dave/", form={"password": "x"})[0].code, 409)
        self.assertEqual(self.status_as("bob", "bobpw"), 200)

    def test_bad_input(self) -> None:
        """A missing password, a bad name or a password in the URL are 400, nothing stored."""
        self.call("POST", "/admin/register/", "alice", form={"allow": "true"})
        before = self.dump()
        for path, form in [
            ("/api/user/dave/", None),
            ("/api/user/dave/", {"password": ""}),
            ("/api/user/__token__/", {"password": "x"}),
            ("/api/user/da%3Ave/", {"password": "x"}),
            ("/api/user/%20dave/", {"password": "x"}),
            ("/api/user/da%07ve/", {"password": "x"}),
            ("/api/user/" + "d" * 101 + "/", {"password": "x"}),
            ("/api/user/dave/?password=x", None),
        ]:
            with self.subTest(path):
                response, body = self.call("PUT", path, form=form)
                self.assertEqual(response.code, 400, body)
        self.assertEqual(self.dump(), before)

    def test_signup_token(self) -> None:
        """A sign-up token from /admin/token/<name>/ registers that name while registration is
        closed, active at once; sent as a form field or in JSON."""
        token = self.call("GET", "/admin/token/dave/", "alice")[1]["token"]
        response, body = self.call(
            "PUT", "/api/user/dave", form={"password": "pw", "token": token}, as_json=True
        )
        self.assertEqual(response.code, 200, body)
        self.assertEqual((body["pending"], body["admin"]), (False, False))
        self.assertEqual(self.status_as("dave", "pw"), 200)
        token = self.call("GET", "/admin/token/erin/", "alice")[1]["token"]
        response, _ = self.call("PUT", "/api/user/erin/", form={"password": "pw", "token": token})
        self.assertEqual(response.code, 200)

    def test_bad_signup_tokens(self) -> None:
        """Tokens for another name, expired, forged or garbage are 403; nothing is stored."""
        token = self.call("GET", "/admin/token/dave/", "alice")[1]["token"]
        week_old = signup.issue("dave", KEY, time.time() - signup.ONE_WEEK - 60)
        before = self.dump()
        for name, text in [
            ("mallory", token),
            ("dave", week_old),
            ("dave", signup.issue("dave", "other-key", time.time())),
            ("dave", "garbage"),
        ]:
            with self.subTest(text):
                response, body = self.call(
                    "PUT", f"/api/user/{name}/", form={"password": "pw", "token": text}
                )
                self.assertEqual(response.code, 403, body)
        self.assertEqual(self.dump(), before)


class FirstAdminTests(UsersCase):
    def test_first_registration_becomes_admin(self) -> None:
        """On a mutable index without any user, the first registration (registration closed)
        makes an active admin who can use /admin/ at once; the next one is refused."""
        self.make_mutable_index()
        for user in ("alice", "bob", "carol"):
            _fired(self.ix.backends.access.delete_user(user))
        response, body = self.call("PUT", "/api/user/root/", form={"password": "rootpw"})
        self.assertEqual(response.code, 200, body)
        self.assertEqual((body["admin"], body["pending"]), (True, False))
        self.assertEqual(self.call("GET", "/admin/user/", "root", password="rootpw")[0].code, 200)
        self.assertEqual(self.call("PUT", "/api/user/late/", form={"password": "x"})[0].code, 403)

    def test_read_only_backend(self) -> None:
        """On the config backend registration is 409, naming the backend."""
        self.make_index()
        response, body = self.call("PUT", "/api/user/dave/", form={"password": "pw"})
        self.assertEqual(response.code, 409)
        self.assertIn("pypi.auth = config", body["message"])


class PasswordTests(UsersCase):
    def setUp(self) -> None:
        self.make_mutable_index()

    def test_change(self) -> None:
        """The right old password changes it (curl -d form); the old one stops working at
        once although it was just used, the new one works."""
        self.assertEqual(self.status_as("bob", "bobpw"), 200)
        response, body = self.call(
            "POST",
            "/api/user/password",
            "bob",
            form={"old_password": "bobpw", "new_password": "F0084RR"},
        )
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.status_as("bob", "bobpw"), 401)
        self.assertEqual(self.status_as("bob", "F0084RR"), 200)

    def test_json_and_slash(self) -> None:
        """A JSON body and the trailing-slash URL work too."""
        response, _ = self.call(
            "POST",
            "/api/user/password/",
            "bob",
            form={"old_password": "bobpw", "new_password": "n"},
            as_json=True,
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(self.status_as("bob", "n"), 200)

    def test_wrong_old_password(self) -> None:
        """A wrong old password is 403 and changes nothing."""
        response, body = self.call(
            "POST", "/api/user/password", "bob", form={"old_password": "x", "new_password": "n"}
        )
        self.assertEqual((response.code, body), (403, {"message": "The old password is wrong."}))
        self.assertEqual(self.status_as("bob", "bobpw"), 200)

    def test_vanished_user_answers_alike(self) -> None:
        """A caller whose account vanished (while their login was remembered) gets exactly
        the answer of a wrong old password."""
        self.assertEqual(self.status_as("carol", "carolpw"), 200)
        _fired(self.ix.backends.access.delete_user("carol"))
        response, body = self.call(
            "POST",
            "/api/user/password",
            "carol",
            form={"old_password": "carolpw", "new_password": "n"},
        )
        self.assertEqual((response.code, body), (403, {"message": "The old password is wrong."}))

    def test_who_may_change(self) -> None:
        """Anonymous: 401 with the Basic challenge.  Missing fields: 400.  Passwords in the
        URL: 400."""
        form = {"old_password": "bobpw", "new_password": "n"}
        response, _ = self.call("POST", "/api/user/password", form=form)
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.headers.getRawHeaders(b"WWW-Authenticate"), [b'Basic realm="pypi"']
        )
        for bad in ({"old_password": "bobpw"}, {"new_password": "n"}, None):
            self.assertEqual(self.call("POST", "/api/user/password", "bob", form=bad)[0].code, 400)
        response, _ = self.call(
            "POST", "/api/user/password?old_password=bobpw&new_password=n", "bob"
        )
        self.assertEqual(response.code, 400)
        self.assertEqual(self.status_as("bob", "bobpw"), 200)

    def test_api_token_refused(self) -> None:
        """An API-token caller cannot change the owner's password (403)."""
        text, record = new_token(
            "bob", "ci", make_scope([], ["read"]), dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
        )
        _fired(self.ix.backends.access.save_token(record))
        response, body = self.call(
            "POST",
            "/api/user/password",
            "__token__",
            form={"old_password": "bobpw", "new_password": "n"},
            password=text,
        )
        self.assertEqual(response.code, 403, body)
        self.assertIn("API tokens", body["message"])
        self.assertEqual(self.status_as("bob", "bobpw"), 200)

    def test_read_only_backend(self) -> None:
        """On the config backend a password change is 409 saying to edit the config file."""
        self.make_index()
        response, body = self.call(
            "POST", "/api/user/password", "bob", form={"old_password": "bobpw", "new_password": "n"}
        )
        self.assertEqual(response.code, 409)
        self.assertIn("configuration file", body["message"])
