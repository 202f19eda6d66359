"""pypicloud's HTTP API: /api/package/, yank, /admin/rebuild, /health, /ping."""

from __future__ import annotations

import hashlib

from twisted.internet.defer import fail, succeed

from pypicloud_tx.errors import BackendUnavailable
from tests.web.harness import RouteTestCase, snapshot

JSON_V1 = b"application/vnd.pypi.simple.v1+json"


class PackageAPITests(RouteTestCase):
    def setUp(self) -> None:
        self.make_index()
        self.files = [
            self.wheel("flywheel", "0.1.0"),
            self.sdist("flywheel", "0.2.0b1"),
            self.wheel("pyramid", "1.0", summary="web"),
        ]
        for f in self.files:
            response, body = self.upload(*f)
            self.assertEqual(response.code, 200, body)

    def test_package_names(self) -> None:
        """GET /api/package/ lists the unique project names."""
        response, doc = self.get_json("/api/package/")
        self.assertEqual(response.code, 200)
        self.assertEqual(doc, {"packages": ["flywheel", "pyramid"]})

    def test_package_verbose(self) -> None:
        """?verbose=true gives name, stable, unstable and last_modified for each project."""
        _response, doc = self.get_json("/api/package/?verbose=true")
        by_name = {p["name"]: p for p in doc["packages"]}
        self.assertEqual(set(by_name), {"flywheel", "pyramid"})
        self.assertEqual(by_name["flywheel"]["stable"], "0.1.0")
        self.assertEqual(by_name["flywheel"]["unstable"], "0.2.0b1")
        self.assertEqual(by_name["pyramid"]["stable"], "1.0")
        self.assertEqual(by_name["pyramid"]["summary"], "web")
        for p in doc["packages"]:
            self.assertIsInstance(p["last_modified"], int)

    def test_package_versions(self) -> None:
        """GET /api/package/<name>/ lists every file with name, version, last_modified, url
        (which serves it), and says whether the caller may write."""
        response, doc = self.get_json("/api/package/flywheel/", user="bob")
        self.assertEqual(response.code, 200)
        self.assertIs(doc["write"], True)
        self.assertEqual(
            sorted(p["filename"] for p in doc["packages"]),
            sorted([self.files[0][0], self.files[1][0]]),
        )
        for entry in doc["packages"]:
            self.assertEqual(entry["name"], "flywheel")
            self.assertIsInstance(entry["last_modified"], int)
            path = entry["url"].replace("http://index.test", "")
            body = self.request("GET", path)[1]
            self.assertEqual(hashlib.sha256(body).hexdigest(), entry["sha256"])
        _, anonymous = self.get_json("/api/package/flywheel/")
        self.assertIs(anonymous["write"], False)

    def test_package_versions_redirect_and_404(self) -> None:
        """/api/package/<Name> redirects to the canonical URL; unknown projects are 404."""
        response, _ = self.request("GET", "/api/package/FlyWheel")
        self.assertEqual(response.code, 301)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/api/package/flywheel/"])
        self.assertEqual(self.get_json("/api/package/nothing/")[0].code, 404)

    def test_delete(self) -> None:
        """DELETE /api/package/<name>/<filename> removes the file from cache and storage."""
        filename = self.files[0][0]
        response, body = self.request("DELETE", f"/api/package/flywheel/{filename}", "bob")
        self.assertEqual(response.code, 200, body)
        stored, _names, cached = snapshot(self.ix)
        self.assertNotIn(filename, [f for f, _ in stored])
        self.assertNotIn(filename, [f for f, _ in cached])
        self.assertEqual(self.request("GET", f"/api/package/flywheel/{filename}")[0].code, 404)

    def test_delete_last_file_removes_project(self) -> None:
        """Deleting a project's last file removes the project from every listing."""
        response, _ = self.request("DELETE", f"/api/package/pyramid/{self.files[2][0]}", "bob")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.get_json("/api/package/")[1], {"packages": ["flywheel"]})
        self.assertEqual(self.request("GET", "/simple/pyramid/")[0].code, 404)

    def test_delete_needs_write(self) -> None:
        """Anonymous DELETE is 401, a reader without write 403; nothing changes."""
        self.make_index({"pypi.default_write": "devs"})
        filename, data = self.wheel("demo", "1.0")
        self.assertEqual(self.upload(filename, data, user="bob")[0].code, 200)
        before = snapshot(self.ix)
        self.assertEqual(self.request("DELETE", f"/api/package/demo/{filename}")[0].code, 401)
        self.assertEqual(
            self.request("DELETE", f"/api/package/demo/{filename}", "carol")[0].code, 403
        )
        self.assertEqual(snapshot(self.ix), before)

    def test_delete_disabled(self) -> None:
        """With ``pypi.allow_delete = false`` even an admin's DELETE is refused (403)."""
        self.make_index({"pypi.allow_delete": "false"})
        filename, data = self.wheel("demo", "1.0")
        self.upload(filename, data)
        before = snapshot(self.ix)
        response, body = self.request("DELETE", f"/api/package/demo/{filename}", "alice")
        self.assertEqual(response.code, 403)
        self.assertIn(b"allow_delete", body)
        self.assertEqual(snapshot(self.ix), before)

    def test_delete_unknown_404(self) -> None:
        """Deleting an unknown file is 404."""
        response, _ = self.request("DELETE", "/api/package/flywheel/flywheel-9.9.tar.gz", "alice")
        self.assertEqual(response.code, 404)

    def test_yank_and_unyank(self) -> None:
        """POST .../yank with ``reason`` yanks (simple HTML and JSON show it, the file is still
        served); DELETE .../yank unyanks."""
        filename, data = self.files[0]
        path = f"/api/package/flywheel/{filename}/yank"
        response, body = self.request("POST", path, "bob", data={"reason": "CVE-1"})
        self.assertEqual(response.code, 200, body)
        self.assertIn(b'data-yanked="CVE-1"', self.request("GET", "/simple/flywheel/")[1])
        _, doc = self.get_json("/simple/flywheel/", accept=JSON_V1)
        self.assertEqual({f["filename"]: f["yanked"] for f in doc["files"]}[filename], "CVE-1")
        self.assertEqual(self.request("GET", f"/api/package/flywheel/{filename}")[1], data)
        stored = [f for f in self.ix.storage._files.values() if f.record.filename == filename]
        self.assertEqual(stored[0].record.yanked, "CVE-1")  # survives a rebuild
        response, body = self.request("DELETE", path, "bob")
        self.assertEqual(response.code, 200, body)
        self.assertNotIn(b"data-yanked", self.request("GET", "/simple/flywheel/")[1])
        _, doc = self.get_json("/simple/flywheel/", accept=JSON_V1)
        self.assertIs({f["filename"]: f["yanked"] for f in doc["files"]}[filename], False)

    def test_yank_reason_in_query(self) -> None:
        """The reason may also come in the query string."""
        filename = self.files[0][0]
        self.request("POST", f"/api/package/flywheel/{filename}/yank?reason=old", "bob")
        self.assertIn(b'data-yanked="old"', self.request("GET", "/simple/flywheel/")[1])

    def test_yank_needs_write(self) -> None:
        """Yanking without write permission is 401 anonymous / 403 authenticated."""
        self.make_index({"pypi.default_write": "devs"})
        filename, data = self.wheel("demo", "1.0")
        self.upload(filename, data, user="bob")
        path = f"/api/package/demo/{filename}/yank"
        self.assertEqual(self.request("POST", path)[0].code, 401)
        self.assertEqual(self.request("POST", path, "carol")[0].code, 403)
        self.assertNotIn(b"data-yanked", self.request("GET", "/simple/demo/")[1])


