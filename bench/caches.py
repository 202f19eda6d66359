#!/usr/bin/env python3
"""Compare the caches (SQLite, PostgreSQL, Redis; DynamoDB on moto) with many projects.

    .venv/bin/python bench/caches.py [--projects 10000] [--duration 10]
                                     [--caches sqlite,postgres,redis[,dynamo]] [--json FILE]

What it does:

1. builds one package folder in the file storage's layout -- ``--projects`` projects x one
   real wheel each (``tests/distfactory.py``), stored by ``FileStorage.put`` itself (sidecar
   ``.meta`` record and PEP 658 ``.metadata`` included), several at a time, without a server;
2. for each cache in turn, in a namespace of its own (a SQLite file, a new PostgreSQL
   database, a new Redis key prefix, new DynamoDB table names):

   a. times ``pypicloud-tx rebuild CONFIG`` on the empty cache, then again on the full one
      (wall time of the process, the time the command reports for its own work, and the
      child's CPU time);
   b. starts ``twist pypicloud`` on that full cache and times it until ``/ping`` answers;
   c. runs ``wrk`` (the helper of ``bench/run.py``: every path requested once, a warm-up,
      then the measured run) on ``/simple/<name>/`` rotating over every project name, as
      HTML and as PEP 691 JSON, reading the server's CPU time from ``/proc`` around it;
   d. stops the server, drops the namespace, then starts a server on a second, empty
      namespace and times it until ``/ping`` answers: the server fills an empty cache from
      storage before it listens, so this is start-up plus rebuild as an operator sees it;
   e. drops that namespace too (also when something failed).

``--no-load dynamo`` skips c. for the caches named: moto answers a project page it has not
served yet in about 0.4 s at 10,000 projects (its queries seem to scan the table), and
``bench.run.wrk`` requests every page once before it measures.

It prints a table and ``--json FILE`` writes every figure.  Services come from the
environment or ``bash tests/services.sh env`` (``PPC_TEST_POSTGRES_URL``,
``PPC_TEST_REDIS_URL``, ``PPC_TEST_AWS_URL``); a requested cache whose service is missing
stops the run before anything is measured.  Only 127.0.0.1 is contacted; every wait is bounded.
DynamoDB runs on moto_server, an emulator in Python: its figures say nothing about AWS.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as _dt
import functools
import hashlib
import io
import os
import re
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from bench.run import (  # noqa: E402
    CLK_TCK,
    JSON_ACCEPT,
    TWIST,
    Endpoint,
    Server,
    add_output_options,
    add_wrk_options,
    check_endpoint,
    companion_figures,
    figure_row,
    head_commit,
    log,
    machine,
    postgres_admin,
    print_table,
    proc_stat,
    project_name,
    recorded_pid,
    request,
    require_wrk,
    service_settings,
    twist_server,
    workdir,
    write_json,
    wrk,
)
from tests.distfactory import make_wheel  # noqa: E402

CACHES = ("sqlite", "postgres", "redis", "dynamo")
DEFAULT_CACHES = "sqlite,postgres,redis"
LABELS = {
    "sqlite": "SQLite",
    "postgres": "PostgreSQL",
    "redis": "Redis",
    "dynamo": "DynamoDB (moto emulator)",
}
#: The service each cache needs: environment variable, what it is, ``tests/services.sh`` name.
SERVICES = {
    "postgres": ("PPC_TEST_POSTGRES_URL", "PostgreSQL", "postgres"),
    "redis": ("PPC_TEST_REDIS_URL", "Redis", "redis"),
    "dynamo": ("PPC_TEST_AWS_URL", "moto_server (DynamoDB)", "moto"),
}
#: Configuration namespaces the server also reads from ``PPC_<NAMESPACE>_*`` variables.
CONFIG_ENV = re.compile(r"^PPC_(PYPI|STORAGE|DB|AUTH|SESSION)_")
PUT_THREADS = 8
PROBE_INTERVAL = 0.05
SERVICE_TIMEOUT = 10


# -- services ----------------------------------------------------------------------------


def service_urls(wanted: Sequence[str]) -> dict[str, str]:
    """The URL of each wanted cache's service: from the environment, else from
    ``tests/services.sh env``; exits with a clear message when one is missing."""
    served = [c for c in wanted if c in SERVICES]
    settings = service_settings([SERVICES[c][0] for c in served], [SERVICES[c][2] for c in served])
    found: dict[str, str] = {}
    for cache in served:
        variable, what, name = SERVICES[cache]
        url = settings.get(variable)
        if not url:
            raise SystemExit(
                f"--caches {cache}: {what} is not available: set {variable}, or start it with "
                f'`bash tests/services.sh start {name}` (then `eval "$(bash tests/services.sh '
                'env)"`)'
            )
        if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"{variable} must point at 127.0.0.1 for the benchmark, not {url}")
        found[cache] = url
    return found


def check_reachable(cache: str, url: str) -> None:
    """One cheap request to the service, so a dead one stops the run before the first
    measurement rather than in the middle of it."""
    try:
        if cache == "postgres":
            with postgres_admin(url, SERVICE_TIMEOUT):
                pass
        elif cache == "redis":
            out = subprocess.run(
                [*_redis_cli(url), "PING"], capture_output=True, text=True, timeout=SERVICE_TIMEOUT
            )
            if out.stdout.strip() != "PONG":
                raise OSError(out.stderr.strip() or out.stdout.strip() or "no PONG")
        elif cache == "dynamo":
            _dynamo_admin(url).list_tables(Limit=1)
    except Exception as e:
        variable, what, name = SERVICES[cache]
        raise SystemExit(
            f"--caches {cache}: {what} at {variable}={url} does not answer ({e}); "
            f"`bash tests/services.sh status {name}`"
        ) from None


def _redis_cli(url: str) -> list[str]:
    parts = urlsplit(url)
    argv = ["redis-cli", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    return [*argv, "-n", (parts.path or "/0").lstrip("/") or "0"]


def _dynamo_admin(url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "dynamodb",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(
            connect_timeout=SERVICE_TIMEOUT, read_timeout=60, retries={"max_attempts": 2}
        ),
    )


# -- namespaces: one cache's place on its service ----------------------------------------


@dataclass
class Namespace:
    """Where one cache lives: its config lines, and how to remove it afterwards."""

    describe: str
    config: list[str]
    drop: Callable[[], None]


def new_namespace(cache: str, url: str | None, folder: Path) -> Namespace:
    tag = secrets.token_hex(6)
    if cache == "sqlite":
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "cache.sqlite"

        def drop_file() -> None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{path}{suffix}").unlink()

        return Namespace(str(path), [f"db.url = sqlite:///{path}"], drop_file)
    assert url is not None
    if cache == "postgres":
        from sqlalchemy.engine import make_url

        name = f"ppc_bench_{tag}"
        with postgres_admin(url, SERVICE_TIMEOUT) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop_database() -> None:
            with postgres_admin(url, SERVICE_TIMEOUT) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        db_url = make_url(url).set(database=name).render_as_string(hide_password=False)
        return Namespace(
            f"database {name}", [f"db.url = {db_url.replace('%', '%%')}"], drop_database
        )
    if cache == "redis":
        from tests.redisdb import delete_redis_keys

        prefix = f"ppc-bench:{tag}:"
        return Namespace(
            f"key prefix {prefix}",
            [f"db.url = {url.replace('%', '%%')}", f"db.prefix = {prefix}"],
            lambda: delete_redis_keys(url, prefix),
        )
    if cache == "dynamo":
        namespace = f"ppc-bench-{tag}-"

        def drop_tables() -> None:
            admin = _dynamo_admin(url)
            names: list[str] = []
            kwargs: dict[str, Any] = {}
            for _ in range(1000):  # bounded: 100 names a page
                page = admin.list_tables(**kwargs)
                names.extend(n for n in page["TableNames"] if n.startswith(namespace))
                if "LastEvaluatedTableName" not in page:
                    break
                kwargs["ExclusiveStartTableName"] = page["LastEvaluatedTableName"]
            for table in names:
                admin.delete_table(TableName=table)

        return Namespace(
            f"tables {namespace}*",
            [
                f"db.host = {url}",
                "db.region_name = us-east-1",
                "db.aws_access_key_id = testing",
                "db.aws_secret_access_key = testing",
                f"db.namespace = {namespace}",
            ],
            drop_tables,
        )
    raise ValueError(cache)


DB_CHOICE = {"sqlite": "sql", "postgres": "sql", "redis": "redis", "dynamo": "dynamo"}


def write_config(folder: Path, cache: str, namespace: Namespace, storage: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "server.conf"
    lines = [
        "[pypicloud]",
        "pypi.storage = file",
        f"storage.dir = {storage}",
        f"pypi.db = {DB_CHOICE[cache]}",
        *namespace.config,
        "pypi.auth = config",
        "pypi.default_read = everyone",
        "pypi.fallback = none",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- the package folder ------------------------------------------------------------------


def settled(d: Any) -> Any:
    """The result of a Deferred that has already fired (the storage runs synchronously)."""
    from twisted.python.failure import Failure

    result: list[Any] = []
    d.addBoth(result.append)
    assert result, "the Deferred has not fired"
    if isinstance(result[0], Failure):
        result[0].raiseException()
    return result[0]


def build_storage(folder: Path, projects: int) -> dict[str, float]:
    """``projects`` projects x one wheel each, stored by the file storage itself."""
    from pypicloud_tx.backends._threads import run_synchronously
    from pypicloud_tx.backends.storage.files import FileStorage
    from pypicloud_tx.domain.dists import inspect_distribution
    from pypicloud_tx.domain.models import PackageFile

    storage = FileStorage(str(folder), run_synchronously)
    settled(storage.start())
    start_time = time.time()

    def put(i: int) -> int:
        name = project_name(i)
        filename, data = make_wheel(
            name,
            "1.0.0",
            summary=f"Benchmark project number {i}",
            requires_python=">=3.8",
            requires_dist=["attrs>=22"],
        )
        info = inspect_distribution(io.BytesIO(data), filename)
        assert info.core_metadata is not None
        file = PackageFile(
            name=name,
            version="1.0.0",
            filename=filename,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
            blake2b_256=hashlib.blake2b(data, digest_size=32).hexdigest(),
            upload_time=_dt.datetime.fromtimestamp(start_time + i / 1000, _dt.UTC),
            display_name=info.name,
            summary=info.summary,
            requires_python=info.requires_python,
            metadata_sha256=hashlib.sha256(info.core_metadata).hexdigest(),
            uploader="bench",
            metadata={k: v for k, v in info.fields.items() if v not in (None, "", [], ())},
        )
        settled(storage.put(file, io.BytesIO(data), info.core_metadata, False))
        return len(data)

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(PUT_THREADS) as pool:
        total = sum(pool.map(put, range(projects), chunksize=64))
    seconds = time.monotonic() - t0
    return {"files": projects, "bytes": total, "seconds": seconds}


# -- measurements ------------------------------------------------------------------------


def service_cpu_seconds(pid: int) -> float:
    """CPU seconds of a service process, of its live children (PostgreSQL's backends) and of
    the children it has reaped (``cutime + cstime``)."""
    fields = proc_stat(pid)
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or entry.name == str(pid):
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            child = proc_stat(entry.name)
            if int(child[1]) == pid:
                ticks += int(child[11]) + int(child[12])
    return ticks / CLK_TCK


def service_cpu(cache: str) -> Callable[[], float] | None:
    """Reads the CPU seconds of the cache's service (the process ``tests/services.sh``
    recorded), if it runs here."""
    pid = recorded_pid(SERVICES[cache][2]) if cache in SERVICES else None
    return None if pid is None else functools.partial(service_cpu_seconds, pid)


def make_server(label: str, config: Path, twist: str, start_timeout: float) -> Server:
    """A server on ``config``, ready when ``/ping`` answers (polled every 50 ms), with a
    start timeout of its own: the default, probing ``/simple/`` every 0.2 s for at most
    120 s, would time a render of the whole index too."""
    return twist_server(
        label,
        twist,
        config,
        ready_path="/ping",
        probe_interval=PROBE_INTERVAL,
        start_timeout=start_timeout,
    )


REBUILT = re.compile(r"cache rebuilt: (\d+) files in ([0-9.]+)s")


def cli_rebuild(cli: str, config: Path, timeout: float) -> dict[str, float]:
    """Run ``pypicloud-tx rebuild CONFIG``; its wall time, reported time and CPU time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    try:
        out = subprocess.run(
            [cli, "rebuild", str(config), "--progress-every", "60"],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=config.parent,
        )
    except subprocess.TimeoutExpired:
        raise SystemExit(f"pypicloud-tx rebuild {config} took more than {timeout}s") from None
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    match = REBUILT.search(out.stderr)
    if out.returncode != 0 or not match:
        raise SystemExit(
            f"pypicloud-tx rebuild {config} failed ({out.returncode}):\n{out.stderr[-2000:]}"
        )
    return {
        "wall_s": wall,
        "reported_s": float(match.group(2)),
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "files": int(match.group(1)),
    }


