#!/usr/bin/env python3
"""Benchmark pypicloud-tx against pypicloud 1.3.12 on the same corpus, on this machine.

    .venv/bin/python bench/run.py [--projects 1000] [--versions 3] [--duration 10]
                                  [--connections 16] [--big-upload-mb 1024] [--skip-pypicloud]

What it does, for each server in turn (never both at once, so they do not compete):

1. starts it on a free 127.0.0.1 port with a generated configuration (file storage, SQLite,
   users in the config file, anonymous reads);
2. uploads the corpus -- ``--projects`` projects x ``--versions`` versions x (wheel + sdist),
   real archives made by ``tests/distfactory.py`` -- through the upload API (twine's
   multipart form, Basic auth), ``--upload-concurrency`` at a time, and times it;
3. runs ``wrk`` (1 thread: client and server share this 2-core machine) against
   ``/simple/``, ``/simple/<name>/`` as HTML, as PEP 691 JSON and with Basic credentials on
   every request (as pip sends them), and a file download, rotating over all project names
   (a few hundred files for downloads); each run is preceded by a short warm-up;
4. reads the server's CPU time (``utime + stime`` from ``/proc/<pid>/stat``) before and after
   each wrk run and divides by the requests completed;
5. uploads one ``--big-upload-mb`` wheel, streamed from disk, sampling the server's RSS and
   reading its high-water mark (reset first through ``/proc/<pid>/clear_refs``).

It prints a table and checks the targets; ``--json FILE`` also writes every figure.
Only 127.0.0.1 is contacted; every loop and wait is bounded.  pypicloud needs its own venv:
``bash bench/setup_pypicloud.sh`` (``--pypicloud-venv`` to point elsewhere).

The other scripts in ``bench/`` take their shared parts from here: the corpus, starting and
stopping a server, uploads, ``wrk``, CPU readings from ``/proc``, the services of
``tests/services.sh``, machine details, the common options, tables and the JSON file.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import hashlib
import http.client
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.distfactory import (  # noqa: E402
    core_metadata,
    encode_upload,
    make_sdist,
    make_wheel,
    twine_fields,
    wheel_filename,
)

USER, PASSWORD = "bench", "bench-password"
READER, READER_PASSWORD = "reader", "reader-password"
#: pypicloud's own default for sha512_crypt (what its ppc-gen-password writes).
HASH_ROUNDS = 20500
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
TWIST = str(REPO / ".venv" / "bin" / "twist")
DOWNLOAD_FILES = 300
#: Targets from the issue.
SPEEDUP_TARGET = 10.0
CPU_PER_PAGE_TARGET_MS = 0.5
CREDENTIALED_TOLERANCE = 0.20


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- corpus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    name: str
    version: str
    filename: str
    path: Path
    summary: str


def project_name(i: int) -> str:
    return f"bench-project-{i:05d}"


def build_corpus(root: Path, projects: int, versions: int) -> list[Dist]:
    """Write ``projects x versions x (wheel, sdist)`` real archives under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    dists = []
    for i in range(projects):
        name = project_name(i)
        summary = f"Benchmark project number {i}"
        for v in range(versions):
            version = f"1.{v}.0"
            for maker in (make_wheel, make_sdist):
                filename, data = maker(
                    name,
                    version,
                    summary=summary,
                    requires_python=">=3.8",
                    requires_dist=["attrs>=22"],
                )
                path = root / filename
                path.write_bytes(data)
                dists.append(Dist(name, version, filename, path, summary))
    return dists


def build_big_wheel(root: Path, megabytes: int) -> tuple[str, Path]:
    """A valid wheel whose one data member holds ``megabytes`` MiB (stored, not deflated)."""
    name, version = "bench-big", "1.0.0"
    filename = wheel_filename(name, version)
    path = root / filename
    dist_info = f"bench_big-{version}.dist-info"
    records = []
    chunk = os.urandom(1024 * 1024)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        member_hash = hashlib.sha256()
        info = zipfile.ZipInfo("bench_big/payload.bin", (2024, 1, 2, 3, 4, 6))
        with archive.open(info, "w", force_zip64=True) as member:
            for _ in range(megabytes):
                member.write(chunk)
                member_hash.update(chunk)
        digest = base64.urlsafe_b64encode(member_hash.digest()).rstrip(b"=").decode()
        records.append(f"bench_big/payload.bin,sha256={digest},{megabytes * len(chunk)}")
        small = [
            ("bench_big/__init__.py", b""),
            (f"{dist_info}/METADATA", core_metadata(name, version, summary="One big wheel")),
            (
                f"{dist_info}/WHEEL",
                b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            ),
        ]
        for member_path, data in small:
            archive.writestr(member_path, data)
            d = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{member_path},sha256={d},{len(data)}")
        records.append(f"{dist_info}/RECORD,,")
        archive.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    return filename, path


