"""``docs/nginx.conf`` in front of a real ``twist pypicloud``: TLS at nginx, public URLs right.

Each test runs its own nginx (``PPC_TEST_NGINX``: ``tests/services.sh`` installs it) with the
example configuration as written, only its ports, certificate and upstream address moved to
this test's; and, for the prefix, with the three changes docs/deployment.md describes.  The
index trusts ``127.0.0.1`` (``pypi.trusted_proxies``) and so builds its URLs from the
``X-Forwarded-*`` headers nginx sends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from tests.distfactory import encode_upload, make_wheel, twine_fields
from tests.e2e.server import ServerCase, basic_auth, free_port, http_request
from tests.e2e.test_tls import https_request
from tests.realservices import require_service
from tests.tlscerts import Certificates, make_certificates

HERE = os.path.dirname(os.path.abspath(__file__))
CONF = os.path.join(HERE, os.pardir, os.pardir, "docs", "nginx.conf")


def replace_once(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` replaced by ``new``; ``old`` must occur exactly once (so the
    example keeps the shape the documentation describes)."""
    count = text.count(old)
    if count != 1:
        raise AssertionError(f"docs/nginx.conf holds {old!r} {count} times, not once")
    return text.replace(old, new)


def prefixed(site: str, prefix: str = "/pypi") -> str:
    """The changes docs/deployment.md gives for serving the index under ``prefix``."""
    site = replace_once(site, "location / {", f"location {prefix}/ {{")
    site = replace_once(site, "proxy_pass http://pypicloud_tx;", "proxy_pass http://pypicloud_tx/;")
    return replace_once(
        site,
        'proxy_set_header X-Forwarded-Prefix "";',
        f"proxy_set_header X-Forwarded-Prefix {prefix};",
    )


