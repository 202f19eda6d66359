"""Graceful shutdown of a real ``twist pypicloud``: SIGTERM lets transfers in progress finish.

Each test holds a transfer open (a download read slowly, an upload sent in parts), sends
SIGTERM, checks that new connections are refused at once, completes the transfer and checks
that it arrived whole, then that the process exits cleanly.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import time
import urllib.parse

from tests.e2e.server import (
    CLEAN_EXITS,
    IndexProcess,
    ServerCase,
    StreamedUpload,
    write_big_wheel,
)

MiB = 1024 * 1024
#: Size of the wheel transferred: far more than the socket buffers hold (a few MiB).
PAYLOAD = 48 * MiB


class SlowDownload:
    """``GET path`` on a raw socket with a small receive buffer, read as the test says."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.sock.settimeout(20)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        self.head = b""
        self.body = hashlib.sha256()
        self.received = 0
        self.length = -1
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed before the headers: {data!r}")
            data += chunk
        self.head, _, rest = data.partition(b"\r\n\r\n")
        for line in self.head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                self.length = int(value)
        self._take(rest)

    def _take(self, data: bytes) -> None:
        self.body.update(data)
        self.received += len(data)

    def read(self, count: int) -> None:
        """Read about ``count`` more bytes of the body."""
        goal = self.received + count
        while self.received < goal:
            chunk = self.sock.recv(65536)
            if not chunk:
                return
            self._take(chunk)

    def read_rest(self, deadline: float = 60.0) -> bool:
        """Read to the end of the body; whether it ended with every byte announced."""
        stop = time.monotonic() + deadline
        while self.received < self.length and time.monotonic() < stop:
            try:
                chunk = self.sock.recv(1024 * 1024)
            except OSError:
                return False
            if not chunk:
                return False
            self._take(chunk)
        return self.received == self.length

    def close(self) -> None:
        self.sock.close()


class GracefulShutdownTests(ServerCase):
    def setUp(self) -> None:
        self.folder = self.make_folder()
        self.wheel = write_big_wheel(self.folder, "e2e-drain", "1.0", PAYLOAD)

    def start(self, grace: str = "30") -> IndexProcess:
        return self.start_server({"pypi.shutdown_grace": grace}, folder=self.folder)

    def download_path(self, server: IndexProcess) -> str:
        page = server.project_json("e2e-drain")
        (url,) = [f["url"] for f in page["files"]]
        absolute = urllib.parse.urljoin(f"{server.url}/simple/e2e-drain/", url)
        return urllib.parse.urlsplit(absolute).path

    def assert_refused_soon(self, server: IndexProcess, seconds: float = 5.0) -> None:
        """New connections are refused within ``seconds`` of SIGTERM."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                return
            except ConnectionResetError:
                # Caught in the listening socket's backlog as it closed: not accepted, but
                # not yet the refusal either; the next attempt tells.
                pass
            time.sleep(0.05)
        self.fail(f"still accepting connections {seconds}s after SIGTERM\n{server.log_tail()}")

    def wait_exit(self, server: IndexProcess, seconds: float) -> int:
        assert server.process is not None
        try:
            return server.process.wait(seconds)
        except Exception:
            self.fail(f"no exit within {seconds}s\n{server.log_tail()}")

    def test_download_in_progress_completes(self) -> None:
        """SIGTERM during a slow download: the port closes at once (new connections are
        refused), the download still arrives whole (every byte, the right sha256), then the
        process exits cleanly."""
        server = self.start()
        upload = StreamedUpload(server.port, self.wheel).run()
        self.assertEqual(upload.status, 200, upload.text)
        download = SlowDownload(server.port, self.download_path(server))
        self.addCleanup(download.close)
        self.assertIn(b" 200 ", download.head.split(b"\r\n")[0])
        self.assertEqual(download.length, self.wheel.size)
        download.read(2 * MiB)
        server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        self.assert_refused_soon(server)
        self.assertTrue(server.running(), "exited with a download in progress")
        self.assertTrue(download.read_rest(), f"{download.received} of {download.length} bytes")
        self.assertEqual(download.body.hexdigest(), self.wheel.sha256)
        status = self.wait_exit(server, 15)
        self.assertIn(status, CLEAN_EXITS, server.log_tail())
        self.assertIn("requests in progress finished", server.log_text())
        self.assertNotIn("Traceback", server.log_text())

    def test_upload_in_progress_completes(self) -> None:
        """SIGTERM during an upload: the rest of the body is still received, the upload is
        stored (200; after a restart it is listed and served whole), then the process exits
        cleanly."""
        server = self.start()
        upload = StreamedUpload(server.port, self.wheel)
        self.addCleanup(upload.close)
        upload.begin()
        upload.send(8 * MiB)
        server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        self.assert_refused_soon(server)
        answer = upload.finish()
        self.assertEqual(answer.status, 200, f"{answer.text}\n{server.log_tail()}")
        status = self.wait_exit(server, 15)
        self.assertIn(status, CLEAN_EXITS, server.log_tail())
        again = self.start()
        files = [f["filename"] for f in again.project_json("e2e-drain")["files"]]
        self.assertEqual(files, [self.wheel.filename])
        download = SlowDownload(again.port, self.download_path(again))
        self.addCleanup(download.close)
        self.assertTrue(download.read_rest())
        self.assertEqual(download.body.hexdigest(), self.wheel.sha256)

    def test_grace_period_is_bounded(self) -> None:
        """A client that stops reading does not hold the server: after
        ``pypi.shutdown_grace`` seconds the transfer is cut off and the process exits."""
        server = self.start(grace="1")
        upload = StreamedUpload(server.port, self.wheel).run()
        self.assertEqual(upload.status, 200, upload.text)
        download = SlowDownload(server.port, self.download_path(server))
        self.addCleanup(download.close)
        download.read(MiB)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        status = self.wait_exit(server, 15)
        self.assertLess(time.monotonic() - started, 8, server.log_tail())
        self.assertIn(status, CLEAN_EXITS, server.log_tail())
        self.assertIn("are cut off", server.log_text())
        self.assertFalse(download.read_rest(10))
