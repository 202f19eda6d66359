"""Pull-through caching (``pypi.fallback = cache``) through the real routes, in memory:
verified downloads stored as ``origin = upstream``, one upstream exchange for many callers,
nothing stored from a bad download, timeouts, stale pages and ``POST /api/fetch``."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pypicloud_tx.domain.models import HOSTED, UPSTREAM
from tests.distfactory import core_metadata
from tests.web.fallback_harness import JSON, FallbackCase, FallbackIndex
from tests.web.harness import _fired

DEMO1 = "demo-1.0-py3-none-any.whl"
DEMO2 = "demo-2.0-py3-none-any.whl"


class PullCase(FallbackCase):
    def prepare(self, **options: str) -> FallbackIndex:
        ix = self.make_fallback({"pypi.fallback": "cache", **options})
        self.demo1 = self.wheel("demo", "1.0", summary="the demo")
        self.meta1 = core_metadata("demo", "1.0", summary="the demo")
        ix.upstream.add(*self.demo1, metadata=self.meta1)
        ix.upstream.add(*self.wheel("demo", "2.0"))
        return ix

    def get(self, path: str, user: str | None = "bob") -> tuple[int, bytes]:
        response, body = self.request("GET", path, user)
        return response.code, body

    def concurrently(self, paths: list[str], user: str = "bob", accept: bytes | None = None) -> Any:
        """Send every request while upstream holds its answers, then let upstream answer
        (repeatedly: the page comes before the file)."""
        self.ix.upstream.gated = True
        pending = [self.start(p, user, accept) for p in paths]
        self.ix.flush()
        for d in pending:
            self.assertNoResult(d)
        for _ in range(10):
            self.ix.upstream.release()
            self.ix.flush()
        self.ix.upstream.gated = False
        answers = []
        for d in pending:
            response = self.successResultOf(self._pump(d))
            answers.append((response.code, self.successResultOf(self._pump(response.content()))))
        return answers


class PullThroughTests(PullCase):
    def test_first_download_caches(self) -> None:
        """The first download fetches the file, checks it, stores it as origin=upstream with
        its metadata and serves its bytes; the next download is served from storage without
        asking upstream for the file again."""
        ix = self.prepare()
        code, body = self.get(f"/api/package/demo/{DEMO1}")
        self.assertEqual((code, body), (200, self.demo1[1]))
        self.assertEqual(ix.held(), [(DEMO1, UPSTREAM)])
        record = _fired(ix.cache.fetch(DEMO1))
        self.assertEqual(record.sha256, hashlib.sha256(self.demo1[1]).hexdigest())
        self.assertEqual(record.summary, "the demo")
        self.assertIsNone(record.uploader)
        stored = _fired(ix.storage.list())
        self.assertEqual([f.filename for f in stored], [DEMO1])
        self.assertEqual(_fired(ix.storage.open_metadata(record)), self.meta1)
        self.assertEqual(self.get(f"/api/package/demo/{DEMO1}"), (200, self.demo1[1]))
        self.assertEqual(ix.upstream.count(f"/files/{DEMO1}"), 1)

    def test_concurrent_downloads_one_fetch(self) -> None:
        """Eight simultaneous first downloads of one file make one upstream page request and
        one file request; every caller gets the whole file."""
        ix = self.prepare()
        answers = self.concurrently([f"/api/package/demo/{DEMO1}"] * 8)
        self.assertEqual(answers, [(200, self.demo1[1])] * 8)
        self.assertEqual(ix.upstream.count(f"/files/{DEMO1}"), 1)
        self.assertEqual(ix.upstream.count("/simple/demo/"), 1)

    def test_concurrent_pages_one_fetch(self) -> None:
        """Eight simultaneous requests for an uncached project page make one upstream
        request, and get the same page and ETag."""
        ix = self.prepare()
        answers = self.concurrently(["/simple/demo/"] * 8, accept=JSON)
        self.assertEqual({code for code, _ in answers}, {200})
        self.assertEqual(len({body for _, body in answers}), 1)
        self.assertEqual(ix.upstream.count("/simple/demo/"), 1)

    def test_wrong_hash_not_stored(self) -> None:
        """A file that does not match upstream's sha256 is answered 502 with a message and
        never stored; asking again tries again."""
        ix = self.prepare()
        ix.upstream.lie.add(DEMO1)
        code, body = self.get(f"/api/package/demo/{DEMO1}")
        self.assertEqual(code, 502)
        self.assertIn(b"does not match its sha256 hash", body)
        self.assertEqual(ix.held(), [])
        self.assertEqual(_fired(ix.storage.list()), [])
        self.get(f"/api/package/demo/{DEMO1}")
        self.assertEqual(ix.upstream.count(f"/files/{DEMO1}"), 2)

    def test_partial_download_not_stored(self) -> None:
        """A download cut short is answered 502 and leaves nothing in storage or cache."""
        ix = self.prepare()
        ix.upstream.truncate.add(DEMO1)
        code, _ = self.get(f"/api/package/demo/{DEMO1}")
        self.assertEqual(code, 502)
        self.assertEqual((ix.held(), _fired(ix.storage.list())), ([], []))

    def test_stalled_download(self) -> None:
        """A download that stops arriving is answered 504 after pypi.fallback_timeout of
        silence on the clock; nothing is stored."""
        ix = self.prepare(**{"pypi.fallback_timeout": "3"})
        ix.upstream.stall.add(DEMO1)
        d = self.start(f"/api/package/demo/{DEMO1}", "bob")
        for _ in range(50):
            ix.flush()
        self.assertNoResult(d)
        ix.clock.advance(3)
        response = self.successResultOf(self._pump(d))
        self.assertEqual(response.code, 504)
        self.assertEqual(ix.held(), [])

    def test_page_timeout(self) -> None:
        """An upstream that does not answer a page in time is a 504 with a message naming
        pypi.fallback_timeout; a private project keeps working meanwhile."""
        ix = self.prepare(**{"pypi.fallback_timeout": "5"})
        filename, data = self.wheel("mine", "1.0")
        self.assertEqual(self.upload(filename, data)[0].code, 200)
        ix.upstream.hang = True
        d = self.start("/simple/demo/", "bob")
        for _ in range(50):
            ix.flush()
        self.assertNoResult(d)
        ix.clock.advance(5)
        response = self.successResultOf(self._pump(d))
        body = self.successResultOf(self._pump(response.content()))
        self.assertEqual(response.code, 504)
        self.assertIn(b"pypi.fallback_timeout", body)
        self.assertEqual(
            self.listing("mine", "bob"), {filename: f"../../api/package/mine/{filename}"}
        )

    def test_upstream_down(self) -> None:
        """Upstream answering 503 with no page seen before: 502 with a clear message."""
        ix = self.prepare()
        ix.upstream.status = 503
        code, body = self.get("/simple/demo/")
        self.assertEqual(code, 502)
        self.assertIn(b"http://upstream.test/simple/demo/ answered 503", body)

    def test_stale_page_then_error(self) -> None:
        """When upstream fails, its last good page is served (same ETag) for up to
        pypi.fallback_max_stale seconds; past that the error shows.  While the page is fresh
        upstream is not asked at all."""
        ix = self.prepare(**{"pypi.fallback_cache_seconds": "60", "pypi.fallback_max_stale": "300"})
        first, _ = self.request("GET", "/simple/demo/", "bob")
        tag = first.headers.getRawHeaders(b"etag")
        ix.clock.advance(59)
        self.get("/simple/demo/")
        self.assertEqual(ix.upstream.count("/simple/demo/"), 1)
        ix.upstream.status = 500
        ix.clock.advance(200)
        again, _ = self.request("GET", "/simple/demo/", "bob")
        self.assertEqual((again.code, again.headers.getRawHeaders(b"etag")), (200, tag))
        ix.clock.advance(200)
        self.assertEqual(self.get("/simple/demo/")[0], 502)

    def test_etag_revalidation_keeps_page(self) -> None:
        """After cache_seconds the page is revalidated with its ETag; an unchanged upstream
        (304) keeps our page and its ETag; a changed one shows the new files."""
        ix = self.prepare(**{"pypi.fallback_cache_seconds": "10"})
        first, _ = self.request("GET", "/simple/demo/", "bob")
        ix.clock.advance(11)
        second, _ = self.request("GET", "/simple/demo/", "bob")
        self.assertEqual(ix.upstream.count("/simple/demo/"), 2)
        self.assertEqual(
            first.headers.getRawHeaders(b"etag"), second.headers.getRawHeaders(b"etag")
        )
        ix.upstream.add(*self.wheel("demo", "3.0"))
        ix.clock.advance(11)
        self.assertIn("demo-3.0-py3-none-any.whl", self.listing("demo", "bob"))

    def test_core_metadata_proxied(self) -> None:
        """pip's ``<file>.metadata`` for a file not yet cached is fetched from upstream and
        checked, without storing anything."""
        ix = self.prepare()
        code, body = self.get(f"/api/package/demo/{DEMO1}.metadata")
        self.assertEqual((code, body), (200, self.meta1))
        self.assertEqual(ix.held(), [])
        code, _ = self.get(f"/api/package/demo/{DEMO2}.metadata")
        self.assertEqual(code, 404)

    def test_who_may_cache(self) -> None:
        """Downloading an uncached file needs pypi.cache_update: anonymous callers get 401,
        others 403; upstream's file is not requested."""
        ix = self.prepare(**{"pypi.cache_update": "devs"})
        self.assertEqual(self.get(f"/api/package/demo/{DEMO1}", None)[0], 401)
        self.assertEqual(self.get(f"/api/package/demo/{DEMO1}", "carol")[0], 403)
        self.assertEqual(ix.upstream.count("/files/"), 0)
        self.assertEqual(self.get(f"/api/package/demo/{DEMO1}", "alice")[0], 200)

    def test_unknown_file(self) -> None:
        """A filename upstream does not list, or one of another project, is a 404."""
        self.prepare()
        self.assertEqual(self.get("/api/package/demo/demo-7.0-py3-none-any.whl")[0], 404)
        self.assertEqual(self.get(f"/api/package/other/{DEMO1}")[0], 404)

    def test_served_hash_matches_page(self) -> None:
        """The sha256 the page shows is the sha256 of the bytes served after caching."""
        self.prepare()
        _, data, _ = self.page("demo", "bob")
        listed = {f["filename"]: f["hashes"]["sha256"] for f in data["files"]}
        _, body = self.get(f"/api/package/demo/{DEMO1}")
        self.assertEqual(hashlib.sha256(body).hexdigest(), listed[DEMO1])