def count_index(server: Server, label: str, expected: int) -> int:
    """How many projects ``/simple/`` lists; stops the run unless that is ``expected``."""
    status, _, body = request(server.port, "GET", "/simple/", timeout=60)
    if status != 200:
        raise SystemExit(f"{server.label}: /simple/ answered {status}")
    listed = body.count(b"<a ")
    if listed != expected:
        raise SystemExit(f"{label}: /simple/ lists {listed} projects, not {expected}")
    return listed


def stop(server: Server) -> None:
    try:
        server.stop()
    except Exception as e:  # never leave a namespace behind because a stop went wrong
        log(f"{server.label}: stopping failed: {e!r}")


def bench_cache(
    cache: str, url: str | None, names: list[str], storage: Path, args: argparse.Namespace
) -> dict[str, Any]:
    label = LABELS[cache]
    root: Path = args.root / cache
    scratch = root / "wrk"
    scratch.mkdir(parents=True)
    results: dict[str, Any] = {"label": label}
    with contextlib.ExitStack() as cleanups:

        def owned(space: Namespace) -> Namespace:
            def drop() -> None:
                try:
                    space.drop()
                    log(f"{label}: dropped {space.describe}")
                except Exception as e:
                    log(f"{label}: could not drop {space.describe}: {e!r}")

            cleanups.callback(drop)
            return space

        # a. rebuild with the command-line tool, on an empty then on a full cache
        full = owned(new_namespace(cache, url, root / "full"))
        results["namespace"] = full.describe
        config = write_config(root / "full", cache, full, storage)
        log(f"{label}: pypicloud-tx rebuild on the empty cache ({full.describe})")
        results["rebuild_empty"] = cli_rebuild(args.cli, config, args.rebuild_timeout)
        log(f"{label}: {results['rebuild_empty']}")
        results["rebuild_full"] = cli_rebuild(args.cli, config, args.rebuild_timeout)
        log(f"{label}: again on the full cache: {results['rebuild_full']}")

        # b, c. a server on the full cache: start-up, then the project pages under load
        server = make_server(f"{label} (full)", config, args.twist, args.start_timeout)
        # Each CPU reading of the server also reads the service's: see companion_figures.
        server.companion_cpu = service_cpu(cache)
        server.start()
        try:
            results["start_full_s"] = server.ready_seconds
            results["rss_start_mb"] = server.rss_mb()
            count_index(server, label, len(names))
            pages = [f"/simple/{n}/" for n in names]
            runs: dict[str, Any] = {}
            endpoints: tuple[Endpoint, ...] = (
                Endpoint("project_html", "/simple/<name>/ (HTML)", pages, {}),
                Endpoint("project_json", "/simple/<name>/ (JSON)", pages, {"Accept": JSON_ACCEPT}),
            )
            if cache in args.no_load:
                log(f"{label}: no load (--no-load)")
                endpoints = ()
            for endpoint in endpoints:
                check = check_endpoint(server, endpoint)
                if check["status"] != "200":
                    raise SystemExit(f"{label}: {endpoint.paths[0]} answered {check}")
                # The service's CPU includes whatever else uses the shared service meanwhile.
                figures = companion_figures(
                    server,
                    "service_cpu_ms_per_request",
                    functools.partial(
                        wrk,
                        server,
                        f"{cache}-{endpoint.key}",
                        endpoint.paths,
                        endpoint.headers,
                        args.duration,
                        args.connections,
                        args.warmup,
                        scratch,
                    ),
                )
                figures["check"] = check
                runs[endpoint.key] = figures
                log(
                    f"{label}: {endpoint.title}: {figures['rps']:.0f} req/s, p50 "
                    f"{figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, "
                    f"{figures['errors']} errors, {figures['cpu_ms_per_request']:.3f} ms CPU/req, "
                    f"load before {figures['loadavg_1m_before']:.1f}"
                )
            results["wrk"] = runs
            results["rss_after_load_mb"] = server.rss_mb()
        finally:
            stop(server)

        # d. a server on an empty cache fills it from storage before it listens
        empty = owned(new_namespace(cache, url, root / "empty"))
        config = write_config(root / "empty", cache, empty, storage)
        server = make_server(f"{label} (empty)", config, args.twist, args.start_timeout)
        log(f"{label}: starting a server on the empty cache ({empty.describe})")
        server.start()
        try:
            results["start_empty_s"] = server.ready_seconds
            results["start_empty_server_cpu_s"] = server.cpu_seconds()
            listed = count_index(server, label, len(names))
            log(f"{label}: ready after {server.ready_seconds:.1f}s, {listed} projects listed")
        finally:
            stop(server)
    return results


