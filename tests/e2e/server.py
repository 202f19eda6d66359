"""The end-to-end harness: a real ``twist pypicloud`` process and the real clients.

:class:`IndexProcess` writes a configuration (file storage and SQLite in a temp folder, users
from the configuration with cheap hashes), starts ``twist pypicloud`` on a free port of
127.0.0.1, waits for ``/ping`` and keeps the log in a file whose tail is shown when something
fails.  :func:`run_tool` runs twine, pip and uv from the test venv with an environment that
ignores every configuration file, keyring and cache.  Nothing here touches the network beyond
127.0.0.1, and every wait is bounded.

Users: ``alice`` (admin) and ``bob``; each password is ``<name>pw``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Mapping, Sequence
from typing import IO, Any

import attrs
from passlib.hash import sha512_crypt
from twisted.trial.unittest import SynchronousTestCase

from tests.distfactory import core_metadata, encode_upload, twine_fields, wheel_filename

#: How long the server gets to answer ``/ping`` after it is started.
START_TIMEOUT = 20.0
#: How long the server gets to exit after SIGTERM.
STOP_TIMEOUT = 15.0
#: Exit statuses of a clean shutdown on SIGTERM.  ``twist`` stops the reactor gracefully and
#: then, as Twisted's runner does on purpose, re-raises the signal it received, so the status
#: is "terminated by SIGTERM" (-15 here, 143 in a shell) rather than 0.
CLEAN_EXITS = (0, -signal.SIGTERM)
#: Timeout of every HTTP call a test makes itself.
HTTP_TIMEOUT = 15.0
#: Timeout of one client command (pip, uv, twine).
TOOL_TIMEOUT = 120.0

PASSWORDS = {"alice": "alicepw", "bob": "bobpw"}
_HASHES: dict[str, str] = {}


def cheap_hash(password: str) -> str:
    """A real sha512_crypt hash with few rounds, so logins stay fast."""
    if password not in _HASHES:
        _HASHES[password] = sha512_crypt.using(rounds=1000).hash(password)
    return _HASHES[password]


def tool(name: str) -> str:
    """The path of command ``name`` (twine, pip, uv, twist) in the venv the tests run in.

    :raises AssertionError: when it is not installed there.
    """
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.access(path, os.X_OK):
        raise AssertionError(
            f"{name} is not installed next to {sys.executable}: the end-to-end tests need it "
            "(pip install -e '.[test]' installs twine, pip and uv)"
        )
    return path


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def basic_auth(user: str, password: str | None = None) -> str:
    """An ``Authorization`` header value for ``user`` (default password ``<user>pw``)."""
    pw = PASSWORDS.get(user, "") if password is None else password
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


# -- HTTP -------------------------------------------------------------------------------------


@attrs.frozen
class Response:
    status: int
    reason: str
    headers: Mapping[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    user: str | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> Response:
    """One request to ``127.0.0.1:port`` on a fresh connection."""
    all_headers = dict(headers or {})
    if user is not None:
        all_headers["Authorization"] = basic_auth(user)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=all_headers)
        answer = conn.getresponse()
        data = answer.read()
        return Response(
            answer.status,
            answer.reason,
            {k.lower(): v for k, v in answer.getheaders()},
            data,
        )
    finally:
        conn.close()


def upload_bytes(
    port: int,
    fields: Sequence[tuple[str, str]],
    filename: str,
    data: bytes,
    user: str | None = "alice",
    path: str = "/legacy/",
    timeout: float = HTTP_TIMEOUT,
) -> Response:
    """A twine-shaped multipart upload of ``data`` as ``filename``."""
    content_type, body = encode_upload(fields, (filename, data))
    return http_request(
        port, "POST", path, body, {"Content-Type": content_type}, user=user, timeout=timeout
    )


# -- distributions too big for memory ---------------------------------------------------------


@attrs.frozen
class BigWheel:
    """A wheel written to disk with its digests."""

    filename: str
    path: str
    size: int
    sha256: str
    blake2b_256: str
    name: str
    version: str

    def fields(self) -> list[tuple[str, str]]:
        """The form fields twine would send with this file."""
        return [
            (":action", "file_upload"),
            ("protocol_version", "1"),
            ("metadata_version", "2.1"),
            ("name", self.name),
            ("version", self.version),
            ("filetype", "bdist_wheel"),
            ("pyversion", "py3"),
            ("sha256_digest", self.sha256),
            ("blake2_256_digest", self.blake2b_256),
        ]


def write_big_wheel(folder: str, name: str, version: str, payload_size: int) -> BigWheel:
    """Write a valid wheel with a ``payload_size``-byte random member, stored uncompressed.

    The payload repeats one random MiB, so it is cheap to make; ``RECORD`` lists its real digest.
    """
    package = wheel_filename(name, version).split("-")[0]
    dist_info = f"{package}-{version}.dist-info"
    filename = wheel_filename(name, version)
    path = os.path.join(folder, filename)
    block = os.urandom(1024 * 1024)
    when = (2024, 1, 2, 3, 4, 6)
    records = []

    def record(member: str, digest: bytes, size: int) -> None:
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        records.append(f"{member},sha256={encoded},{size}")

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        small = [
            (f"{package}/__init__.py", f'__version__ = "{version}"\n'.encode()),
            (f"{dist_info}/METADATA", core_metadata(name, version, summary="big")),
            (
                f"{dist_info}/WHEEL",
                b"Wheel-Version: 1.0\nGenerator: pypicloud-tx-tests\nRoot-Is-Purelib: true\n"
                b"Tag: py3-none-any\n",
            ),
        ]
        for member, data in small:
            archive.writestr(zipfile.ZipInfo(member, when), data)
            record(member, hashlib.sha256(data).digest(), len(data))
        member = f"{package}/payload.bin"
        digest = hashlib.sha256()
        left = payload_size
        with archive.open(zipfile.ZipInfo(member, when), "w", force_zip64=True) as out:
            while left > 0:
                chunk = block[: min(left, len(block))]
                out.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
        record(member, digest.digest(), payload_size)
        records.append(f"{dist_info}/RECORD,,")
        archive.writestr(zipfile.ZipInfo(f"{dist_info}/RECORD", when), "\n".join(records) + "\n")
    sha256 = hashlib.sha256()
    blake = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            sha256.update(chunk)
            blake.update(chunk)
    return BigWheel(
        filename, path, os.path.getsize(path), sha256.hexdigest(), blake.hexdigest(), name, version
    )


class StreamedUpload:
    """A multipart upload whose file part is read from disk as it is sent.

    Use :meth:`begin`, then :meth:`send` as much as wanted, then :meth:`finish`; or
    :meth:`run` for all of it.
    """

    def __init__(
        self, port: int, wheel: BigWheel, user: str = "alice", timeout: float = 60.0
    ) -> None:
        marker = b"\x00MARKER-" + secrets.token_hex(16).encode() + b"\x00"
        content_type, body = encode_upload(
            wheel.fields(), None, extra_files=[("content", wheel.filename, marker)]
        )
        self._prefix, _, self._suffix = body.partition(marker)
        self._content_type = content_type
        self._wheel = wheel
        self._port = port
        self._user = user
        self.length = len(self._prefix) + wheel.size + len(self._suffix)
        self.sent = 0
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self._file: IO[bytes] | None = None

    def begin(self) -> None:
        """Send the request line, the headers and the form fields before the file."""
        self._conn.putrequest("POST", "/legacy/")
        self._conn.putheader("Content-Type", self._content_type)
        self._conn.putheader("Content-Length", str(self.length))
        self._conn.putheader("Authorization", basic_auth(self._user))
        self._conn.endheaders()
        self._conn.send(self._prefix)
        self.sent = len(self._prefix)
        self._file = open(self._wheel.path, "rb")  # noqa: SIM115 - closed in finish()/close()

    def send(self, count: int, chunk: int = 1024 * 1024) -> None:
        """Send up to ``count`` more bytes of the file."""
        assert self._file is not None
        while count > 0:
            data = self._file.read(min(chunk, count))
            if not data:
                return
            self._conn.send(data)
            self.sent += len(data)
            count -= len(data)

    def finish(self) -> Response:
        """Send the rest and read the answer."""
        self.send(self._wheel.size)
        self._conn.send(self._suffix)
        answer = self._conn.getresponse()
        data = answer.read()
        self.close()
        return Response(
            answer.status, answer.reason, {k.lower(): v for k, v in answer.getheaders()}, data
        )

    def run(self) -> Response:
        self.begin()
        return self.finish()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._conn.close()


# -- the server -------------------------------------------------------------------------------


def _server_environment() -> dict[str, str]:
    """The test process's environment without anything that would reconfigure the server."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PPC_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env["PYTHONUNBUFFERED"] = "1"  # the log file is read while the server runs
    return env


