"""Logging in and out, the session cookie, CSRF on the account forms, registration, password
changes and API tokens from the browser."""

from __future__ import annotations

import base64
import time

from pypicloud_tx.domain import signup
from tests.web.harness import MUTABLE_OPTIONS, _fired
from tests.web.ui.harness import Browser, Page, UiTestCase, with_sessions


class LoginTests(UiTestCase):
    def test_login_sets_a_safe_cookie(self) -> None:
        """A good login starts a session: an HttpOnly, SameSite=Lax cookie for the whole site,
        not Secure unless ``session.secure`` says so, lasting at most the session's life."""
        self.make_ui()
        browser = self.browser()
        page = browser.log_in("bob")
        self.assertEqual(page.location, "/")
        (raw,) = [c for c in page.headers.getRawHeaders(b"set-cookie") if b"ppc_session=" in c]
        text = raw.decode()
        for part in ("HttpOnly", "SameSite=lax", "Path=/", "Max-Age=86400"):
            self.assertIn(part, text)
        self.assertNotIn("Secure", text)
        self.assertIn("logged in as <strong>bob</strong>", browser.get("/").text)

    def test_secure_cookie(self) -> None:
        """With ``session.secure`` the cookie is Secure and takes the ``__Host-`` prefix."""
        self.make_ui({"session.secure": "true"})
        page = self.browser().log_in("bob")
        cookies = [c.decode() for c in page.headers.getRawHeaders(b"set-cookie")]
        (session,) = [c for c in cookies if "ppc_session=" in c]
        self.assertTrue(session.startswith("__Host-ppc_session="), session)
        self.assertIn("Secure", session)

    def test_wrong_password(self) -> None:
        """A wrong password shows the form again (401) and starts no session."""
        self.make_ui()
        browser = self.browser()
        page = browser.submit("/login", "/login", {"username": "bob", "password": "nope"})
        self.assertEqual(page.code, 401)
        self.assertIn("Invalid user name or password.", page.text)
        self.assertNotIn("ppc_session", browser.cookies)
        self.assertIn('value="bob"', page.text)

    def test_api_token_cannot_log_in(self) -> None:
        """The web login is for passwords; ``__token__`` is refused."""
        self.make_ui()
        page = self.browser().submit(
            "/login", "/login", {"username": "__token__", "password": "pypitx_x"}
        )
        self.assertEqual(page.code, 400)
        self.assertIn("log in with your user name and password", page.text)

    def test_login_needs_the_csrf_token(self) -> None:
        """A login form without the token, with a made-up one, or with another browser's is
        refused (403): no login can be forced on a visitor from another site."""
        self.make_ui()
        fields = {"username": "bob", "password": "bobpw"}
        browser = self.browser()
        browser.get("/login")
        self.assertEqual(browser.post("/login", fields, None).code, 403)
        self.assertEqual(browser.post("/login", fields, "made-up").code, 403)
        other = self.browser()
        token = other.get("/login").csrf()
        refused = browser.post("/login", fields, token)
        self.assertEqual(refused.code, 403)
        self.assertIn("This form has expired", refused.text)
        self.assertNotIn("ppc_session", browser.cookies)

    def test_no_open_redirect(self) -> None:
        """``next`` pointing at another site leads home instead; a local path is followed."""
        self.make_ui()
        for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
            page = self.browser().submit(
                "/login", "/login", {"username": "bob", "password": "bobpw", "next": target}
            )
            self.assertEqual(page.location, "/", target)
        page = self.browser().submit(
            "/login", "/login", {"username": "bob", "password": "bobpw", "next": "/projects/?q=x"}
        )
        self.assertEqual(page.location, "/projects/?q=x")
        form = self.browser().get("/login?next=https%3A%2F%2Fevil.example%2F")
        self.assertIn('name="next" value="/"', form.text)

    def test_throttled_after_failures(self) -> None:
        """Ten wrong passwords for one user, then 429 with Retry-After, as for HTTP Basic."""
        self.make_ui()
        browser = self.browser()
        for _ in range(10):
            browser.submit("/login", "/login", {"username": "bob", "password": "wrong"})
        page = browser.submit("/login", "/login", {"username": "bob", "password": "bobpw"})
        self.assertEqual(page.code, 429)
        self.assertIsNotNone(page.header("retry-after"))

    def test_forged_cookie_ignored(self) -> None:
        """A cookie whose signature is wrong is no session."""
        self.make_ui()
        browser = self.browser()
        browser.log_in("alice")
        session_id, _, _ = browser.cookies["ppc_session"].partition(".")
        browser.cookies["ppc_session"] = session_id + ".AAAA"
        self.assertEqual(browser.get("/account").code, 303)

    def test_login_page_leads_sign_up_links_to_registration(self) -> None:
        """``/login?token=`` (a sign-up link) goes on to registration with the token; the page
        loads the script that does the same for pypicloud's ``/login#/?token=``."""
        self.make_ui()
        page = self.browser().get("/login?token=bob%3A1%3Aabc")
        self.assertEqual((page.code, page.location), (303, "/register?token=bob%3A1%3Aabc"))
        self.assertIn("/static/ui.js", self.browser().get("/login").text)