class FetchApiTests(PullCase):
    """``POST /api/fetch``."""

    def fetch(self, body: Any, user: str | None = "bob", as_json: bool = False) -> Any:
        if as_json:
            data, kind = json.dumps(body).encode(), b"application/json"
        else:
            from urllib.parse import urlencode

            data, kind = urlencode(body).encode(), b"application/x-www-form-urlencoded"
        response, answer = self.request(
            "POST", "/api/fetch", user, headers={b"Content-Type": [kind]}, data=data
        )
        return response.code, json.loads(answer)

    def test_per_item_results(self) -> None:
        """Each requirement line gets its own result: cached, not_found, refused (a private
        project), invalid (an option line); comments are skipped; pkgs lists the files."""
        ix = self.prepare()
        filename, data = self.wheel("mine", "1.0")
        self.upload(filename, data)
        ix.upstream.add(*self.wheel("mine", "5.0"))
        code, answer = self.fetch(
            {"requirements": "demo>=1\n# comment\nnothere\nmine\n-r other.txt\n"}
        )
        self.assertEqual(code, 200)
        self.assertEqual(
            [(r["requirement"], r["status"], r["files"]) for r in answer["results"]],
            [
                ("demo>=1", "cached", [DEMO2]),
                ("nothere", "not_found", []),
                ("mine", "refused", []),
                ("-r other.txt", "invalid", []),
            ],
        )
        self.assertEqual([p["filename"] for p in answer["pkgs"]], [DEMO2])
        self.assertEqual(answer["pkgs"][0]["origin"], UPSTREAM)
        self.assertEqual(ix.held(), [(DEMO2, UPSTREAM), (filename, HOSTED)])
        code, again = self.fetch({"requirements": "demo"})
        self.assertEqual(again["results"][0]["status"], "exists")
        self.assertEqual(ix.upstream.count(f"/files/{DEMO2}"), 1)

    def test_json_body_and_flags(self) -> None:
        """A JSON body works; prerelease and wheel choose the files; an sdist is taken when
        wheel is false."""
        ix = self.prepare()
        ix.upstream.add(*self.wheel("demo", "3.0b1"))
        sdist = self.sdist("demo", "2.0")
        ix.upstream.add(*sdist)
        code, answer = self.fetch(
            {"requirements": "demo\n", "wheel": False, "prerelease": False}, as_json=True
        )
        self.assertEqual(code, 200)
        self.assertEqual(answer["results"][0]["files"], [sdist[0]])
        _code, answer = self.fetch({"requirements": "demo", "prerelease": "true"})
        self.assertEqual(answer["results"][0]["files"], ["demo-3.0b1-py3-none-any.whl"])

    def test_who_may_fetch(self) -> None:
        """Only callers in pypi.cache_update may fetch: 401 anonymous, 403 others."""
        self.prepare(**{"pypi.cache_update": "devs"})
        self.assertEqual(self.fetch({"requirements": "demo"}, None)[0], 401)
        self.assertEqual(self.fetch({"requirements": "demo"}, "carol")[0], 403)
        self.assertEqual(self.fetch({"requirements": "demo"}, "alice")[0], 200)

    def test_needs_cache_mode(self) -> None:
        """In another mode, or without requirements, the answer is 400 with a message."""
        self.make_fallback({"pypi.fallback": "redirect"})
        code, answer = self.fetch({"requirements": "demo"})
        self.assertEqual(code, 400)
        self.assertIn("pypi.fallback = cache", answer["message"])
        self.prepare()
        self.assertEqual(self.fetch({"wheel": "true"})[0], 400)
        self.assertEqual(self.fetch({"requirements": "demo", "wheel": "maybe"})[0], 400)

    def test_upstream_failure_per_item(self) -> None:
        """An upstream failure is reported in the item's result, not as a failed request."""
        ix = self.prepare()
        ix.upstream.status = 500
        code, answer = self.fetch({"requirements": "demo"})
        self.assertEqual(code, 200)
        self.assertEqual(answer["results"][0]["status"], "error")
        self.assertIn("answered 500", answer["results"][0]["message"])
