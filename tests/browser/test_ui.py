"""The web interface in a real browser: Debian's headless Chromium driven by Playwright against
a real ``twist pypicloud``.

Skipped locally (failing under ``CI=true``) when ``/usr/bin/chromium`` or Playwright is missing;
``.ci/run`` installs both.  No browser is ever downloaded.  With ``PPC_SCREENSHOTS=1`` the
tests also write screenshots of the main pages to ``docs/screenshots/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.trial.unittest import SkipTest

from tests.distfactory import core_metadata, make_wheel, twine_fields
from tests.e2e.server import IndexProcess, ServerCase, upload_bytes

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 15_000
SCREENSHOTS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "screenshots")
#: A server whose users live in SQL (so the console can change them); no user yet.
OPTIONS: dict[str, str | None] = {
    "pypi.auth": "sql",
    "auth.rounds": "1000",
    "auth.admins": None,
    "user.alice": None,
    "user.bob": None,
    "auth.signing_key": "browser-test-signing-key-0123456789",
    "session.validate_key": "browser-test-session-key-0123456789",
}


def require_browser() -> Any:
    """Playwright's sync API, or skip (locally) / fail (in CI) saying what is missing."""
    missing = None
    if not os.access(CHROMIUM, os.X_OK):
        missing = f"{CHROMIUM} (Debian package chromium; .ci/run installs it)"
    else:
        try:
            from playwright import sync_api
        except ImportError:
            missing = "Playwright (pip install -e '.[test]')"
    if missing is not None:
        message = f"browser tests need {missing}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise AssertionError(message)
        raise SkipTest(message)
    return sync_api


class BrowserCase(ServerCase):
    """A server, and a fresh Chromium page on it."""

    def start(self) -> IndexProcess:
        folder = self.make_folder()
        options = dict(OPTIONS, **{"auth.db.url": f"sqlite:///{folder}/users.sqlite"})
        return self.start_server(options, folder=folder)

    @contextmanager
    def page(self, server: IndexProcess) -> Iterator[Any]:
        sync_api = require_browser()
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                context = browser.new_context(
                    base_url=server.url, viewport={"width": 1200, "height": 900}
                )
                page = context.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                yield page
            finally:
                browser.close()

    def shot(self, page: Any, name: str) -> None:
        """A full-page screenshot to docs/screenshots/ when PPC_SCREENSHOTS=1."""
        if os.environ.get("PPC_SCREENSHOTS") == "1":
            os.makedirs(SCREENSHOTS, exist_ok=True)
            page.screenshot(path=os.path.join(SCREENSHOTS, f"{name}.png"), full_page=True)

    def register(self, page: Any, username: str, password: str) -> None:
        page.goto("/register")
        page.fill("#username", username)
        page.fill("#password", password)
        page.fill("#password2", password)
        page.click("form.stacked button[type=submit]")

    def log_in(self, page: Any, username: str, password: str) -> None:
        page.goto("/login")
        page.fill("#username", username)
        page.fill("#password", password)
        page.click("form.stacked button[type=submit]")
        page.wait_for_url("**/")


