#!/usr/bin/env python3
"""Downloads and uploads with S3 storage (SeaweedFS) next to the file storage, on this machine.

    .venv/bin/python bench/storage.py [--projects 200] [--sizes 100KB,10MB] [--files-per-size 8]
                                      [--duration 10] [--connections 16] [--big-upload-mb 1024]
                                      [--json FILE]

What it does, one server at a time (never two at once, so they do not compete):

1. builds the files: ``--projects`` x ``--versions`` x (wheel + sdist) small real archives
   (``bench/run.py``'s corpus, about 1 KB each), ``--files-per-size`` wheels of each
   ``--sizes`` (one stored random member), and one ``--big-upload-mb`` MiB wheel on disk;
2. **file storage** (``bench/run.py``'s server configuration as it is): starts
   ``twist pypicloud``, uploads the small files through the upload API (twine's form,
   ``--upload-concurrency`` at a time) and times it, then the sized wheels, then measures
   downloads of each size class with ``wrk`` (the server streams every file), and last streams
   the big wheel from disk while sampling the server's RSS and reading its high-water mark;
3. **S3, redirect mode**: the same configuration with ``pypi.storage = s3`` on a bucket of its
   own on the SeaweedFS S3 server (path-style addressing, no ``storage.dir``); the same
   uploads, then downloads answered with a 302 to a presigned URL (what the server pays: the
   302 itself; each size class is checked once by following the redirect and comparing the
   bytes), then the big upload;
4. **S3, stream mode**: a server with ``pypi.stream_files = true`` on that bucket and a new,
   empty cache (so its start-up includes filling the cache from the bucket); downloads of each
   size class, whole files streamed through the server;
5. removes the bucket (also when something failed).

Downloads are ``GET /api/package/<name>/<file>``, one ``wrk -t1`` run per size class rotating
over its files, after every file was requested once and a ``--warmup`` run; meanwhile a probe
sends ``GET /ping`` every 50 ms and records how long the server kept it waiting.  Server CPU per
request is ``utime + stime`` of the server from ``/proc`` around the measured run; the S3
server's CPU is read likewise when its process is found (``--s3-pid``, else the pid file of
``tests/services.sh``): other users of that S3 server inflate it.

S3 settings come from ``PPC_TEST_S3_URL``, ``PPC_TEST_S3_ACCESS_KEY`` and
``PPC_TEST_S3_SECRET_KEY``, else from ``bash tests/services.sh env seaweedfs``.  Only 127.0.0.1
is contacted; every wait is bounded.  It prints two tables; ``--json FILE`` writes every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.client
import os
import re
import secrets
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from bench.run import (  # noqa: E402
    FILE_STORAGE_LINES,
    TWIST,
    Dist,
    Server,
    add_output_options,
    add_wrk_options,
    build_big_wheel,
    build_corpus,
    cell,
    companion_figures,
    dig,
    figure_row,
    log,
    machine,
    our_server,
    password_hashes,
    print_table,
    process_cpu_seconds,
    recorded_pid,
    request,
    require_wrk,
    service_settings,
    upload_big,
    upload_corpus,
    workdir,
    write_json,
    wrk,
)
from tests.distfactory import make_wheel  # noqa: E402
from tests.s3buckets import raw_client, remove_bucket  # noqa: E402

T = TypeVar("T")

S3_VARIABLES = ("PPC_TEST_S3_URL", "PPC_TEST_S3_ACCESS_KEY", "PPC_TEST_S3_SECRET_KEY")
LOCAL_HOSTS = ("127.0.0.1", "localhost")
SUMMARY = "Storage benchmark project"
SMALL = "small"
#: Seconds between the end of one ``/ping`` probe and the next.
PROBE_INTERVAL = 0.05
#: The figure of the S3 server's CPU per request (or per uploaded file).
S3_CPU = "s3_cpu_ms_per_request"
#: The three ways a download is served, the columns of the download table.
MODES = (
    ("file", "file storage (streamed)"),
    ("s3_redirect", "S3, redirect (302)"),
    ("s3_stream", "S3, stream_files"),
)
_SIZE = re.compile(r"^\s*(\d+)\s*(B|K|KB|KIB|M|MB|MIB|G|GB|GIB)?\s*$", re.I)


# -- the S3 server -----------------------------------------------------------------------


@dataclass(frozen=True)
class S3Service:
    url: str
    access_key: str
    secret_key: str
    #: The S3 server's process, to read its CPU time; ``None`` when not found.
    pid: int | None

    def client_options(self) -> dict[str, str]:
        """Connection options as ``tests/s3buckets.raw_client`` takes them."""
        return {
            "endpoint_url": self.url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": "us-east-1",
            "addressing_style": "path",
        }

    def storage_lines(self, bucket: str) -> str:
        """The ``storage.*`` lines of a server configuration (``%`` escaped for configparser)."""
        values = {
            "bucket": bucket,
            **self.client_options(),
        }
        lines = ["pypi.storage = s3"]
        lines += [f"storage.{k} = {v.replace('%', '%%')}" for k, v in values.items()]
        return "\n".join(lines) + "\n"


def find_s3(pid: int | None) -> S3Service:
    """The S3 server from the environment, else from ``tests/services.sh env seaweedfs``."""
    found = service_settings(S3_VARIABLES, ["seaweedfs"])
    missing = [k for k in S3_VARIABLES if not found.get(k)]
    if missing:
        raise SystemExit(
            f"no S3 server: set {', '.join(missing)} (bash tests/services.sh start seaweedfs)"
        )
    url = found["PPC_TEST_S3_URL"].rstrip("/")
    if urllib.parse.urlsplit(url).hostname not in LOCAL_HOSTS:
        raise SystemExit(f"PPC_TEST_S3_URL must be on 127.0.0.1, not {url}")
    if pid is None:
        pid = seaweed_pid(url)
    return S3Service(url, found["PPC_TEST_S3_ACCESS_KEY"], found["PPC_TEST_S3_SECRET_KEY"], pid)


def seaweed_pid(url: str) -> int | None:
    """The SeaweedFS process ``tests/services.sh`` started for ``url``, if it is running."""
    pid = recorded_pid("seaweedfs")
    if pid is None:
        return None
    port = urllib.parse.urlsplit(url).port
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if any(a.endswith(b"weed") for a in argv[:1]) and f"-s3.port={port}".encode() in argv:
        return pid
    return None


# -- servers -----------------------------------------------------------------------------


def storage_server(
    root: Path,
    label: str,
    twist: str,
    hashes: dict[str, str],
    max_mb: int,
    storage_lines: str = FILE_STORAGE_LINES,
    extra_lines: str = "",
    companion: int | None = None,
) -> Server:
    """``bench/run.py``'s server and configuration in ``root``, with other storage lines;
    each reading of its CPU also reads the S3 server's (``companion``), so a figure that
    ``wrk`` or ``upload_corpus`` takes around its measured part comes with the S3 server's
    CPU for that very part (see ``companion_figures``)."""
    server = our_server(
        root,
        twist,
        hashes,
        max_mb,
        label=label,
        storage_lines=storage_lines,
        extra_lines=extra_lines,
    )
    if companion is not None:
        server.companion_cpu = functools.partial(process_cpu_seconds, companion)
    return server


@dataclass
class Probe:
    """Latencies of ``GET /ping`` sent one at a time while a download run goes on: how long
    the server's one reactor thread leaves other requests waiting."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0

    def figures(self) -> dict[str, float]:
        if not self.latencies:
            return {"ping_count": 0, "ping_failures": self.failures}
        ordered = sorted(self.latencies)
        return {
            "ping_count": len(ordered),
            "ping_failures": self.failures,
            "ping_p50_ms": ordered[len(ordered) // 2] * 1000,
            "ping_p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
            "ping_max_ms": ordered[-1] * 1000,
        }


@contextlib.contextmanager
def probing(server: Server) -> Iterator[Probe]:
    """Send ``GET /ping`` every ``PROBE_INTERVAL`` seconds (after the previous answer) for the
    span of the context, which covers ``wrk``'s warm-up and measured runs."""
    probe = Probe()
    done = threading.Event()

    def run() -> None:
        while not done.wait(PROBE_INTERVAL):
            t0 = time.monotonic()
            try:
                status, _, _ = request(server.port, "GET", "/ping", timeout=30)
            except (OSError, http.client.HTTPException):
                status = 0
            if status == 200:
                probe.latencies.append(time.monotonic() - t0)
            else:
                probe.failures += 1

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield probe
    finally:
        done.set()
        thread.join(60)


# -- files -------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``100KB``, ``10MB``, ``512``: bytes, binary multiples (KB = 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 100KB or 10MB")
    unit = (match.group(2) or "B").upper()[:1]
    return int(match.group(1)) * {"B": 1, "K": 2**10, "M": 2**20, "G": 2**30}[unit]


def size_label(size: int) -> str:
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if size >= 1024**power and size % 1024**power == 0:
            return f"{size // 1024**power} {unit}"
    return f"{size} B"


def build_sized(root: Path, sizes: Sequence[int], per_size: int) -> dict[str, list[Dist]]:
    """``per_size`` real wheels for each size, each with one random member of that size."""
    root.mkdir(parents=True, exist_ok=True)
    classes = {}
    for size in sizes:
        key = size_label(size).replace(" ", "").lower()
        dists = []
        for i in range(per_size):
            name = f"bench-size-{key}-{i:02d}"
            filename, data = make_wheel(
                name,
                "1.0.0",
                summary=SUMMARY,
                requires_python=">=3.8",
                requires_dist=["attrs>=22"],
                extra_files={f"{name.replace('-', '_')}/payload.bin": os.urandom(size)},
            )
            path = root / filename
            path.write_bytes(data)
            dists.append(Dist(name, "1.0.0", filename, path, SUMMARY))
        classes[key] = dists
    return classes


def class_title(key: str, dists: Sequence[Dist]) -> str:
    """``400 files of ~0.8 KB`` (the corpus), ``8 wheels of ~10.5 MB`` (a size class)."""
    mean = sum(d.path.stat().st_size for d in dists) / len(dists)
    what = "files" if key == SMALL else "wheels"
    if mean >= 1e6:
        amount = f"{mean / 1e6:.1f} MB"
    else:
        amount = f"{mean / 1e3:.0f} KB" if mean >= 1e4 else f"{mean / 1e3:.1f} KB"
    return f"{len(dists)} {what} of ~{amount}"


def api_path(dist: Dist) -> str:
    return f"/api/package/{dist.name}/{dist.filename}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def check_download(server: Server, dist: Dist, redirect: bool) -> dict[str, Any]:
    """Download one file as a client would (following a redirect) and compare the bytes."""
    status, headers, body = request(server.port, "GET", api_path(dist), timeout=120)
    check: dict[str, Any] = {"status": status}
    if redirect:
        location = headers.get("location", "")
        target = urllib.parse.urlsplit(location)
        if status != 302 or target.hostname not in LOCAL_HOSTS or not target.port:
            raise SystemExit(f"{server.label}: {api_path(dist)} answered {status} {location!r}")
        # The query holds the signature: keep only where it points.
        check["location"] = f"{target.scheme}://{target.netloc}{target.path}"
        check["redirect_bytes"] = len(body)
        status, headers, body = request(
            target.port, "GET", f"{target.path}?{target.query}", timeout=120
        )
        check["followed_status"] = status
    if status != 200 or hashlib.sha256(body).hexdigest() != sha256_file(dist.path):
        raise SystemExit(f"{server.label}: {api_path(dist)} did not give back the file")
    check["content_type"] = headers.get("content-type", "")
    check["bytes"] = len(body)
    return check


# -- the run -----------------------------------------------------------------------------


def bench_server(
    server: Server,
    mode: str,
    classes: dict[str, list[Dist]],
    big: tuple[str, Path] | None,
    args: argparse.Namespace,
    scratch: Path,
    uploads: bool,
) -> dict[str, Any]:
    """Start ``server``; optionally upload everything; measure downloads; stop it."""
    results: dict[str, Any] = {"label": server.label, "mode": mode}
    log(f"starting {server.label} on port {server.port}")
    t0 = time.monotonic()
    try:
        server.start()
    except SystemExit:
        # The work directory (and the log) may be removed on the way out: show its end now.
        with contextlib.suppress(OSError):
            lines = (server.workdir / "server.log").read_text(errors="replace").splitlines()
            print("\n".join(lines[-30:]), file=sys.stderr)
        raise
    results["start_seconds"] = time.monotonic() - t0
    try:
        results["rss_idle_mb"] = server.rss_mb()
        if uploads:
            results["upload"] = {}
            for key, dists in classes.items():
                log(f"{server.label}: uploading {len(dists)} {key} files")
                figures = companion_figures(
                    server,
                    S3_CPU,
                    functools.partial(upload_corpus, server, dists, args.upload_concurrency),
                )
                results["upload"][key] = figures
                log(f"{server.label}: upload {key}: {figures}")
                if figures["failed_after_retry"]:
                    raise SystemExit(f"{server.label}: {key} files could not be uploaded")
        results["download"] = {}
        redirect = mode == "s3_redirect"
        for key, dists in classes.items():
            check = check_download(server, dists[0], redirect)
            log(f"{server.label}: download {key}: {check}")
            paths = [api_path(d) for d in dists]
            with probing(server) as probe:
                figures = companion_figures(
                    server,
                    S3_CPU,
                    functools.partial(
                        wrk,
                        server,
                        f"{mode}-{key}",
                        paths,
                        {},
                        args.duration,
                        args.connections,
                        args.warmup,
                        scratch,
                        # A redirect answers 302 with a Location.
                        expect_status=302 if redirect else 200,
                    ),
                )
            figures.update(probe.figures())
            figures["bytes_per_response"] = (
                figures["mb_per_s"] * 1e6 / figures["rps"] if figures["rps"] else 0
            )
            figures["check"] = check
            results["download"][key] = figures
            log(
                f"{server.label}: download {key}: {figures['rps']:.0f} req/s, "
                f"{figures['mb_per_s']:.1f} MB/s, p99 {figures['p99_ms']:.1f} ms, "
                f"{figures['errors']} errors, {figures['cpu_ms_per_request']:.3f} ms CPU/req, "
                f"load before {figures['loadavg_1m_before']:.1f}"
            )
        results["rss_after_downloads_mb"] = server.rss_mb()
        if uploads and big is not None:
            log(f"{server.label}: uploading {big[0]} ({big[1].stat().st_size / 2**20:.0f} MiB)")
            load_before, s3_before = os.getloadavg()[0], companion_cpu(server)
            results["big_upload"] = upload_big(server, *big)
            s3_after = companion_cpu(server)
            if s3_before is not None and s3_after is not None:
                results["big_upload"]["s3_cpu_seconds"] = s3_after - s3_before
            results["big_upload"]["loadavg_1m_before"] = load_before
            log(f"{server.label}: big upload {results['big_upload']}")
    finally:
        server.stop()
    return results


def companion_cpu(server: Server) -> float | None:
    if server.companion_cpu is None:
        return None
    with contextlib.suppress(OSError):
        return server.companion_cpu()
    return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--projects", type=int, default=200, help="small-file projects")
    p.add_argument("--versions", type=int, default=1, help="versions per project (wheel+sdist)")
    p.add_argument(
        "--sizes",
        type=lambda t: [parse_size(s) for s in t.split(",") if s.strip()],
        default=[100 * 1024, 10 * 1024**2],
        help="download sizes, comma-separated (default 100KB,10MB)",
    )
    p.add_argument("--files-per-size", type=int, default=8)
    add_wrk_options(p)
    p.add_argument("--upload-concurrency", type=int, default=8)
    p.add_argument("--big-upload-mb", type=int, default=1024, help="0 skips the big upload")
    p.add_argument("--s3-pid", type=int, default=None, help="the S3 server's pid (CPU figures)")
    p.add_argument("--twist", default=TWIST)
    add_output_options(p, "where to put files and server data (default: a new temp dir, removed)")
    args = p.parse_args(argv)
    if args.projects < 1 or args.versions < 1 or args.files_per_size < 1:
        p.error("--projects, --versions and --files-per-size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    require_wrk()
    s3 = find_s3(args.s3_pid)
    client = raw_client(s3.client_options())
    try:
        client.list_buckets()
    except Exception as e:
        raise SystemExit(f"the S3 server at {s3.url} does not answer: {type(e).__name__}") from e
    max_mb = max([args.big_upload_mb, *(s // 2**20 + 1 for s in args.sizes)])
    with workdir(args.workdir, args.keep) as root:
        t0 = time.monotonic()
        classes = {SMALL: build_corpus(root / "corpus", args.projects, args.versions)}
        classes.update(build_sized(root / "sized", args.sizes, args.files_per_size))
        log(
            "files: "
            + ", ".join(
                f"{k}: {len(v)} x {sum(d.path.stat().st_size for d in v) / len(v) / 1e3:.1f} KB"
                for k, v in classes.items()
            )
            + f" in {time.monotonic() - t0:.1f}s"
        )
        big = None
        if args.big_upload_mb > 0:
            t0 = time.monotonic()
            big = build_big_wheel(root, args.big_upload_mb)
            megabytes = big[1].stat().st_size / 2**20
            log(f"big wheel: {megabytes:.0f} MiB in {time.monotonic() - t0:.1f}s")
        hashes = password_hashes()
        scratch = root / "wrk"
        scratch.mkdir()
        bucket = "ppc-bench-" + secrets.token_hex(8)
        results: dict[str, Any] = {
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "files": {k: len(v) for k, v in classes.items()},
            "titles": {k: class_title(k, v) for k, v in classes.items()},
            "file_bytes": {
                k: sum(d.path.stat().st_size for d in v) / len(v) for k, v in classes.items()
            },
            "s3": {"url": s3.url, "bucket": bucket, "s3_pid_found": s3.pid is not None},
            "loadavg_start": os.getloadavg(),
        }
        file_server = storage_server(root / "file", "file storage", args.twist, hashes, max_mb)
        results["file"] = bench_server(
            file_server, "file", classes, big, args, scratch, uploads=True
        )
        try:
            redirect_server = storage_server(
                root / "s3-redirect",
                "S3 storage, redirect",
                args.twist,
                hashes,
                max_mb,
                storage_lines=s3.storage_lines(bucket),
                companion=s3.pid,
            )
            results["s3_redirect"] = bench_server(
                redirect_server, "s3_redirect", classes, big, args, scratch, uploads=True
            )
            stream_server = storage_server(
                root / "s3-stream",
                "S3 storage, stream_files",
                args.twist,
                hashes,
                max_mb,
                storage_lines=s3.storage_lines(bucket),
                extra_lines="pypi.stream_files = true\n",
                companion=s3.pid,
            )
            results["s3_stream"] = bench_server(
                stream_server, "s3_stream", classes, None, args, scratch, uploads=False
            )
        finally:
            log(f"removing the bucket {bucket}")
            remove_bucket(client, bucket)
        results["loadavg_end"] = os.getloadavg()
        report(results)
        if args.json:
            write_json(args.json, results)
    return 0


# -- the report --------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    m, a = results["machine"], results["args"]
    print(
        f"\nmachine: {m['nproc']} cores, {m['cpu']}, {m['memory_gib']} GiB, Python "
        f"{m['python']}; code {m['commit']}; S3: SeaweedFS at {results['s3']['url']}; "
        f"wrk -t1 -c{a['connections']} -d{a['duration']}s (client, server and S3 server share "
        f"the machine); 1-minute load {results['loadavg_start'][0]:.1f} at the start, "
        f"{results['loadavg_end'][0]:.1f} at the end\n"
    )
    counts = results["files"]

    def title(key: str) -> str:
        return str(results["titles"][key])

    downloads = [results.get(mode) for mode, _ in MODES]
    uploads = [results.get(mode) for mode in ("file", "s3_redirect")]
    rows: list[list[str]] = []
    for key in counts:
        for figure, fmt, label in [
            ("rps", "{:,.0f}", "req/s"),
            ("mb_per_s", "{:,.1f}", "MB/s (response bytes)"),
            ("p50_ms", "{:.2f}", "p50 ms"),
            ("p99_ms", "{:.2f}", "p99 ms"),
            ("errors", "{:.0f}", "errors"),
            ("cpu_ms_per_request", "{:.3f}", "server CPU ms/req"),
            ("s3_cpu_ms_per_request", "{:.3f}", "S3 server CPU ms/req"),
            ("ping_p50_ms", "{:.1f}", "/ping alongside: p50 ms"),
            ("ping_p99_ms", "{:.0f}", "/ping alongside: p99 ms"),
        ]:
            rows.append(
                figure_row(f"GET {title(key)}: {label}", downloads, ("download", key, figure), fmt)
            )
    print("downloads, GET /api/package/<name>/<file>:")
    print_table(["", *(t for _, t in MODES)], rows)

    rows = []
    for key in counts:
        for figure, fmt, label in [
            ("files_per_s", "{:,.1f}", "files/s"),
            ("mb_per_s", "{:,.2f}", "MB/s"),
            ("cpu_ms_per_file", "{:.1f}", "server CPU ms/file"),
            ("s3_cpu_ms_per_request", "{:.1f}", "S3 server CPU ms/file"),
            ("failed", "{:.0f}", "failures (first try)"),
        ]:
            rows.append(
                figure_row(
                    f"upload {title(key)}, {a['upload_concurrency']} at a time: {label}",
                    uploads,
                    ("upload", key, figure),
                    fmt,
                )
            )
    big = f"upload one {a['big_upload_mb']} MiB wheel"
    big_figures = [
        ("status", "{:.0f}", "status"),
        ("mb_per_s", "{:.1f}", "MB/s"),
        ("peak_rss_hwm_mb", "{:.0f}", "peak server RSS MB (VmHWM)"),
        ("peak_rss_sampled_mb", "{:.0f}", "peak server RSS MB (sampled)"),
        ("rss_before_mb", "{:.0f}", "server RSS before, MB"),
        ("s3_cpu_seconds", "{:.1f}", "S3 server CPU s"),
    ]
    for figure, fmt, label in big_figures if a["big_upload_mb"] != "0" else []:
        rows.append(figure_row(f"{big}: {label}", uploads, ("big_upload", figure), fmt))
    rows.append(
        figure_row("start-up until /simple/ answers, s", uploads, ("start_seconds",), "{:.1f}")
    )
    print("\nuploads, POST / (twine's form):")
    print_table(["", "file storage", "S3 storage"], rows)
    print(
        f"\nS3 stream server start-up, filling an empty cache from the bucket: "
        f"{cell(dig(results, 's3_stream', 'start_seconds'), '{:.1f}')} s"
    )
    print(
        "\nreq/s and MB/s are what one wrk thread got from a server sharing 2 cores with it, the "
        "S3 server and other work (see loadavg_1m_before in --json); CPU per request is the "
        "steadier figure. The S3 server's CPU counts every client of that server."
    )


if __name__ == "__main__":
    sys.exit(main())
