"""The systemd unit in docs/ works as written."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from passlib.hash import sha512_crypt
from twisted.trial.unittest import SkipTest, SynchronousTestCase

HERE = os.path.dirname(os.path.abspath(__file__))
UNIT = os.path.join(HERE, os.pardir, "docs", "pypicloud-tx.service")


def unit_lines(path: str) -> dict[str, str]:
    """``Key=value`` lines of a unit file, with ``\\`` continuations joined."""
    values: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    return values


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SystemdUnitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.data = os.path.join(self.root, "var/lib/pypicloud")
        os.makedirs(os.path.join(self.data, "packages"))
        os.makedirs(os.path.join(self.data, "tmp"))
        os.makedirs(os.path.join(self.root, "etc/pypicloud"))
        with open(os.path.join(self.root, "etc/pypicloud/server.ini"), "w") as f:
            f.write(
                "[pypicloud]\n"
                "storage.dir = /var/lib/pypicloud/packages\n"
                "db.url = sqlite:////var/lib/pypicloud/db.sqlite\n"
                f"user.alice = {sha512_crypt.using(rounds=1000).hash('pw')}\n"
            )
        self.port = free_port()

    def relocated(self, text: str) -> str:
        """Point the unit's absolute paths into the temporary root."""
        twist = os.path.join(os.path.dirname(sys.executable), "twist")
        text = text.replace("/opt/pypicloud-tx/venv/bin/twist", twist)
        for path in ("/etc/pypicloud", "/var/lib/pypicloud"):
            text = text.replace(path, self.root + path)
        return text.replace("port=6543", f"port={self.port}")

    def test_verify(self) -> None:
        """``systemd-analyze verify`` finds nothing wrong with the unit."""
        if shutil.which("systemd-analyze") is None:
            raise SkipTest("systemd-analyze is not installed")
        unit = os.path.join(self.root, "pypicloud-tx.service")
        with open(unit, "w") as f, open(UNIT, encoding="utf-8") as source:
            f.write(self.relocated(source.read()))
        result = subprocess.run(
            ["systemd-analyze", "verify", unit], capture_output=True, text=True, timeout=60
        )
        problems = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if "pypicloud-tx.service" in line
        ]
        self.assertEqual(problems, [])

    def test_exec_start_serves_and_stops_cleanly(self) -> None:
        """The unit's ExecStart serves the index; SIGTERM (KillSignal) ends it well within
        TimeoutStopSec, after a clean shutdown, without a traceback.

        ``twist`` ends by re-raising the signal that stopped it (status -15), which systemd
        counts as a clean exit, like status 0.
        """
        unit = unit_lines(UNIT)
        self.assertEqual(unit["KillSignal"], "SIGTERM")
        command = shlex.split(self.relocated(unit["ExecStart"]))
        config = os.path.join(self.root, "etc/pypicloud/server.ini")
        with open(config) as f:
            text = f.read()
        with open(config, "w") as f:
            f.write(self.relocated(text).replace(self.root + self.root, self.root))
        env = dict(os.environ, TMPDIR=self.relocated(unit["Environment"].split("=", 1)[1]))
        log = open(os.path.join(self.root, "server.log"), "w+")  # noqa: SIM115 (closed below)
        process = subprocess.Popen(command, cwd=self.data, env=env, stdout=log, stderr=log)
        try:
            body = b""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{self.port}/ping", timeout=2
                    ) as r:
                        body = r.read()
                    break
                except OSError:
                    time.sleep(0.2)
            self.assertEqual(body, b"pong\n")
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                self.assertEqual(r.status, 200)
            process.send_signal(signal.SIGTERM)
            status = process.wait(timeout=int(unit["TimeoutStopSec"]))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        log.seek(0)
        output = log.read()
        log.close()
        self.assertIn(status, (0, -signal.SIGTERM), output)
        self.assertIn("Main loop terminated", output)
        self.assertNotIn("Traceback", output)


class PortTakenTests(SynchronousTestCase):
    def test_exits_non_zero_when_the_port_is_taken(self) -> None:
        """A server that cannot listen (the port is taken) stops at once with a non-zero
        status and says why, so systemd and deploy scripts see the failure."""
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        config = os.path.join(root, "server.ini")
        with open(config, "w") as f:
            f.write(f"[pypicloud]\nstorage.dir = {root}/packages\ndb.url = sqlite://\n")
        twist = os.path.join(os.path.dirname(sys.executable), "twist")
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            result = subprocess.run(
                [
                    twist,
                    "--log-format=text",
                    "pypicloud",
                    "--config",
                    config,
                    "--listen",
                    f"tcp:port={port}:interface=127.0.0.1",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("cannot listen", result.stdout + result.stderr)