class WalkThroughTests(BrowserCase):
    def test_register_login_search_upload_delete(self) -> None:
        """The first user registers (becoming admin), logs out and in, uploads a wheel from
        the file input, finds it by searching, and deletes it after confirming."""
        server = self.start()
        head = core_metadata(
            "demo-tool", "1.0", summary="A demonstration tool", requires_python=">=3.9"
        ).decode()
        readme = "# Demo Tool\n\nInstall it and **enjoy**:\n\n```python\nimport demo_tool\n```\n"
        metadata = head.rstrip("\n") + "\nDescription-Content-Type: text/markdown\n\n" + readme
        path = self.write_dist(server, make_wheel("demo-tool", "1.0", metadata=metadata.encode()))
        with self.page(server) as page:
            self.register(page, "alice", "alice-password")
            page.wait_for_url("**/")
            self.assertIn("You are the first admin", page.inner_text("main"))
            page.click("header form[action='/logout'] button")
            page.wait_for_url("**/")
            self.assertIn("You are logged out.", page.inner_text("main"))
            self.log_in(page, "alice", "alice-password")
            self.assertIn("logged in as alice", page.inner_text("main"))

            page.goto("/upload")
            page.set_input_files("#content", path)
            page.click("form.stacked button[type=submit]")
            page.wait_for_url("**/project/demo-tool/1.0/")
            self.assertIn("demo_tool-1.0-py3-none-any.whl uploaded.", page.inner_text("main"))
            self.assertIn("enjoy", page.inner_text(".readme"))

            page.fill("#site-search", "demonstration")
            page.press("#site-search", "Enter")
            page.wait_for_url("**/projects/?q=demonstration")
            self.assertEqual(page.locator("table.projects tbody tr").count(), 1)
            self.shot(page, "projects")
            page.click("text=demo-tool")
            page.wait_for_url("**/project/demo-tool/")
            self.shot(page, "project")

            page.goto("/")
            self.shot(page, "home")
            page.goto("/project/demo-tool/")
            page.click("a.danger")
            page.wait_for_url("**/delete")
            self.assertIn("cannot be undone", page.inner_text("main"))
            page.click("button.danger")
            page.wait_for_url("**/projects/")
            self.assertIn("deleted", page.inner_text("main"))
        files = server.get("/api/package/", user=None).json()
        self.assertEqual(files, {"packages": []})

    def test_manage_a_user(self) -> None:
        """An admin creates a user in the console, makes them an admin, and deletes them."""
        server = self.start()
        with self.page(server) as page:
            self.register(page, "alice", "alice-password")
            page.wait_for_url("**/")
            page.click("nav.main >> text=Admin")
            page.wait_for_url("**/console/")
            self.shot(page, "console")
            page.click("nav.subnav >> text=Users")
            page.fill("#new-username", "bob")
            page.fill("#new-password", "bob-password")
            page.click("text=Create user")
            page.wait_for_url("**/console/users/bob/")
            self.assertIn("User bob created.", page.inner_text("main"))
            page.click("text=Make admin")
            page.wait_for_url("**/console/users/bob/")
            self.assertIn("bob is now an admin.", page.inner_text("main"))
            page.click("text=Delete bob…")
            page.wait_for_url("**/console/users/bob/delete")
            page.click("button.danger")
            page.wait_for_url("**/console/users/")
            self.assertIn("User bob deleted.", page.inner_text("main"))
            self.assertNotIn("bob", page.inner_text("table"))

    def test_pages_and_signup_link(self) -> None:
        """The project list, login and account pages render; pypicloud's ``/login#/?token=``
        sign-up link leads to registration with the name filled in (the page's script)."""
        server = self.start()
        answer = server.request(
            "PUT",
            "/api/user/alice/",
            b"password=alice-password",
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.assertEqual(answer.status, 200, answer.text)
        with self.page(server) as page:
            page.goto("/login")
            self.shot(page, "login")
            self.log_in(page, "alice", "alice-password")
            page.goto("/account")
            self.shot(page, "account")
            page.goto("/console/")
            page.fill("#signup-user", "carol")
            page.click("text=Create link")
            url = page.inner_text("#signup-url").strip()
            link = url.replace("/register?token=", "/login#/?token=")
            page.click("header form[action='/logout'] button")
            page.wait_for_url("**/")
            page.goto(link)
            page.wait_for_url("**/register?token=*")
            self.assertEqual(page.input_value("#username"), "carol")


class InertContentTests(BrowserCase):
    def test_malicious_summary_and_description_do_not_run(self) -> None:
        """A project whose summary and description carry script, event handlers and
        javascript: links shows them as text: nothing runs, no dialog opens."""
        server = self.start()
        # alicepw: the password the end-to-end harness sends for alice.
        answer = server.request(
            "PUT",
            "/api/user/alice/",
            b"password=alicepw",
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.assertEqual(answer.status, 200, answer.text)
        head = (
            core_metadata("evil", "1.0", summary='<script>window.__pwned = "summary"</script>')
            .decode()
            .rstrip("\n")
        )
        description = (
            "# Evil\n\n<script>window.__pwned = 'description'</script>\n\n"
            "<img src=x onerror=\"window.__pwned = 'img'\">\n\n"
            '<a href="javascript:window.__pwned=1" id="bad">click</a>\n'
        )
        metadata = (head + "\nDescription-Content-Type: text/markdown\n\n" + description).encode()
        path = self.write_dist(server, make_wheel("evil", "1.0", metadata=metadata))
        with open(path, "rb") as f:
            data = f.read()
        name = os.path.basename(path)
        upload = upload_bytes(server.port, twine_fields(name, data, "evil", "1.0"), name, data)
        self.assertEqual(upload.status, 200, upload.text)
        dialogs: list[str] = []
        with self.page(server) as page:
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            for url in ("/project/evil/", "/projects/?q=script", "/projects/"):
                page.goto(url)
                page.wait_for_load_state("load")
                self.assertIsNone(page.evaluate("window.__pwned"), url)
            page.goto("/project/evil/")
            self.assertIn(
                '<script>window.__pwned = "summary"</script>', page.inner_text(".summary")
            )
            self.assertEqual(page.locator(".readme script").count(), 0)
            self.assertEqual(page.locator(".readme [onerror]").count(), 0)
            self.assertEqual(page.locator(".readme a[href^='javascript']").count(), 0)
        self.assertEqual(dialogs, [])
