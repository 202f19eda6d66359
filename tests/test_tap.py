"""The ``pypicloud`` twist plugin's options and service tree (the reactor is never run)."""

from __future__ import annotations

import os

from twisted.application.service import IService, MultiService
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.application import IndexServer, ThreadPools
from pypicloud_tx.tap import DEFAULT_LISTEN, Options, makeService

MEMORY_CONFIG = "[pypicloud]\npypi.storage = memory\npypi.db = memory\n"


class OptionsTests(SynchronousTestCase):
    """Command-line options of ``twist pypicloud``."""

    def config(self, text: str = MEMORY_CONFIG) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_config_required(self) -> None:
        """Without --config: a usage error saying it is required."""
        error = self.assertRaises(usage.UsageError, self.parse)
        self.assertIn("--config FILE is required", str(error))

    def test_settings_loaded(self) -> None:
        """--config loads the settings; the endpoint defaults to loopback port 6543."""
        options = self.parse("--config", self.config())
        self.assertEqual(options["settings"].storage.name, "memory")
        self.assertEqual(options["endpoint"], DEFAULT_LISTEN)

    def test_listen(self) -> None:
        """--listen (or -l) wins over [server:main]; [server:main] over the default."""
        path = self.config(MEMORY_CONFIG + "[server:main]\nhost = 0.0.0.0\nport = 7000\n")
        self.assertEqual(self.parse("-c", path)["endpoint"], "tcp:port=7000:interface=0.0.0.0")
        self.assertEqual(self.parse("-c", path, "-l", "tcp:8080")["endpoint"], "tcp:8080")
        self.assertEqual(
            self.parse("--config", path, "--listen", "unix:/tmp/ppc.sock")["endpoint"],
            "unix:/tmp/ppc.sock",
        )

    def test_bad_config(self) -> None:
        """A bad config is a usage error of one line: the file, the option, what is wrong."""
        path = self.config(MEMORY_CONFIG + "pypi.package_max_age = soon\n")
        error = self.assertRaises(usage.UsageError, self.parse, "--config", path)
        message = str(error)
        self.assertTrue(message.startswith(f"{path}: pypi.package_max_age: "), message)
        self.assertNotIn("\n", message)

    def test_bad_listen(self) -> None:
        """An endpoint Twisted cannot parse is a usage error, not a traceback at start-up."""
        path = self.config()
        for listen, expected in [
            ("bogus:1", "Unknown endpoint type"),
            ("tcp:port=http", "invalid literal"),
            ("ssl:443:privateKey=/nonexistent.pem", "No such file"),
            ("systemd:domain=INET:index=7", "passed by systemd"),
        ]:
            error = self.assertRaises(usage.UsageError, self.parse, "-c", path, "-l", listen)
            self.assertIn(f"--listen {listen}: ", str(error))
            self.assertIn(expected, str(error))


class MakeServiceTests(SynchronousTestCase):
    """makeService builds the service tree without starting anything."""

    def test_tree(self) -> None:
        """A MultiService holding the thread pools first, then the index server; nothing
        running yet."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(MEMORY_CONFIG)
        options = Options()
        options.parseOptions(["--config", path, "--listen", "tcp:0:interface=127.0.0.1"])
        service = makeService(options)
        self.assertTrue(IService.providedBy(service))
        self.assertIsInstance(service, MultiService)
        children = list(service)
        self.assertEqual([type(c) for c in children], [ThreadPools, IndexServer])
        self.assertFalse(service.running)
        self.assertFalse(any(c.running for c in children))
