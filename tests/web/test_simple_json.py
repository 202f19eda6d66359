"""The Simple Repository API as JSON (PEP 691, 700, 714) and content negotiation."""

from __future__ import annotations

import hashlib
import json
import re

from tests.web.harness import PIP_ACCEPT, UV_ACCEPT, RouteTestCase, wheel_metadata

JSON_V1 = b"application/vnd.pypi.simple.v1+json"
HTML_V1 = b"application/vnd.pypi.simple.v1+html"
UPLOAD_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class NegotiationTests(RouteTestCase):
    def setUp(self) -> None:
        self.make_index()
        response, body = self.upload(*self.wheel("demo", "1.0"))
        self.assertEqual(response.code, 200, body)

    def content_type(
        self, path: str, accept: bytes | None = None, query: str = ""
    ) -> tuple[int, bytes | None]:
        headers = {b"Accept": [accept]} if accept is not None else {}
        response, _ = self.request("GET", path + query, headers=headers)
        types = response.headers.getRawHeaders(b"content-type")
        return response.code, types[0] if types else None

    def test_pip_and_uv_get_json(self) -> None:
        """pip's and uv's real Accept headers (JSON first, HTML at low q) get v1 JSON."""
        for accept in (PIP_ACCEPT, UV_ACCEPT):
            for path in ("/simple/", "/simple/demo/"):
                self.assertEqual(self.content_type(path, accept), (200, JSON_V1), (accept, path))

    def test_no_accept_gets_html(self) -> None:
        """No Accept header gets HTML."""
        self.assertEqual(self.content_type("/simple/demo/"), (200, b"text/html; charset=utf-8"))

    def test_explicit_types(self) -> None:
        """Each offered media type is answered with the matching Content-Type."""
        cases = [
            (JSON_V1, JSON_V1),
            (b"application/vnd.pypi.simple.latest+json", JSON_V1),
            (HTML_V1, HTML_V1),
            (b"application/vnd.pypi.simple.latest+html", HTML_V1),
            (b"text/html", b"text/html; charset=utf-8"),
            (b"*/*", b"text/html; charset=utf-8"),
        ]
        for accept, expected in cases:
            self.assertEqual(self.content_type("/simple/demo/", accept), (200, expected), accept)

    def test_q_values_honoured(self) -> None:
        """The highest q-value wins regardless of order; q=0 excludes a type."""
        self.assertEqual(
            self.content_type(
                "/simple/demo/", b"text/html;q=0.9, application/vnd.pypi.simple.v1+json;q=0.5"
            ),
            (200, b"text/html; charset=utf-8"),
        )
        self.assertEqual(
            self.content_type(
                "/simple/demo/", b"text/html;q=0.2, application/vnd.pypi.simple.v1+json"
            ),
            (200, JSON_V1),
        )
        self.assertEqual(
            self.content_type(
                "/simple/demo/", b"application/vnd.pypi.simple.v1+json;q=0, text/html;q=0.1"
            ),
            (200, b"text/html; charset=utf-8"),
        )

    def test_unacceptable_406(self) -> None:
        """Nothing acceptable -> 406 with a Content-Type and a message naming what is served."""
        for accept in (
            b"image/png",
            b"application/vnd.pypi.simple.v2+json",
            b"application/vnd.pypi.simple.v1+json;q=0",
        ):
            response, body = self.request("GET", "/simple/demo/", headers={b"Accept": [accept]})
            self.assertEqual(response.code, 406, accept)
            self.assertTrue(response.headers.getRawHeaders(b"content-type"))
            self.assertIn(b"application/vnd.pypi.simple.v1+json", body)

    def test_format_query_overrides(self) -> None:
        """``?format=`` overrides the Accept header."""
        self.assertEqual(
            self.content_type("/simple/demo/", b"text/html", "?format=json"), (200, JSON_V1)
        )
        self.assertEqual(
            self.content_type("/simple/demo/", PIP_ACCEPT, "?format=html"), (200, HTML_V1)
        )
        self.assertEqual(
            self.content_type("/simple/", None, "?format=application/vnd.pypi.simple.v1%2Bjson"),
            (200, JSON_V1),
        )
        self.assertEqual(self.content_type("/simple/demo/", None, "?format=xml")[0], 406)

    def test_vary_accept(self) -> None:
        """Negotiated responses (JSON and HTML, root and project) say ``Vary: Accept``."""
        for path in ("/simple/", "/simple/demo/"):
            for accept in (PIP_ACCEPT, b"text/html"):
                response, _ = self.request("GET", path, headers={b"Accept": [accept]})
                self.assertIn(b"Accept", response.headers.getRawHeaders(b"vary"), (path, accept))

    def test_etag_differs_by_representation(self) -> None:
        """The JSON and HTML forms of a page have different ETags; each revalidates to 304."""
        json_response, _ = self.request("GET", "/simple/demo/", headers={b"Accept": [JSON_V1]})
        html_response, _ = self.request("GET", "/simple/demo/")
        json_tag = json_response.headers.getRawHeaders(b"etag")[0]
        html_tag = html_response.headers.getRawHeaders(b"etag")[0]
        self.assertNotEqual(json_tag, html_tag)
        response, body = self.request(
            "GET", "/simple/demo/", headers={b"Accept": [JSON_V1], b"If-None-Match": [json_tag]}
        )
        self.assertEqual((response.code, body), (304, b""))
        response, _ = self.request(
            "GET", "/simple/demo/", headers={b"Accept": [JSON_V1], b"If-None-Match": [html_tag]}
        )
        self.assertEqual(response.code, 200)