# -- processes and services on this machine ----------------------------------------------


def proc_stat(pid: int | str) -> list[str]:
    """``/proc/PID/stat`` from field 3 (state) on: the command name may hold spaces."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int) -> float:
    """``utime + stime`` of ``pid`` in seconds."""
    fields = proc_stat(pid)
    # utime and stime are fields 14 and 15 of stat; fields[0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def terminate(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM every process still running (after a SIGCONT, in case it was stopped), then
    wait for each, killing one that is still there after ``timeout`` seconds."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def services_env(names: Sequence[str]) -> dict[str, str]:
    """The variables ``bash tests/services.sh env NAMES`` exports (for those of the services
    that run); empty when the script cannot be run."""
    try:
        out = subprocess.run(
            ["bash", str(REPO / "tests" / "services.sh"), "env", *names],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    exported: dict[str, str] = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if words[:1] == ["export"]:
            for word in words[1:]:
                key, equals, value = word.partition("=")
                if equals:
                    exported[key] = value
    return exported


def service_settings(variables: Sequence[str], services: Sequence[str]) -> dict[str, str]:
    """Each of ``variables`` from the environment, else from what ``tests/services.sh env``
    exports for ``services`` (asked only when one is missing); one found in neither is left
    out."""
    found = {v: os.environ[v] for v in variables if os.environ.get(v)}
    if len(found) < len(variables):
        exported = services_env(services)
        found.update({v: exported[v] for v in variables if v not in found and exported.get(v)})
    return found


def recorded_pid(service: str) -> int | None:
    """The pid ``tests/services.sh`` recorded for ``service``, if that process runs."""
    run = Path(os.environ.get("PPC_SERVICES_DIR", "/tmp/pypicloud-tx-services")) / "run"
    try:
        pid = int((run / f"{service}.pid").read_text().split()[0])
        proc_stat(pid)
    except (OSError, ValueError, IndexError):
        return None
    return pid


@contextlib.contextmanager
def postgres_admin(url: str, timeout: float = 10) -> Iterator[Any]:
    """An autocommit connection to the database of ``url`` (``postgres`` when it names
    none), to create and drop the benchmark's own databases."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    params: dict[str, Any] = {
        "host": u.host or "127.0.0.1",
        "port": u.port or 5432,
        "user": u.username,
        "dbname": u.database or "postgres",
        "connect_timeout": timeout,
    }
    if u.password:
        params["password"] = u.password
    with psycopg.connect(**params, autocommit=True) as conn:
        yield conn


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def git_describe() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def head_commit() -> str:
    """The checked-out commit, read from ``.git`` rather than by running git."""
    git = REPO / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    except OSError:
        pass
    return "unknown"


def machine(commit: str | None = None) -> dict[str, str]:
    """This machine and the code measured; ``commit`` defaults to ``git describe``'s."""
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "commit": git_describe() if commit is None else commit,
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "memory_gib": f"{int(mem) / 2**20:.1f}",
        "python": sys.version.split()[0],
    }


# -- servers -----------------------------------------------------------------------------


