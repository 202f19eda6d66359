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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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


# -- servers -----------------------------------------------------------------------------


@dataclass
class Server:
    label: str
    argv: list[str]
    port: int
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        logfile = open(self.workdir / "server.log", "wb")  # noqa: SIM115 - closed with proc
        self.proc = subprocess.Popen(
            self.argv,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.label} exited at start; see {self.workdir}/server.log")
            with contextlib.suppress(OSError):
                status, _, _ = request(self.port, "GET", "/simple/", timeout=5)
                if status == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"{self.label} did not answer within {START_TIMEOUT}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 of stat; fields[0] here is field 3 (state).
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

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


def our_server(root: Path, twist: str, password_hashes: dict[str, str], max_mb: int) -> Server:
    workdir = root / "pypicloud-tx"
    (workdir / "packages").mkdir(parents=True)
    port = free_port()
    users = "\n".join(f"user.{u} = {h}" for u, h in password_hashes.items())
    (workdir / "server.conf").write_text(f"""\
[pypicloud]
pypi.storage = file
storage.dir = %(here)s/packages
pypi.db = sql
db.url = sqlite:///%(here)s/db.sqlite
pypi.auth = config
pypi.default_read = everyone
pypi.default_write = authenticated
auth.admins = {USER}
{users}
pypi.max_upload_size = {max_mb + 64}MB
""")
    return Server(
        "pypicloud-tx",
        [
            twist,
            "--log-format=text",
            "pypicloud",
            "--config",
            str(workdir / "server.conf"),
            "--listen",
            f"tcp:port={port}:interface=127.0.0.1",
        ],
        port,
        workdir,
        env={"TMPDIR": str(workdir)},
    )


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
) -> dict[str, float]:
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

    touch_all(server, paths, headers)
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