class JSONDocumentTests(RouteTestCase):
    def setUp(self) -> None:
        self.make_index()

    def add(self, filename: str, data: bytes) -> None:
        response, body = self.upload(filename, data)
        self.assertEqual(response.code, 200, body)

    def test_root(self) -> None:
        """Root: exactly ``{"meta": {"api-version": "1.1"}, "projects": [{"name": ...}]}``."""
        self.add(*self.wheel("Beta", "1.0"))
        self.add(*self.wheel("alpha", "1.0"))
        _response, doc = self.get_json("/simple/", accept=JSON_V1)
        self.assertEqual(
            doc, {"meta": {"api-version": "1.1"}, "projects": [{"name": "alpha"}, {"name": "beta"}]}
        )

    def test_project_document(self) -> None:
        """Project: meta, normalised name, versions (no duplicates), and every file field
        exactly as PEP 691/700/714 specify, with no ``dist-info-metadata`` key."""
        wheel = self.wheel("Friendly.Bard", "1.0", requires_python=">=3.8")
        sdist = self.sdist("Friendly.Bard", "1.0", requires_python=">=3.8")
        newer = self.wheel("Friendly.Bard", "2.0b1")
        for f in (wheel, sdist, newer):
            self.add(*f)
        response, doc = self.get_json("/simple/friendly-bard/", accept=JSON_V1)
        self.assertEqual(response.code, 200)
        self.assertEqual(set(doc), {"meta", "name", "files", "versions"})
        self.assertEqual(doc["meta"], {"api-version": "1.1"})
        self.assertEqual(doc["name"], "friendly-bard")
        self.assertEqual(doc["versions"], ["1.0", "2.0b1"])
        files = {f["filename"]: f for f in doc["files"]}
        self.assertEqual(set(files), {wheel[0], sdist[0], newer[0]})
        for filename, data in (wheel, sdist, newer):
            entry = files[filename]
            self.assertEqual(
                set(entry),
                {
                    "filename",
                    "url",
                    "hashes",
                    "requires-python",
                    "core-metadata",
                    "yanked",
                    "size",
                    "upload-time",
                },
            )
            self.assertEqual(entry["hashes"], {"sha256": hashlib.sha256(data).hexdigest()})
            self.assertEqual(entry["size"], len(data))
            self.assertIs(entry["yanked"], False)
            self.assertRegex(entry["upload-time"], UPLOAD_TIME)
            self.assertNotIn("?", entry["url"])
            self.assertTrue(entry["url"].endswith("/" + filename))
        self.assertEqual(files[wheel[0]]["requires-python"], ">=3.8")
        self.assertEqual(files[sdist[0]]["requires-python"], ">=3.8")
        self.assertIsNone(files[newer[0]]["requires-python"])
        self.assertEqual(
            files[wheel[0]]["core-metadata"],
            {"sha256": hashlib.sha256(wheel_metadata(wheel[1])).hexdigest()},
        )
        self.assertIs(files[sdist[0]]["core-metadata"], False)

    def test_versions_without_duplicates(self) -> None:
        """A version with several files appears once in ``versions``."""
        self.add(*self.wheel("demo", "1.0"))
        self.add(*self.sdist("demo", "1.0"))
        self.add(*self.sdist("demo", "1.0", archive="zip"))
        _, doc = self.get_json("/simple/demo/", accept=JSON_V1)
        self.assertEqual(doc["versions"], ["1.0"])
        self.assertEqual(len(doc["files"]), 3)

    def test_file_url_serves_the_hashed_bytes(self) -> None:
        """Each JSON file URL (relative to the page) serves bytes whose sha256 and size are listed;
        ``<url>.metadata`` serves the advertised core metadata."""
        self.add(*self.wheel("demo", "1.0"))
        self.add(*self.sdist("demo", "1.0"))
        _, doc = self.get_json("/simple/demo/", accept=JSON_V1)
        from urllib.parse import urljoin

        for entry in doc["files"]:
            path = urljoin("http://index.test/simple/demo/", entry["url"])[
                len("http://index.test") :
            ]
            response, body = self.request("GET", path)
            self.assertEqual(response.code, 200)
            self.assertEqual(hashlib.sha256(body).hexdigest(), entry["hashes"]["sha256"])
            self.assertEqual(len(body), entry["size"])
            if entry["core-metadata"]:
                _, metadata = self.request("GET", path + ".metadata")
                self.assertEqual(
                    hashlib.sha256(metadata).hexdigest(), entry["core-metadata"]["sha256"]
                )

    def test_yanked_reason(self) -> None:
        """``yanked`` is the reason string when yanked (even empty), false otherwise."""
        a = self.wheel("demo", "1.0")
        b = self.sdist("demo", "1.0")
        self.add(*a)
        self.add(*b)
        self.request("POST", f"/api/package/demo/{a[0]}/yank", "alice", data={"reason": "bad"})
        self.request("POST", f"/api/package/demo/{b[0]}/yank", "alice", data={"reason": ""})
        _, doc = self.get_json("/simple/demo/", accept=JSON_V1)
        self.assertEqual(
            {f["filename"]: f["yanked"] for f in doc["files"]}, {a[0]: "bad", b[0]: ""}
        )

    def test_upload_time_is_utc_microseconds(self) -> None:
        """``upload-time`` is the upload moment in UTC as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
        import datetime as dt

        before = dt.datetime.now(dt.UTC)
        self.add(*self.wheel("demo", "1.0"))
        after = dt.datetime.now(dt.UTC)
        _, doc = self.get_json("/simple/demo/", accept=JSON_V1)
        text = doc["files"][0]["upload-time"]
        self.assertRegex(text, UPLOAD_TIME)
        when = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        self.assertTrue(before <= when <= after, (before, when, after))

    def test_json_body_is_valid_json(self) -> None:
        """The JSON response parses and its Content-Type is the v1 JSON type."""
        self.add(*self.wheel("demo", "1.0"))
        response, body = self.request("GET", "/simple/demo/", headers={b"Accept": [JSON_V1]})
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [JSON_V1])
        json.loads(body)