@dataclass
class Server:
    """One server process: started on demand, ready once ``ready_path`` answers 200."""

    label: str
    argv: list[str]
    port: int
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    #: Polled every ``probe_interval`` seconds, for at most ``start_timeout`` seconds.
    ready_path: str = "/simple/"
    probe_interval: float = 0.2
    start_timeout: float = START_TIMEOUT
    #: Seconds from starting the process until ``ready_path`` answered.
    ready_seconds: float = 0.0
    #: Another process's CPU seconds (a cache service, the S3 server), read on every
    #: :meth:`cpu_seconds` into ``companion_readings``: ``wrk`` and ``upload_corpus`` read the
    #: server's CPU once before and once after their measured part, so the last two readings
    #: give the companion's CPU for that very part (see :func:`companion_figures`).
    companion_cpu: Callable[[], float] | None = None
    companion_readings: list[float] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        t0 = time.monotonic()
        with open(self.workdir / "server.log", "ab") as logfile:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        deadline = t0 + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.label} exited at start; see {self.workdir}/server.log")
            with contextlib.suppress(OSError):
                status, _, _ = request(self.port, "GET", self.ready_path, timeout=5)
                if status == 200:
                    self.ready_seconds = time.monotonic() - t0
                    return
            time.sleep(self.probe_interval)
        self.stop()
        raise SystemExit(
            f"{self.label} did not answer {self.ready_path} within {self.start_timeout}s"
        )

    def stop(self) -> None:
        if self.proc is not None:
            terminate([self.proc], STOP_TIMEOUT)

    def cpu_seconds(self) -> float:
        """The server's CPU seconds (and a reading of the companion's, if any)."""
        if self.companion_cpu is not None:
            try:
                self.companion_readings.append(self.companion_cpu())
            except (OSError, ValueError, IndexError):
                self.companion_cpu = None
        return process_cpu_seconds(self.pid)

    def status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def rss_mb(self) -> float:
        return self.status_kb("VmRSS") / 1024

    def reset_peak(self) -> bool:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False


def companion_figures(
    server: Server, key: str, run: Callable[[], Mapping[str, Any]]
) -> dict[str, Any]:
    """``run()``'s figures, plus under ``key`` the companion's CPU milliseconds per request
    (or per file) during its measured part, when there were two readings of it."""
    mark = len(server.companion_readings)
    figures = dict(run())
    readings = server.companion_readings[mark:]
    if len(readings) == 2:
        count = figures.get("requests") or figures.get("files") or 1
        figures[key] = (readings[1] - readings[0]) * 1000 / count
    return figures


def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def twist_argv(twist: str, config: Path, listen: str) -> list[str]:
    return [twist, "--log-format=text", "pypicloud", "--config", str(config), "--listen", listen]


def twist_server(label: str, twist: str, config: Path, **options: Any) -> Server:
    """``twist pypicloud --config CONFIG`` on a free 127.0.0.1 port, in the config's folder;
    ``options`` are :class:`Server`'s (``ready_path``, ``start_timeout``...)."""
    port = free_port()
    return Server(
        label,
        twist_argv(twist, config, f"tcp:port={port}:interface=127.0.0.1"),
        port,
        config.parent,
        env={"TMPDIR": str(config.parent)},
        **options,
    )


#: The storage lines of :func:`server_config`: files in a folder beside the configuration.
FILE_STORAGE_LINES = "pypi.storage = file\nstorage.dir = %(here)s/packages\n"


def server_config(
    password_hashes: dict[str, str],
    db_url: str = "sqlite:///%(here)s/db.sqlite",
    storage_lines: str = FILE_STORAGE_LINES,
    extra_lines: str = "",
) -> str:
    """pypicloud-tx's benchmark configuration: an SQL cache at ``db_url`` (as configparser
    reads it: a literal ``%`` doubled), users in the file, anonymous reads; then
    ``extra_lines``."""
    users = "\n".join(f"user.{u} = {h}" for u, h in password_hashes.items())
    return f"""\
[pypicloud]
{storage_lines}pypi.db = sql
db.url = {db_url}
pypi.auth = config
pypi.default_read = everyone
pypi.default_write = authenticated
auth.admins = {USER}
{users}
{extra_lines}"""


def our_server(
    root: Path,
    twist: str,
    password_hashes: dict[str, str],
    max_mb: int,
    label: str = "pypicloud-tx",
    storage_lines: str = FILE_STORAGE_LINES,
    extra_lines: str = "",
) -> Server:
    """pypicloud-tx in ``root/pypicloud-tx`` with :func:`server_config` and SQLite, taking
    uploads of ``max_mb`` MiB (plus the form around them)."""
    workdir = root / "pypicloud-tx"
    (workdir / "packages").mkdir(parents=True)
    config = workdir / "server.conf"
    config.write_text(
        server_config(
            password_hashes,
            storage_lines=storage_lines,
            extra_lines=f"pypi.max_upload_size = {max_mb + 64}MB\n{extra_lines}",
        )
    )
    return twist_server(label, twist, config)