# -- the report --------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    m = results["machine"]
    a = results["args"]
    print(
        f"\nmachine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}; code {m['commit']}; "
        f"{a['projects']} projects x 1 wheel; wrk -t1 -c{a['connections']} -d{a['duration']}s "
        "rotating over every project (client, server and the service share the machine)\n"
    )
    caches = [c for c in results["caches"] if c in results]
    spec: list[tuple[str, tuple[str, ...], str]] = [
        ("rebuild, empty cache: wall s", ("rebuild_empty", "wall_s"), "{:.1f}"),
        ("rebuild, empty cache: work s (reported)", ("rebuild_empty", "reported_s"), "{:.1f}"),
        ("rebuild, empty cache: CPU s", ("rebuild_empty", "cpu_s"), "{:.1f}"),
        ("rebuild, full cache: wall s", ("rebuild_full", "wall_s"), "{:.1f}"),
        ("rebuild, full cache: work s (reported)", ("rebuild_full", "reported_s"), "{:.1f}"),
        ("server start, empty cache -> /ping: s", ("start_empty_s",), "{:.1f}"),
        ("server start, full cache -> /ping: s", ("start_full_s",), "{:.1f}"),
    ]
    for key, title in (("project_html", "HTML"), ("project_json", "JSON")):
        spec += [
            (f"/simple/<name>/ {title}: req/s", ("wrk", key, "rps"), "{:,.0f}"),
            (f"/simple/<name>/ {title}: p50 ms", ("wrk", key, "p50_ms"), "{:.2f}"),
            (f"/simple/<name>/ {title}: p99 ms", ("wrk", key, "p99_ms"), "{:.2f}"),
            (
                f"/simple/<name>/ {title}: server CPU ms/req",
                ("wrk", key, "cpu_ms_per_request"),
                "{:.3f}",
            ),
            (
                f"/simple/<name>/ {title}: service CPU ms/req",
                ("wrk", key, "service_cpu_ms_per_request"),
                "{:.3f}",
            ),
            (f"/simple/<name>/ {title}: errors", ("wrk", key, "errors"), "{:.0f}"),
            (
                f"/simple/<name>/ {title}: load avg before",
                ("wrk", key, "loadavg_1m_before"),
                "{:.1f}",
            ),
        ]
    spec.append(("server RSS after load, MB", ("rss_after_load_mb",), "{:.0f}"))
    header = ["", *(LABELS[c] for c in caches)]
    columns = [results[c] for c in caches]
    print_table(header, [figure_row(title, columns, keys, fmt) for title, keys, fmt in spec])
    if "dynamo" in caches:
        print("\nDynamoDB ran on moto_server, an emulator written in Python: not a guide to AWS.")
    print(
        "\nreq/s is what one wrk thread got from a server sharing 2 cores with it and with the "
        "cache's service; server CPU per request is the steadier figure (and does not include "
        "the service's own CPU, shown on its own row: the service process and its children, "
        "read from /proc; a shared service also counts what other clients made it do meanwhile)."
    )


