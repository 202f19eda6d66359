"""The Simple Repository API as HTML (PEP 503, 592, 629, 658/714), through the real routes."""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser

from tests.web.harness import RouteTestCase, wheel_metadata


class Anchors(HTMLParser):
    """Every ``<a>`` of a page: ``(attributes, text)``; and the ``<meta>`` tags of ``<head>``."""

    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self.head_meta: list[dict[str, str | None]] = []
        self._in_head = False
        self._current: dict[str, str | None] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "head":
            self._in_head = True
        elif tag == "meta" and self._in_head:
            self.head_meta.append(dict(attrs))
        elif tag == "a":
            self._current, self._text = dict(attrs), ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self._in_head = False
        elif tag == "a" and self._current is not None:
            self.anchors.append((self._current, self._text))
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._text += data


def parse(body: bytes) -> Anchors:
    parser = Anchors()
    parser.feed(body.decode("utf-8"))
    return parser


class SimpleHTMLTests(RouteTestCase):
    def setUp(self) -> None:
        self.make_index()

    def add(self, filename: str, data: bytes) -> None:
        response, body = self.upload(filename, data)
        self.assertEqual(response.code, 200, body)

    def test_root_lists_projects(self) -> None:
        """GET /simple/ is HTML5 with one anchor per project: text = name, href to its page."""
        self.add(*self.wheel("Alpha", "1.0"))
        self.add(*self.wheel("beta.two", "1.0"))
        self.add(*self.sdist("alpha", "2.0"))
        response, body = self.request("GET", "/simple/")
        self.assertEqual(response.code, 200)
        self.assertTrue(body.startswith(b"<!DOCTYPE html>"))
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"]
        )
        anchors = parse(body).anchors
        self.assertEqual(
            [(a["href"], t) for a, t in anchors], [("alpha/", "alpha"), ("beta-two/", "beta-two")]
        )

    def test_repository_version_meta_in_head(self) -> None:
        """Every simple page has ``pypi:repository-version`` 1.1 in its <head>."""
        self.add(*self.wheel("demo", "1.0"))
        for path in ("/simple/", "/simple/demo/"):
            page = parse(self.request("GET", path)[1])
            self.assertIn(
                {"name": "pypi:repository-version", "content": "1.1"}, page.head_meta, path
            )

    def test_project_anchors(self) -> None:
        """One anchor per file; its text is the filename and the last segment of its href."""
        wheel = self.wheel("demo", "1.0")
        sdist = self.sdist("demo", "1.0")
        newer = self.wheel("demo", "2.0")
        for f in (wheel, sdist, newer):
            self.add(*f)
        response, body = self.request("GET", "/simple/demo/")
        self.assertEqual(response.code, 200)
        anchors = parse(body).anchors
        self.assertEqual(sorted(t for _, t in anchors), sorted([wheel[0], sdist[0], newer[0]]))
        for attrs, text in anchors:
            href = attrs["href"] or ""
            self.assertNotIn("?", href)
            path = href.split("#", 1)[0]
            self.assertEqual(path.rsplit("/", 1)[1], text)

    def test_sha256_fragment_is_digest_of_served_bytes(self) -> None:
        """Each link's ``#sha256=`` equals the sha256 of the bytes its URL serves."""
        self.add(*self.wheel("demo", "1.0"))
        self.add(*self.sdist("demo", "1.0"))
        anchors = parse(self.request("GET", "/simple/demo/")[1]).anchors
        self.assertEqual(len(anchors), 2)
        for attrs, _ in anchors:
            href = attrs["href"] or ""
            url, _, fragment = href.partition("#")
            served = self.request("GET", _resolve("/simple/demo/", url))[1]
            self.assertEqual(fragment, "sha256=" + hashlib.sha256(served).hexdigest())

    def test_requires_python_escaped(self) -> None:
        """``data-requires-python`` holds Requires-Python with ``<`` and ``>`` escaped."""
        self.add(*self.wheel("demo", "1.0", requires_python=">=3.8,<4"))
        _response, body = self.request("GET", "/simple/demo/")
        self.assertIn(b'data-requires-python="&gt;=3.8,&lt;4"', body)
        ((attrs, _),) = parse(body).anchors
        self.assertEqual(attrs["data-requires-python"], ">=3.8,<4")

    def test_no_requires_python_attribute_when_absent(self) -> None:
        """A file without Requires-Python has no ``data-requires-python`` attribute."""
        self.add(*self.wheel("demo", "1.0"))
        ((attrs, _),) = parse(self.request("GET", "/simple/demo/")[1]).anchors
        self.assertNotIn("data-requires-python", attrs)

    def test_core_metadata_attributes_and_file(self) -> None:
        """Wheels carry data-core-metadata and data-dist-info-metadata; <url>.metadata returns
        exactly the wheel's METADATA, whose sha256 is the one advertised."""
        filename, data = self.wheel("demo", "1.0", summary="A demo", requires_dist=["attrs>=20"])
        self.add(filename, data)
        ((attrs, _),) = parse(self.request("GET", "/simple/demo/")[1]).anchors
        expected = wheel_metadata(data)
        digest = "sha256=" + hashlib.sha256(expected).hexdigest()
        self.assertEqual(attrs["data-core-metadata"], digest)
        self.assertEqual(attrs["data-dist-info-metadata"], digest)
        url = (attrs["href"] or "").split("#")[0]
        response, body = self.request("GET", _resolve("/simple/demo/", url) + ".metadata")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, expected)
        self.assertEqual("sha256=" + hashlib.sha256(body).hexdigest(), digest)
        self.assertTrue(response.headers.getRawHeaders(b"content-type"))

    def test_sdist_has_no_core_metadata(self) -> None:
        """An sdist has no core-metadata attributes, and its .metadata URL is 404."""
        filename, data = self.sdist("demo", "1.0")
        self.add(filename, data)
        ((attrs, _),) = parse(self.request("GET", "/simple/demo/")[1]).anchors
        self.assertNotIn("data-core-metadata", attrs)
        self.assertNotIn("data-dist-info-metadata", attrs)
        response, _ = self.request("GET", f"/api/package/demo/{filename}.metadata")
        self.assertEqual(response.code, 404)

    def test_yanked_attribute(self) -> None:
        """Yanked files carry ``data-yanked`` with the reason (empty allowed), others none;
        a yanked file is still downloadable."""
        a = self.wheel("demo", "1.0")
        b = self.sdist("demo", "1.0")
        c = self.wheel("demo", "2.0")
        for f in (a, b, c):
            self.add(*f)
        self.assertEqual(
            self.request(
                "POST", f"/api/package/demo/{a[0]}/yank", "alice", data={"reason": "broken <build>"}
            )[0].code,
            200,
        )
        self.assertEqual(
            self.request("POST", f"/api/package/demo/{b[0]}/yank", "alice")[0].code, 200
        )
        body = self.request("GET", "/simple/demo/")[1]
        self.assertIn(b'data-yanked="broken &lt;build&gt;"', body)
        found = {t: attrs.get("data-yanked") for attrs, t in parse(body).anchors}
        self.assertEqual(found, {a[0]: "broken <build>", b[0]: "", c[0]: None})
        self.assertEqual(self.request("GET", f"/api/package/demo/{a[0]}")[1], a[1])

    def test_name_normalisation_redirects(self) -> None:
        """Non-normalised project names are redirected (301) to /simple/<canonical>/."""
        self.add(*self.wheel("Friendly-Bard", "1.0"))
        for spelling in ("Friendly-Bard", "friendly.bard", "FrIeNdLy-._.-bArD", "friendly_bard"):
            response, _ = self.request("GET", f"/simple/{spelling}/")
            self.assertEqual(response.code, 301, spelling)
            self.assertEqual(
                response.headers.getRawHeaders(b"location"), [b"/simple/friendly-bard/"], spelling
            )
        response, body = self.request("GET", "/simple/friendly-bard/")
        self.assertEqual(response.code, 200)
        self.assertEqual(len(parse(body).anchors), 1)

    def test_missing_trailing_slash_redirects(self) -> None:
        """/simple and /simple/<name> without the slash redirect (301) to the canonical URL."""
        self.add(*self.wheel("demo", "1.0"))
        for path, target in (
            ("/simple", b"/simple/"),
            ("/simple/demo", b"/simple/demo/"),
            ("/simple/DEMO", b"/simple/demo/"),
            ("/pypi/Demo", b"/pypi/demo/"),
        ):
            response, _ = self.request("GET", path)
            self.assertEqual(response.code, 301, path)
            self.assertEqual(response.headers.getRawHeaders(b"location"), [target], path)

    def test_post_never_redirected(self) -> None:
        """Uploads to /simple, /legacy and /pypi (no slash) are handled, never redirected."""
        for i, path in enumerate(("/simple", "/legacy", "/pypi")):
            response, body = self.upload(*self.wheel("demo", f"1.{i}"), path=path)
            self.assertEqual(response.code, 200, (path, body))
            self.assertIsNone(response.headers.getRawHeaders(b"location"))

    def test_unknown_project_404(self) -> None:
        """An unknown project page is 404 with a Content-Type."""
        response, body = self.request("GET", "/simple/nothing-here/")
        self.assertEqual(response.code, 404)
        self.assertTrue(response.headers.getRawHeaders(b"content-type"))
        self.assertIn(b"nothing-here", body)

    def test_content_type_always_set(self) -> None:
        """Every simple response (200, 301, 304, 404, 406) sets Content-Type."""
        self.add(*self.wheel("demo", "1.0"))
        first = self.request("GET", "/simple/demo/")[0]
        tag = first.headers.getRawHeaders(b"etag")[0]
        for path, headers, status in (
            ("/simple/", {}, 200),
            ("/simple/demo/", {}, 200),
            ("/simple/Demo/", {}, 301),
            ("/simple/demo/", {b"If-None-Match": [tag]}, 304),
            ("/simple/missing/", {}, 404),
            ("/simple/demo/", {b"Accept": [b"image/png"]}, 406),
        ):
            response, _ = self.request("GET", path, headers=headers)
            self.assertEqual(response.code, status, path)
            if status != 304:
                self.assertTrue(response.headers.getRawHeaders(b"content-type"), (path, status))

    def test_etag_304(self) -> None:
        """Simple pages carry an ETag; If-None-Match with it gives 304 and no body; the
        ETag changes when the project changes."""
        self.add(*self.wheel("demo", "1.0"))
        response, _ = self.request("GET", "/simple/demo/")
        (tag,) = response.headers.getRawHeaders(b"etag")
        response, body = self.request("GET", "/simple/demo/", headers={b"If-None-Match": [tag]})
        self.assertEqual(response.code, 304)
        self.assertEqual(body, b"")
        self.add(*self.wheel("demo", "2.0"))
        response, body = self.request("GET", "/simple/demo/", headers={b"If-None-Match": [tag]})
        self.assertEqual(response.code, 200)
        self.assertNotEqual(response.headers.getRawHeaders(b"etag"), [tag])

    def test_pypi_alias(self) -> None:
        """/pypi/ and /pypi/<name>/ serve the same pages as /simple/."""
        self.add(*self.wheel("demo", "1.0"))
        self.assertEqual(self.request("GET", "/pypi/")[1], self.request("GET", "/simple/")[1])
        self.assertEqual(
            self.request("GET", "/pypi/demo/")[1], self.request("GET", "/simple/demo/")[1]
        )

    def test_head(self) -> None:
        """HEAD on a simple page answers like GET without a body."""
        self.add(*self.wheel("demo", "1.0"))
        get = self.request("GET", "/simple/demo/")[0]
        response, body = self.request("HEAD", "/simple/demo/")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"")
        self.assertEqual(
            response.headers.getRawHeaders(b"etag"), get.headers.getRawHeaders(b"etag")
        )

    def test_packages_page(self) -> None:
        """/packages/ lists every readable file with #sha256 links that resolve."""
        w = self.wheel("demo", "1.0")
        s = self.sdist("other", "1.0")
        self.add(*w)
        self.add(*s)
        response, body = self.request("GET", "/packages/")
        self.assertEqual(response.code, 200)
        anchors = parse(body).anchors
        self.assertEqual(sorted(t for _, t in anchors), sorted([w[0], s[0]]))
        for attrs, _text in anchors:
            url, _, fragment = (attrs["href"] or "").partition("#")
            served = self.request("GET", _resolve("/packages/", url))[1]
            self.assertEqual(fragment, "sha256=" + hashlib.sha256(served).hexdigest())


def _resolve(base: str, relative: str) -> str:
    """Resolve a relative URL path against ``base`` (a path ending in ``/``)."""
    from urllib.parse import urljoin

    resolved = urljoin("http://index.test" + base, relative)
    return re.sub(r"^http://index\.test", "", resolved)
