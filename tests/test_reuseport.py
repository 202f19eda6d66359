"""``--listen reuseport:...``: several processes bind one port, the kernel spreads connections."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from passlib.hash import sha512_crypt
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pypicloud_tx.reuseport import ReusePortEndpoint
from tests.e2e.server import CLEAN_EXITS, free_port


class EndpointTests(TestCase):
    def test_parsed_from_a_description(self) -> None:
        """``reuseport:`` is a Twisted endpoint type (through the plugin in twisted/plugins);
        port, interface and backlog are read, an IPv6 interface chooses IPv6."""
        endpoint = serverFromString(MemoryReactor(), "reuseport:port=6543:interface=127.0.0.1")
        self.assertIsInstance(endpoint, ReusePortEndpoint)
        self.assertEqual((endpoint._port, endpoint._interface), (6543, "127.0.0.1"))
        six = serverFromString(MemoryReactor(), r"reuseport:8080:interface=\:\:1:backlog=10")
        self.assertEqual(six._family, socket.AF_INET6)
        self.assertEqual(six._backlog, 10)
        self.assertRaises(ValueError, serverFromString, MemoryReactor(), "reuseport:port=http")

    async def test_two_ports_share_an_address(self) -> None:
        """Two listens on one address both succeed; stopping one leaves the other
        accepting."""
        first = await ReusePortEndpoint(reactor, 0, "127.0.0.1").listen(
            Factory.forProtocol(Protocol)
        )
        port = first.getHost().port
        second = await ReusePortEndpoint(reactor, port, "127.0.0.1").listen(
            Factory.forProtocol(Protocol)
        )
        self.assertEqual(second.getHost().port, port)
        await first.stopListening()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        await second.stopListening()

    async def test_taken_port_fails(self) -> None:
        """An address held without ``SO_REUSEPORT`` cannot be shared: listen fails."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            endpoint = ReusePortEndpoint(reactor, taken.getsockname()[1], "127.0.0.1")
            with self.assertRaises(OSError):
                await endpoint.listen(Factory.forProtocol(Protocol))


class ProcessesTests(SynchronousTestCase):
    def test_processes_share_the_port(self) -> None:
        """Two ``twist pypicloud --listen reuseport:...`` on one port: fresh connections are
        answered by both (each access log shows requests); after one stops (SIGTERM, clean
        exit), the other answers every connection."""
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "packages"))
        config = os.path.join(root, "server.ini")
        with open(config, "w") as f:
            f.write(
                "[pypicloud]\n"
                f"storage.dir = {root}/packages\n"
                f"db.url = sqlite:///{root}/db.sqlite\n"
                "pypi.default_read = everyone\n"
                f"user.alice = {sha512_crypt.using(rounds=1000).hash('pw')}\n"
            )
        port = free_port()
        twist = os.path.join(os.path.dirname(sys.executable), "twist")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PPC_")}
        processes = []
        for number in (1, 2):
            log = open(os.path.join(root, f"server{number}.log"), "wb")  # noqa: SIM115
            self.addCleanup(log.close)
            process = subprocess.Popen(
                [
                    twist,
                    "--log-format=text",
                    "pypicloud",
                    "--config",
                    config,
                    "--access-log",
                    "--listen",
                    f"reuseport:port={port}:interface=127.0.0.1",
                ],
                env=env,
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self.addCleanup(lambda p=process: (p.poll() is None and p.kill(), p.wait(30)))
            processes.append(process)

        def text(number: int) -> str:
            with open(os.path.join(root, f"server{number}.log"), errors="replace") as f:
                return f.read()

        deadline = time.monotonic() + 30
        for number in (1, 2):
            while f"starting on {port}" not in text(number):
                self.assertLess(time.monotonic(), deadline, text(number))
                time.sleep(0.1)

        def ping() -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=10) as r:
                return bytes(r.read())

        # Each connection goes to one process by a hash of its source port: 40 of them all
        # going to one of two processes has a chance of 2 in 2**40.
        for _ in range(40):
            self.assertEqual(ping(), b"pong\n")
        deadline = time.monotonic() + 10
        counts = [0, 0]
        while time.monotonic() < deadline:
            counts = [len(re.findall(r'"GET /ping HTTP', text(n))) for n in (1, 2)]
            if sum(counts) == 40:
                break
            time.sleep(0.1)
        self.assertEqual(sum(counts), 40, counts)
        self.assertTrue(all(counts), counts)
        processes[0].send_signal(signal.SIGTERM)
        self.assertIn(processes[0].wait(30), CLEAN_EXITS, text(1))
        for _ in range(20):
            self.assertEqual(ping(), b"pong\n")
        processes[1].send_signal(signal.SIGTERM)
        self.assertIn(processes[1].wait(30), CLEAN_EXITS, text(2))
