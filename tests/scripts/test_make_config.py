"""``pypicloud-tx make-config`` (``ppc-make-config``): templates, flags, prompts on a terminal,
secrets, a private file, and a generated config that starts the server."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pty
import re
import select
import stat
import subprocess
import sys
import termios
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.backends.access.sql import SQLAccessBackend
from pypicloud_tx.config.loader import load_settings
from pypicloud_tx.domain.passwords import password_context, verify_password
from pypicloud_tx.runtime import Runtime
from pypicloud_tx.scripts.cli import main
from pypicloud_tx.scripts.make_config import ini_value, parse_listen
from tests.distfactory import encode_upload, make_wheel, twine_fields
from tests.e2e.server import IndexProcess, basic_auth, free_port, http_request, tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
#: Few hash rounds keep the tests fast (the hash format is the same).
FAST = ("--rounds", "1000")
GENERATED = re.compile(r"^admin (\S+), password: (\S+)  \(generated", re.MULTILINE)


def run(
    *args: str, stdin: str = "", command: str = "pypicloud-tx"
) -> subprocess.CompletedProcess[str]:
    """``pypicloud-tx make-config ARGS`` as a real process whose stdin is a pipe."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPC_")}
    env["PYTHONPATH"] = ROOT
    prefix = ["make-config"] if command == "pypicloud-tx" else []
    return subprocess.run(
        [os.path.join(BIN, command), *prefix, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def generated_password(stderr: str) -> str:
    """The generated password make-config printed (asserting it printed exactly one)."""
    found = GENERATED.findall(stderr)
    assert len(found) == 1, stderr
    return str(found[0][1])


def options(path: str) -> dict[str, str]:
    """The ``key = value`` lines of a written file (sections ignored)."""
    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
    return values


class Folder:
    mktemp: Any

    def folder(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path


class TemplateTests(Folder, SynchronousTestCase):
    """The three templates, without prompting (stdin is a pipe)."""

    def test_development(self) -> None:
        """The default template: file storage and SQLite beside the file, users in the file,
        anyone reads; a private file, nothing on stdout, the generated password on stderr
        once, and only its hash in the file."""
        folder = self.folder()
        path = os.path.join(folder, "server.ini")
        result = run(path, *FAST)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        password = generated_password(result.stderr)
        self.assertGreaterEqual(len(password), 20)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn(password, text)
        settings = load_settings(path, {})
        self.assertEqual(settings.storage.name, "file")
        self.assertEqual(settings.storage.options.dir, os.path.join(folder, "packages"))
        self.assertEqual(settings.cache.name, "sql")
        self.assertEqual(settings.cache.options.url, f"sqlite:///{folder}/db.sqlite")
        self.assertEqual(settings.access.name, "config")
        self.assertEqual(settings.access.options.admins, ("admin",))
        self.assertEqual(settings.default_read, ("everyone",))
        self.assertEqual(settings.default_write, ("authenticated",))
        self.assertFalse(settings.session_secure)
        self.assertEqual(settings.listen, "tcp:port=6543:interface=127.0.0.1")
        hashed = settings.access_lists.users["admin"]
        self.assertTrue(hashed.startswith("$6$rounds=1000$"), hashed)
        self.assertTrue(verify_password(password_context(), password, hashed))
        keys = [
            settings.session_validate_key,
            settings.session_encrypt_key,
            settings.signing_key,
        ]
        self.assertEqual(len(set(keys)), 3)
        for key in keys:
            self.assertGreaterEqual(len(key or ""), 40)
        self.assertIn(f"wrote {path} (mode 0600): development template", result.stderr)

    def test_secrets_differ(self) -> None:
        """Two runs never share a key or a password."""
        folder = self.folder()
        first, second = (os.path.join(folder, f"{n}.ini") for n in ("a", "b"))
        results = [run("-d", path, *FAST) for path in (first, second)]
        self.assertEqual([r.returncode for r in results], [0, 0])
        a, b = options(first), options(second)
        for key in ("session.validate_key", "session.encrypt_key", "auth.signing_key"):
            self.assertNotEqual(a[key], b[key])
        self.assertNotEqual(*(generated_password(r.stderr) for r in results))

    def test_production(self) -> None:
        """-p: logged-in readers, admins-only uploads, secure cookies, an explicit listen
        address, a day of download caching, comments pointing to the docs."""
        folder = self.folder()
        path = os.path.join(folder, "prod.ini")
        result = run("-p", path, *FAST)
        self.assertEqual(result.returncode, 0, result.stderr)
        settings = load_settings(path, {})
        self.assertEqual(settings.default_read, ("authenticated",))
        self.assertEqual(settings.default_write, ())
        self.assertTrue(settings.session_secure)
        self.assertEqual(settings.package_max_age, 86400)
        self.assertEqual(settings.storage.options.dir, "/var/lib/pypicloud/packages")
        self.assertEqual(settings.cache.options.url, "sqlite:////var/lib/pypicloud/db.sqlite")
        self.assertEqual(settings.listen, "tcp:port=6543:interface=127.0.0.1")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for doc in ("docs/deployment.md", "docs/configuration.md", "docs/web-ui.md"):
            self.assertIn(doc, text)
        self.assertIn("[server:main]\nhost = 127.0.0.1\nport = 6543\n", text)

    def test_test_template(self) -> None:
        """-t keeps packages and metadata in memory."""
        path = os.path.join(self.folder(), "test.ini")
        result = run("-t", path, *FAST)
        self.assertEqual(result.returncode, 0, result.stderr)
        settings = load_settings(path, {})
        self.assertEqual((settings.storage.name, settings.cache.name), ("memory", "memory"))
        self.assertEqual(settings.default_read, ("everyone",))

    def test_stdout(self) -> None:
        """Without FILE (or with -) the configuration goes to stdout, messages to stderr."""
        for args in ([], ["-"]):
            result = run("-d", *args, *FAST)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertTrue(result.stdout.startswith("# pypicloud-tx configuration"))
            self.assertIn("[pypicloud]\n", result.stdout)
            self.assertNotIn("[pypicloud]", result.stderr)
            self.assertIn("wrote stdout", result.stderr)
            self.assertNotIn(generated_password(result.stderr), result.stdout)

    def test_pypicloud_alias(self) -> None:
        """ppc-make-config is installed and takes pypicloud's -d/-t/-p and FILE."""
        path = os.path.join(self.folder(), "server.ini")
        result = run("-t", path, *FAST, command="ppc-make-config")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(load_settings(path, {}).storage.name, "memory")
        self.assertIn("--storage", run("--help", command="ppc-make-config").stdout)


class FlagTests(Folder, SynchronousTestCase):
    """Every question has a flag, and a bad value stops before anything is written."""

    def test_password(self) -> None:
        """--password and --password-stdin set the admin's password; only its hash is
        written and nothing generated is printed."""
        folder = self.folder()
        for args, stdin in [(["--password", "pw one"], ""), (["--password-stdin"], "pw two\n")]:
            path = os.path.join(folder, f"{len(stdin)}.ini")
            result = run(path, "--admin", "alice", *args, *FAST, stdin=stdin)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertNotIn("password:", result.stderr)
            expected = "pw one" if not stdin else "pw two"
            with open(path, encoding="utf-8") as f:
                self.assertNotIn(expected, f.read())
            settings = load_settings(path, {})
            self.assertEqual(settings.access.options.admins, ("alice",))
            hashed = settings.access_lists.users["alice"]
            self.assertTrue(verify_password(password_context(), expected, hashed))

    def test_object_storage_and_caches(self) -> None:
        """S3 with an endpoint and keys, GCS with a key file, Redis and DynamoDB caches:
        each written as the loader reads it."""
        folder = self.folder()
        s3 = os.path.join(folder, "s3.ini")
        result = run(
            *(s3, "--storage", "s3", "--bucket", "my-packages", "--region", "eu-west-1"),
            *("--endpoint-url", "http://127.0.0.1:9000", "--aws-access-key-id", "AKID"),
            *("--aws-secret-access-key", "s3-secret", "--cache", "redis"),
            *("--db-url", "redis://:pw@cache:6379/1", *FAST),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        settings = load_settings(s3, {})
        storage = settings.storage.options
        self.assertEqual(settings.storage.name, "s3")
        self.assertEqual(
            (storage.bucket, storage.region_name, storage.endpoint_url),
            ("my-packages", "eu-west-1", "http://127.0.0.1:9000"),
        )
        self.assertEqual(storage.addressing_style, "path")
        self.assertEqual(
            (storage.aws_access_key_id, storage.aws_secret_access_key), ("AKID", "s3-secret")
        )
        self.assertEqual(str(settings.cache.options.url), "redis://cache:6379/1")
        gcs = os.path.join(folder, "gcs.ini")
        result = run(
            *(gcs, "--storage", "gcs", "--bucket", "pkgs", "--gcp-credentials", "/etc/key.json"),
            *("--gcp-project", "proj", "--cache", "dynamo", "--db-region", "us-east-2", *FAST),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        settings = load_settings(gcs, {})
        storage = settings.storage.options
        self.assertEqual(
            (storage.bucket, storage.gcp_service_account_json_filename, storage.gcp_project_id),
            ("pkgs", "/etc/key.json", "proj"),
        )
        self.assertEqual(
            (settings.cache.name, settings.cache.options.region_name), ("dynamo", "us-east-2")
        )

    def test_percent_and_here(self) -> None:
        """A % in a value (a URL-encoded password) is written as %%, so the server reads the
        value as given; %(here)s stays the config file's folder."""
        folder = self.folder()
        path = os.path.join(folder, "server.ini")
        result = run(
            *(path, "--db-url", "postgresql://ppc:p%40ss@db/ppc", "--storage-dir"),
            *("%(here)s/pk%", *FAST),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        settings = load_settings(path, {})
        self.assertEqual(settings.cache.options.url, "postgresql://ppc:p%40ss@db/ppc")
        self.assertEqual(settings.storage.options.dir, f"{folder}/pk%")
        self.assertEqual(ini_value(" a%b %(here)s "), "a%%b %(here)s")
        shared = os.path.join(folder, "shared.ini")
        result = run(shared, "--db-url", "sqlite:///%(here)s/d%b.sqlite", "--access", "sql", *FAST)
        self.assertEqual(result.returncode, 0, result.stderr)
        settings = load_settings(shared, {})
        self.assertEqual(settings.access.options.db__url, f"sqlite:///{folder}/d%b.sqlite")
        self.assertTrue(os.path.exists(os.path.join(folder, "d%b.sqlite")))

    def test_listen(self) -> None:
        """--listen takes PORT, HOST:PORT and [IPv6]:PORT into [server:main]."""
        self.assertEqual(parse_listen("8080"), ("127.0.0.1", 8080))
        self.assertEqual(parse_listen("0.0.0.0:80"), ("0.0.0.0", 80))
        self.assertEqual(parse_listen("[::1]:6543"), ("::1", 6543))
        for bad in ("tcp:port=80", "tcp:80", "::1:80", "host:0", "host:70000", "a b:80", ""):
            self.assertRaises(ValueError, parse_listen, bad)
        path = os.path.join(self.folder(), "server.ini")
        result = run(path, "--listen", "[::1]:7000", *FAST)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(load_settings(path, {}).listen, "tcp6:port=7000:interface=\\:\\:1")

    def test_bad_values(self) -> None:
        """A bad flag value: exit 2, one line naming the flag, no file written."""
        folder = self.folder()
        path = os.path.join(folder, "server.ini")
        for args, flag in [
            (["--listen", "tcp:6543"], "--listen"),
            (["--storage", "s3", "--bucket", "Bad_Bucket"], "--bucket"),
            (["--storage", "s3"], "--bucket"),
            (["--admin", "two words"], "--admin"),
            (["--admin", "x=y"], "--admin"),
            (["--db-url", "not a url"], "--db-url"),
            (["--cache", "redis", "--db-url", "http://x"], "--db-url"),
            (["--storage-dir", "line\nbreak"], "--storage-dir"),
            (["--cache", "dynamo"], "--db-region"),
            (["--storage", "s3", "--bucket", "b12", "--aws-access-key-id", "x"], "--aws-secret"),
            (["--password", ""], "--password"),
        ]:
            # In this process (the checks come before any work): quicker than a process each.
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                status = main(["make-config", path, "--no-input", *args, *FAST])
            self.assertEqual(status, 2, (args, stderr.getvalue()))
            self.assertEqual(stderr.getvalue().count("\n"), 1, stderr.getvalue())
            self.assertTrue(stderr.getvalue().startswith(f"error: {flag}"), stderr.getvalue())
            self.assertFalse(os.path.exists(path))
        result = run(path, "--listen", "nowhere", *FAST)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(
            result.stderr,
            "error: --listen: 'nowhere': expected [HOST:]PORT; "
            "give other Twisted endpoints to twist --listen\n",
        )
        empty = run(path, "--password-stdin", *FAST, stdin="\n")
        self.assertEqual(empty.returncode, 2)
        self.assertFalse(os.path.exists(path))

    def test_overwrite(self) -> None:
        """An existing file is left alone (exit 1) unless --force, which replaces it with a
        private one even when the old one was readable by all."""
        path = os.path.join(self.folder(), "server.ini")
        with open(path, "w") as f:
            f.write("keep me\n")
        os.chmod(path, 0o644)
        result = run(path, *FAST)
        self.assertEqual(result.returncode, 1)
        self.assertIn("exists", result.stderr)
        self.assertIn("--force", result.stderr)
        with open(path) as f:
            self.assertEqual(f.read(), "keep me\n")
        forced = run(path, "--force", *FAST)
        self.assertEqual(forced.returncode, 0, forced.stderr)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(load_settings(path, {}).storage.name, "file")
        self.assertEqual([n for n in os.listdir(os.path.dirname(path))], ["server.ini"])

    def test_sql_access(self) -> None:
        """--access sql: the admin is created in auth.db.url (no user line in the file) and
        logs in with the password; a second run leaves the existing user alone and prints no
        password that would not work.  Without FILE it is refused."""
        folder = self.folder()
        path = os.path.join(folder, "server.ini")
        result = run(path, "--access", "sql", "--admin", "root", *FAST)
        self.assertEqual(result.returncode, 0, result.stderr)
        password = generated_password(result.stderr)
        self.assertIn("created the admin root in auth.db.url", result.stderr)
        settings = load_settings(path, {})
        self.assertEqual(settings.access.name, "sql")
        self.assertEqual(settings.access.options.db__url, f"sqlite:///{folder}/db.sqlite")
        self.assertEqual(dict(settings.access_lists.users), {})
        access = SQLAccessBackend.from_config(
            settings.access.options, Runtime.synchronous(settings=settings)
        )
        self.successResultOf(access.start())
        self.addCleanup(access.stop)
        self.assertTrue(self.successResultOf(access.verify_user("root", password)))
        self.assertTrue(self.successResultOf(access.is_admin("root")))
        again = run(path, "--force", "--access", "sql", "--admin", "root", *FAST)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("already exists", again.stderr)
        self.assertEqual(GENERATED.findall(again.stderr), [])
        self.assertTrue(self.successResultOf(access.verify_user("root", password)))
        refused = run("--access", "sql", *FAST)
        self.assertEqual(refused.returncode, 2)
        self.assertIn("--access sql needs FILE", refused.stderr)

    def test_help(self) -> None:
        """--help lists pypicloud's template flags and a flag for every question."""
        text = run("--help").stdout
        for flag in (
            "-d", "-t", "-p", "--no-input", "--force", "--storage", "--bucket", "--region",
            "--endpoint-url", "--cache", "--db-url", "--db-region", "--access",
            "--auth-db-url", "--admin", "--password", "--password-stdin", "--listen",
        ):  # fmt: skip
            self.assertIn(flag, text)


# -- on a terminal ------------------------------------------------------------------------------


class Terminal:
    """make-config with stdin and stderr on a pseudo-terminal that is its controlling
    terminal (so getpass reads from it without echo), stdout on a pipe."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PPC_")}

        def controlling_terminal() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(
            [os.path.join(BIN, "pypicloud-tx"), "make-config", *args],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=env,
            start_new_session=True,
            preexec_fn=controlling_terminal,
        )
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 30.0) -> None:
        """Read the terminal until ``text`` has appeared (after what was matched before)."""
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"waited for {text!r}; the terminal shows:\n{self.seen}")
            ready, _, _ = select.select([self.master], [], [], min(left, 1.0))
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the process closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"waited for {text!r}; the terminal closed:\n{self.seen}")
                self.seen += chunk.decode("utf-8", "replace").replace("\r\n", "\n")
        self.seen = self.seen.partition(text)[2]

    def answer(self, prompt: str, text: str) -> None:
        self.expect(prompt)
        os.write(self.master, text.encode() + b"\n")

    def finish(self) -> tuple[int, str, str]:
        """Exit status, stdout, and the rest of the terminal's output."""
        out = self.process.stdout.read().decode() if self.process.stdout else ""
        rest = []
        while True:
            ready, _, _ = select.select([self.master], [], [], 5.0)
            if not ready:
                break
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                break
            if not chunk:
                break
            rest.append(chunk.decode("utf-8", "replace"))
        status = self.process.wait(timeout=60)
        os.close(self.master)
        return status, out, "".join(rest).replace("\r\n", "\n")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(60)


class TerminalTests(Folder, SynchronousTestCase):
    """Every question is asked on a terminal, defaults in brackets."""

    def terminal(self, *args: str) -> Terminal:
        term = Terminal(*args)
        self.addCleanup(term.kill)
        return term

    def test_questions(self) -> None:
        """The template, backends, admin, password (typed twice without echo, asked again
        when the two differ) and listen address are asked; wrong choices are asked again;
        the answers end up in the file."""
        folder = self.folder()
        path = os.path.join(folder, "server.ini")
        term = self.terminal(path, *FAST)
        term.answer("choice [development]: ", "3")
        term.expect("Where do you want to store your packages?  [1] file  [2] s3")
        term.answer("choice [file]: ", "9")
        term.expect("choose one of 1 to 4")
        term.answer("choice [file]: ", "")
        term.answer("Package folder [/var/lib/pypicloud/packages]: ", f"{folder}/pk")
        term.answer("choice [sql]: ", "redis")
        term.answer("Redis URL [redis://127.0.0.1:6379/0]: ", "")
        term.answer("choice [config]: ", "1")
        term.answer("Admin username [admin]: ", "alice")
        term.answer("Admin password (empty: generate one): ", "first try")
        term.answer("Again: ", "second try")
        term.expect("the passwords do not match")
        term.answer("Admin password (empty: generate one): ", "s3cret pw")
        term.answer("Again: ", "s3cret pw")
        term.answer("Listen on [HOST:]PORT [127.0.0.1:6543]: ", "0.0.0.0:8080")
        status, out, rest = term.finish()
        self.assertEqual(status, 0, rest)
        self.assertEqual(out, "")
        self.assertIn(f"wrote {path} (mode 0600): production template", rest)
        self.assertNotIn("s3cret", term.seen + rest)  # never echoed
        settings = load_settings(path, {})
        self.assertEqual(settings.storage.options.dir, f"{folder}/pk")
        self.assertEqual(str(settings.cache.options.url), "redis://127.0.0.1:6379/0")
        self.assertEqual(settings.default_read, ("authenticated",))
        self.assertEqual(settings.listen, "tcp:port=8080:interface=0.0.0.0")
        hashed = settings.access_lists.users["alice"]
        self.assertTrue(verify_password(password_context(), "s3cret pw", hashed))

    def test_overwrite_question(self) -> None:
        """An existing file: asked first whether to overwrite; no (the default) leaves it."""
        path = os.path.join(self.folder(), "server.ini")
        with open(path, "w") as f:
            f.write("keep me\n")
        term = self.terminal(path, "--storage", "memory")
        term.answer(f"{path} exists. Overwrite? [y/N]: ", "")
        status, _, rest = term.finish()
        self.assertEqual(status, 1)
        self.assertIn("nothing was written", rest)
        with open(path) as f:
            self.assertEqual(f.read(), "keep me\n")

    def test_no_input(self) -> None:
        """--no-input on a terminal asks nothing: defaults and flags, a generated password."""
        path = os.path.join(self.folder(), "server.ini")
        term = self.terminal(path, "--no-input", "-t", *FAST)
        status, _, rest = term.finish()
        self.assertEqual(status, 0, rest)
        self.assertNotIn("?", rest)
        generated_password(rest)
        self.assertEqual(load_settings(path, {}).storage.name, "memory")


# -- the round trip -----------------------------------------------------------------------------


class GeneratedServer(IndexProcess):
    """``twist pypicloud`` on a generated config, listening where its [server:main] says."""

    def command(self) -> list[str]:
        return [tool("twist"), "--log-format=text", "pypicloud", "--config", self.config_path]


class RoundTripTests(Folder, SynchronousTestCase):
    """Each template's config starts the server, and its admin logs in and uploads."""

    def start(self, template: str, *args: str) -> tuple[GeneratedServer, str]:
        folder = self.folder()
        port = free_port()
        path = os.path.join(folder, "generated.ini")
        result = run(template, path, "--listen", f"127.0.0.1:{port}", *args, *FAST)
        self.assertEqual(result.returncode, 0, result.stderr)
        password = generated_password(result.stderr)
        check = subprocess.run(
            [os.path.join(BIN, "pypicloud-tx"), "check", path],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        server = GeneratedServer(folder)
        server.config_path = path
        server.port = port
        server.start()
        self.addCleanup(server.kill)
        return server, password

    def upload(self, server: GeneratedServer, password: str) -> int:
        filename, data = make_wheel("roundtrip", "1.0")
        content_type, body = encode_upload(
            twine_fields(filename, data, "roundtrip", "1.0"), (filename, data)
        )
        headers = {"Content-Type": content_type, "Authorization": basic_auth("admin", password)}
        return http_request(server.port, "POST", "/legacy/", body, headers).status

    def test_templates(self) -> None:
        """development, test and production: the server starts on the generated listen
        address; the admin's generated password uploads; a wrong one is refused; reading
        follows the template (anyone in development and test, logged-in only in
        production)."""
        for template, args, anonymous in [
            ("-d", (), 200),
            ("-t", (), 200),
            (
                "-p",
                ("--storage-dir", "%(here)s/packages", "--db-url", "sqlite:///%(here)s/db.sqlite"),
                401,
            ),
        ]:
            server, password = self.start(template, *args)
            self.assertEqual(self.upload(server, password), 200, server.log_tail())
            self.assertEqual(self.upload(server, password + "x"), 401)
            as_admin = {"Authorization": basic_auth("admin", password)}
            page = http_request(server.port, "GET", "/simple/roundtrip/", headers=as_admin)
            self.assertEqual(page.status, 200)
            self.assertIn("roundtrip-1.0-py3-none-any.whl", page.text)
            anonymous_page = http_request(server.port, "GET", "/simple/roundtrip/")
            self.assertEqual(anonymous_page.status, anonymous)
            server.stop_cleanly()