def touch_all(server: Server, paths: Sequence[str], headers: dict[str, str]) -> None:
    """Request every path once, so the measured run sees only warm (cached) pages."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        for path in paths:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--projects", type=int, default=1000)
    p.add_argument("--versions", type=int, default=3, help="versions per project (wheel+sdist)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per wrk run")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--upload-concurrency", type=int, default=8)
    p.add_argument("--big-upload-mb", type=int, default=1024, help="0 skips the big upload")
    p.add_argument("--skip-pypicloud", action="store_true")
    p.add_argument("--pypicloud-venv", type=Path, default=HERE / ".pypicloud-venv")
    p.add_argument("--twist", default=str(REPO / ".venv" / "bin" / "twist"))
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where to put corpus and server data (default: a new temp dir, removed)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    return p.parse_args(argv)


def password_hashes() -> dict[str, str]:
    from passlib.hash import sha512_crypt

    return {
        u: sha512_crypt.using(rounds=HASH_ROUNDS).hash(p)
        for u, p in ((USER, PASSWORD), (READER, READER_PASSWORD))
    }


@contextlib.contextmanager
def workdir(args: argparse.Namespace) -> Iterator[Path]:
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=False)
        yield args.workdir
        return
    root = Path(tempfile.mkdtemp(prefix="ppc-bench-"))
    try:
        yield root
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    if not args.skip_pypicloud and not (args.pypicloud_venv / "bin" / "pserve").exists():
        raise SystemExit(
            f"no pypicloud venv at {args.pypicloud_venv}: "
            "bash bench/setup_pypicloud.sh (or --skip-pypicloud)"
        )
    with workdir(args) as root:
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
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


def machine() -> dict[str, str]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "commit": commit,
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory_gib": f"{int(mem) / 2**20:.1f}",
        "python": sys.version.split()[0],
    }


# -- the report --------------------------------------------------------------------------


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
    rows: list[list[str]] = []

    def row(title: str, a: float | None, b: float | None, fmt: str, ratio: bool = True) -> None:
        cells = [title, fmt.format(a) if a is not None else "-"]
        if ref:
            cells.append(fmt.format(b) if b is not None else "-")
            cells.append(f"{a / b:.1f}x" if ratio and a and b else "")
        rows.append(cells)

    def get(r: object, *keys: str) -> float | None:
        for k in keys:
            if not isinstance(r, dict) or k not in r:
                return None
            r = r[k]
        return r  # type: ignore[return-value]

    for key, title in [
        ("index_html", "/simple/"),
        ("project_html", "/simple/<name>/ HTML"),
        ("project_json", "/simple/<name>/ JSON"),
        ("project_html_auth", "/simple/<name>/ HTML + Basic auth"),
        ("download", "file download"),
    ]:
        row(f"{title}: req/s", get(ours, "wrk", key, "rps"), get(ref, "wrk", key, "rps"), "{:,.0f}")
        row(
            f"{title}: p99 ms",
            get(ours, "wrk", key, "p99_ms"),
            get(ref, "wrk", key, "p99_ms"),
            "{:.2f}",
            ratio=False,
        )
        row(
            f"{title}: errors",
            get(ours, "wrk", key, "errors"),
            get(ref, "wrk", key, "errors"),
            "{:.0f}",
            ratio=False,
        )
        row(
            f"{title}: server CPU ms/req",
            get(ours, "wrk", key, "cpu_ms_per_request"),
            get(ref, "wrk", key, "cpu_ms_per_request"),
            "{:.3f}",
            ratio=False,
        )
    row(
        "corpus upload: files/s",
        get(ours, "upload", "files_per_s"),
        get(ref, "upload", "files_per_s"),
        "{:.1f}",
    )
    row(
        "corpus upload: MB/s",
        get(ours, "upload", "mb_per_s"),
        get(ref, "upload", "mb_per_s"),
        "{:.2f}",
    )
    row(
        "corpus upload: failures (first try)",
        get(ours, "upload", "failed"),
        get(ref, "upload", "failed"),
        "{:.0f}",
        ratio=False,
    )
    row(
        "corpus upload: server CPU ms/file",
        get(ours, "upload", "cpu_ms_per_file"),
        get(ref, "upload", "cpu_ms_per_file"),
        "{:.1f}",
        ratio=False,
    )
    row(
        "big upload: status",
        get(ours, "big_upload", "status"),
        get(ref, "big_upload", "status"),
        "{:.0f}",
        ratio=False,
    )
    row(
        "big upload: MB/s",
        get(ours, "big_upload", "mb_per_s"),
        get(ref, "big_upload", "mb_per_s"),
        "{:.1f}",
    )
    row(
        "big upload: peak RSS MB (VmHWM)",
        get(ours, "big_upload", "peak_rss_hwm_mb"),
        get(ref, "big_upload", "peak_rss_hwm_mb"),
        "{:.0f}",
        ratio=False,
    )
    row(
        "big upload: peak RSS MB (sampled)",
        get(ours, "big_upload", "peak_rss_sampled_mb"),
        get(ref, "big_upload", "peak_rss_sampled_mb"),
        "{:.0f}",
        ratio=False,
    )
    row(
        "RSS after corpus + load, MB",
        get(ours, "rss_after_load_mb"),
        get(ref, "rss_after_load_mb"),
        "{:.0f}",
        ratio=False,
    )

    header = ["", *cols]
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        cells = [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        print(" | ".join([r[0].ljust(widths[0]), *cells]))

    print(
        "\nreq/s is what one wrk thread got from a server sharing 2 cores with it; other "
        "processes on the machine lower it (see loadavg_1m_before in --json). CPU per request "
        "is the steadier figure."
    )
    print("\ntargets:")
    for line in targets(ours, ref, get):
        print("  " + line)


def targets(ours: dict, ref: object, get) -> list[str]:  # type: ignore[no-untyped-def,type-arg]
    lines = []
    for key, title in [
        ("project_html", "/simple/<name>/ HTML"),
        ("project_json", "/simple/<name>/ JSON"),
        ("index_html", "/simple/"),
    ]:
        a, errs = get(ours, "wrk", key, "rps"), get(ours, "wrk", key, "errors")
        b = get(ref, "wrk", key, "rps")
        if b:
            ok = a / b >= SPEEDUP_TARGET and not errs
            lines.append(
                f"{'MET ' if ok else 'MISS'} {title}: {a / b:.1f}x pypicloud's req/s "
                f"(target >= {SPEEDUP_TARGET:.0f}x), {errs:.0f} errors"
            )
    for key, title in [("project_html", "HTML"), ("project_json", "JSON")]:
        cpu = get(ours, "wrk", key, "cpu_ms_per_request")
        ok = cpu <= CPU_PER_PAGE_TARGET_MS
        lines.append(
            f"{'MET ' if ok else 'MISS'} server CPU per project page ({title}): "
            f"{cpu:.3f} ms (target <= {CPU_PER_PAGE_TARGET_MS} ms)"
        )
    anon, cred = (
        get(ours, "wrk", "project_html", "rps"),
        get(ours, "wrk", "project_html_auth", "rps"),
    )
    ok = cred >= anon * (1 - CREDENTIALED_TOLERANCE)
    lines.append(
        f"{'MET ' if ok else 'MISS'} credentialed client: {cred / anon:.0%} of anonymous "
        f"req/s (target >= {1 - CREDENTIALED_TOLERANCE:.0%})"
    )
    return lines


if __name__ == "__main__":
    sys.exit(main())