def reference_server(
    root: Path, venv: Path, password_hashes: dict[str, str], max_mb: int
) -> Server:
    workdir = root / "pypicloud"
    (workdir / "packages").mkdir(parents=True)
    port = free_port()
    users = "\n".join(f"user.{u} = {h}" for u, h in password_hashes.items())
    # pypicloud's hashes use "$" which configparser interpolation would not touch, but "%"
    # would be; none of ours contain one.
    (workdir / "server.ini").write_text(f"""\
[app:main]
use = egg:pypicloud
pyramid.reload_templates = false
pyramid.debug_authorization = false
pypi.storage = file
storage.dir = %(here)s/packages
pypi.db = sql
db.url = sqlite:///%(here)s/db.sqlite
pypi.auth = config
pypi.default_read = everyone
pypi.default_write = authenticated
pypi.fallback = none
auth.admins = {USER}
{users}
session.encrypt_key = {base64.b64encode(os.urandom(32)).decode()}
session.validate_key = {secrets.token_hex(32)}
session.secure = false

[server:main]
use = egg:waitress#main
host = 127.0.0.1
port = {port}
max_request_body_size = {(max_mb + 64) * 1024 * 1024}
""")
    return Server(
        "pypicloud 1.3.12",
        [str(venv / "bin" / "pserve"), str(workdir / "server.ini")],
        port,
        workdir,
        env={"TMPDIR": str(workdir)},
    )


# -- uploads -----------------------------------------------------------------------------


def upload_corpus(server: Server, dists: Sequence[Dist], concurrency: int) -> dict[str, float]:
    """Upload every file through ``POST /`` as twine does; return the figures."""
    local = threading.local()
    auth = basic(USER, PASSWORD)

    def one(dist: Dist) -> int:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        data = dist.path.read_bytes()
        content_type, body = encode_upload(
            twine_fields(
                dist.filename,
                data,
                dist.name,
                dist.version,
                summary=dist.summary,
                requires_python=">=3.8",
                requires_dist=["attrs>=22"],
            ),
            (dist.filename, data),
        )
        try:
            conn.request(
                "POST",
                "/",
                body=body,
                headers={"Content-Type": content_type, "Authorization": auth},
            )
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            local.conn = None
            return 599
        return response.status

    total = sum(d.path.stat().st_size for d in dists)
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        statuses = list(pool.map(one, dists))
    seconds = time.monotonic() - t0
    cpu = server.cpu_seconds() - cpu0
    failed = [d for d, s in zip(dists, statuses, strict=True) if s != 200]
    retried_ok = 0
    if failed:
        log(
            f"{server.label}: {len(failed)} uploads failed, statuses "
            f"{sorted(set(s for s in statuses if s != 200))}; retrying them one at a time"
        )
        # Not timed: the corpus must be complete for the read benchmarks.
        retried_ok = sum(one(d) == 200 for d in failed)
    return {
        "files": len(dists),
        "bytes": total,
        "seconds": seconds,
        "failed": len(failed),
        "failed_after_retry": len(failed) - retried_ok,
        "files_per_s": len(dists) / seconds,
        "mb_per_s": total / seconds / 1e6,
        "cpu_ms_per_file": cpu * 1000 / len(dists),
    }