class IndexProcess:
    """``twist pypicloud`` in a subprocess, with its own configuration, data and log.

    :param folder: where the configuration, packages, database and log live.
    :param options: options added to (or, with ``None``, removed from) the default
        ``[pypicloud]`` section.
    """

    def __init__(self, folder: str, options: Mapping[str, str | None] | None = None) -> None:
        self.folder = folder
        self.storage_dir = os.path.join(folder, "packages")
        self.db_path = os.path.join(folder, "db.sqlite")
        self.config_path = os.path.join(folder, "server.ini")
        self.log_path = os.path.join(folder, "server.log")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        settings: dict[str, str | None] = {
            "pypi.storage": "file",
            "storage.dir": self.storage_dir,
            "pypi.db": "sql",
            "db.url": f"sqlite:///{self.db_path}",
            "pypi.auth": "config",
            "auth.admins": "alice",
            "pypi.default_read": "everyone",
            "pypi.default_write": "authenticated",
        }
        for user, password in PASSWORDS.items():
            settings[f"user.{user}"] = cheap_hash(password)
        settings.update(options or {})
        self.write_config(settings)

    def write_config(self, settings: Mapping[str, str | None]) -> None:
        lines = ["[pypicloud]"]
        lines += [f"{k} = {v}" for k, v in settings.items() if v is not None]
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    # -- addresses --

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def index_url(self) -> str:
        return f"{self.url}/simple/"

    def index_url_with(self, user: str, password: str | None = None) -> str:
        pw = PASSWORDS[user] if password is None else password
        return f"http://{user}:{pw}@127.0.0.1:{self.port}/simple/"

    # -- life cycle --

    def command(self) -> list[str]:
        return [
            tool("twist"),
            "--log-format=text",
            "pypicloud",
            "--config",
            self.config_path,
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--access-log",  # tests read which URLs the clients fetched
        ]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server and wait until ``/ping`` answers.

        :raises AssertionError: with the log's tail if it exits or does not answer in time.
        """
        assert self.process is None or self.process.poll() is not None, "already running"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it
        log.write(f"---- start {time.strftime('%H:%M:%S')} ----\n".encode())
        log.flush()
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=_server_environment(),
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise AssertionError(f"the server exited with status {code}\n{self.log_tail()}")
            try:
                if http_request(self.port, "GET", "/ping", timeout=1.0).status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"the server did not answer /ping in {timeout}s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait for the exit status (SIGKILL and fail after ``timeout``)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"the server ignored SIGTERM for {timeout}s\n{self.log_tail()}"
            ) from None

    def stop_cleanly(self, timeout: float = STOP_TIMEOUT) -> None:
        """:meth:`stop`, asserting a clean exit: a status in :data:`CLEAN_EXITS` after the
        reactor's main loop ended (so the shutdown ran to its end, not the default handler)."""
        code = self.stop(timeout)
        last_run = self.log_text().rpartition("---- start ")[2]
        if code not in CLEAN_EXITS or "Main loop terminated." not in last_run:
            raise AssertionError(f"unclean exit (status {code})\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, and reap the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"---- last {len(tail)} lines of {self.log_path} ----\n" + "\n".join(tail)

    def rss_kib(self) -> tuple[int, int]:
        """The server's current and peak resident set size (``VmRSS``, ``VmHWM``), in KiB."""
        values = {}
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
        return values["VmRSS"], values["VmHWM"]

    # -- HTTP --

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        user: str | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> Response:
        return http_request(self.port, method, path, body, headers, user, timeout)

    def get(
        self,
        path: str,
        user: str | None = None,
        accept: str | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> Response:
        headers = {"Accept": accept} if accept else {}
        return self.request("GET", path, headers=headers, user=user, timeout=timeout)

    def project_json(self, name: str, user: str | None = None) -> Any:
        """The PEP 691 JSON page of project ``name`` (asserting 200)."""
        answer = self.get(
            f"/simple/{name}/", user=user, accept="application/vnd.pypi.simple.v1+json"
        )
        assert answer.status == 200, (answer.status, answer.text)
        return answer.json()

    def upload(
        self,
        filename: str,
        data: bytes,
        fields: Sequence[tuple[str, str]],
        user: str | None = "alice",
    ) -> Response:
        return upload_bytes(self.port, fields, filename, data, user=user)


# -- the clients ------------------------------------------------------------------------------


def client_environment(home: str) -> dict[str, str]:
    """An environment in which twine, pip and uv read no configuration, keyring or cache."""
    os.makedirs(home, exist_ok=True)
    env = {
        "PATH": os.path.dirname(sys.executable)
        + os.pathsep
        + os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "XDG_CONFIG_HOME": os.path.join(home, ".config"),
        "XDG_CACHE_HOME": os.path.join(home, ".cache"),
        "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
        "NO_PROXY": "*",
        "no_proxy": "*",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_KEYRING_PROVIDER": "disabled",
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
        "UV_NO_CONFIG": "1",
        "UV_NO_CACHE": "1",
        "UV_CACHE_DIR": os.path.join(home, "uv-cache"),
        "UV_KEYRING_PROVIDER": "disabled",
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
        "UV_HTTP_TIMEOUT": "30",
        "TWINE_NON_INTERACTIVE": "1",
    }
    if "TMPDIR" in os.environ:
        env["TMPDIR"] = os.environ["TMPDIR"]
    return env


@attrs.frozen
class ToolResult:
    args: Sequence[str]
    returncode: int
    output: str  # stdout and stderr together

    def describe(self) -> str:
        return f"$ {' '.join(self.args)}\n(exit status {self.returncode})\n{self.output}"


def run_tool(
    args: Sequence[str], home: str, timeout: float = TOOL_TIMEOUT, cwd: str | None = None
) -> ToolResult:
    """Run a client command (``args[0]`` is looked up with :func:`tool` unless it is a path)."""
    program = args[0] if os.sep in args[0] else tool(args[0])
    argv = [program, *args[1:]]
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=client_environment(home),
        cwd=cwd or home,
        timeout=timeout,
        check=False,
    )
    return ToolResult(argv, done.returncode, done.stdout.decode("utf-8", "replace"))


# -- a TCP forwarder that can be cut --------------------------------------------------------


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target``; :meth:`stop` cuts it, :meth:`start` restores.

    Stopping closes the listening socket and every live connection, as a database going away
    would; starting again listens on the same port.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopping = threading.Event()
        thread = threading.Thread(
            target=self._accept,
            args=(listener, self._stopping),
            name="tcp-proxy-accept",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            live, self._sockets = self._sockets, set()
        for s in live:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for thread in self._threads:
            thread.join(5)
        self._threads = [t for t in self._threads if t.is_alive()]

    def _accept(self, listener: socket.socket, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                ready, _, _ = select.select([listener], [], [], 0.05)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if stopping.is_set():
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                pump = threading.Thread(
                    target=self._pump, args=(a, b), daemon=True, name="tcp-proxy-pump"
                )
                pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            source.settimeout(None)
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            source.close()
            with self._lock:
                self._sockets.discard(source)


# -- the test case base ---------------------------------------------------------------------


class ServerCase(SynchronousTestCase):
    """A test case that starts servers in its temp folder and kills them afterwards."""

    def make_folder(self) -> str:
        folder: str = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        return folder

    def start_server(
        self, options: Mapping[str, str | None] | None = None, folder: str | None = None
    ) -> IndexProcess:
        server = IndexProcess(folder or self.make_folder(), options)
        self.addCleanup(server.kill)
        server.start()
        return server

    def home(self, server: IndexProcess) -> str:
        """The client's home folder (empty: no configuration)."""
        path = os.path.join(server.folder, "home")
        os.makedirs(path, exist_ok=True)
        return path

    def write_dist(self, server: IndexProcess, dist: tuple[str, bytes]) -> str:
        """Write ``(filename, bytes)`` into a fresh folder; return its path."""
        folder = os.path.join(server.folder, "dists", secrets.token_hex(4))
        os.makedirs(folder)
        path = os.path.join(folder, dist[0])
        with open(path, "wb") as f:
            f.write(dist[1])
        return path

    def run_ok(
        self, server: IndexProcess, args: Sequence[str], expect: int | None = 0, **kwargs: Any
    ) -> ToolResult:
        """Run a client; fail with its output and the server log unless it exits ``expect``."""
        result = run_tool(args, self.home(server), **kwargs)
        if expect is not None and result.returncode != expect:
            self.fail(f"{result.describe()}\n{server.log_tail()}")
        return result

    def pip_download(
        self, server: IndexProcess, *args: str, index_url: str | None = None, expect: int | None = 0
    ) -> tuple[ToolResult, dict[str, bytes]]:
        """``pip download --no-deps`` into a fresh folder: the result and the files got."""
        dest = os.path.join(server.folder, "downloads", secrets.token_hex(4))
        os.makedirs(dest)
        result = self.run_ok(
            server,
            [
                "pip",
                "download",
                "--no-cache-dir",
                "--no-deps",
                "--disable-pip-version-check",
                "--index-url",
                index_url or server.index_url,
                "--timeout",
                "20",
                "--retries",
                "0",
                "-d",
                dest,
                *args,
            ],
            expect=expect,
        )
        got = {}
        for name in os.listdir(dest):
            with open(os.path.join(dest, name), "rb") as f:
                got[name] = f.read()
        return result, got

    def upload_ok(
        self, server: IndexProcess, dist: tuple[str, bytes], name: str, version: str, **fields: Any
    ) -> None:
        """Upload over HTTP as alice, asserting 200."""
        answer = server.upload(
            dist[0], dist[1], twine_fields(dist[0], dist[1], name, version, **fields)
        )
        self.assertEqual(answer.status, 200, f"{answer.text}\n{server.log_tail()}")
