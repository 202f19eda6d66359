"""Sessions across processes: two ``twist pypicloud`` sharing one deployment accept each
other's sessions, and a logout on one ends the session on both (no browser needed)."""

from __future__ import annotations

import http.client
import re
from http.cookies import SimpleCookie
from urllib.parse import urlencode

from tests.e2e.server import HTTP_TIMEOUT, IndexProcess, ServerCase

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Jar:
    """The cookies of one client, sent with each request to either server."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def request(
        self, server: IndexProcess, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """``(status, body)``; the response's cookies are kept (every Set-Cookie header)."""
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=HTTP_TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=headers)
            answer = conn.getresponse()
            text = answer.read().decode("utf-8", "replace")
            for raw in answer.msg.get_all("Set-Cookie") or []:
                cookie: SimpleCookie = SimpleCookie()
                cookie.load(raw)
                for name, morsel in cookie.items():
                    if morsel["max-age"] == "0":
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = morsel.value
            return answer.status, text
        finally:
            conn.close()


class ProcessTests(ServerCase):
    def test_session_valid_on_every_process_and_logout_everywhere(self) -> None:
        """Log in on process A; the cookie works on process B; log out on B; a copy of the
        cookie no longer works on A."""
        folder = self.make_folder()
        options = {"session.validate_key": "shared-key-for-both-processes"}
        a = self.start_server(options, folder=folder)
        b = self.start_server(options, folder=folder)
        client = Jar()
        _, page = client.request(a, "GET", "/login")
        token = _CSRF.search(page)
        assert token is not None
        status, text = client.request(
            a, "POST", "/login", {"username": "bob", "password": "bobpw", "csrf": token.group(1)}
        )
        self.assertEqual(status, 303, text)
        self.assertIn("ppc_session", client.cookies)
        copy = Jar()
        copy.cookies = dict(client.cookies)
        status, account = client.request(b, "GET", "/account")
        self.assertEqual(status, 200, account)
        token = _CSRF.search(account)
        assert token is not None
        self.assertEqual(client.request(b, "POST", "/logout", {"csrf": token.group(1)})[0], 303)
        self.assertEqual(copy.request(a, "GET", "/account")[0], 303)
        self.assertEqual(copy.request(b, "GET", "/account")[0], 303)