class LogoutTests(UiTestCase):
    def test_logout_ends_the_session_on_the_server(self) -> None:
        """After logging out, a copy of the session cookie no longer works."""
        self.make_ui()
        browser = self.browser()
        browser.log_in("alice")
        thief = self.browser()
        thief.cookies = dict(browser.cookies)
        self.assertEqual(thief.get("/account").code, 200)
        page = browser.submit("/account", "/logout", {})
        self.assertEqual((page.code, page.location), (303, "/"))
        self.assertNotIn("ppc_session", browser.cookies)
        self.assertEqual(thief.get("/account").code, 303)
        self.assertIn("You are not logged in", thief.get("/").text)

    def test_logout_needs_a_form(self) -> None:
        """``GET /logout`` asks to confirm; a POST without the token is refused and the
        session lives on."""
        self.make_ui()
        browser = self.browser()
        browser.log_in("alice")
        page = browser.get("/logout")
        self.assertEqual(page.code, 200)
        self.assertIn('action="/logout"', page.text)
        self.assertEqual(browser.post("/logout", {}, None).code, 403)
        self.assertEqual(browser.get("/account").code, 200)

    def test_idle_and_absolute_expiry(self) -> None:
        """A session ends after ``session.timeout`` unused, and after ``session.max_age``
        however much it is used."""
        ix = self.make_ui()
        with_sessions(ix, timeout=600, max_age=3000)
        browser = self.browser()
        browser.log_in("bob")
        ix.clock.advance(500)
        self.assertEqual(browser.get("/account").code, 200)
        ix.clock.advance(500)  # 500 s since the last use: still alive
        self.assertEqual(browser.get("/account").code, 200)
        ix.clock.advance(601)
        self.assertEqual(browser.get("/account").code, 303)
        browser.log_in("bob")
        for _ in range(6):
            ix.clock.advance(500)
            browser.get("/")
        self.assertEqual(browser.get("/account").code, 303)

    def test_deleted_user_session_ends(self) -> None:
        """The session of a user deleted meanwhile stops working."""
        self.make_ui(mutable=True)
        browser = self.browser()
        browser.log_in("carol")
        response, _ = self.request("DELETE", "/admin/user/carol/", "alice")
        self.assertEqual(response.code, 200)
        self.assertEqual(browser.get("/account").code, 303)


class RegisterTests(UiTestCase):
    def register(
        self, browser: Browser, username: str, password: str = "pw12345", token: str = ""
    ) -> Page:
        page = browser.get("/register" + (f"?token={token}" if token else ""))
        return browser.post(
            "/register",
            {"username": username, "password": password, "password2": password, "token": token},
            page.csrf(),
        )

    def test_closed_registration(self) -> None:
        """With registration closed (and admins present) the page says so and offers no
        form; a read-only backend says accounts are made elsewhere."""
        self.make_ui(mutable=True)
        page = self.browser().get("/register")
        self.assertIn("Registration is closed", page.text)
        self.assertNotIn('name="password2"', page.text)
        self.make_ui()
        self.assertIn("not made here", self.browser().get("/register").text)

    def test_open_registration_makes_a_pending_user(self) -> None:
        """With registration open, a new account waits for approval and cannot log in yet."""
        ix = self.make_ui(mutable=True)
        _fired(ix.backends.access.set_allow_register(True))
        browser = self.browser()
        page = self.register(browser, "dave")
        self.assertEqual(page.code, 200)
        self.assertIn("an admin must approve your account", page.text)
        self.assertEqual(_fired(ix.backends.access.pending_users()), ["dave"])
        self.assertNotIn("ppc_session", browser.cookies)

    def test_signup_token_makes_an_active_user(self) -> None:
        """A sign-up link registers an active user, logged in at once."""
        self.make_ui({"auth.signing_key": "k" * 32}, mutable=True)
        token = signup.issue("erin", "k" * 32, time.time())
        browser = self.browser()
        form = browser.get(f"/register?token={token}")
        self.assertIn(
            'value="erin" autocomplete="username" required maxlength="100" readonly', form.text
        )
        page = self.register(browser, "erin", token=token)
        self.assertEqual(page.code, 303, page.text)
        self.assertIn("logged in as <strong>erin</strong>", browser.follow(page).text)

    def test_first_user_becomes_admin(self) -> None:
        """On a mutable backend without admins the first to register becomes the admin."""
        ix = self.make_index(MUTABLE_OPTIONS)
        _fired(ix.backends.access.start())
        self.addCleanup(lambda: _fired(ix.backends.access.stop()))
        with_sessions(ix)
        browser = self.browser()
        self.assertIn("becomes its administrator", browser.get("/register").text)
        page = browser.follow(self.register(browser, "root"))
        self.assertIn("You are the first admin", page.text)
        self.assertEqual(browser.get("/console/").code, 200)

    def test_password_mismatch_and_csrf(self) -> None:
        """Two different passwords are refused (400); a form without the token too (403)."""
        ix = self.make_ui(mutable=True)
        _fired(ix.backends.access.set_allow_register(True))
        browser = self.browser()
        page = browser.submit(
            "/register", "/register", {"username": "x", "password": "a", "password2": "b"}
        )
        self.assertEqual(page.code, 400)
        self.assertIn("The two passwords differ", page.text)
        fields = {"username": "x", "password": "a", "password2": "a"}
        self.assertEqual(browser.post("/register", fields, None).code, 403)
        self.assertEqual(_fired(ix.backends.access.pending_users()), [])


