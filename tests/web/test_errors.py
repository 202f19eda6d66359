"""Unexpected failures: a plain 500, logged, never a traceback sent to the client."""

from __future__ import annotations

from twisted.internet.defer import fail

from pypicloud_tx.errors import BackendUnavailable
from tests.web.harness import RouteTestCase, snapshot


class Exploding:
    """Wraps a backend so that one method fails with ``error``."""

    def __init__(self, inner: object, method: str, error: Exception) -> None:
        self._inner = inner
        self._method = method
        self._error = error

    def __getattr__(self, name: str) -> object:
        if name == self._method:
            return lambda *a, **k: fail(self._error)
        return getattr(self._inner, name)


class UnexpectedErrorTests(RouteTestCase):
    def setUp(self) -> None:
        self.make_index()
        self.filename, self.data = self.wheel("demo", "1.0")
        self.assertEqual(self.upload(self.filename, self.data)[0].code, 200)

    def assert_plain_500(self, response: object, body: bytes) -> None:
        self.assertEqual(response.code, 500, body)  # type: ignore[attr-defined]
        self.assertNotIn(b"Traceback", body)
        self.assertNotIn(b"secret-detail", body)
        self.assertIn(b"server log", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_cache_error_on_read(self) -> None:
        """An unexpected exception while listing is a 500 with a plain message, logged."""
        self.ix.index.cache = Exploding(self.ix.cache, "all", RuntimeError("secret-detail"))
        self.assert_plain_500(*self.request("GET", "/simple/demo/"))

    def test_storage_error_on_download(self) -> None:
        """An unexpected exception opening a file is a 500 with a plain message, logged."""
        self.ix.index.storage = Exploding(self.ix.storage, "open", RuntimeError("secret-detail"))
        self.assert_plain_500(*self.request("GET", f"/api/package/demo/{self.filename}"))

    def test_storage_error_on_upload(self) -> None:
        """An unexpected storage failure during upload is a 500, and nothing is listed."""
        before = snapshot(self.ix)
        self.ix.index.storage = Exploding(self.ix.storage, "put", RuntimeError("secret-detail"))
        self.assert_plain_500(*self.upload(*self.wheel("demo", "2.0")))
        self.assertEqual(snapshot(self.ix), before)

    def test_json_client_gets_json_500(self) -> None:
        """API clients get the 500 message as JSON."""
        self.ix.index.cache = Exploding(self.ix.cache, "distinct", RuntimeError("secret-detail"))
        response, body = self.request("GET", "/api/package/")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assert_plain_500(response, body)

    def test_backend_unavailable_503(self) -> None:
        """A backend that is down answers 503 with its message, not a 500."""
        self.ix.index.cache = Exploding(
            self.ix.cache, "all", BackendUnavailable("The cache database is unreachable.")
        )
        response, body = self.request("GET", "/simple/demo/")
        self.assertEqual(response.code, 503)
        self.assertIn(b"unreachable", body)
        self.assertNotIn(b"Traceback", body)


class RoutingErrorTests(RouteTestCase):
    """Requests that match no route get 404/405 with a message, never a 500."""

    def test_unknown_path_is_404(self) -> None:
        """A path with no route answers 404 and logs no error."""
        self.make_index()
        response, body = self.request("GET", "/no/such/route")
        self.assertEqual(response.code, 404)
        self.assertIn(b"/simple/", body)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_wrong_method_is_405(self) -> None:
        """A known path with a method it does not take answers 405 with Allow."""
        self.make_index()
        response, _ = self.request("PUT", "/simple/")
        self.assertEqual(response.code, 405)
        self.assertIn(b"GET", response.headers.getRawHeaders(b"allow")[0])
