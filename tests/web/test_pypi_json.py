"""PyPI-shaped JSON API: ``/pypi/<name>/json`` and ``/pypi/<name>/<version>/json``."""

from __future__ import annotations

import hashlib
import re

from tests.distfactory import twine_fields
from tests.web.harness import RouteTestCase

FILE_KEYS = {
    "filename",
    "url",
    "digests",
    "size",
    "packagetype",
    "python_version",
    "requires_python",
    "upload_time",
    "upload_time_iso_8601",
    "yanked",
    "yanked_reason",
}


class PyPIJSONTests(RouteTestCase):
    def setUp(self) -> None:
        self.make_index()
        self.old = self.wheel("Demo", "1.0", summary="old summary")
        self.sdist_old = self.sdist("Demo", "1.0", summary="old summary")
        self.new = self.wheel(
            "Demo",
            "2.0",
            summary="new summary",
            requires_python=">=3.9",
            requires_dist=["attrs>=20"],
        )
        self.pre = self.wheel("Demo", "3.0a1", summary="pre")
        for f in (self.old, self.sdist_old, self.new, self.pre):
            response, body = self.upload(*f)
            self.assertEqual(response.code, 200, body)

    def check_file(self, entry: dict, data: bytes, filename: str) -> None:
        self.assertLessEqual(FILE_KEYS, set(entry))
        self.assertEqual(entry["filename"], filename)
        self.assertEqual(
            entry["digests"],
            {
                "sha256": hashlib.sha256(data).hexdigest(),
                "md5": hashlib.md5(data).hexdigest(),
                "blake2b_256": hashlib.blake2b(data, digest_size=32).hexdigest(),
            },
        )
        self.assertEqual(entry["size"], len(data))
        self.assertEqual(
            entry["packagetype"], "bdist_wheel" if filename.endswith(".whl") else "sdist"
        )
        self.assertEqual(entry["python_version"], "py3" if filename.endswith(".whl") else "source")
        self.assertRegex(entry["upload_time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
        self.assertRegex(entry["upload_time_iso_8601"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        self.assertIs(entry["yanked"], False)
        self.assertIsNone(entry["yanked_reason"])
        self.assertEqual(entry["url"], f"http://index.test/api/package/demo/{filename}")
        _response, body = self.request("GET", re.sub(r"^http://index\.test", "", entry["url"]))
        self.assertEqual(body, data)

    def test_project_json(self) -> None:
        """``info`` describes the latest stable version from its stored metadata; ``releases``
        holds every version's files; ``urls`` the files of that version."""
        response, doc = self.get_json("/pypi/demo/json")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        info = doc["info"]
        self.assertEqual(info["name"], "Demo")
        self.assertEqual(info["version"], "2.0")
        self.assertEqual(info["summary"], "new summary")
        self.assertEqual(info["requires_python"], ">=3.9")
        self.assertEqual(info["requires_dist"], ["attrs>=20"])
        self.assertEqual(set(doc["releases"]), {"1.0", "2.0", "3.0a1"})
        old = {e["filename"]: e for e in doc["releases"]["1.0"]}
        self.assertEqual(set(old), {self.old[0], self.sdist_old[0]})
        self.check_file(old[self.old[0]], self.old[1], self.old[0])
        self.check_file(old[self.sdist_old[0]], self.sdist_old[1], self.sdist_old[0])
        self.assertEqual([e["filename"] for e in doc["urls"]], [self.new[0]])
        self.check_file(doc["urls"][0], self.new[1], self.new[0])
        self.assertEqual(doc["urls"][0]["requires_python"], ">=3.9")

    def test_version_json(self) -> None:
        """``/pypi/<name>/<version>/json`` describes that version; ``urls`` are its files."""
        response, doc = self.get_json("/pypi/demo/1.0/json")
        self.assertEqual(response.code, 200)
        self.assertEqual(doc["info"]["version"], "1.0")
        self.assertEqual(doc["info"]["summary"], "old summary")
        self.assertEqual(
            sorted(e["filename"] for e in doc["urls"]), sorted([self.old[0], self.sdist_old[0]])
        )

    def test_prerelease_version_json(self) -> None:
        """A pre-release can be asked for by version, in equivalent spellings."""
        for spelling in ("3.0a1", "3.0.0a1", "3.0alpha1"):
            response, doc = self.get_json(f"/pypi/demo/{spelling}/json")
            self.assertEqual(response.code, 200, spelling)
            self.assertEqual(doc["info"]["version"], "3.0a1")

    def test_non_canonical_name(self) -> None:
        """Non-canonical names reach the same project."""
        self.assertEqual(self.get_json("/pypi/DEMO/json")[1], self.get_json("/pypi/demo/json")[1])

    def test_unknown_404(self) -> None:
        """Unknown projects and versions are 404 with a JSON message."""
        for path in ("/pypi/nothing/json", "/pypi/demo/9.9/json"):
            response, doc = self.get_json(path)
            self.assertEqual(response.code, 404, path)
            self.assertIn("message", doc)

    def test_yanked_file(self) -> None:
        """A yanked file shows ``yanked`` true with its reason; a fully yanked latest version
        is passed over for ``info``."""
        self.request(
            "POST", f"/api/package/demo/{self.new[0]}/yank", "alice", data={"reason": "oops"}
        )
        _, doc = self.get_json("/pypi/demo/json")
        (entry,) = doc["releases"]["2.0"]
        self.assertIs(entry["yanked"], True)
        self.assertEqual(entry["yanked_reason"], "oops")
        self.assertEqual(doc["info"]["version"], "1.0")
        _, doc = self.get_json("/pypi/demo/2.0/json")
        self.assertIs(doc["info"]["yanked"], True)
        self.assertEqual(doc["info"]["yanked_reason"], "oops")

    def test_form_metadata_kept(self) -> None:
        """Form metadata (classifiers repeated, keywords, home page) reaches ``info``."""
        filename, data = self.wheel("other", "1.0")
        fields = twine_fields(
            filename,
            data,
            "other",
            "1.0",
            classifiers=["A :: B", "C :: D"],
            keywords="one two",
            home_page="https://example.invalid/",
        )
        self.assertEqual(self.upload(filename, data, fields=fields)[0].code, 200)
        _, doc = self.get_json("/pypi/other/json")
        self.assertEqual(doc["info"]["classifiers"], ["A :: B", "C :: D"])
        self.assertEqual(doc["info"]["keywords"], "one two")
        self.assertEqual(doc["info"]["home_page"], "https://example.invalid/")

    def test_read_permission(self) -> None:
        """The JSON API applies read permission like the simple index (401 anonymous)."""
        self.make_index({"pypi.default_read": "authenticated"})
        self.upload(*self.wheel("demo", "1.0"))
        self.assertEqual(self.get_json("/pypi/demo/json")[0].code, 401)
        self.assertEqual(self.get_json("/pypi/demo/json", user="carol")[0].code, 200)
