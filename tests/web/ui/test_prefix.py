"""The web interface under a path prefix: nginx serves the index at ``/pypi/`` and strips the
prefix, telling the server with ``X-Forwarded-Prefix``.  Every link, form and asset of every
page, and every redirect, must then point under ``/pypi/``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin

from tests.web.ui.harness import Browser, Page, UiTestCase

PREFIX = "/pypi"
#: The test client (127.0.0.1) is the trusted proxy.
TRUSTED = {"pypi.trusted_proxies": "127.0.0.1"}
_LINK = re.compile(r'\b(?:href|action|src)="([^"]*)"')


class ProxiedBrowser(Browser):
    """A browser whose requests pass a proxy serving the index under :data:`PREFIX`: it sends
    the public paths it sees (``/pypi/...``), the proxy strips the prefix and says so."""

    def request(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: Mapping[bytes, list[bytes]] | None = None,
    ) -> Page:
        assert path.startswith(PREFIX + "/"), f"a link outside {PREFIX}/: {path}"
        extra = {**(headers or {}), b"X-Forwarded-Prefix": [PREFIX.encode()]}
        return super().request(method, path[len(PREFIX) :], data, extra)


def local_links(page: Page, path: str = "/") -> list[str]:
    """Every link, form action and asset of ``page`` (at ``path``) on this site, as absolute
    paths (relative ones resolved, as a browser does); not ``#`` or external links."""
    found = [link.replace("&amp;", "&") for link in _LINK.findall(page.text)]
    return [
        urljoin(path, link) for link in found if not link.startswith(("#", "http://", "https://"))
    ]


class PrefixTests(UiTestCase):
    def setUp(self) -> None:
        self.make_ui({**TRUSTED, "package.demo.user.bob": "rw"}, mutable=True)
        self.seed("demo", "1.0")

    def browser(self) -> Any:
        return ProxiedBrowser(self)

    def test_every_link_of_every_page_is_under_the_prefix(self) -> None:
        """Crawl every page an admin can reach from the home page: every link, form and asset
        starts with the prefix, and each GET link answers (no 404 from a lost prefix)."""
        browser = self.browser()
        login = browser.submit(
            f"{PREFIX}/login", f"{PREFIX}/login", {"username": "alice", "password": "alicepw"}
        )
        self.assertEqual(login.code, 303, login.text[:500])
        self.assertTrue(str(login.location).startswith(f"{PREFIX}/"), login.location)
        seen: set[str] = set()
        queue = [f"{PREFIX}/"]
        forms: set[str] = set()
        while queue and len(seen) < 60:
            path = queue.pop(0)
            if path in seen:
                continue
            seen.add(path)
            page = browser.get(path)
            self.assertIn(page.code, (200, 303), (path, page.body[:500]))
            if page.code != 200 or "text/html" not in str(page.header("content-type")):
                continue
            links = local_links(page, path)
            self.assertTrue(links, path)
            for link in links:
                with self.subTest(page=path, link=link):
                    self.assertTrue(link.startswith(f"{PREFIX}/"), link)
            forms.update(re.findall(r'action="([^"]*)"', page.text))
            actions = set(re.findall(r'<form method="post" action="([^"]*)"', page.text))
            for link in links:
                # Forms are POSTed, not crawled; logout and delete confirmations would end
                # the crawl's session or data.
                if link in actions or "logout" in link or "delete" in link or link in seen:
                    continue
                queue.append(link.partition("#")[0])
        # The crawl reached the pages worth checking, and the forms on them.
        for page_path in ("/projects/", "/project/demo/", "/upload", "/account", "/console/"):
            self.assertIn(PREFIX + page_path, seen)
        self.assertIn(f"{PREFIX}/logout", forms)
        self.assertTrue(any(s.startswith(f"{PREFIX}/static/ui.css?v=") for s in seen), seen)

    def test_forms_and_redirects_stay_under_the_prefix(self) -> None:
        """A page that needs a login sends the visitor to the prefixed login page, which
        brings them back (prefixed) afterwards; a form's redirect is prefixed too."""
        browser = self.browser()
        page = browser.get(f"{PREFIX}/account")
        self.assertEqual(page.code, 303)
        self.assertEqual(page.location, f"{PREFIX}/login?next=%2Faccount")
        form = browser.get(str(page.location))
        self.assertIn(f'action="{PREFIX}/login"', form.text)
        done = browser.post(
            f"{PREFIX}/login?next=%2Faccount",
            {"username": "bob", "password": "bobpw", "next": "/account"},
            form.csrf(),
        )
        self.assertEqual(done.code, 303, done.text[:500])
        self.assertEqual(done.location, f"{PREFIX}/account")
        account = browser.follow(done)
        self.assertEqual(account.code, 200)
        self.assertIn(f'action="{PREFIX}/account/password"', account.text)

    def test_without_the_header_links_are_at_the_root(self) -> None:
        """Served at the root (no prefix header), pages link from ``/``."""
        page = Browser(self).get("/")
        links = local_links(page)
        self.assertIn("/projects/", links)
        self.assertFalse([link for link in links if link.startswith(PREFIX)], links)
