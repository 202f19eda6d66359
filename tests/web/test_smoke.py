"""The harness itself: an upload through the routes is listed and downloadable."""

from __future__ import annotations

import hashlib

from tests.web.harness import RouteTestCase


class SmokeTests(RouteTestCase):
    def test_upload_list_download(self) -> None:
        """A wheel uploaded by twine's form is listed on /simple/ and served byte for byte."""
        self.make_index()
        filename, data = self.wheel("Demo", "1.0")
        response, body = self.upload(filename, data)
        self.assertEqual(response.code, 200, body)
        response, body = self.request("GET", "/simple/demo/")
        self.assertIn(hashlib.sha256(data).hexdigest().encode(), body)
        response, body = self.request("GET", f"/api/package/demo/{filename}")
        self.assertEqual(body, data)