def upload_big(server: Server, filename: str, path: Path) -> dict[str, float]:
    """Stream one big wheel as a twine-shaped multipart body; sample the server's memory."""
    sha256, md5, blake = (
        hashlib.sha256(),
        hashlib.md5(usedforsecurity=False),
        hashlib.blake2b(digest_size=32),
    )
    with path.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            sha256.update(block)
            md5.update(block)
            blake.update(block)
    fields = [
        (":action", "file_upload"),
        ("protocol_version", "1"),
        ("metadata_version", "2.1"),
        ("name", "bench-big"),
        ("version", "1.0.0"),
        ("filetype", "bdist_wheel"),
        ("pyversion", "py3"),
        ("md5_digest", md5.hexdigest()),
        ("sha256_digest", sha256.hexdigest()),
        ("blake2_256_digest", blake.hexdigest()),
    ]
    boundary = secrets.token_hex(16)
    # Encode the form around an empty placeholder, then split it where the file goes.
    content_type, framed = encode_upload(fields, (filename, b"\0PLACEHOLDER\0"), boundary)
    head, tail = framed.split(b"\0PLACEHOLDER\0")
    size = path.stat().st_size
    length = len(head) + size + len(tail)

    peak_sampled = [server.rss_mb()]
    rss_before = peak_sampled[0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            with contextlib.suppress(OSError):
                peak_sampled[0] = max(peak_sampled[0], server.rss_mb())

    hwm_reset = server.reset_peak()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    status, message = 599, ""
    try:
        conn.putrequest("POST", "/")
        conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(length))
        conn.putheader("Authorization", basic(USER, PASSWORD))
        conn.endheaders()
        conn.send(head)
        with path.open("rb") as f:
            while block := f.read(1024 * 1024):
                conn.send(block)
        conn.send(tail)
        response = conn.getresponse()
        status, message = response.status, response.read()[:300].decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as e:
        message = repr(e)
    finally:
        conn.close()
    seconds = time.monotonic() - t0
    done.set()
    sampler.join(5)
    if status != 200:
        log(f"{server.label}: big upload answered {status}: {message}")
    return {
        "status": status,
        "bytes": length,
        "seconds": seconds,
        "mb_per_s": length / seconds / 1e6,
        "rss_before_mb": rss_before,
        "peak_rss_sampled_mb": peak_sampled[0],
        "peak_rss_hwm_mb": server.status_kb("VmHWM") / 1024 if hwm_reset else -1,
    }


# -- load generation ---------------------------------------------------------------------


