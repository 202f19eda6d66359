"""TLS without a proxy: ``twist pypicloud --listen ssl:...`` with a certificate made here.

The clients verify the server against the test CA, as they would against a real one: Python's
``ssl`` (``http.client``), pip (``--cert``) and twine (``--cert``).
"""

from __future__ import annotations

import http.client
import os
import ssl
import subprocess
import time
from collections.abc import Mapping

from tests.distfactory import encode_upload, make_wheel, twine_fields
from tests.e2e.server import (
    START_TIMEOUT,
    IndexProcess,
    Response,
    ServerCase,
    _server_environment,
    basic_auth,
    http_request,
)
from tests.tlscerts import Certificates, make_certificates


def https_request(
    port: int,
    ca: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    host: str = "localhost",
) -> Response:
    """One request over TLS to ``host:port`` (on 127.0.0.1), verifying against ``ca``."""
    context = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection(host, port, timeout=15, context=context)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        answer = conn.getresponse()
        return Response(
            answer.status,
            answer.reason,
            {k.lower(): v for k, v in answer.getheaders()},
            answer.read(),
        )
    finally:
        conn.close()


class TlsIndexProcess(IndexProcess):
    """:class:`IndexProcess` listening with TLS (``ssl:`` endpoint) on its port."""

    def __init__(self, folder: str, certs: Certificates) -> None:
        super().__init__(folder)
        self.certs = certs

    @property
    def endpoint(self) -> str:
        return (
            f"ssl:port={self.port}:interface=127.0.0.1:"
            f"privateKey={self.certs.key}:certKey={self.certs.cert}"
        )

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("--listen") + 1] = self.endpoint
        return command

    def start(self, timeout: float = START_TIMEOUT) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=_server_environment(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited\n{self.log_tail()}")
            try:
                if https_request(self.port, self.certs.ca, "GET", "/ping").status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"no answer over TLS in {timeout}s\n{self.log_tail()}")


class TlsTests(ServerCase):
    def setUp(self) -> None:
        folder = self.make_folder()
        self.certs = make_certificates(folder)
        self.server = TlsIndexProcess(folder, self.certs)
        self.addCleanup(self.server.kill)
        self.server.start()

    def test_verified_https(self) -> None:
        """A client that trusts the CA gets answers; an upload works; the JSON API's URLs
        are ``https://`` with the host the client used.  A client that does not trust the
        CA refuses the server, and plain HTTP gets no page."""
        port, ca = self.server.port, self.certs.ca
        name, version = "e2e-tls", "1.0"
        wheel = make_wheel(name, version)
        content_type, body = encode_upload(
            twine_fields(wheel[0], wheel[1], name, version), (wheel[0], wheel[1])
        )
        answer = https_request(
            port,
            ca,
            "POST",
            "/legacy/",
            body,
            {"Content-Type": content_type, "Authorization": basic_auth("alice")},
        )
        self.assertEqual(answer.status, 200, answer.text)
        info = https_request(port, ca, "GET", f"/pypi/{name}/json").json()
        (url,) = [u["url"] for u in info["urls"]]
        self.assertTrue(url.startswith(f"https://localhost:{port}/"), url)
        path = url[len(f"https://localhost:{port}") :]
        self.assertEqual(https_request(port, ca, "GET", path).body, wheel[1])
        untrusting = ssl.create_default_context()
        conn = http.client.HTTPSConnection("localhost", port, timeout=15, context=untrusting)
        self.addCleanup(conn.close)
        self.assertRaises(ssl.SSLCertVerificationError, conn.request, "GET", "/ping")
        try:
            plain = http_request(port, "GET", "/ping", timeout=5)
        except (OSError, http.client.HTTPException):
            pass
        else:
            self.assertNotEqual(plain.body, b"pong\n")

    def test_pip_and_twine(self) -> None:
        """twine uploads and pip downloads over TLS, each verifying with ``--cert``."""
        name, version = "e2e-tls-tools", "2.0"
        wheel = make_wheel(name, version)
        path = self.write_dist(self.server, wheel)
        self.run_ok(
            self.server,
            [
                "twine",
                "upload",
                "--repository-url",
                f"{self.server.url}/legacy/",
                "--cert",
                self.certs.ca,
                "-u",
                "alice",
                "-p",
                "alicepw",
                "--disable-progress-bar",
                path,
            ],
        )
        dest = os.path.join(self.server.folder, "downloads")
        os.makedirs(dest)
        self.run_ok(
            self.server,
            [
                "pip",
                "download",
                "--no-deps",
                "--cert",
                self.certs.ca,
                "--index-url",
                f"{self.server.url}/simple/",
                "--timeout",
                "20",
                "--retries",
                "0",
                "-d",
                dest,
                f"{name}=={version}",
            ],
        )
        with open(os.path.join(dest, wheel[0]), "rb") as f:
            self.assertEqual(f.read(), wheel[1])
