#!/usr/bin/env python3
"""Requests per second on ``/simple/<name>/`` with 1, 2 and 4 processes sharing one port.

    .venv/bin/python bench/processes.py [--projects 1000] [--processes 1,2,4] [--duration 10]
                                        [--connections 16] [--json FILE]

What it does:

1. makes a new PostgreSQL database on ``PPC_TEST_POSTGRES_URL``'s server (from the environment,
   else ``bash tests/services.sh env``) for the shared cache, and a package folder for the
   shared file storage; both are removed at the end, also after a failure;
2. starts one ``twist pypicloud`` on them and uploads ``--projects`` projects x (wheel + sdist),
   real archives from ``tests/distfactory.py``, through the upload API; stops it;
3. for each count N of ``--processes`` and each way of sharing the port (``--modes``):

   ``units``
       a socket per process, all bound to one port with ``SO_REUSEPORT``, each passed to its
       ``twist pypicloud --listen systemd:domain=INET:index=0`` as systemd passes it (fd 3,
       ``LISTEN_FDS``, ``LISTEN_FDNAMES``, ``LISTEN_PID``): what ``docs/pypicloud-tx@.socket``
       and ``docs/pypicloud-tx@.service`` do;
   ``shared``
       one socket passed that way to all N processes (one ``.socket`` unit in several
       services' ``Sockets=``);
   ``reuseport``
       each process binds the port itself (``--listen reuseport:...``);

   starts the N processes, waits until the port answers, runs ``wrk`` (the helper of
   ``bench/run.py``: every path requested once, a warm-up, the measured run) on
   ``/simple/<name>/`` rotating over every project name, reading each process's CPU time from
   ``/proc`` around it; stops them with SIGTERM.  One process runs once, in the first mode.
   Every configuration runs ``--repeat`` times, in rounds, and the median run is reported.

It prints a table; ``--json FILE`` writes every figure, including each process's share of the
server CPU (how evenly the kernel spread the connections).  Only 127.0.0.1 is contacted; every
wait is bounded.  wrk runs on the same machine as the servers (``-t1``), so the figures say how
far the processes scale on *this* machine's cores with the client beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from bench.run import (  # noqa: E402
    TWIST,
    add_output_options,
    add_wrk_options,
    build_corpus,
    cpu_model,
    free_port,
    log,
    password_hashes,
    postgres_admin,
    process_cpu_seconds,
    project_name,
    request,
    server_config,
    service_settings,
    terminate,
    twist_argv,
    twist_server,
    upload_corpus,
    workdir,
    write_json,
    wrk,
)

START_TIMEOUT = 60.0
#: How the processes share the port (see the module's docstring).
MODES = ("units", "shared", "reuseport")
STOP_TIMEOUT = 40.0
#: What systemd does for a service with ``Sockets=``: the socket on fd 3, LISTEN_PID the
#: service's own pid (``$$`` of a shell that then execs the server keeps that pid).
ADOPT = (
    'fd=$1; shift; if [ "$fd" != 3 ]; then eval "exec 3<&$fd $fd<&-"; fi; '
    'LISTEN_PID=$$; export LISTEN_PID; exec "$@"'
)


# -- the shared cache ----------------------------------------------------------------------


def postgres_url() -> str:
    url = service_settings(["PPC_TEST_POSTGRES_URL"], ["postgres"]).get("PPC_TEST_POSTGRES_URL")
    if not url:
        raise SystemExit(
            "no PostgreSQL: bash tests/services.sh start postgres (or set PPC_TEST_POSTGRES_URL)"
        )
    return url


@contextlib.contextmanager
def new_database(server_url: str) -> Iterator[str]:
    """The URL of a new database on ``server_url``'s server, dropped afterwards."""
    from sqlalchemy.engine import make_url

    name = f"bench_processes_{secrets.token_hex(4)}"
    with postgres_admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with postgres_admin(server_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write_config(root: Path, db_url: str, hashes: dict[str, str]) -> Path:
    (root / "packages").mkdir(parents=True, exist_ok=True)
    path = root / "server.conf"
    # %% keeps configparser's interpolation away from a password's "%".
    path.write_text(server_config(hashes, db_url=db_url.replace("%", "%%")))
    return path


# -- N processes on one socket -------------------------------------------------------------


class Group:
    """N ``twist pypicloud`` processes on one port, shared in one of the ``MODES``.

    Has what ``bench.run.wrk`` reads of a server: ``label``, ``port`` and ``cpu_seconds()``
    (the sum over the processes).
    """

    def __init__(self, count: int, mode: str, twist: str, config: Path, root: Path) -> None:
        self.count = count
        self.mode = mode
        self.label = f"{count} process{'es' if count > 1 else ''} ({mode})"
        self.twist = twist
        self.config = config
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.sockets: list[socket.socket] = []
        self.port = free_port()
        if mode == "shared":
            self.sockets = [self._listen()]
        elif mode == "units":
            self.sockets = [self._listen(reuse_port=True) for _ in range(count)]

    def _listen(self, reuse_port: bool = False) -> socket.socket:
        """A listening socket on the group's port, as systemd makes it."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(1024)
        return sock

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PPC_", "LISTEN_"))}
        env.update(TMPDIR=str(self.root))
        for number in range(1, self.count + 1):
            path = self.root / f"server-{self.mode}-{self.count}-{number}.log"
            self.logs.append(path)
            logfile = open(path, "wb")  # noqa: SIM115 - closed once the child holds it
            if self.sockets:
                fd = self.sockets[min(number, len(self.sockets)) - 1].fileno()
                command = twist_argv(self.twist, self.config, "systemd:domain=INET:index=0")
                argv = ["/bin/sh", "-c", ADOPT, "sh", str(fd), *command]
                env.update(LISTEN_FDS="1", LISTEN_FDNAMES="pypicloud")
                fds: tuple[int, ...] = (fd,)
            else:
                listen = f"reuseport:port={self.port}:interface=127.0.0.1"
                argv = twist_argv(self.twist, self.config, listen)
                fds = ()
            self.procs.append(
                subprocess.Popen(
                    argv,
                    pass_fds=fds,
                    env=env,
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            logfile.close()
        # The processes hold the sockets now.  (systemd would keep its copies open; closing
        # ours makes sure each process answers on the socket it was given.)
        for sock in self.sockets:
            sock.close()
        self._all_listening()

    def _all_listening(self) -> None:
        """Wait until every process says it listens, then until the port answers (with one
        shared socket: until each process answers alone, the others stopped)."""
        deadline = time.monotonic() + START_TIMEOUT
        for index, path in enumerate(self.logs):
            while f"starting on {self.port}" not in path.read_text(errors="replace"):
                if self.procs[index].poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{self.label}: process {index + 1} did not start; see {path}")
                time.sleep(0.1)
        if self.mode == "shared":
            for index in range(self.count):
                self._answers_alone(index)
        else:
            self._answers_alone(None)

    def _answers_alone(self, index: int | None) -> None:
        """Wait until process ``index`` answers, with the others stopped (SIGSTOP); with
        ``None``, until the port answers."""
        others = [p for i, p in enumerate(self.procs) if index is not None and i != index]
        for p in others:
            p.send_signal(signal.SIGSTOP)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if any(p.poll() is not None for p in self.procs):
                    raise SystemExit(f"{self.label}: a process exited; see {self.root}")
                with contextlib.suppress(OSError):
                    if request(self.port, "GET", "/ping", timeout=5)[0] == 200:
                        return
                if time.monotonic() > deadline:
                    raise SystemExit(f"{self.label}: process {index} never answered")
                time.sleep(0.1)
        finally:
            for p in others:
                p.send_signal(signal.SIGCONT)

    def cpu_by_process(self) -> list[float]:
        return [process_cpu_seconds(p.pid) for p in self.procs]

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_process())

    def stop(self) -> None:
        for sock in self.sockets:
            sock.close()
        terminate(self.procs, STOP_TIMEOUT)


# -- the run -------------------------------------------------------------------------------


def load_corpus(args: argparse.Namespace, root: Path, config: Path) -> dict[str, float]:
    """Upload the corpus through one ordinary server; return the upload figures."""
    dists = build_corpus(root / "corpus", args.projects, 1)
    log(f"corpus: {len(dists)} files")
    server = twist_server("loader", args.twist, config)
    server.start()
    try:
        figures = upload_corpus(server, dists, args.upload_concurrency)
    finally:
        server.stop()
    if figures["failed_after_retry"]:
        raise SystemExit(f"{figures['failed_after_retry']} uploads failed")
    log(f"uploaded in {figures['seconds']:.1f}s")
    return figures


def bench_group(
    count: int, mode: str, args: argparse.Namespace, root: Path, config: Path, scratch: Path
) -> dict[str, object]:
    group = Group(count, mode, args.twist, config, root)
    log(f"starting {group.label} on port {group.port}")
    try:
        group.start()
        names = [project_name(i) for i in range(args.projects)]
        paths = [f"/simple/{n}/" for n in names]
        before = group.cpu_by_process()
        figures: dict[str, object] = dict(
            wrk(
                group,  # type: ignore[arg-type]
                f"processes-{mode}-{count}",
                paths,
                {},
                args.duration,
                args.connections,
                args.warmup,
                scratch,
            )
        )
        spent = [b - a for a, b in zip(before, group.cpu_by_process(), strict=True)]
        total = sum(spent) or 1.0
        figures["processes"] = count
        figures["mode"] = mode
        figures["cpu_share_by_process"] = [s / total for s in spent]
        log(
            f"{group.label}: {figures['rps']:.0f} req/s, p99 {figures['p99_ms']:.1f} ms, "
            f"{figures['errors']} errors, {figures['cpu_ms_per_request']:.3f} ms CPU/req, "
            f"CPU shares {[round(s, 2) for s in figures['cpu_share_by_process']]}"  # type: ignore[attr-defined]
        )
        return figures
    finally:
        group.stop()


def machine() -> dict[str, str]:
    return {"nproc": str(os.cpu_count()), "cpu": cpu_model(), "python": sys.version.split()[0]}


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (processes, mode): the median run of its rounds, with the range of req/s."""
    rows = []
    configs = list(dict.fromkeys((r["processes"], r["mode"]) for r in results["runs"]))
    for count, mode in configs:
        runs = sorted(
            (r for r in results["runs"] if (r["processes"], r["mode"]) == (count, mode)),
            key=lambda r: r["rps"],
        )
        median = runs[len(runs) // 2]
        rows.append(
            {
                "processes": count,
                "mode": mode,
                "rounds": len(runs),
                "rps_median": median["rps"],
                "rps_min": runs[0]["rps"],
                "rps_max": runs[-1]["rps"],
                "p99_ms": median["p99_ms"],
                "errors": sum(r["errors"] for r in runs),
                "cpu_ms_per_request": median["cpu_ms_per_request"],
                "cpu_share_by_process": median["cpu_share_by_process"],
                "loadavg_1m_before": [round(r["loadavg_1m_before"], 2) for r in runs],
            }
        )
    return rows


def report(results: dict[str, Any]) -> None:
    m = results["machine"]
    a = results["args"]
    print(
        f"\nmachine: {m['nproc']} cores, {m['cpu']}; {a['projects']} projects; wrk -t1 "
        f"-c{a['connections']} -d{a['duration']}s on the same machine, {a['repeat']} rounds "
        "(median shown); shared PostgreSQL cache and file storage\n"
    )
    print(
        "| processes | port shared by | req/s (median) | range | vs 1 | p99 ms | errors "
        "| server CPU ms/req | CPU share by process |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = results["summary"]
    one = next((r["rps_median"] for r in rows if r["processes"] == 1), None)
    for r in rows:
        shares = " / ".join(f"{s:.0%}" for s in r["cpu_share_by_process"])
        ratio = f"{r['rps_median'] / one:.2f}x" if one else "-"
        print(
            f"| {r['processes']} | {r['mode']} | {r['rps_median']:,.0f} | "
            f"{r['rps_min']:,.0f}-{r['rps_max']:,.0f} | {ratio} | {r['p99_ms']:.1f} | "
            f"{r['errors']:.0f} | {r['cpu_ms_per_request']:.3f} | {shares} |"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--projects", type=int, default=1000)
    p.add_argument("--processes", default="1,2,4", help="comma-separated process counts")
    p.add_argument(
        "--modes",
        default=",".join(MODES),
        help="how the processes share the port, comma-separated: units (a SO_REUSEPORT socket "
        "per process, passed as systemd passes it), shared (one socket passed to all), "
        "reuseport (each binds the port: --listen reuseport:); 1 process runs once",
    )
    add_wrk_options(p)
    p.add_argument("--repeat", type=int, default=3, help="rounds of every configuration")
    p.add_argument("--upload-concurrency", type=int, default=8)
    p.add_argument("--twist", default=TWIST)
    add_output_options(p, None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(c) for c in args.processes.split(",") if c.strip()]
    if any(c < 1 for c in counts):
        raise SystemExit("--processes: counts must be 1 or more")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes: one or more of {', '.join(MODES)}")
    server_url = postgres_url()
    with workdir(args.workdir, args.keep) as root, new_database(server_url) as db_url:
        config = write_config(root / "index", db_url, password_hashes())
        scratch = root / "wrk"
        scratch.mkdir()
        results: dict[str, Any] = {
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "upload": load_corpus(args, root / "index", config),
            "runs": [],
        }
        configs = [(c, m) for c in counts for m in (modes[:1] if c == 1 else modes)]
        # Rounds in turn, so that other work on the machine weighs on every configuration.
        for round_number in range(1, args.repeat + 1):
            for count, mode in configs:
                figures = bench_group(count, mode, args, root / "index", config, scratch)
                figures["round"] = round_number
                results["runs"].append(figures)
        results["summary"] = summary(results)
        report(results)
        if args.json:
            write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
