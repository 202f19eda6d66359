"""``pypicloud-tx check CONFIG``: every backend started and asked, one line each, and an exit
status a deploy pipeline can trust."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.backends.storage.memory import MemoryStorage
from pypicloud_tx.config.loader import parse_settings
from pypicloud_tx.errors import BackendUnavailable
from pypicloud_tx.runtime import Runtime
from pypicloud_tx.scripts.check import Checker, CheckResult, check_listen, describe, safe_url
from tests.e2e.server import cheap_hash, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
#: How long a check run may take at most in these tests (they use short --timeout values).
RUN_TIMEOUT = 60


# -- backends with a known problem, chosen by dotted path -------------------------------------


class NeverStarts(MemoryStorage):
    """A storage whose ``start()`` never fires (a service that accepts and never answers)."""

    def start(self) -> Deferred[None]:
        return Deferred()


class BlockedThread(MemoryStorage):
    """A storage whose ``start()`` blocks a pool thread far longer than any test."""

    runtime: Any = None

    @classmethod
    def from_config(cls, options: MemoryStorage.Options, runtime: Any) -> BlockedThread:
        storage = cls()
        storage.runtime = runtime
        return storage

    def start(self) -> Deferred[None]:
        return self.runtime.threads("blocked", 1)(threading.Event().wait, 3600)


class Unhealthy(MemoryStorage):
    """A storage that starts and then says it is not well."""

    def check_health(self) -> Deferred[tuple[bool, str]]:
        return succeed((False, "the disk is full"))


class CannotBuild(MemoryStorage):
    """A storage whose construction fails the way a misconfigured vendor client does."""

    @classmethod
    def from_config(cls, options: MemoryStorage.Options, runtime: Any) -> CannotBuild:
        raise BackendUnavailable("the credentials file /etc/nope.json cannot be read")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """``pypicloud-tx check ARGS`` as a real process (tests/ importable, no PPC_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPC_")}
    env["PYTHONPATH"] = ROOT
    return subprocess.run(
        [os.path.join(BIN, "pypicloud-tx"), "check", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


class ConfigFiles:
    """Writes configuration files into a folder of the test's own."""

    mktemp: Any

    def write(self, text: str, name: str = "server.ini") -> str:
        folder = getattr(self, "_folder", None)
        if folder is None:
            folder = self._folder = os.path.abspath(self.mktemp())
            os.makedirs(folder)
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
        return path


class CommandTests(ConfigFiles, SynchronousTestCase):
    """The command's lines, JSON and exit statuses."""

    def test_all_ok(self) -> None:
        """A working config: one ok line per backend and the listen endpoint, in order,
        nothing on stderr, exit 0; the storage folder is created as the server would."""
        path = self.write(f"""\
            [pypicloud]
            storage.dir = %(here)s/packages
            db.url = sqlite:///%(here)s/db.sqlite
            auth.admins = admin
            user.admin = {cheap_hash("pw")}

            [server:main]
            host = 127.0.0.1
            port = 7654
            """)
        here = os.path.dirname(path)
        result = run(path)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(
            result.stdout.splitlines(),
            [
                f"storage: ok (file {here}/packages)",
                f"cache: ok (sql sqlite:///{here}/db.sqlite)",
                "access: ok (config 1 user)",
                "listen: ok (tcp:port=7654:interface=127.0.0.1)",
            ],
        )
        self.assertEqual(result.stderr, "")
        self.assertTrue(os.path.isdir(os.path.join(here, "packages")))

    def test_json(self) -> None:
        """--json prints one object: ok, and each check with backend, detail and message."""
        path = self.write("""\
            [pypicloud]
            pypi.storage = memory
            pypi.db = memory
            """)
        result = run("--json", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        report = json.loads(result.stdout)
        self.assertEqual(report["ok"], True)
        self.assertEqual(report["config"], path)
        self.assertEqual(list(report["checks"]), ["storage", "cache", "access", "listen"])
        self.assertEqual(
            report["checks"]["cache"],
            {"ok": True, "backend": "memory", "detail": "memory", "message": ""},
        )
        self.assertEqual(report["checks"]["listen"]["backend"], "tcp")

    def test_unreachable_services(self) -> None:
        """A storage folder that cannot be created, Redis and PostgreSQL on closed ports:
        a FAILED line for each with the reason, exit 1, and the passwords of the URLs
        appear nowhere."""
        closed = free_port()
        blocker = self.write("not a folder", name="blocker")
        path = self.write(f"""\
            [pypicloud]
            storage.dir = {blocker}/packages
            pypi.db = redis
            db.url = redis://:redis-secret@127.0.0.1:{closed}/0
            pypi.auth = sql
            auth.db.url = postgresql://u:pg-secret@127.0.0.1:{closed}/db
            """)
        result = run("--timeout", "20", path)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 4, result.stdout)
        self.assertTrue(lines[0].startswith("storage: FAILED: cannot start: "), lines[0])
        self.assertTrue(lines[0].endswith(f"(file {blocker}/packages)"), lines[0])
        self.assertTrue(lines[1].startswith("cache: FAILED: "), lines[1])
        self.assertIn("unreachable", lines[1])
        self.assertTrue(lines[1].endswith(f"(redis redis://127.0.0.1:{closed}/0)"), lines[1])
        self.assertTrue(lines[2].startswith("access: FAILED: "), lines[2])
        self.assertTrue(lines[2].endswith(f"(sql postgresql://u:***@127.0.0.1:{closed}/db)"))
        self.assertEqual(lines[3], "listen: ok (tcp:port=6543:interface=127.0.0.1)")
        for secret in ("redis-secret", "pg-secret"):
            self.assertNotIn(secret, result.stdout + result.stderr)
        report = json.loads(run("--json", "--timeout", "20", path).stdout)
        self.assertFalse(report["ok"])
        self.assertEqual(
            [name for name, c in report["checks"].items() if not c["ok"]],
            ["storage", "cache", "access"],
        )

    def test_unhealthy_and_unbuildable(self) -> None:
        """A backend that says it is unhealthy, or that cannot even be built: its reason on
        its FAILED line, exit 1."""
        for cls, expected in [
            ("Unhealthy", "storage: FAILED: the disk is full (tests.scripts.test_check.Unhealthy)"),
            (
                "CannotBuild",
                "storage: FAILED: cannot be built: the credentials file /etc/nope.json cannot "
                "be read (tests.scripts.test_check.CannotBuild)",
            ),
        ]:
            path = self.write(
                f"[pypicloud]\npypi.storage = tests.scripts.test_check.{cls}\npypi.db = memory\n"
            )
            result = run(path)
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertEqual(result.stdout.splitlines()[0], expected)
            self.assertEqual(result.stdout.count(": ok ("), 3, result.stdout)

    def test_timeout(self) -> None:
        """A backend that never answers fails after --timeout, also when a thread is stuck
        in a blocking call: the command still reports and exits 1 promptly."""
        for cls in ("NeverStarts", "BlockedThread"):
            path = self.write(
                f"[pypicloud]\npypi.storage = tests.scripts.test_check.{cls}\npypi.db = memory\n"
            )
            started = time.monotonic()
            result = run("--timeout", "0.5", path)
            self.assertLess(time.monotonic() - started, 30)
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertEqual(
                result.stdout.splitlines()[0],
                "storage: FAILED: no answer within 0.5s (is the service reachable?) "
                f"(tests.scripts.test_check.{cls})",
            )
            self.assertIn("cache: ok (memory)", result.stdout)

    def test_bad_config(self) -> None:
        """A config that does not load: exit 2, its one-line message on stderr, nothing on
        stdout; with --json a JSON error object on stdout too."""
        path = self.write("[pypicloud]\npypi.allow_overwrite = perhaps\n")
        result = run(path)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stdout, "")
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        self.assertTrue(result.stderr.startswith("error: pypi.allow_overwrite: "), result.stderr)
        as_json = run("--json", path)
        self.assertEqual(as_json.returncode, 2)
        report = json.loads(as_json.stdout)
        self.assertEqual(report["ok"], False)
        self.assertTrue(report["error"].startswith("pypi.allow_overwrite: "))
        missing = run("/nonexistent/server.ini")
        self.assertEqual(missing.returncode, 2)
        self.assertIn("/nonexistent/server.ini", missing.stderr)

    def test_listen(self) -> None:
        """--listen is checked as twist checks it: a TLS endpoint whose key is missing fails
        (exit 1); a systemd socket is accepted without opening it."""
        path = self.write("[pypicloud]\npypi.storage = memory\npypi.db = memory\n")
        bad = run("--listen", "ssl:8443:privateKey=/nonexistent/key.pem", path)
        self.assertEqual(bad.returncode, 1)
        last = bad.stdout.splitlines()[-1]
        self.assertTrue(last.startswith("listen: FAILED: --listen ssl:8443:"), last)
        systemd = run("--listen", "systemd:domain=INET:index=0", path)
        self.assertEqual(systemd.returncode, 0, systemd.stdout)
        self.assertIn("listen: ok (systemd:domain=INET:index=0;", systemd.stdout)

    def test_help(self) -> None:
        """check --help describes the options and the exit statuses."""
        result = run("--help")
        self.assertEqual(result.returncode, 0)
        text = " ".join(result.stdout.split())
        for words in ("--json", "--timeout", "--listen", "Exit status 0 when everything is ok"):
            self.assertIn(words, text)


class CheckerTests(SynchronousTestCase):
    """The checks themselves, in memory, on a test clock."""

    def settings(self, **raw: str) -> Any:
        return parse_settings({"pypi.storage": "memory", "pypi.db": "memory", **raw}, here="/srv")

    def test_order_and_results(self) -> None:
        """Results come in storage, cache, access, listen order, each emitted as known."""
        settings = self.settings()
        clock = Clock()
        checker = Checker(settings, Runtime.synchronous(clock, settings=settings), clock)
        seen: list[CheckResult] = []
        results = self.successResultOf(Deferred.fromCoroutine(checker.run(seen.append)))
        self.assertEqual(results, seen)
        self.assertEqual([r.label for r in results], ["storage", "cache", "access", "listen"])
        self.assertTrue(all(r.ok for r in results))
        self.assertEqual(len(checker.started), 3)
        self.successResultOf(Deferred.fromCoroutine(checker.stop()))

    def test_timeout_on_clock(self) -> None:
        """A backend that does not answer is reported once the timeout has passed on the
        clock, and marked stuck; the others are reported as soon as it is; the progress
        callback names what is still running meanwhile."""
        settings = self.settings(**{"pypi.storage": "tests.scripts.test_check.NeverStarts"})
        clock = Clock()
        waiting: list[list[str]] = []
        checker = Checker(
            settings, Runtime.synchronous(clock, settings=settings), clock, 12.0, waiting.append
        )
        seen: list[CheckResult] = []
        done = Deferred.fromCoroutine(checker.run(seen.append))
        clock.advance(6)
        self.assertNoResult(done)
        self.assertEqual(seen, [])
        self.assertEqual(waiting, [["storage"]])
        clock.advance(6)
        results = self.successResultOf(done)
        self.assertEqual(results[0].message, "no answer within 12s (is the service reachable?)")
        self.assertFalse(results[0].ok)
        self.assertEqual(checker.stuck, ["storage"])
        self.assertEqual([r.ok for r in results[1:]], [True, True, True])

    def test_listen(self) -> None:
        """The listen check takes --listen, else [server:main], else twist's default."""
        settings = self.settings()
        self.assertEqual(check_listen(settings).detail, "tcp:port=6543:interface=127.0.0.1")
        self.assertEqual(check_listen(settings, "tcp:8080").detail, "tcp:8080")
        self.assertFalse(check_listen(settings, "tcp:nope").ok)
        self.assertFalse(check_listen(settings, "bogus:1").ok)


class DescribeTests(SynchronousTestCase):
    """What a line says about where a backend points, without secrets."""

    def test_safe_url(self) -> None:
        """Passwords become ***; queries and fragments (which may carry secrets) go."""
        self.assertEqual(
            safe_url("postgresql://u:p%40ss@db:5432/ppc?sslmode=require&password=x"),
            "postgresql://u:***@db:5432/ppc",
        )
        self.assertEqual(safe_url("redis://:pw@h/0"), "redis://:***@h/0")
        self.assertEqual(safe_url("mysql://u@h/db"), "mysql://u@h/db")
        self.assertEqual(safe_url("sqlite:////srv/db.sqlite"), "sqlite:////srv/db.sqlite")
        self.assertEqual(safe_url("sqlite://"), "sqlite://")
        self.assertEqual(safe_url("not a url"), "(not a URL)")

    def test_backends(self) -> None:
        """Each kind of backend is described by its folder, bucket, tables or URL; keys and
        passwords never appear."""
        settings = parse_settings(
            {
                "pypi.storage": "s3",
                "storage.bucket": "pkgs",
                "storage.endpoint_url": "https://s3.example.com",
                "storage.region_name": "eu-west-1",
                "storage.aws_access_key_id": "AKIDSECRETID",
                "storage.aws_secret_access_key": "very-secret",
                "pypi.db": "redis",
                "db.url": "redis://:redis-pw@cache:6379/2",
                "pypi.auth": "sql",
                "auth.db.url": "postgresql://ppc:db-pw@db/ppc",
            },
            here="/etc/ppc",
        )
        self.assertEqual(
            describe(settings.storage, settings),
            "s3 bucket pkgs at https://s3.example.com in eu-west-1",
        )
        self.assertEqual(describe(settings.cache, settings), "redis redis://cache:6379/2")
        self.assertEqual(describe(settings.access, settings), "sql postgresql://ppc:***@db/ppc")
        other = parse_settings(
            {
                "storage.dir": "packages",
                "pypi.db": "dynamo",
                "db.region_name": "us-east-2",
                "db.namespace": "prod-",
                "user.a": cheap_hash("a"),
                "user.b": cheap_hash("b"),
            },
            here="/etc/ppc",
        )
        self.assertEqual(describe(other.storage, other), "file /etc/ppc/packages")
        self.assertEqual(
            describe(other.cache, other),
            "dynamo tables prod-DynamoPackage, prod-PackageSummary in us-east-2",
        )
        self.assertEqual(describe(other.access, other), "config 2 users")


class RealServicesTests(ConfigFiles, SynchronousTestCase):
    """check against the real services of tests/services.sh, each in a namespace of its own."""

    def test_s3_redis(self) -> None:
        """S3 (SeaweedFS, a new bucket that start() creates) and Redis: all ok, exit 0; the
        S3 secret key is not printed."""
        from tests.realservices import require_service
        from tests.s3buckets import new_bucket_name, raw_client, remove_bucket, seaweed

        s3 = seaweed()
        redis_url = require_service("PPC_TEST_REDIS_URL", "Redis")
        bucket = new_bucket_name()
        client = raw_client(s3)
        self.addCleanup(remove_bucket, client, bucket)
        path = self.write(f"""\
            [pypicloud]
            pypi.storage = s3
            storage.bucket = {bucket}
            storage.endpoint_url = {s3["endpoint_url"]}
            storage.aws_access_key_id = {s3["aws_access_key_id"]}
            storage.aws_secret_access_key = {s3["aws_secret_access_key"]}
            storage.region_name = us-east-1
            storage.addressing_style = path
            pypi.db = redis
            db.url = {redis_url}
            db.prefix = ppc-check-{uuid.uuid4().hex[:8]}:
            """)
        result = run("--timeout", "30", path)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(
            lines[0], f"storage: ok (s3 bucket {bucket} at {s3['endpoint_url']} in us-east-1)"
        )
        self.assertTrue(lines[1].startswith("cache: ok (redis redis://127.0.0.1:"), lines[1])
        if s3["aws_secret_access_key"]:
            self.assertNotIn(s3["aws_secret_access_key"], result.stdout + result.stderr)
        client.head_bucket(Bucket=bucket)  # start() created it, as the server would

    def test_gcs_dynamo(self) -> None:
        """GCS (fake-gcs-server) and DynamoDB (moto_server) in namespaces of their own: ok."""
        from urllib.parse import urlsplit

        import boto3

        from tests.gcsbuckets import fakegcs, write_service_account_key
        from tests.gcsbuckets import new_bucket_name as gcs_bucket_name
        from tests.gcsbuckets import raw_client as gcs_client
        from tests.gcsbuckets import remove_bucket as remove_gcs_bucket
        from tests.realservices import require_service

        gcs = fakegcs()
        aws = urlsplit(require_service("PPC_TEST_AWS_URL", "moto_server (DynamoDB)"))
        bucket = gcs_bucket_name()
        key = write_service_account_key(os.path.abspath(self.mktemp()))
        self.addCleanup(remove_gcs_bucket, gcs_client(gcs), bucket)
        namespace = f"ppc-check-{uuid.uuid4().hex[:8]}-"
        dynamo = boto3.client(
            "dynamodb",
            endpoint_url=aws.geturl(),
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.addCleanup(dynamo.close)

        def drop_tables() -> None:
            for name in dynamo.list_tables(Limit=100)["TableNames"]:
                if name.startswith(namespace):
                    dynamo.delete_table(TableName=name)

        self.addCleanup(drop_tables)
        path = self.write(f"""\
            [pypicloud]
            pypi.storage = gcs
            storage.bucket = {bucket}
            storage.gcp_api_endpoint = {gcs["gcp_api_endpoint"]}
            storage.gcp_project_id = ppc-tests
            storage.gcp_service_account_json_filename = {key}
            pypi.db = dynamo
            db.host = {aws.hostname}
            db.port = {aws.port}
            db.namespace = {namespace}
            db.aws_access_key_id = testing
            db.aws_secret_access_key = testing
            """)
        result = run("--timeout", "30", path)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(
            lines[0], f"storage: ok (gcs bucket {bucket} at {gcs['gcp_api_endpoint']})"
        )
        self.assertEqual(
            lines[1],
            f"cache: ok (dynamo tables {namespace}DynamoPackage, {namespace}PackageSummary "
            f"at {aws.hostname}:{aws.port})",
        )
