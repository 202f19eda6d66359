"""``pypicloud-tx`` and its pypicloud-named aliases, run as real processes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

from passlib.hash import sha512_crypt
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.application import build_backends, start_backends, stop_backends
from pypicloud_tx.backends.storage.files import FileStorage
from pypicloud_tx.config.loader import load_settings
from pypicloud_tx.domain.passwords import password_context, verify_password
from pypicloud_tx.runtime import Runtime
from tests.backends.storage.conformance import package_file
from tests.distfactory import make_wheel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
HASH = sha512_crypt.using(rounds=1000).hash("admin")


def run(
    *args: str, stdin: str = "", command: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pypicloud_tx.scripts.cli ARGS`` (or ``command``) with ``stdin``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPC_")}
    env["PYTHONPATH"] = ROOT  # the test backends live in tests/
    return subprocess.run(
        command or [sys.executable, "-m", "pypicloud_tx.scripts.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


class HelpTests(SynchronousTestCase):
    """Every command explains itself."""

    def test_help(self) -> None:
        """--help of the tool and of each subcommand exits 0 and shows the usage."""
        for args, expected in [
            ([], "gen-password"),
            (["gen-password"], "--rounds"),
            (["rebuild"], "--progress-every"),
        ]:
            result = run(*args, "--help")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("usage: pypicloud-tx", result.stdout)
            self.assertIn(expected, result.stdout)

    def test_console_scripts(self) -> None:
        """pypicloud-tx and pypicloud's ppc-gen-password are installed next to the Python
        running the tests, and answer --help."""
        for script, expected in [
            ("pypicloud-tx", "rebuild"),
            ("ppc-gen-password", "--rounds"),
        ]:
            path = os.path.join(BIN, script)
            self.assertTrue(os.access(path, os.X_OK), path)
            result = run(command=[path, "--help"])
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn(expected, result.stdout)

    def test_no_command(self) -> None:
        """Without a command: usage on stderr, exit 2."""
        result = run()
        self.assertEqual(result.returncode, 2)
        self.assertIn("usage:", result.stderr)


class GenPasswordTests(SynchronousTestCase):
    """gen-password reads the password from stdin when it is not a terminal."""

    def test_hash_verifies(self) -> None:
        """The printed hash is sha512_crypt with the rounds asked for, and verifies."""
        result = run("gen-password", "-r", "1000", stdin="s3cret pass\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        hashed = result.stdout.strip()
        self.assertEqual(result.stdout, hashed + "\n")
        self.assertTrue(hashed.startswith("$6$rounds=1000$"), hashed)
        self.assertTrue(verify_password(password_context(), "s3cret pass", hashed))
        self.assertFalse(verify_password(password_context(), "s3cret pass\n", hashed))

    def test_pypicloud_alias(self) -> None:
        """ppc-gen-password takes the same options."""
        result = run(
            command=[os.path.join(BIN, "ppc-gen-password"), "--rounds", "2000"], stdin="pw\n"
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("$6$rounds=2000$"))
        self.assertTrue(verify_password(password_context(), "pw", result.stdout.strip()))

    def test_empty_password(self) -> None:
        """An empty password: nothing on stdout, a message on stderr, exit 1."""
        for stdin in ["", "\n"]:
            result = run("gen-password", "-r", "1000", stdin=stdin)
            self.assertEqual(result.returncode, 1)
            self.assertEqual(result.stdout, "")
            self.assertEqual(result.stderr, "error: the password is empty\n")

    def test_bad_rounds(self) -> None:
        """Rounds outside sha512_crypt's range are refused by the option parser (exit 2)."""
        for rounds in ["10", "lots"]:
            result = run("gen-password", "-r", rounds, stdin="pw\n")
            self.assertEqual(result.returncode, 2)
            self.assertIn("--rounds", result.stderr)
            self.assertNotIn("Traceback", result.stderr)


class RebuildTests(SynchronousTestCase):
    """rebuild fills the cache from storage."""

    def write_config(self, text: str) -> str:
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, "server.ini")
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        return path

    def test_rebuild(self) -> None:
        """Files put in file storage end up in an empty SQLite cache; progress goes to
        stderr, nothing to stdout, exit 0."""
        path = self.write_config(f"""\
            [app:main]
            use = egg:pypicloud
            pypi.storage = file
            storage.dir = %(here)s/packages
            db.url = sqlite:///%(here)s/db.sqlite
            auth.admins = admin
            user.admin = {HASH}
            """)
        storage_dir = os.path.join(os.path.dirname(path), "packages")
        storage = FileStorage(storage_dir, Runtime.synchronous().threads("storage", 1))
        self.successResultOf(storage.start())
        for name, version in [("alpha", "1.0"), ("alpha", "1.1"), ("beta_pkg", "2.0")]:
            filename, data = make_wheel(name, version)
            file = package_file(data, filename)
            self.successResultOf(storage.put(file, io.BytesIO(data), None, False))

        result = run("rebuild", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertIn("reading storage: 3 files in ", result.stderr)
        self.assertIn("writing the cache: 3 files in ", result.stderr)
        self.assertIn("cache rebuilt: 3 files", result.stderr)

        settings = load_settings(path, {})
        backends = build_backends(settings, Runtime.synchronous(settings=settings))
        self.successResultOf(Deferred.fromCoroutine(start_backends(backends)))
        self.addCleanup(lambda: Deferred.fromCoroutine(stop_backends(backends)))
        self.assertEqual(self.successResultOf(backends.cache.distinct()), ["alpha", "beta-pkg"])
        files = self.successResultOf(backends.cache.all("alpha"))
        self.assertEqual(sorted(f.version for f in files), ["1.0", "1.1"])

    def test_progress_while_slow(self) -> None:
        """A slow rebuild says how far it got every --progress-every seconds (stderr is not a
        terminal here: plain lines, no bar)."""
        path = self.write_config("""\
            [pypicloud]
            pypi.storage = tests.scripts.slow_storage.SlowStorage
            pypi.db = memory
            """)
        result = run("rebuild", "--progress-every", "0.1", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stderr.splitlines()
        steps = [line for line in lines if line.startswith("... reading storage: ")]
        self.assertTrue(steps, result.stderr)
        self.assertRegex(steps[-1], r"^\.\.\. reading storage: [1-4]/4 files \(\d+%\), [\d.]+s$")
        self.assertIn("cache rebuilt: 0 files", result.stderr)
        self.assertNotIn("\r", result.stderr)

    def test_bad_config(self) -> None:
        """A bad config: exit 2, one line on stderr naming the option, no traceback."""
        path = self.write_config("""\
            [pypicloud]
            pypi.storage = file
            pypi.db = memory
            pypi.allow_overwrite = perhaps
            """)
        result = run("rebuild", path)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        self.assertTrue(result.stderr.startswith("error: pypi.allow_overwrite: "), result.stderr)
        self.assertEqual(result.stdout, "")

    def test_missing_config(self) -> None:
        """A config file that does not exist: exit 2, one line."""
        result = run(
            command=[os.path.join(BIN, "pypicloud-tx"), "rebuild", "/nonexistent/server.ini"]
        )
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        self.assertIn("/nonexistent/server.ini", result.stderr)