class AdminTests(RouteTestCase):
    def setUp(self) -> None:
        self.make_index()

    def test_rebuild_permissions(self) -> None:
        """/admin/rebuild is 401 anonymous, 403 for a non-admin."""
        self.assertEqual(self.request("GET", "/admin/rebuild")[0].code, 401)
        self.assertEqual(self.request("GET", "/admin/rebuild", "bob")[0].code, 403)

    def test_rebuild_restores_cache(self) -> None:
        """After the cache is cleared, rebuild restores every file with hashes, sizes, upload
        times, metadata digests and yanks."""
        for f in (self.wheel("a", "1.0"), self.sdist("a", "1.0"), self.wheel("b", "2.0")):
            self.assertEqual(self.upload(*f)[0].code, 200)
        yanked = self.wheel("a", "1.0")[0]
        self.request("POST", f"/api/package/a/{yanked}/yank", "alice", data={"reason": "r"})
        before = {n: self.get_json(f"/simple/{n}/", accept=JSON_V1)[1] for n in ("a", "b")}
        self.ix.cache.clear_all()
        self.assertEqual(self.get_json("/api/package/")[1], {"packages": []})
        response, doc = self.get_json("/admin/rebuild", user="alice")
        self.assertEqual(response.code, 200)
        self.assertEqual(doc["files"], 3)
        after = {n: self.get_json(f"/simple/{n}/", accept=JSON_V1)[1] for n in ("a", "b")}
        self.assertEqual(after, before)


class _Broken:
    """A stand-in backend whose health check fails (or raises)."""

    def __init__(self, raises: bool) -> None:
        self._raises = raises

    def check_health(self):  # type: ignore[no-untyped-def]
        if self._raises:
            return fail(BackendUnavailable("connection refused to db.internal:5432"))
        return succeed((False, "bucket missing"))


class HealthTests(RouteTestCase):
    def setUp(self) -> None:
        self.make_index()

    def test_healthy(self) -> None:
        """/health is 200 with a per-backend report."""
        response, doc = self.get_json("/health")
        self.assertEqual(response.code, 200)
        self.assertEqual(doc["status"], "ok")
        self.assertEqual(set(doc["backends"]), {"storage", "cache", "access"})
        self.assertTrue(all(b["ok"] for b in doc["backends"].values()))

    def test_failing_backend(self) -> None:
        """A backend whose check reports failure makes /health 503, naming it."""
        self.ix.index.storage = _Broken(raises=False)
        response, doc = self.get_json("/health")
        self.assertEqual(response.code, 503)
        storage = doc["backends"]["storage"]
        self.assertIsInstance(storage.pop("seconds"), float)  # the check's time (observability)
        self.assertEqual(storage, {"ok": False, "message": "bucket missing"})
        self.assertTrue(doc["backends"]["cache"]["ok"])

    def test_raising_backend(self) -> None:
        """A backend whose check raises is reported (503, its message), not a 500."""
        self.ix.index.cache = _Broken(raises=True)
        response, doc = self.get_json("/health")
        self.assertEqual(response.code, 503)
        self.assertFalse(doc["backends"]["cache"]["ok"])
        self.assertIn("connection refused", doc["backends"]["cache"]["message"])

    def test_ping(self) -> None:
        """/ping answers pong without touching any backend."""
        self.ix.index.cache = _Broken(raises=True)
        response, body = self.request("GET", "/ping")
        self.assertEqual((response.code, body), (200, b"pong\n"))
        self.assertTrue(response.headers.getRawHeaders(b"content-type"))
