"""Rendered pages are reused while their source is unchanged, and never when it changed."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.web.rendering import PageMemo
from tests.web.harness import RouteTestCase


class PageMemoTests(SynchronousTestCase):
    def test_same_source_renders_once(self) -> None:
        """The same source object gives the stored body without rendering again."""
        memo = PageMemo()
        source = ["a"]
        calls = []

        def render() -> bytes:
            calls.append(1)
            return b"page"

        self.assertEqual(memo.get("k", source, render)[0], b"page")
        self.assertEqual(memo.get("k", source, render)[0], b"page")
        self.assertEqual(len(calls), 1)

    def test_new_source_renders_again(self) -> None:
        """An equal but different source object is rendered again (identity, not equality)."""
        memo = PageMemo()
        memo.get("k", ["a"], lambda: b"old")
        self.assertEqual(memo.get("k", ["a"], lambda: b"new")[0], b"new")


class CachedPagesFollowChangesTests(RouteTestCase):
    """With a memoising SQLite cache, pages change as soon as the index does."""

    def setUp(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.make_index({"pypi.db": "sql", "db.url": f"sqlite:///{folder}/db.sqlite"})
        self.successResultOf(self.ix.cache.start())

    def test_upload_delete_and_yank_show_at_once(self) -> None:
        """A page read (and memoised) before an upload, a yank and a delete shows each one
        on the next read, in HTML and JSON alike."""
        first, first_data = self.wheel("memo", "1.0")
        self.assertEqual(self.upload(first, first_data)[0].code, 200)
        for accept in (b"text/html", b"application/vnd.pypi.simple.v1+json"):
            _, body = self.request("GET", "/simple/memo/", headers={b"Accept": [accept]})
            self.assertIn(first.encode(), body)
        second, second_data = self.wheel("memo", "2.0")
        self.assertEqual(self.upload(second, second_data)[0].code, 200)
        _, body = self.request("GET", "/simple/memo/")
        self.assertIn(second.encode(), body)
        response, _ = self.request(
            "POST",
            f"/api/package/memo/{first}/yank",
            user="alice",
            headers={b"Content-Type": [b"application/x-www-form-urlencoded"]},
            data=b"reason=bad",
        )
        self.assertEqual(response.code, 200)
        _, body = self.request("GET", "/simple/memo/")
        self.assertIn(b'data-yanked="bad"', body)
        response, _ = self.request("DELETE", f"/api/package/memo/{second}", user="alice")
        self.assertEqual(response.code, 200)
        _, body = self.request("GET", "/simple/memo/")
        self.assertNotIn(second.encode(), body)
