"""Driving the web interface like a browser, through ``StubTreq``: cookies kept between
requests, forms sent with the CSRF token of the page they are on.

Sessions use the index's test clock, so expiry is tested with ``clock.advance()``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from http.cookiejar import CookieJar
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

import attrs
from treq.client import HTTPClient
from treq.testing import StubTreq, _SynchronousProducer

from pypicloud_tx.backends.sessions.memory import MemorySessionStore
from pypicloud_tx.services.sessions import Sessions
from pypicloud_tx.web.context import WebContext
from pypicloud_tx.web.root import IndexSite, build_resource
from tests.distfactory import encode_upload
from tests.web.harness import Index, RouteTestCase

SECRET = b"test session secret"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def use_context(ix: Index, ctx: WebContext) -> None:
    """Serve ``ix`` from ``ctx`` from now on (a real Site, as the harness does)."""
    ix.ctx = ctx
    ix.resource = build_resource(ctx)
    ix.treq = StubTreq(ix.resource)
    agent = ix.treq._agent
    agent._serverFactory = IndexSite(
        ix.resource, ix.settings.max_upload_size, reactor=agent._memoryReactor
    )
    # Each Browser keeps its own cookies: the client must not keep (and mix) them.
    client = HTTPClient(
        agent=agent, data_to_body_producer=_SynchronousProducer, cookiejar=_NoCookies()
    )
    ix.treq.request = client.request  # type: ignore[method-assign]


class _NoCookies(CookieJar):
    """A cookie jar that keeps nothing."""

    def set_cookie(self, cookie: Any) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


def with_sessions(ix: Index, store: Any = None, timeout: int = 3600, max_age: int = 86400) -> None:
    """Give ``ix`` sessions on its test clock (in memory unless ``store`` is given)."""
    sessions = Sessions(
        store if store is not None else MemorySessionStore(),
        SECRET,
        timeout=timeout,
        max_age=max_age,
        now=ix.clock.seconds,
    )
    use_context(ix, attrs.evolve(ix.ctx, sessions=sessions))


@attrs.define
class Page:
    """One response: status, headers, body."""

    code: int
    headers: Any
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode())
        return values[0].decode("latin-1") if values else None

    @property
    def location(self) -> str | None:
        return self.header("location")

    def csrf(self) -> str:
        found = _CSRF.search(self.text)
        assert found, f"no CSRF token on the page:\n{self.text[:2000]}"
        return html.unescape(found.group(1))


class Browser:
    """A cookie jar and the requests a browser would send."""

    def __init__(self, case: UiTestCase) -> None:
        self.case = case
        self.cookies: dict[str, str] = {}

    def _headers(
        self, extra: Mapping[bytes, list[bytes]] | None = None
    ) -> dict[bytes, list[bytes]]:
        headers: dict[bytes, list[bytes]] = dict(extra or {})
        if self.cookies:
            jar = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            headers[b"Cookie"] = [jar.encode()]
        return headers

    def _keep(self, response: Any) -> None:
        for raw in response.headers.getRawHeaders(b"set-cookie") or []:
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(raw.decode("latin-1"))
            for name, morsel in cookie.items():
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    def request(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: Mapping[bytes, list[bytes]] | None = None,
    ) -> Page:
        response, body = self.case.request(method, path, headers=self._headers(headers), data=data)
        self._keep(response)
        return Page(response.code, response.headers, body)

    def get(self, path: str) -> Page:
        return self.request("GET", path)

    def follow(self, page: Page, limit: int = 5) -> Page:
        """Follow redirects (GET), as a browser does after a form."""
        for _ in range(limit):
            if page.code not in (301, 302, 303) or page.location is None:
                return page
            page = self.get(page.location)
        raise AssertionError("too many redirects")

    def post(
        self, path: str, fields: Mapping[str, str] | Sequence[tuple[str, str]], csrf: str | None
    ) -> Page:
        """A urlencoded form; ``csrf`` is the token to send (``None``: send none)."""
        items = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
        if csrf is not None:
            items.append(("csrf", csrf))
        return self.request(
            "POST",
            path,
            urlencode(items).encode(),
            {b"Content-Type": [b"application/x-www-form-urlencoded"]},
        )

    def submit(
        self, page_path: str, action: str, fields: Mapping[str, str] | Sequence[tuple[str, str]]
    ) -> Page:
        """Open ``page_path`` and send a form of it to ``action`` with the page's token."""
        page = self.get(page_path)
        assert page.code == 200, (page.code, page.text[:500])
        return self.post(action, fields, page.csrf())

    def log_in(self, user: str, password: str | None = None) -> Page:
        page = self.submit(
            "/login", "/login", {"username": user, "password": password or user + "pw"}
        )
        assert page.code == 303, (page.code, page.text[:2000])
        return page

    def upload(self, filename: str, data: bytes, csrf: str | None) -> Page:
        fields = [("csrf", csrf)] if csrf is not None else []
        content_type, body = encode_upload(fields, (filename, data))
        return self.request("POST", "/upload", body, {b"Content-Type": [content_type.encode()]})


class UiTestCase(RouteTestCase):
    """Route tests of the web interface."""

    def make_ui(
        self, options: Mapping[str, str | None] | None = None, mutable: bool = False
    ) -> Index:
        ix = self.make_mutable_index(options) if mutable else self.make_index(options)
        with_sessions(ix)
        return ix

    def browser(self) -> Browser:
        return Browser(self)

    def seed(self, name: str = "demo", version: str = "1.0", user: str = "bob", **kw: Any) -> None:
        """Upload a wheel over the API (as twine would)."""
        response, body = self.upload(*self.wheel(name, version, **kw), user=user)
        self.assertEqual(response.code, 200, body)
