"""The upstream fallback end to end: a real ``twist pypicloud`` in front of a second one
standing in for PyPI (both on 127.0.0.1), driven by real pip and uv, plus small stand-ins for
an upstream that is down, silent, or serves a file that does not match its hash.  Nothing
leaves 127.0.0.1; every wait is bounded."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.distfactory import make_wheel
from tests.e2e.server import IndexProcess, ServerCase, TcpProxy, free_port

JSON = "application/vnd.pypi.simple.v1+json"


class FallbackCase(ServerCase):
    def start_upstream(self) -> IndexProcess:
        """The "PyPI" of these tests, holding e2e-up 1.0 and 2.0 (wheels)."""
        upstream = self.start_server()
        self.up1 = make_wheel("e2e-up", "1.0")
        self.up2 = make_wheel("e2e-up", "2.0")
        self.upload_ok(upstream, self.up1, "e2e-up", "1.0")
        self.upload_ok(upstream, self.up2, "e2e-up", "2.0")
        return upstream

    def start_front(self, upstream_url: str, mode: str, **options: str) -> IndexProcess:
        return self.start_server(
            {"pypi.fallback": mode, "pypi.fallback_base_url": upstream_url, **options}
        )

    def file_gets(self, server: IndexProcess, filename: str) -> int:
        """How many GETs of ``filename`` the server's access log shows."""
        return sum(
            1
            for line in server.log_text().splitlines()
            if f"GET /api/package/e2e-up/{filename} " in line
        )

    def uv_install(self, server: IndexProcess, index_url: str, *requirements: str) -> str:
        """``uv pip install`` into a fresh venv; the venv's python."""
        venv = os.path.join(server.folder, f"venv-{len(os.listdir(server.folder))}")
        self.run_ok(server, ["uv", "venv", "--no-config", "--python", sys.executable, venv])
        python = os.path.join(venv, "bin", "python")
        self.run_ok(
            server,
            [
                "uv",
                "pip",
                "install",
                "--no-cache",
                "--python",
                python,
                "--index-url",
                index_url,
                *requirements,
            ],
        )
        return python

    def installed_version(self, python: str) -> str:
        code = "import e2e_up; print(e2e_up.__version__)"
        result = self.run_ok_plain([python, "-I", "-c", code], os.path.dirname(python))
        return result.strip()

    def run_ok_plain(self, args: list[str], cwd: str) -> str:
        from tests.e2e.server import run_tool

        result = run_tool(args, cwd)
        self.assertEqual(result.returncode, 0, result.describe())
        return result.output


class ModeTests(FallbackCase):
    """Each mode with pip and uv."""

    def test_cache_mode(self) -> None:
        """pip downloads and uv installs a project only upstream has, through the front
        index, which fetched each file from upstream once, stored it as origin=upstream and
        lists it afterwards; a private project of the front is not mixed with upstream's."""
        upstream = self.start_upstream()
        self.upload_ok(upstream, make_wheel("e2e-mine", "9.0"), "e2e-mine", "9.0")
        front = self.start_front(upstream.url, "cache")
        mine = make_wheel("e2e-mine", "1.0")
        self.upload_ok(front, mine, "e2e-mine", "1.0")
        index = front.index_url_with("bob")

        _, got = self.pip_download(front, "e2e-up", index_url=index)
        self.assertEqual(got, {self.up2[0]: self.up2[1]})
        _, got = self.pip_download(front, "e2e-up==1.0", index_url=index)
        self.assertEqual(got, {self.up1[0]: self.up1[1]})
        python = self.uv_install(front, index, "e2e-up")
        self.assertEqual(self.installed_version(python), "2.0")
        self.assertEqual(self.file_gets(upstream, self.up2[0]), 1)
        self.assertEqual(self.file_gets(upstream, self.up1[0]), 1)
        for version, (filename, _) in (("1.0", self.up1), ("2.0", self.up2)):
            path = os.path.join(front.storage_dir, "e2e-up", version, filename)
            self.assertTrue(os.path.exists(path), path)
        page = front.project_json("e2e-up", user="bob")
        self.assertEqual(
            {f["filename"]: f["hashes"]["sha256"] for f in page["files"]},
            {f: hashlib.sha256(d).hexdigest() for f, d in (self.up1, self.up2)},
        )

        _, got = self.pip_download(front, "e2e-mine", index_url=index)
        self.assertEqual(got, {mine[0]: mine[1]})

    def test_redirect_mode(self) -> None:
        """pip and uv follow the front's 302 to the upstream project page and install from
        upstream; the front stores nothing."""
        upstream = self.start_upstream()
        front = self.start_front(upstream.url, "redirect")
        _, got = self.pip_download(front, "e2e-up")
        self.assertEqual(got, {self.up2[0]: self.up2[1]})
        python = self.uv_install(front, front.index_url, "e2e-up==1.0")
        self.assertEqual(self.installed_version(python), "1.0")
        self.assertRegex(front.log_text(), r'"GET /simple/e2e-up/ HTTP/1.1" 302 ')
        self.assertFalse(os.path.exists(os.path.join(front.storage_dir, "e2e-up")))

    def test_none_mode(self) -> None:
        """With fallback none, pip and uv find nothing for a project only upstream has, and
        upstream is never asked."""
        upstream = self.start_upstream()
        front = self.start_front(upstream.url, "none")
        result, got = self.pip_download(
            front, "e2e-up", index_url=front.index_url_with("bob"), expect=None
        )
        self.assertNotEqual(result.returncode, 0, result.describe())
        self.assertEqual(got, {})
        venv = os.path.join(front.folder, "venv")
        self.run_ok(front, ["uv", "venv", "--no-config", "--python", sys.executable, venv])
        result = self.run_ok(
            front,
            [
                "uv",
                "pip",
                "install",
                "--no-cache",
                "--python",
                os.path.join(venv, "bin", "python"),
                "--index-url",
                front.index_url_with("bob"),
                "e2e-up",
            ],
            expect=None,
        )
        self.assertNotEqual(result.returncode, 0, result.describe())
        self.assertIn("e2e-up", result.output)
        self.assertNotIn("GET /simple/e2e-up/", upstream.log_text())