WRK_SCRIPT = """\
local paths = {%(paths)s}
local i = 0
%(headers)s
request = function()
  i = i + 1
  if i > #paths then i = 1 end
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d,"max_us":%%d}\\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk(
    server: Server,
    name: str,
    paths: Sequence[str],
    headers: dict[str, str],
    duration: float,
    connections: int,
    warmup: float,
    scratch: Path,
    expect_status: int = 200,
) -> dict[str, float]:
    """Request every path once (each must answer ``expect_status``), run wrk for ``warmup``
    seconds, then for ``duration`` seconds, reading the server's CPU around the last run."""
    script = scratch / f"{name}.lua"
    script.write_text(
        WRK_SCRIPT
        % {
            "paths": ",".join(lua_string(p) for p in paths),
            "headers": "\n".join(
                f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items()
            ),
        }
    )
    url = f"http://127.0.0.1:{server.port}"

    def run(seconds: float) -> dict[str, float]:
        argv = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        match = re.search(r"^WRKJSON (.*)$", out.stdout, re.M)
        if not match:
            raise SystemExit(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
        return json.loads(match.group(1))  # type: ignore[no-any-return]

    touch_all(server, paths, headers, expect_status)
    if warmup > 0:
        run(warmup)
    load_before = os.getloadavg()[0]
    cpu0 = server.cpu_seconds()
    figures = run(duration)
    cpu = server.cpu_seconds() - cpu0
    requests = max(1, figures["requests"])
    seconds = figures["duration_us"] / 1e6
    errors = sum(figures[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {
        "rps": figures["requests"] / seconds,
        "p50_ms": figures["p50_us"] / 1000,
        "p99_ms": figures["p99_us"] / 1000,
        "errors": errors,
        **{k: figures[k] for k in ("connect", "read", "write", "status", "timeout")},
        "requests": figures["requests"],
        "cpu_ms_per_request": cpu * 1000 / requests,
        "server_cpu_util": cpu / seconds,
        "mb_per_s": figures["bytes"] / seconds / 1e6,
        # Other work on this machine skews req/s (less so CPU per request): keep a trace.
        "loadavg_1m_before": load_before,
    }


def touch_all(
    server: Server, paths: Sequence[str], headers: dict[str, str], expect_status: int = 200
) -> None:
    """Request every path once, so the measured run sees only warm (cached) pages; stop on
    any status but ``expect_status`` (a redirect must also say where to)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        for path in paths:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            redirect = 300 <= expect_status < 400
            if response.status != expect_status or (
                redirect and not response.getheader("Location")
            ):
                raise SystemExit(f"{server.label}: {path} answered {response.status}")
    finally:
        conn.close()


def file_paths(server: Server, names: Sequence[str], limit: int) -> list[str]:
    """Download URLs (server-relative) read from the servers' own project pages."""
    paths: list[str] = []
    for name in names:
        if len(paths) >= limit:
            break
        status, _, body = request(server.port, "GET", f"/simple/{name}/")
        if status != 200:
            raise SystemExit(f"{server.label}: /simple/{name}/ answered {status}")
        for href in re.findall(rb'href="([^"#]+)', body):
            # Resolve as a client would: relative links and absolute URLs alike.
            url = urllib.parse.urljoin(
                f"http://127.0.0.1:{server.port}/simple/{name}/", href.decode()
            )
            paths.append(urllib.parse.urlsplit(url).path)
    return paths[:limit]


@dataclass
class Endpoint:
    key: str
    title: str
    paths: list[str]
    headers: dict[str, str]


def endpoints(server: Server, names: list[str]) -> list[Endpoint]:
    pages = [f"/simple/{n}/" for n in names]
    downloads = file_paths(server, names, DOWNLOAD_FILES)
    return [
        Endpoint("index_html", "/simple/ (HTML)", ["/simple/"], {}),
        Endpoint("project_html", "/simple/<name>/ (HTML)", pages, {}),
        Endpoint("project_json", "/simple/<name>/ (JSON Accept)", pages, {"Accept": JSON_ACCEPT}),
        Endpoint(
            "project_html_auth",
            "/simple/<name>/ (HTML, Basic auth)",
            pages,
            {"Authorization": basic(READER, READER_PASSWORD)},
        ),
        Endpoint("download", "file download", downloads, {}),
    ]


def check_endpoint(server: Server, endpoint: Endpoint) -> dict[str, str]:
    """One request per endpoint before the load: status and media type, for the notes."""
    status, headers, body = request(server.port, "GET", endpoint.paths[0], endpoint.headers)
    return {
        "status": str(status),
        "content_type": headers.get("content-type", ""),
        "bytes": str(len(body)),
    }


# -- the run -----------------------------------------------------------------------------


def bench_server(
    server: Server,
    dists: Sequence[Dist],
    names: list[str],
    big: tuple[str, Path] | None,
    args: argparse.Namespace,
    scratch: Path,
) -> dict[str, object]:
    results: dict[str, object] = {"label": server.label}
    log(f"starting {server.label} on port {server.port}")
    server.start()
    try:
        results["rss_idle_mb"] = server.rss_mb()
        log(f"{server.label}: uploading {len(dists)} files, {args.upload_concurrency} at a time")
        results["upload"] = upload_corpus(server, dists, args.upload_concurrency)
        log(f"{server.label}: upload {results['upload']}")
        results["rss_loaded_mb"] = server.rss_mb()
        runs: dict[str, object] = {}
        for endpoint in endpoints(server, names):
            check = check_endpoint(server, endpoint)
            log(f"{server.label}: {endpoint.title}: {check}")
            figures = wrk(
                server,
                endpoint.key,
                endpoint.paths,
                endpoint.headers,
                args.duration,
                args.connections,
                args.warmup,
                scratch,
            )
            figures["check"] = check  # type: ignore[assignment]
            runs[endpoint.key] = figures
            log(
                f"{server.label}: {endpoint.title}: {figures['rps']:.0f} req/s, "
                f"p99 {figures['p99_ms']:.1f} ms, {figures['errors']} errors, "
                f"{figures['cpu_ms_per_request']:.3f} ms CPU/req, load before "
                f"{figures['loadavg_1m_before']:.1f} "
                f"({ {k: figures[k] for k in ('connect', 'read', 'write', 'status', 'timeout')} })"
            )
        results["wrk"] = runs
        results["rss_after_load_mb"] = server.rss_mb()
        if big is not None:
            log(f"{server.label}: uploading {big[0]} ({big[1].stat().st_size / 2**20:.0f} MiB)")
            results["big_upload"] = upload_big(server, *big)
            log(f"{server.label}: big upload {results['big_upload']}")
    finally:
        server.stop()
    return results


def add_wrk_options(p: argparse.ArgumentParser) -> None:
    """``--duration``, ``--warmup`` and ``--connections``: how :func:`wrk` runs."""
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per wrk run")
    p.add_argument("--connections", type=int, default=16)


def add_output_options(p: argparse.ArgumentParser, workdir_help: str | None) -> None:
    """``--workdir`` and ``--keep`` (for :func:`workdir`), and ``--json``."""
    p.add_argument("--workdir", type=Path, default=None, help=workdir_help)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--projects", type=int, default=1000)
    p.add_argument("--versions", type=int, default=3, help="versions per project (wheel+sdist)")
    add_wrk_options(p)
    p.add_argument("--upload-concurrency", type=int, default=8)
    p.add_argument("--big-upload-mb", type=int, default=1024, help="0 skips the big upload")
    p.add_argument("--skip-pypicloud", action="store_true")
    p.add_argument("--pypicloud-venv", type=Path, default=HERE / ".pypicloud-venv")
    p.add_argument("--twist", default=TWIST)
    add_output_options(p, "where to put corpus and server data (default: a new temp dir, removed)")
    return p.parse_args(argv)


def password_hashes() -> dict[str, str]:
    from passlib.hash import sha512_crypt

    return {
        u: sha512_crypt.using(rounds=HASH_ROUNDS).hash(p)
        for u, p in ((USER, PASSWORD), (READER, READER_PASSWORD))
    }


@contextlib.contextmanager
def workdir(path: Path | None, keep: bool, prefix: str = "ppc-bench-") -> Iterator[Path]:
    """``path`` (made now, and kept), else a new temporary folder, removed afterwards unless
    ``keep``."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=False)
        yield path
        return
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        if keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")


def write_json(path: Path, results: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    require_wrk()
    if not args.skip_pypicloud and not (args.pypicloud_venv / "bin" / "pserve").exists():
        raise SystemExit(
            f"no pypicloud venv at {args.pypicloud_venv}: "
            "bash bench/setup_pypicloud.sh (or --skip-pypicloud)"
        )
    with workdir(args.workdir, args.keep) as root:
        t0 = time.monotonic()
        dists = build_corpus(root / "corpus", args.projects, args.versions)
        names = [project_name(i) for i in range(args.projects)]
        log(
            f"corpus: {len(dists)} files, {sum(d.path.stat().st_size for d in dists) / 1e6:.1f} MB"
            f" in {time.monotonic() - t0:.1f}s"
        )
        big = None
        if args.big_upload_mb > 0:
            t0 = time.monotonic()
            big = build_big_wheel(root, args.big_upload_mb)
            log(
                f"big wheel: {big[1].stat().st_size / 2**20:.0f} MiB in "
                f"{time.monotonic() - t0:.1f}s"
            )
        hashes = password_hashes()
        scratch = root / "wrk"
        scratch.mkdir()
        results: dict[str, object] = {
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "files": len(dists),
        }
        ours = our_server(root, args.twist, hashes, args.big_upload_mb)
        results["ours"] = bench_server(ours, dists, names, big, args, scratch)
        if not args.skip_pypicloud:
            ref = reference_server(root, args.pypicloud_venv, hashes, args.big_upload_mb)
            results["pypicloud"] = bench_server(ref, dists, names, big, args, scratch)
        report(results)
        if args.json:
            write_json(args.json, results)
    return 0


# -- the report --------------------------------------------------------------------------


def dig(r: Any, *keys: str) -> Any:
    """``r[k1][k2]...``, or ``None`` where a level is missing."""
    for k in keys:
        if not isinstance(r, dict) or k not in r:
            return None
        r = r[k]
    return r


def cell(value: Any, fmt: str) -> str:
    """``value`` formatted, or ``-`` when there is no figure."""
    return fmt.format(value) if isinstance(value, int | float) else "-"


def figure_row(title: str, columns: Sequence[Any], keys: Sequence[str], fmt: str) -> list[str]:
    """A table row: ``title``, then the figure at ``keys`` in each column's results."""
    return [title, *(cell(dig(column, *keys), fmt) for column in columns)]


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        cells = [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        print(" | ".join([r[0].ljust(widths[0]), *cells]))


#: The wrk runs in the report, by key.
REPORTED_RUNS = [
    ("index_html", "/simple/"),
    ("project_html", "/simple/<name>/ HTML"),
    ("project_json", "/simple/<name>/ JSON"),
    ("project_html_auth", "/simple/<name>/ HTML + Basic auth"),
    ("download", "file download"),
]


def report(results: dict[str, object]) -> None:
    ours = results["ours"]
    ref = results.get("pypicloud")
    assert isinstance(ours, dict)
    m = results["machine"]
    assert isinstance(m, dict)
    print(
        f"\nmachine: {m['nproc']} cores, {m['cpu']}, {m['memory_gib']} GiB, "
        f"Python {m['python']}; code {m['commit']}; corpus {results['files']} files; wrk -t1 "
        f"-c{results['args']['connections']} -d{results['args']['duration']}s "  # type: ignore[index]
        "(client and server share the machine)\n"
    )
    cols = ["pypicloud-tx", "pypicloud 1.3.12", "ratio"] if ref else ["pypicloud-tx"]
    # (row title, where the figure is, its format, whether to show ours / theirs)
    spec: list[tuple[str, tuple[str, ...], str, bool]] = []
    for key, title in REPORTED_RUNS:
        spec += [
            (f"{title}: req/s", ("wrk", key, "rps"), "{:,.0f}", True),
            (f"{title}: p99 ms", ("wrk", key, "p99_ms"), "{:.2f}", False),
            (f"{title}: errors", ("wrk", key, "errors"), "{:.0f}", False),
            (f"{title}: server CPU ms/req", ("wrk", key, "cpu_ms_per_request"), "{:.3f}", False),
        ]
    spec += [
        ("corpus upload: files/s", ("upload", "files_per_s"), "{:.1f}", True),
        ("corpus upload: MB/s", ("upload", "mb_per_s"), "{:.2f}", True),
        ("corpus upload: failures (first try)", ("upload", "failed"), "{:.0f}", False),
        ("corpus upload: server CPU ms/file", ("upload", "cpu_ms_per_file"), "{:.1f}", False),
        ("big upload: status", ("big_upload", "status"), "{:.0f}", False),
        ("big upload: MB/s", ("big_upload", "mb_per_s"), "{:.1f}", True),
        ("big upload: peak RSS MB (VmHWM)", ("big_upload", "peak_rss_hwm_mb"), "{:.0f}", False),
        (
            "big upload: peak RSS MB (sampled)",
            ("big_upload", "peak_rss_sampled_mb"),
            "{:.0f}",
            False,
        ),
        ("RSS after corpus + load, MB", ("rss_after_load_mb",), "{:.0f}", False),
    ]
    rows: list[list[str]] = []
    for title, keys, fmt, ratio in spec:
        a, b = dig(ours, *keys), dig(ref, *keys)
        cells = [title, cell(a, fmt)]
        if ref:
            cells += [cell(b, fmt), f"{a / b:.1f}x" if ratio and a and b else ""]
        rows.append(cells)
    print_table(["", *cols], rows)

    print(
        "\nreq/s is what one wrk thread got from a server sharing 2 cores with it; other "
        "processes on the machine lower it (see loadavg_1m_before in --json). CPU per request "
        "is the steadier figure."
    )
    print("\ntargets:")
    for line in targets(ours, ref):
        print("  " + line)


def targets(ours: dict[str, Any], ref: object) -> list[str]:
    lines = []
    for key, title in [
        ("project_html", "/simple/<name>/ HTML"),
        ("project_json", "/simple/<name>/ JSON"),
        ("index_html", "/simple/"),
    ]:
        a, errs = dig(ours, "wrk", key, "rps"), dig(ours, "wrk", key, "errors")
        b = dig(ref, "wrk", key, "rps")
        if b:
            ok = a / b >= SPEEDUP_TARGET and not errs
            lines.append(
                f"{'MET ' if ok else 'MISS'} {title}: {a / b:.1f}x pypicloud's req/s "
                f"(target >= {SPEEDUP_TARGET:.0f}x), {errs:.0f} errors"
            )
    for key, title in [("project_html", "HTML"), ("project_json", "JSON")]:
        cpu = dig(ours, "wrk", key, "cpu_ms_per_request")
        ok = cpu <= CPU_PER_PAGE_TARGET_MS
        lines.append(
            f"{'MET ' if ok else 'MISS'} server CPU per project page ({title}): "
            f"{cpu:.3f} ms (target <= {CPU_PER_PAGE_TARGET_MS} ms)"
        )
    anon, cred = (
        dig(ours, "wrk", "project_html", "rps"),
        dig(ours, "wrk", "project_html_auth", "rps"),
    )
    ok = cred >= anon * (1 - CREDENTIALED_TOLERANCE)
    lines.append(
        f"{'MET ' if ok else 'MISS'} credentialed client: {cred / anon:.0%} of anonymous "
        f"req/s (target >= {1 - CREDENTIALED_TOLERANCE:.0%})"
    )
    return lines


if __name__ == "__main__":
    sys.exit(main())
