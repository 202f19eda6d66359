"""The socket-activated units in docs/ work as written: several processes on one port.

``docs/pypicloud-tx@.socket`` opens a listening socket per instance, all on one address with
``SO_REUSEPORT``; ``pypicloud-tx@N.service`` inherits its instance's socket as systemd passes
sockets (fd 3, ``LISTEN_FDS``, ``LISTEN_FDNAMES``, ``LISTEN_PID`` = the process's own pid) and
adopts it with ``--listen systemd:...``.  The test does what systemd does: it makes the sockets
the ``[Socket]`` section describes, keeps them open, and starts the template's ``ExecStart`` with
them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import attrs
from passlib.hash import sha512_crypt
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pypicloud_tx.config.model import Settings
from tests.test_deployment import unit_lines

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, os.pardir, "docs")
SOCKET = os.path.join(DOCS, "pypicloud-tx@.socket")
TEMPLATE = os.path.join(DOCS, "pypicloud-tx@.service")
#: What systemd does for a service with ``Sockets=``: the socket on fd 3, LISTEN_PID the
#: service's own pid (``$$`` of a shell that then execs the command keeps that pid).
#: Put the inherited socket on fd 3 and name this process in LISTEN_PID, as systemd does, then
#: become the server (exec keeps the pid).  Python, not sh: dash cannot redirect fds above 9.
ADOPT = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)
CLEAN_EXITS = (0, -signal.SIGTERM)


def section(path: str, name: str) -> dict[str, str]:
    """``Key=value`` lines of one ``[section]`` of a unit file."""
    values: dict[str, str] = {}
    current = None
    with open(path, encoding="utf-8") as f:
        for line in f.read().replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("["):
                current = line.strip("[]")
            elif current == name and "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                values[key] = value
    return values


def ping(port: int, timeout: float = 20.0) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=timeout) as r:
        return bytes(r.read())


class SocketActivationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.data = os.path.join(self.root, "var/lib/pypicloud")
        for folder in ("packages", "tmp"):
            os.makedirs(os.path.join(self.data, folder))
        os.makedirs(os.path.join(self.root, "etc/pypicloud"))
        with open(os.path.join(self.root, "etc/pypicloud/server.ini"), "w") as f:
            f.write(
                "[pypicloud]\n"
                f"storage.dir = {self.data}/packages\n"
                f"db.url = sqlite:///{self.data}/db.sqlite\n"
                "pypi.default_read = everyone\n"
                f"user.alice = {sha512_crypt.using(rounds=1000).hash('pw')}\n"
            )

    def relocated(self, text: str) -> str:
        """The unit's absolute paths moved into the temporary root; the venv's twist."""
        twist = os.path.join(os.path.dirname(sys.executable), "twist")
        text = text.replace("/opt/pypicloud-tx/venv/bin/twist", twist)
        for path in ("/etc/pypicloud", "/var/lib/pypicloud"):
            text = text.replace(path, self.root + path)
        return text

    def test_verify(self) -> None:
        """``systemd-analyze verify`` accepts an instance of the socket and of the service."""
        if shutil.which("systemd-analyze") is None:
            raise SkipTest("systemd-analyze is not installed")
        folder = os.path.join(self.root, "units")
        os.makedirs(folder)
        for source in (SOCKET, TEMPLATE):
            with open(source, encoding="utf-8") as f:
                text = self.relocated(f.read())
            with open(os.path.join(folder, os.path.basename(source)), "w") as f:
                f.write(text)
        result = subprocess.run(
            [
                "systemd-analyze",
                "verify",
                os.path.join(folder, "pypicloud-tx@1.socket"),
                os.path.join(folder, "pypicloud-tx@1.service"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        problems = [
            line for line in (result.stdout + result.stderr).splitlines() if "pypicloud-tx" in line
        ]
        self.assertEqual(problems, [])

    def test_units_agree(self) -> None:
        """Instance N of the service inherits instance N of the socket and adopts its
        descriptor; the sockets share the port (``ReusePort``); systemd waits longer for a
        stop than the default grace period of requests in progress."""
        unit = section(TEMPLATE, "Service")
        sock = section(SOCKET, "Socket")
        self.assertEqual(unit["Sockets"], "pypicloud-tx@%i.socket")
        self.assertEqual(section(TEMPLATE, "Unit")["Requires"], "pypicloud-tx@%i.socket")
        self.assertIn("--listen systemd:domain=INET:index=0", " ".join(unit["ExecStart"].split()))
        self.assertEqual((sock["Accept"], sock["ReusePort"]), ("no", "true"))
        grace = attrs.fields(Settings).shutdown_grace.default
        self.assertGreater(int(unit["TimeoutStopSec"]), grace + 5)
        self.assertEqual(unit_lines(TEMPLATE)["KillSignal"], "SIGTERM")

    def listening_socket(self, port: int = 0) -> socket.socket:
        """A socket of ``[Socket]`` (on ``port``, default a free one), as systemd makes it."""
        sock = section(SOCKET, "Socket")
        host, _, _ = sock["ListenStream"].rpartition(":")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock["ReusePort"] == "true":
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((host, port))
        listener.listen(int(sock["Backlog"]))
        self.addCleanup(listener.close)
        return listener

    def start_instance(self, number: int, listener: socket.socket) -> subprocess.Popen[bytes]:
        """The template's ExecStart for instance ``number``, given ``listener`` as systemd
        gives it (plus ``--access-log``, so the test sees which instance answered)."""
        unit = section(TEMPLATE, "Service")
        command = shlex.split(self.relocated(unit["ExecStart"]).replace("%i", str(number)))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PPC_", "LISTEN_"))}
        env.update(
            LISTEN_FDS="1",
            LISTEN_FDNAMES=section(SOCKET, "Socket")["FileDescriptorName"],
            TMPDIR=os.path.join(self.data, "tmp"),
        )
        fd = listener.fileno()
        log = open(os.path.join(self.root, f"instance{number}.log"), "ab")  # noqa: SIM115
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [sys.executable, "-c", ADOPT, str(fd), *command, "--access-log"],
            pass_fds=(fd,),
            env=env,
            cwd=self.data,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def stop() -> None:
            if process.poll() is None:
                process.kill()
            process.wait(30)

        self.addCleanup(stop)
        return process

    def log(self, number: int) -> str:
        with open(os.path.join(self.root, f"instance{number}.log"), errors="replace") as f:
            return f.read()

    def wait_listening(self, number: int, port: int, starts: int = 1) -> None:
        deadline = time.monotonic() + 30
        while self.log(number).count(f"starting on {port}") < starts:
            if time.monotonic() > deadline:
                self.fail(f"instance {number} did not start\n{self.log(number)}")
            time.sleep(0.05)

    def test_instances_share_the_port(self) -> None:
        """Two instances, each on its own socket of one port: fresh connections are answered
        by both.  A rolling restart refuses nothing: while instance 1 restarts (its socket
        kept open, as systemd keeps it), every request is answered, some by instance 1 once it
        is back.  Both exit cleanly."""
        sockets = [self.listening_socket()]
        port = sockets[0].getsockname()[1]
        sockets.append(self.listening_socket(port))
        one = self.start_instance(1, sockets[0])
        two = self.start_instance(2, sockets[1])
        for number in (1, 2):
            self.wait_listening(number, port)
        # The kernel picks a socket by a hash of the source port: 40 fresh connections all
        # going to one of two has a chance of 2 in 2**40.
        for _ in range(40):
            self.assertEqual(ping(port), b"pong\n")
        counts = [self.log(n).count('"GET /ping HTTP') for n in (1, 2)]
        self.assertTrue(all(counts), counts)

        answers: list[bytes | str] = []

        def client() -> None:
            for _ in range(30):
                try:
                    answers.append(ping(port, 30))
                except OSError as e:
                    answers.append(repr(e))
                time.sleep(0.05)

        one.send_signal(signal.SIGTERM)
        self.assertIn(one.wait(30), CLEAN_EXITS, self.log(1))
        before = self.log(1).count('"GET /ping HTTP')
        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        time.sleep(0.5)
        one = self.start_instance(1, sockets[0])
        self.wait_listening(1, port, starts=2)
        thread.join(60)
        self.assertEqual(answers, [b"pong\n"] * 30)
        self.assertGreater(self.log(1).count('"GET /ping HTTP'), before, "none waited for 1")
        for number, process in ((1, one), (2, two)):
            process.send_signal(signal.SIGTERM)
            self.assertIn(process.wait(30), CLEAN_EXITS, self.log(number))
            self.assertNotIn("Traceback", self.log(number))
            self.assertIn("Main loop terminated", self.log(number))