class Nginx:
    """One nginx running ``docs/nginx.conf``, relocated, in the foreground."""

    def __init__(self, binary: str, folder: str, certs: Certificates, upstream: int) -> None:
        self.binary = binary
        self.folder = folder
        self.certs = certs
        self.upstream = upstream
        self.http_port = free_port()
        self.https_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        os.makedirs(folder, exist_ok=True)

    def site(self) -> str:
        with open(CONF, encoding="utf-8") as f:
            site = f.read()
        site = replace_once(site, "server 127.0.0.1:6543;", f"server 127.0.0.1:{self.upstream};")
        site = replace_once(site, "listen 80;", f"listen 127.0.0.1:{self.http_port};")
        site = replace_once(site, "listen 443 ssl;", f"listen 127.0.0.1:{self.https_port} ssl;")
        site = replace_once(site, "/etc/ssl/pypi.example.com.pem", self.certs.cert)
        site = replace_once(site, "/etc/ssl/pypi.example.com.key", self.certs.key)
        return site

    def write(self, site: str) -> str:
        """Write the main configuration including ``site``; its path."""
        path = os.path.join(self.folder, "site.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(site)
        temp = "\n".join(
            f"  {kind}_temp_path {self.folder}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        main = os.path.join(self.folder, "nginx.conf")
        with open(main, "w", encoding="utf-8") as f:
            f.write(
                ("user root root;\n" if os.geteuid() == 0 else "")
                + "daemon off;\nworker_processes 1;\n"
                f"pid {self.folder}/nginx.pid;\n"
                f"error_log {self.folder}/error.log info;\n"
                "events { worker_connections 256; }\n"
                "http {\n"
                f"  access_log {self.folder}/access.log;\n{temp}\n"
                f"  include {path};\n"
                "}\n"
            )
        return main

    def command(self, main: str) -> list[str]:
        return [self.binary, "-p", self.folder, "-c", main, "-e", f"{self.folder}/error.log"]

    def check(self, site: str) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the configuration."""
        return subprocess.run(
            [*self.command(self.write(site)), "-t"], capture_output=True, text=True, timeout=30
        )

    def start(self, site: str) -> None:
        main = self.write(site)
        log = open(os.path.join(self.folder, "nginx.out"), "wb")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                self.command(main), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        finally:
            log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"nginx exited:\n{self.log()}")
            try:
                http_request(self.http_port, "GET", "/", timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nginx did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)

    def log(self) -> str:
        found = []
        for name in ("nginx.out", "error.log"):
            try:
                with open(os.path.join(self.folder, name), errors="replace") as f:
                    found.append(f.read()[-4000:])
            except FileNotFoundError:
                pass
        return "\n".join(found)


class NginxTests(ServerCase):
    def setUp(self) -> None:
        binary = require_service("PPC_TEST_NGINX", "nginx")
        folder = self.make_folder()
        self.certs = make_certificates(folder)
        self.index = self.start_server({"pypi.trusted_proxies": "127.0.0.1"})
        self.nginx = Nginx(binary, os.path.join(folder, "nginx"), self.certs, self.index.port)
        self.addCleanup(self.nginx.stop)

    def upload(self, path: str, name: str, version: str) -> tuple[str, bytes]:
        wheel = make_wheel(name, version)
        content_type, body = encode_upload(
            twine_fields(wheel[0], wheel[1], name, version), (wheel[0], wheel[1])
        )
        answer = https_request(
            self.nginx.https_port,
            self.certs.ca,
            "POST",
            path,
            body,
            {"Content-Type": content_type, "Authorization": basic_auth("alice")},
        )
        self.assertEqual(answer.status, 200, f"{answer.text}\n{self.nginx.log()}")
        return wheel

    def pip_download(self, index_url: str, requirement: str) -> dict[str, bytes]:
        dest = os.path.join(self.index.folder, "downloads", re.sub(r"\W", "_", index_url))
        os.makedirs(dest)
        self.run_ok(
            self.index,
            [
                "pip",
                "download",
                "--no-deps",
                "--cert",
                self.certs.ca,
                "--index-url",
                index_url,
                "--timeout",
                "20",
                "--retries",
                "0",
                "-d",
                dest,
                requirement,
            ],
        )
        got = {}
        for name in os.listdir(dest):
            with open(os.path.join(dest, name), "rb") as f:
                got[name] = f.read()
        return got

    def test_configuration_is_valid(self) -> None:
        """``nginx -t`` accepts the example, at the root and under a prefix."""
        for site in (self.nginx.site(), prefixed(self.nginx.site())):
            result = self.nginx.check(site)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertIn("test is successful", result.stdout + result.stderr)

    def test_at_the_root(self) -> None:
        """Through nginx at the root of the host: HTTP redirects to HTTPS; an upload is
        streamed through; the JSON API's URLs are the public https:// ones and serve the
        file; pip installs through it, verifying nginx's certificate."""
        self.nginx.start(self.nginx.site())
        port = self.nginx.https_port
        plain = http_request(self.nginx.http_port, "GET", "/simple/", timeout=5)
        self.assertEqual(plain.status, 301)
        self.assertTrue(plain.headers["location"].startswith("https://"), plain.headers)
        wheel = self.upload("/legacy/", "e2e-nginx", "1.0")
        info = https_request(port, self.certs.ca, "GET", "/pypi/e2e-nginx/json")
        self.assertEqual(info.status, 200, info.text)
        (url,) = [u["url"] for u in info.json()["urls"]]
        self.assertTrue(url.startswith(f"https://localhost:{port}/"), url)
        got = https_request(port, self.certs.ca, "GET", url[len(f"https://localhost:{port}") :])
        self.assertEqual(got.body, wheel[1])
        moved = https_request(port, self.certs.ca, "GET", "/simple/E2E_Nginx/")
        self.assertEqual((moved.status, moved.headers["location"]), (301, "/simple/e2e-nginx/"))
        files = self.pip_download(f"https://localhost:{port}/simple/", "e2e-nginx==1.0")
        self.assertEqual(files, {wheel[0]: wheel[1]})

    def test_under_a_prefix(self) -> None:
        """Through nginx under /pypi/: pip and uploads work with the prefixed URLs; absolute
        URLs and redirects (the API's, the web interface's) carry the prefix."""
        self.nginx.start(prefixed(self.nginx.site()))
        port = self.nginx.https_port
        root = f"https://localhost:{port}/pypi"
        wheel = self.upload("/pypi/legacy/", "e2e-prefix", "2.0")
        info = https_request(port, self.certs.ca, "GET", "/pypi/pypi/e2e-prefix/json")
        self.assertEqual(info.status, 200, info.text)
        (url,) = [u["url"] for u in info.json()["urls"]]
        self.assertTrue(url.startswith(f"{root}/"), url)
        got = https_request(port, self.certs.ca, "GET", url[len(f"https://localhost:{port}") :])
        self.assertEqual(got.body, wheel[1])
        for path, location in [
            ("/pypi/simple/E2E_Prefix/", "/pypi/simple/e2e-prefix/"),
            ("/pypi/simple", "/pypi/simple/"),
        ]:
            moved = https_request(port, self.certs.ca, "GET", path)
            self.assertEqual((moved.status, moved.headers["location"]), (301, location), path)
        login = https_request(port, self.certs.ca, "GET", "/pypi/account")
        self.assertEqual(login.status, 303)
        self.assertTrue(login.headers["location"].startswith("/pypi/login?"), login.headers)
        # The web interface's pages link under the prefix, and what they link to is there.
        home = https_request(port, self.certs.ca, "GET", "/pypi/")
        self.assertEqual(home.status, 200, home.text)
        stylesheet = re.search(r'<link rel="stylesheet" href="([^"]+)"', home.text)
        assert stylesheet is not None, home.text
        self.assertTrue(stylesheet.group(1).startswith("/pypi/static/"), stylesheet.group(1))
        self.assertEqual(https_request(port, self.certs.ca, "GET", stylesheet.group(1)).status, 200)
        self.assertIn('href="/pypi/projects/"', home.text)
        project = https_request(port, self.certs.ca, "GET", "/pypi/project/e2e-prefix/")
        self.assertEqual(project.status, 200, project.text)
        self.assertIn(f'href="/pypi/files/e2e-prefix/{wheel[0]}"', project.text)
        files = self.pip_download(f"{root}/simple/", "e2e-prefix==2.0")
        self.assertEqual(files, {wheel[0]: wheel[1]})
