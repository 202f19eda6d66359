"""Starting, stopping, crashing and restarting a real ``twist pypicloud``."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time

from tests.distfactory import make_sdist, make_wheel
from tests.e2e.server import (
    START_TIMEOUT,
    IndexProcess,
    ServerCase,
    StreamedUpload,
    write_big_wheel,
)

JSON = "application/vnd.pypi.simple.v1+json"


class CacheRebuildTests(ServerCase):
    """The cache is derived data: storage alone brings everything back."""

    def test_deleted_database_is_rebuilt_from_storage(self) -> None:
        """Upload, stop the server, delete the SQLite file (and its ``-wal``/``-shm``), start
        again: the root and every project page (PEP 691 JSON) are identical, so each file
        keeps its sha256, size, upload time, metadata hash and yank."""
        server = self.start_server()
        for name, version in (("e2e-one", "1.0"), ("e2e-one", "1.1"), ("e2e-two", "0.1")):
            self.upload_ok(
                server, make_wheel(name, version, summary=f"{name} {version}"), name, version
            )
            self.upload_ok(
                server, make_sdist(name, version, summary=f"{name} {version}"), name, version
            )
        yank = server.request(
            "POST",
            "/api/package/e2e-one/e2e_one-1.0.tar.gz/yank",
            b"reason=old",
            {"Content-Type": "application/x-www-form-urlencoded"},
            user="alice",
        )
        self.assertEqual(yank.status, 200, yank.text)

        def snapshot() -> dict[str, object]:
            root = server.get("/simple/", accept=JSON)
            self.assertEqual(root.status, 200)
            pages: dict[str, object] = {"/simple/": root.json()}
            for project in root.json()["projects"]:
                pages[project["name"]] = server.project_json(project["name"])
            return pages

        before = snapshot()
        self.assertEqual(
            sorted(p["name"] for p in before["/simple/"]["projects"]),  # type: ignore[index]
            ["e2e-one", "e2e-two"],
        )
        server.stop_cleanly()
        removed = []
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(server.db_path + suffix):
                os.remove(server.db_path + suffix)
                removed.append(suffix)
        self.assertIn("", removed)

        server.start()
        after = snapshot()
        self.assertEqual(after, before)
        files = after["e2e-one"]["files"]  # type: ignore[index]
        self.assertEqual(len(files), 4)
        self.assertIn("rebuilt the empty cache from storage: 6 files", server.log_text())


class ShutdownTests(ServerCase):
    """SIGTERM is a clean, quick exit."""

    def test_sigterm_exits_cleanly(self) -> None:
        """After serving an upload and a download, SIGTERM makes the server shut down and exit
        within a few seconds (status 0, or Twisted's re-raised SIGTERM after the main loop
        ended: see ``CLEAN_EXITS``), and its log holds no traceback."""
        server = self.start_server()
        wheel = make_wheel("e2e-term", "1.0")
        self.upload_ok(server, wheel, "e2e-term", "1.0")
        self.assertEqual(server.get(f"/api/package/e2e-term/{wheel[0]}").body, wheel[1])
        started = time.monotonic()
        server.stop_cleanly()
        self.assertLess(time.monotonic() - started, 5.0, server.log_tail())
        self.assertNotIn("Traceback", server.log_text())


class BadConfigTests(ServerCase):
    """A wrong configuration stops start-up at once with a line naming the option."""

    def _start_fails(self, options: dict[str, str | None], option: str) -> None:
        server = IndexProcess(self.make_folder(), options)
        started = time.monotonic()
        done = subprocess.run(
            server.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=START_TIMEOUT,
            check=False,
            cwd=server.folder,
        )
        output = done.stdout.decode("utf-8", "replace")
        self.assertNotEqual(done.returncode, 0, output)
        self.assertLess(time.monotonic() - started, 10.0)
        lines = [line for line in output.splitlines() if option in line]
        self.assertTrue(lines, f"no line names {option}:\n{output}")

    def test_unknown_pypi_option(self) -> None:
        """An unknown ``pypi.*`` option is refused, naming it."""
        self._start_fails({"pypi.no_such_option": "1"}, "pypi.no_such_option")

    def test_misspelt_default_read(self) -> None:
        """``pypi.default_raed`` (a typo of ``pypi.default_read``) is refused, naming it."""
        self._start_fails(
            {"pypi.default_read": None, "pypi.default_raed": "everyone"}, "pypi.default_raed"
        )

    def test_missing_storage_dir(self) -> None:
        """File storage without ``storage.dir`` is refused, naming ``storage.dir``."""
        self._start_fails({"storage.dir": None}, "storage.dir")


class CrashTests(ServerCase):
    """A process killed in the middle of an upload leaves no trace of it."""

    def test_kill_during_upload(self) -> None:
        """SIGKILL while a 60 MB wheel is half sent; after a restart the half upload is
        neither listed nor served, the earlier file is intact, and the same upload succeeds."""
        server = self.start_server()
        earlier = make_wheel("e2e-keep", "1.0")
        self.upload_ok(server, earlier, "e2e-keep", "1.0")
        big = write_big_wheel(server.folder, "e2e-crash", "1.0", 60 * 1024 * 1024)
        self.addCleanup(os.remove, big.path)
        self.addCleanup(shutil.rmtree, server.storage_dir, ignore_errors=True)

        upload = StreamedUpload(server.port, big)
        upload.begin()
        upload.send(big.size // 2)
        time.sleep(0.3)  # let the server take in what was sent
        server.kill()
        upload.close()

        server.start()
        self.assertEqual(server.get("/simple/e2e-crash/").status, 404)
        self.assertEqual(server.get(f"/api/package/e2e-crash/{big.filename}").status, 404)
        names = [p["name"] for p in server.get("/simple/", accept=JSON).json()["projects"]]
        self.assertEqual(names, ["e2e-keep"])
        self.assertEqual(server.get(f"/api/package/e2e-keep/{earlier[0]}").body, earlier[1])
        for folder, _, files in os.walk(server.storage_dir):
            self.assertNotIn(big.filename, files, folder)

        answer = StreamedUpload(server.port, big).run()
        self.assertEqual(answer.status, 200, answer.text)
        served = server.get(f"/api/package/e2e-crash/{big.filename}", timeout=60)
        self.assertEqual(len(served.body), big.size)
        self.assertEqual(hashlib.sha256(served.body).hexdigest(), big.sha256)
        listed = server.project_json("e2e-crash")["files"]
        self.assertEqual(
            [(f["filename"], f["size"], f["hashes"]["sha256"]) for f in listed],
            [(big.filename, big.size, big.sha256)],
        )