def machine_record() -> dict[str, str]:
    """What ``bench.run.machine`` records, with the commit read from ``.git`` rather than by
    running git."""
    return {**machine(head_commit()), "clk_tck": str(CLK_TCK)}


# -- the run -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--projects", type=int, default=10_000, help="projects (one wheel each)")
    add_wrk_options(p)
    p.add_argument(
        "--caches",
        default=DEFAULT_CACHES,
        help=f"comma-separated, from {','.join(CACHES)} (default {DEFAULT_CACHES}; "
        "dynamo runs on moto_server, an emulator)",
    )
    p.add_argument(
        "--no-load",
        default="",
        metavar="CACHES",
        help="comma-separated caches to time rebuilds and start-ups of, without wrk (moto "
        "answers a project page it has not served yet in about 0.4 s at 10,000 projects, so "
        "requesting every page once takes an hour)",
    )
    p.add_argument("--twist", default=TWIST)
    p.add_argument("--cli", default=str(REPO / ".venv" / "bin" / "pypicloud-tx"))
    p.add_argument("--rebuild-timeout", type=float, default=1800.0, help="seconds per rebuild")
    p.add_argument("--start-timeout", type=float, default=1800.0, help="seconds per start-up")
    add_output_options(p, "default: a new temp dir, removed")
    args = p.parse_args(argv)
    args.caches = [c.strip() for c in args.caches.split(",") if c.strip()]
    unknown = [c for c in args.caches if c not in CACHES]
    if unknown or not args.caches:
        p.error(f"--caches: unknown {unknown}; choose from {','.join(CACHES)}")
    args.no_load = [c.strip() for c in args.no_load.split(",") if c.strip()]
    if any(c not in CACHES for c in args.no_load):
        p.error(f"--no-load: choose from {','.join(CACHES)}")
    if args.projects < 1:
        p.error("--projects must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    require_wrk()
    for program in (args.twist, args.cli):
        if not os.access(program, os.X_OK):
            raise SystemExit(f"{program} is not there: pip install -e . in the venv")
    urls = service_urls(args.caches)
    for cache, url in urls.items():
        check_reachable(cache, url)
    # The servers read PPC_DB_* and friends as configuration: none may leak in from here.
    for variable in [v for v in os.environ if CONFIG_ENV.match(v)]:
        log(f"ignoring {variable} for the servers")
        del os.environ[variable]
    with workdir(args.workdir, args.keep) as root:
        args.root = root
        names = [project_name(i) for i in range(args.projects)]
        log(f"storing {args.projects} wheels with FileStorage.put, {PUT_THREADS} at a time")
        storage_figures = build_storage(root / "packages", args.projects)
        log(f"storage: {storage_figures}")
        results: dict[str, Any] = {
            "machine": machine_record(),
            "args": {k: v if isinstance(v, list) else str(v) for k, v in vars(args).items()},
            "caches": args.caches,
            "storage": storage_figures,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        for cache in args.caches:
            log(f"--- {LABELS[cache]}")
            results[cache] = bench_cache(cache, urls.get(cache), names, root / "packages", args)
            if args.json:  # a partial file survives a later failure
                write_json(args.json, results)
        results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        report(results)
        if args.json:
            write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
