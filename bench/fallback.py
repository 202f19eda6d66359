#!/usr/bin/env python3
"""Benchmark the pull-through cache (``pypi.fallback = cache``) on this machine.

    .venv/bin/python bench/fallback.py [--projects 30] [--size-kb 256] [--concurrency 50]
                                       [--json FILE]

What it does:

1. starts two ``twist pypicloud`` servers on free 127.0.0.1 ports: an *upstream* standing in
   for PyPI, and a *front* with ``pypi.fallback = cache`` pointing at it;
2. uploads ``--projects`` wheels of about ``--size-kb`` KiB to the upstream;
3. **cold**: for each project in turn, asks the front for its project page (PEP 691 JSON, as
   pip does) and downloads its wheel -- each first request makes the front fetch from
   upstream (page; then file: download, sha256 check, store, serve);
4. **warm**: the same requests again, now answered from the front's memory and storage;
5. **single flight**: ``--concurrency`` clients ask at once for one uncached file, then
   for one uncached project page; the upstream's access log tells how many upstream
   requests they caused (the target is one each).

Prints a table (median and 95th percentile per kind) and checks the single-flight targets;
``--json FILE`` also writes every figure.  Only 127.0.0.1 is contacted; every loop and wait is
bounded, and both servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from bench.run import JSON_ACCEPT, write_json  # noqa: E402
from tests.distfactory import make_wheel, twine_fields  # noqa: E402
from tests.e2e.server import IndexProcess  # noqa: E402


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def summary(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median_ms": statistics.median(ordered), "p95_ms": p95, "count": len(ordered)}


def upstream_gets(upstream: IndexProcess, path: str) -> int:
    return sum(1 for line in upstream.log_text().splitlines() if f'"GET {path} ' in line)


def ok(answer: object, what: str) -> None:
    status = getattr(answer, "status", None)
    if status != 200:
        raise SystemExit(f"{what}: HTTP {status}: {getattr(answer, 'text', '')[:300]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", type=int, default=30)
    parser.add_argument("--size-kb", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    folder = tempfile.mkdtemp(prefix="ppc-bench-fallback-")
    servers: list[IndexProcess] = []
    try:
        up_dir, front_dir = os.path.join(folder, "upstream"), os.path.join(folder, "front")
        os.makedirs(up_dir)
        os.makedirs(front_dir)
        upstream = IndexProcess(up_dir)
        servers.append(upstream)
        upstream.start()
        front = IndexProcess(
            front_dir,
            {"pypi.fallback": "cache", "pypi.fallback_base_url": upstream.url},
        )
        servers.append(front)
        front.start()

        names = [f"bench-up-{i:03d}" for i in range(args.projects + 2)]
        payload = os.urandom(args.size_kb * 1024)
        wheels = {}
        for name in names:
            wheel = make_wheel(name, "1.0", extra_files={"data.bin": payload})
            wheels[name] = wheel
            answer = upstream.upload(
                wheel[0], wheel[1], twine_fields(wheel[0], wheel[1], name, "1.0")
            )
            ok(answer, f"upload {wheel[0]}")
        print(
            f"upstream {upstream.url}, front {front.url}: {len(names)} wheels of "
            f"{len(wheels[names[0]][1]) // 1024} KiB"
        )

        measured = names[: args.projects]
        results: dict[str, object] = {}
        for phase in ("cold", "warm"):
            pages, files = [], []
            for name in measured:
                filename = wheels[name][0]
                pages.append(
                    timed(
                        lambda n=name: ok(
                            front.get(f"/simple/{n}/", user="bob", accept=JSON_ACCEPT), f"page {n}"
                        )
                    )
                )
                files.append(
                    timed(
                        lambda n=name, f=filename: ok(
                            front.get(f"/api/package/{n}/{f}", user="bob"), f"file {f}"
                        )
                    )
                )
            results[f"{phase}_page"] = summary(pages)
            results[f"{phase}_file"] = summary(files)

        # Single flight: many clients at once for one file, then for one page, never seen.
        flight_file_name, flight_page_name = names[-2], names[-1]
        filename = wheels[flight_file_name][0]
        file_path = f"/api/package/{flight_file_name}/{filename}"
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            started = time.perf_counter()
            answers = list(
                pool.map(lambda _: front.get(file_path, user="bob"), range(args.concurrency))
            )
            file_wall = (time.perf_counter() - started) * 1000
            good = sum(
                1 for a in answers if a.status == 200 and a.body == wheels[flight_file_name][1]
            )
            page_path = f"/simple/{flight_page_name}/"
            started = time.perf_counter()
            pages_got = list(
                pool.map(
                    lambda _: front.get(page_path, user="bob", accept=JSON_ACCEPT),
                    range(args.concurrency),
                )
            )
            page_wall = (time.perf_counter() - started) * 1000
        results["single_flight"] = {
            "clients": args.concurrency,
            "file_ok": good,
            "file_wall_ms": file_wall,
            "file_upstream_gets": upstream_gets(
                upstream, f"/api/package/{flight_file_name}/{filename}"
            ),
            "page_ok": sum(1 for a in pages_got if a.status == 200),
            "page_wall_ms": page_wall,
            "page_upstream_gets": upstream_gets(upstream, page_path),
        }
    finally:
        for server in reversed(servers):
            try:
                server.stop()
            except AssertionError as e:
                print(f"warning: {e}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)

    print()
    print(f"{'request':<22}{'median ms':>12}{'p95 ms':>12}{'n':>6}")
    for key in ("cold_page", "warm_page", "cold_file", "warm_file"):
        figures = results[key]
        assert isinstance(figures, dict)
        print(
            f"{key.replace('_', ' '):<22}{figures['median_ms']:>12.2f}{figures['p95_ms']:>12.2f}"
            f"{figures['count']:>6}"
        )
    flight = results["single_flight"]
    assert isinstance(flight, dict)
    print()
    print(
        f"single flight, {flight['clients']} clients: file {flight['file_ok']} ok in "
        f"{flight['file_wall_ms']:.0f} ms, {flight['file_upstream_gets']} upstream GET(s); "
        f"page {flight['page_ok']} ok in {flight['page_wall_ms']:.0f} ms, "
        f"{flight['page_upstream_gets']} upstream GET(s)"
    )
    if args.json:
        write_json(Path(args.json), results)
    targets_met = (
        flight["file_ok"] == flight["clients"]
        and flight["page_ok"] == flight["clients"]
        and flight["file_upstream_gets"] == 1
        and flight["page_upstream_gets"] == 1
    )
    print("targets:", "met" if targets_met else "NOT met (one upstream GET each, all ok)")
    return 0 if targets_met else 1


if __name__ == "__main__":
    sys.exit(main())