class FailureTests(FallbackCase):
    """Concurrency and an upstream that misbehaves."""

    def test_concurrent_downloads_one_upstream_fetch(self) -> None:
        """Twenty simultaneous first downloads of one file through the front: every one
        gets the whole file, and upstream served that file once."""
        upstream = self.start_upstream()
        front = self.start_front(upstream.url, "cache")
        path = f"/api/package/e2e-up/{self.up2[0]}"
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _: front.request("GET", path, user="bob"), range(20)))
        self.assertEqual({(a.status, a.body == self.up2[1]) for a in answers}, {(200, True)})
        self.assertEqual(self.file_gets(upstream, self.up2[0]), 1)
        self.assertEqual(upstream.log_text().count('"GET /simple/e2e-up/ HTTP/1.1" 200'), 1)

    def test_upstream_down(self) -> None:
        """With upstream gone, a project never seen answers 502 with a message; a page seen
        before is served from memory (stale); local projects install as usual."""
        upstream = self.start_upstream()
        proxy = TcpProxy(("127.0.0.1", upstream.port))
        proxy.start()
        self.addCleanup(proxy.stop)
        front = self.start_front(
            f"http://127.0.0.1:{proxy.port}", "cache", **{"pypi.fallback_cache_seconds": "0"}
        )
        mine = make_wheel("e2e-mine", "1.0")
        self.upload_ok(front, mine, "e2e-mine", "1.0")
        self.assertEqual(front.get("/simple/e2e-up/", user="bob").status, 200)
        proxy.stop()
        started = time.monotonic()
        seen = front.get("/simple/e2e-up/", user="bob", accept=JSON)
        self.assertEqual(seen.status, 200, seen.text)
        self.assertEqual(len(seen.json()["files"]), 2)
        answer = front.get("/simple/e2e-other/", user="bob")
        self.assertEqual(answer.status, 502, answer.text)
        self.assertIn("connection refused", answer.text)
        self.assertLess(time.monotonic() - started, 10)
        _, got = self.pip_download(front, "e2e-mine", index_url=front.index_url_with("bob"))
        self.assertEqual(got, {mine[0]: mine[1]})

    def test_upstream_silent(self) -> None:
        """An upstream that accepts connections and never answers is a 504 after
        pypi.fallback_timeout, while local projects keep answering at once."""
        with silent_listener() as port:
            front = self.start_front(
                f"http://127.0.0.1:{port}", "cache", **{"pypi.fallback_timeout": "1.5"}
            )
            self.upload_ok(front, make_wheel("e2e-mine", "1.0"), "e2e-mine", "1.0")
            slow: dict[str, Any] = {}

            def ask() -> None:
                slow["answer"] = front.get("/simple/e2e-up/", user="bob")

            thread = threading.Thread(target=ask)
            started = time.monotonic()
            thread.start()
            time.sleep(0.2)
            self.assertEqual(front.get("/simple/e2e-mine/", user="bob").status, 200)
            self.assertLess(time.monotonic() - started, 1.5)
            thread.join(15)
            elapsed = time.monotonic() - started
        self.assertEqual(slow["answer"].status, 504, slow["answer"].text)
        self.assertIn("pypi.fallback_timeout", slow["answer"].text)
        self.assertGreaterEqual(elapsed, 1.4)
        self.assertLess(elapsed, 8)

    def test_wrong_hash(self) -> None:
        """A file whose bytes differ from the sha256 upstream lists is answered 502 and
        never stored, so pip fails instead of installing it."""
        good = make_wheel("e2e-up", "1.0")
        with lying_upstream(good) as port:
            front = self.start_front(f"http://127.0.0.1:{port}", "cache")
            answer = front.get(f"/api/package/e2e-up/{good[0]}", user="bob")
            self.assertEqual(answer.status, 502, answer.text)
            self.assertIn("does not match its sha256 hash", answer.text)
            result, got = self.pip_download(
                front, "e2e-up", index_url=front.index_url_with("bob"), expect=None
            )
        self.assertNotEqual(result.returncode, 0, result.describe())
        self.assertEqual(got, {})
        self.assertFalse(os.path.exists(os.path.join(front.storage_dir, "e2e-up")))


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port of 127.0.0.1 that accepts connections (in the kernel) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", free_port()))
        s.listen(64)
        yield s.getsockname()[1]


@contextlib.contextmanager
def lying_upstream(dist: tuple[str, bytes]) -> Iterator[int]:
    """An upstream listing ``dist`` with its real sha256 but serving other bytes."""
    filename, data = dist
    page = json.dumps(
        {
            "meta": {"api-version": "1.1"},
            "name": "e2e-up",
            "files": [
                {
                    "filename": filename,
                    "url": f"/files/{filename}",
                    "hashes": {"sha256": hashlib.sha256(data).hexdigest()},
                    "size": len(data),
                }
            ],
        }
    ).encode()
    tampered = data[:-8] + b"tampered"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/simple/e2e-up/":
                body, kind = page, JSON
            elif self.path == f"/files/{filename}":
                body, kind = tampered, "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