class AccountTests(UiTestCase):
    def test_account_needs_login(self) -> None:
        """Anonymous visitors of ``/account`` are sent to log in first."""
        self.make_ui()
        page = self.browser().get("/account")
        self.assertEqual((page.code, page.location), (303, "/login?next=%2Faccount"))

    def test_change_password(self) -> None:
        """The new password works, the old one no longer does, and other sessions end."""
        self.make_ui(mutable=True)
        browser = self.browser()
        browser.log_in("bob")
        other = self.browser()
        other.log_in("bob")
        page = browser.submit(
            "/account",
            "/account/password",
            {"old_password": "bobpw", "new_password": "n3w", "new_password2": "n3w"},
        )
        self.assertEqual(page.code, 303, page.text)
        self.assertIn("Password changed", browser.follow(page).text)
        self.assertEqual(browser.get("/account").code, 200)
        self.assertEqual(other.get("/account").code, 303)
        self.assertEqual(self.request("GET", "/api/tokens/", "bob", "bobpw")[0].code, 401)
        self.assertEqual(self.request("GET", "/api/tokens/", "bob", "n3w")[0].code, 200)

    def test_wrong_old_password(self) -> None:
        """A wrong current password is refused (403) and changes nothing."""
        self.make_ui(mutable=True)
        browser = self.browser()
        browser.log_in("bob")
        page = browser.submit(
            "/account",
            "/account/password",
            {"old_password": "nope", "new_password": "n3w", "new_password2": "n3w"},
        )
        self.assertEqual(page.code, 403)
        self.assertIn("The old password is wrong.", page.text)

    def test_password_form_needs_csrf(self) -> None:
        """Without the token the password stays."""
        self.make_ui(mutable=True)
        browser = self.browser()
        browser.log_in("bob")
        fields = {"old_password": "bobpw", "new_password": "n3w", "new_password2": "n3w"}
        self.assertEqual(browser.post("/account/password", fields, None).code, 403)
        self.assertEqual(self.request("GET", "/api/tokens/", "bob", "bobpw")[0].code, 200)

    def test_api_tokens(self) -> None:
        """A token is created (shown once, and it works with pip's credentials), listed, and
        revoked."""
        self.make_ui(mutable=True)
        browser = self.browser()
        browser.log_in("bob")
        page = browser.submit(
            "/account",
            "/account/tokens",
            [("name", "ci"), ("packages", "demo"), ("permissions", "read"), ("expires_days", "30")],
        )
        self.assertEqual(page.code, 200)
        text = page.text.split('id="new-token"><code>')[1].split("</code>")[0]
        self.assertTrue(text.startswith("pypitx_"))
        credentials = base64.b64encode(f"__token__:{text}".encode())
        response, _ = self.request(
            "GET", "/simple/", headers={b"Authorization": [b"Basic " + credentials]}
        )
        self.assertEqual(response.code, 200)
        listed = browser.get("/account")
        self.assertIn("<td>ci</td><td>demo</td><td>read</td>", listed.text)
        self.assertNotIn(text, listed.text)
        token_id = text.split("_")[1]
        revoked = browser.post(f"/account/tokens/{token_id}/revoke", {}, listed.csrf())
        self.assertEqual(revoked.code, 303)
        self.assertIn("revoked", browser.follow(revoked).text)
        response, _ = self.request(
            "GET", "/simple/", headers={b"Authorization": [b"Basic " + credentials]}
        )
        self.assertEqual(response.code, 401)

    def test_read_only_backend(self) -> None:
        """With users in the config file, the account page offers no password or token form."""
        self.make_ui()
        browser = self.browser()
        browser.log_in("bob")
        page = browser.get("/account")
        self.assertIn("managed elsewhere", page.text)
        self.assertIn("cannot hold API tokens", page.text)
