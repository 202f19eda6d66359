"""The AWS Secrets Manager access backend against moto_server on 127.0.0.1.

Each test uses secrets of its own (a random name, force-deleted afterwards).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pypicloud_tx.backends._threads import ThreadPoolService
from pypicloud_tx.backends.access.aws_secrets_manager import (
    CACHE_SECONDS,
    AWSSecretsManagerAccessBackend,
    AWSSecretsManagerOptions,
    make_client,
)
from pypicloud_tx.config.loader import parse_settings
from pypicloud_tx.errors import BackendUnavailable, ConfigError
from pypicloud_tx.runtime import Runtime
from tests.realservices import require_service

from .conformance import IMutableAccessConformance, cheap_hash

R = frozenset({"read"})
RW = frozenset({"read", "write"})
#: moto accepts any credentials.
CREDENTIALS = {
    "region_name": "us-east-1",
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}
#: Short timeouts and no retries, for the tests of failures.
QUICK = Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})


def manual_secret() -> dict[str, Any]:
    """The manual's sample secret (§1.6.5) with real hashes (the manual's text itself has
    trailing commas and a missing comma, which no JSON reader accepts)."""
    return {
        "users": {f"user{i}": cheap_hash(f"pass{i}") for i in range(1, 6)},
        "groups": {"admins": ["user1", "user2"], "group1": ["user3"]},
        "admins": ["user1"],
        "packages": {
            "mypackage": {
                "groups": {"group1": ["read", "write"], "group2": ["read"], "group3": []},
                "users": {
                    "user1": ["read", "write"],
                    "user2": ["read"],
                    "user3": [],
                    "user5": ["read"],
                },
            }
        },
    }


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def without_aws_environment(test: SynchronousTestCase) -> None:
    """For the rest of ``test``: no AWS_* variables, no AWS config or credentials files, and
    no instance metadata lookups (which would leave 127.0.0.1)."""
    saved = dict(os.environ)

    def restore() -> None:
        os.environ.clear()
        os.environ.update(saved)

    test.addCleanup(restore)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            del os.environ[name]
    missing = test.mktemp()
    os.environ.update(
        AWS_CONFIG_FILE=missing,
        AWS_SHARED_CREDENTIALS_FILE=missing,
        AWS_EC2_METADATA_DISABLED="true",
    )


class SecretsCase(SynchronousTestCase):
    """Builds backends on moto, on the synchronous runtime with a fake clock."""

    def setUp(self) -> None:
        self.url = require_service("PPC_TEST_AWS_URL", "the AWS endpoint (moto_server)")
        self.clock = Clock()
        self.client = make_client(self.options("unused"), QUICK)
        super().setUp()

    def options(self, secret_id: str, **options: Any) -> AWSSecretsManagerOptions:
        values = {"rounds": 1000, "endpoint_url": self.url, **CREDENTIALS, **options}
        return AWSSecretsManagerOptions(secret_id=secret_id, **values)

    def new_secret_id(self) -> str:
        """A name no other test uses; the secret (if made) is deleted after the test."""
        secret_id = f"ppc-test-auth-{uuid.uuid4().hex}"
        self.addCleanup(self._delete, secret_id)
        return secret_id

    def _delete(self, secret_id: str) -> None:
        with contextlib.suppress(ClientError):
            self.client.delete_secret(SecretId=secret_id, ForceDeleteWithoutRecovery=True)

    def build(self, secret_id: str, **options: Any) -> AWSSecretsManagerAccessBackend:
        return AWSSecretsManagerAccessBackend.from_config(
            self.options(secret_id, **options), Runtime.synchronous(reactor=self.clock)
        )

    def stored(self, secret_id: str) -> Any:
        """What the secret holds, read straight from the service."""
        return json.loads(self.client.get_secret_value(SecretId=secret_id)["SecretString"])

    def exists(self, secret_id: str) -> bool:
        try:
            self.client.describe_secret(SecretId=secret_id)
        except ClientError as e:
            self.assertEqual(e.response["Error"]["Code"], "ResourceNotFoundException")
            return False
        return True


class ConformanceTests(IMutableAccessConformance, SecretsCase):
    """AWSSecretsManagerAccessBackend passes the shared suites."""

    def make_backend(self, data: dict[str, Any]) -> AWSSecretsManagerAccessBackend:
        backend = self.build(self.new_secret_id())
        self.successResultOf(backend.load(data))
        return backend


class SecretTests(SecretsCase):
    """What the backend reads from and writes to the secret."""

    def test_reads_pypicloud_secret(self) -> None:
        """A secret in pypicloud's format (the manual's sample) is read as pypicloud reads it:
        empty permission lists grant nothing, ``admins`` lists the admins, the group named
        "admins" is an ordinary group."""
        secret_id = self.new_secret_id()
        self.client.create_secret(Name=secret_id, SecretString=json.dumps(manual_secret()))
        backend = self.build(secret_id)
        self.assertIs(self.successResultOf(backend.verify_user("user3", "pass3")), True)
        self.assertIs(self.successResultOf(backend.verify_user("user3", "pass4")), False)
        self.assertIs(self.successResultOf(backend.is_admin("user1")), True)
        self.assertIs(self.successResultOf(backend.is_admin("user2")), False)
        self.assertEqual(self.successResultOf(backend.groups()), ["admins", "group1"])
        self.assertEqual(self.successResultOf(backend.groups("user2")), ["admins"])
        self.assertEqual(
            self.successResultOf(backend.user_permissions("MyPackage")),
            {"user1": RW, "user2": R, "user5": R},
        )
        self.assertEqual(
            self.successResultOf(backend.group_permissions("mypackage")),
            {"group1": RW, "group2": R},
        )
        self.assertEqual(
            [u["username"] for u in self.successResultOf(backend.user_data())],
            ["user1", "user2", "user3", "user4", "user5"],
        )
        self.assertEqual(self.successResultOf(backend.pending_users()), [])
        self.assertIs(self.successResultOf(backend.allow_register()), False)

    def test_writes_what_pypicloud_reads(self) -> None:
        """After a change the secret keeps pypicloud's layout (users as name -> hash, admins
        as a list, packages with both "groups" and "users"), so pypicloud can still use it."""
        secret_id = self.new_secret_id()
        original = manual_secret()
        self.client.create_secret(Name=secret_id, SecretString=json.dumps(original))
        backend = self.build(secret_id)
        self.successResultOf(backend.set_password("user4", "new4"))
        self.successResultOf(backend.edit_user_permission("Other_Pkg", "user4", "read", True))
        stored = self.stored(secret_id)
        self.assertEqual(list(stored["users"]), list(original["users"]))
        self.assertEqual(stored["users"]["user1"], original["users"]["user1"])
        self.assertNotEqual(stored["users"]["user4"], original["users"]["user4"])
        self.assertEqual(stored["admins"], ["user1"])
        self.assertEqual(stored["groups"], original["groups"])
        self.assertEqual(
            stored["packages"],
            {
                "mypackage": {
                    "groups": {"group1": ["read", "write"], "group2": ["read"]},
                    "users": {"user1": ["read", "write"], "user2": ["read"], "user5": ["read"]},
                },
                "other-pkg": {"groups": {}, "users": {"user4": ["read"]}},
            },
        )
        self.assertIs(self.successResultOf(backend.verify_user("user4", "new4")), True)

    def test_created_on_first_write(self) -> None:
        """A missing secret reads as an empty document (and is healthy); reading does not
        create it; the first change creates it."""
        secret_id = self.new_secret_id()
        backend = self.build(secret_id)
        self.assertEqual(self.successResultOf(backend.user_data()), [])
        self.assertEqual(self.successResultOf(backend.groups()), [])
        self.assertIs(self.successResultOf(backend.verify_user("admin", "pw")), False)
        self.assertEqual(self.successResultOf(backend.check_health()), (True, ""))
        self.assertFalse(self.exists(secret_id))
        self.successResultOf(backend.create_user("admin", "pw", admin=True))
        self.assertTrue(self.exists(secret_id))
        stored = self.stored(secret_id)
        self.assertEqual(list(stored["users"]), ["admin"])
        self.assertEqual(stored["admins"], ["admin"])
        self.assertIs(self.successResultOf(backend.verify_user("admin", "pw")), True)

    def test_kms_key(self) -> None:
        """auth.kms_key_id is given to Secrets Manager when the secret is created."""
        secret_id = self.new_secret_id()
        backend = self.build(secret_id, kms_key_id="alias/ppc-test-key")
        self.successResultOf(backend.create_group("devs"))
        described = self.client.describe_secret(SecretId=secret_id)
        self.assertEqual(described["KmsKeyId"], "alias/ppc-test-key")

    def test_not_json(self) -> None:
        """A secret that is not JSON, not an object, or of the wrong shape fails reads and
        changes with BackendUnavailable naming the secret and auth.secret_id, and is left as
        it was; health says what is wrong."""
        for text, detail in (
            ("{not json", "not valid JSON"),
            ('["alice"]', "not an object"),
            ('{"users": ["alice"]}', "users must be a JSON object"),
        ):
            secret_id = self.new_secret_id()
            self.client.create_secret(Name=secret_id, SecretString=text)
            backend = self.build(secret_id)
            failure = self.failureResultOf(backend.verify_user("a", "b"), BackendUnavailable)
            message = failure.value.message
            self.assertIn(secret_id, message)
            self.assertIn("auth.secret_id", message)
            self.assertIn(detail, message)
            self.failureResultOf(backend.create_user("alice", "pw"), BackendUnavailable)
            self.assertEqual(self.client.get_secret_value(SecretId=secret_id)["SecretString"], text)
            self.assertEqual(self.successResultOf(backend.check_health()), (False, message))

    def test_too_big(self) -> None:
        """A change that would make the secret larger than Secrets Manager allows fails with a
        clear message and leaves the secret as it was."""
        secret_id = self.new_secret_id()
        backend = self.build(secret_id)
        self.successResultOf(backend.create_group("devs"))
        before = self.stored(secret_id)
        failure = self.failureResultOf(
            backend.load({"users": [{"username": "big", "password": "x" * 70000}]}),
            BackendUnavailable,
        )
        self.assertIn("65536", failure.value.message)
        self.assertEqual(self.stored(secret_id), before)


class CacheTests(SecretsCase):
    """Reads use a copy at most CACHE_SECONDS old; changes always start from the secret."""

    def test_reads_are_cached_briefly(self) -> None:
        """A change made by another process is seen once the cached copy is older than
        CACHE_SECONDS; the process that made it sees it at once."""
        secret_id = self.new_secret_id()
        writer, reader = self.build(secret_id), self.build(secret_id)
        self.assertEqual(self.successResultOf(reader.user_data()), [])
        self.successResultOf(writer.create_user("alice", "pw"))
        self.assertIs(self.successResultOf(writer.verify_user("alice", "pw")), True)
        self.assertIs(self.successResultOf(reader.verify_user("alice", "pw")), False)
        self.clock.advance(CACHE_SECONDS)
        self.assertIs(self.successResultOf(reader.verify_user("alice", "pw")), True)

    def test_changes_reread(self) -> None:
        """A process whose cached copy is stale still changes the current secret: it does not
        write back what another process added meanwhile."""
        secret_id = self.new_secret_id()
        first, second = self.build(secret_id), self.build(secret_id)
        self.successResultOf(first.create_user("alice", "pw"))
        self.assertEqual(self.successResultOf(second.groups()), [])
        self.successResultOf(first.create_group("devs"))
        self.successResultOf(second.edit_user_group("alice", "devs", True))
        self.assertEqual(self.stored(secret_id)["groups"], {"devs": ["alice"]})
        self.assertEqual(self.successResultOf(second.groups("alice")), ["devs"])

    def queued_backend(
        self, secret_id: str
    ) -> tuple[AWSSecretsManagerAccessBackend, list[tuple[Deferred[Any], Callable[[], Any]]]]:
        """A backend whose boto3 calls wait in a list until the test runs them."""
        calls: list[tuple[Deferred[Any], Callable[[], Any]]] = []

        def queued(f: Callable[..., Any], /, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            calls.append((d, lambda: f(*args)))
            return d

        backend = AWSSecretsManagerAccessBackend(
            client=make_client(self.options(secret_id), QUICK),
            secret_id=secret_id,
            run_aws=queued,
            run_passwords=Runtime.synchronous().threads("passwords", 1),
            seconds=self.clock.seconds,
        )
        return backend, calls

    def test_one_fetch_for_concurrent_reads(self) -> None:
        """Reads arriving while a fetch is under way wait for it instead of each calling
        Secrets Manager."""
        secret_id = self.new_secret_id()
        self.client.create_secret(Name=secret_id, SecretString=json.dumps(manual_secret()))
        backend, calls = self.queued_backend(secret_id)
        reads = [backend.groups(), backend.is_admin("user1"), backend.groups("user3")]
        self.assertEqual(len(calls), 1)
        d, call = calls.pop()
        d.callback(call())
        self.assertEqual(
            [self.successResultOf(r) for r in reads], [["admins", "group1"], True, ["group1"]]
        )
        self.assertEqual(calls, [])

    def test_slow_read_does_not_hide_own_change(self) -> None:
        """A read that fetched the secret before this process changed it, but answers after,
        does not put the old document back in the cache."""
        secret_id = self.new_secret_id()
        self.client.create_secret(Name=secret_id, SecretString=json.dumps(manual_secret()))
        backend, calls = self.queued_backend(secret_id)
        slow_read = backend.groups()
        (slow, slow_call) = calls.pop()
        old = slow_call()  # the secret as it was, answered later
        change = backend.create_group("newcomers")
        while calls:
            d, call = calls.pop(0)
            d.callback(call())
        self.successResultOf(change)
        slow.callback(old)
        self.assertEqual(self.successResultOf(slow_read), ["admins", "group1"])
        self.assertEqual(self.successResultOf(backend.groups()), ["admins", "group1", "newcomers"])
        self.assertEqual(calls, [])


class FailureTests(SecretsCase):
    """An unusable endpoint or missing credentials fail with BackendUnavailable, quickly."""

    def test_unreachable(self) -> None:
        """With nothing listening at auth.endpoint_url, reads, changes and health fail within
        seconds with a message naming the endpoint."""
        url = f"http://127.0.0.1:{closed_port()}"
        options = self.options(self.new_secret_id(), endpoint_url=url)
        backend = AWSSecretsManagerAccessBackend(
            client=make_client(options, QUICK),
            secret_id=options.secret_id,
            run_aws=Runtime.synchronous().threads("auth-aws", 1),
            run_passwords=Runtime.synchronous().threads("passwords", 1),
            seconds=self.clock.seconds,
        )
        began = time.monotonic()
        failure = self.failureResultOf(backend.verify_user("a", "b"), BackendUnavailable)
        self.assertIn(url, failure.value.message)
        self.assertIn("auth.endpoint_url", failure.value.message)
        self.failureResultOf(backend.create_user("a", "b"), BackendUnavailable)
        healthy, reason = self.successResultOf(backend.check_health())
        self.assertEqual((healthy, reason), (False, failure.value.message))
        self.assertLess(time.monotonic() - began, 10)

    def test_no_credentials(self) -> None:
        """Without any AWS credentials, calls fail with BackendUnavailable saying which
        options to set (and nothing is sent anywhere)."""
        without_aws_environment(self)
        options = AWSSecretsManagerOptions(
            secret_id=self.new_secret_id(), region_name="us-east-1", endpoint_url=self.url
        )
        backend = AWSSecretsManagerAccessBackend.from_config(
            options, Runtime.synchronous(reactor=self.clock)
        )
        failure = self.failureResultOf(backend.groups(), BackendUnavailable)
        self.assertIn("no AWS credentials", failure.value.message)
        self.assertIn("auth.aws_access_key_id", failure.value.message)


class ThreadedTests(TestCase):
    """With real thread pools, boto3 calls and hashing happen off the reactor thread."""

    def test_threaded(self) -> None:
        """create_user, verify_user and user_data work through real pools."""
        from twisted.internet import reactor

        url = require_service("PPC_TEST_AWS_URL", "the AWS endpoint (moto_server)")
        pools: dict[str, ThreadPoolService] = {}

        def threads(name: str, size: int) -> Any:
            if name not in pools:
                pools[name] = ThreadPoolService(reactor, name, size)  # type: ignore[arg-type]
                pools[name].startService()
                self.addCleanup(pools[name].stopService)
            return pools[name].run

        secret_id = f"ppc-test-auth-{uuid.uuid4().hex}"
        options = AWSSecretsManagerOptions(
            secret_id=secret_id, endpoint_url=url, rounds=1000, **CREDENTIALS
        )
        client = make_client(options, QUICK)
        self.addCleanup(
            lambda: client.delete_secret(SecretId=secret_id, ForceDeleteWithoutRecovery=True)
        )
        backend = AWSSecretsManagerAccessBackend.from_config(
            options, Runtime(reactor=reactor, threads=threads)
        )

        async def scenario() -> None:
            await backend.create_user("alice", "wonderland")
            self.assertIs(await backend.verify_user("alice", "wonderland"), True)
            self.assertIs(await backend.verify_user("alice", "looking-glass"), False)
            self.assertEqual(
                await backend.user_data("alice"),
                {"username": "alice", "admin": False, "groups": []},
            )
            self.assertEqual(sorted(pools), ["auth-aws", "passwords"])

        return Deferred.fromCoroutine(scenario())


class OptionTests(SynchronousTestCase):
    """How the configuration reaches the backend."""

    def test_from_settings(self) -> None:
        """``pypi.auth = aws_secrets_manager`` (or pypicloud's class paths) with every option
        of the manual plus auth.endpoint_url is accepted."""
        for choice in (
            "aws_secrets_manager",
            "pypicloud.access.aws_secrets_manager.AWSSecretsManagerAccessBackend",
            "pypicloud.access.AWSSecretsManagerAccessBackend",
        ):
            settings = parse_settings(
                {
                    "pypi.storage": "memory",
                    "pypi.db": "memory",
                    "pypi.auth": choice,
                    "auth.secret_id": "pypicloud/access",
                    "auth.region_name": "eu-west-1",
                    "auth.aws_access_key_id": "AKID",
                    "auth.aws_secret_access_key": "SECRET",
                    "auth.aws_session_token": "TOKEN",
                    "auth.profile_name": "ops",
                    "auth.kms_key_id": "alias/pypicloud",
                    "auth.endpoint_url": "http://127.0.0.1:4566",
                    "auth.admins": "root",
                    "auth.rounds": "5000",
                    "auth.signing_key": "c2VjcmV0",
                    "auth.token_expire": "3600",
                }
            )
            self.assertIs(settings.access.cls, AWSSecretsManagerAccessBackend)
            options = settings.access.options
            self.assertEqual(
                (options.secret_id, options.region_name, options.kms_key_id, options.admins),
                ("pypicloud/access", "eu-west-1", "alias/pypicloud", ("root",)),
            )

    def test_secret_id_required(self) -> None:
        """Without auth.secret_id start-up stops with a message naming it."""
        with self.assertRaises(ConfigError) as caught:
            parse_settings(
                {"pypi.storage": "memory", "pypi.db": "memory", "pypi.auth": "aws_secrets_manager"}
            )
        self.assertIn("auth.secret_id", caught.exception.message)

    def test_client_options_checked(self) -> None:
        """Half an access key, an unknown profile or a missing region stop start-up with a
        message naming the option."""
        without_aws_environment(self)
        for options, named in (
            (AWSSecretsManagerOptions(secret_id="s", aws_access_key_id="AKID"), "aws_access_key"),
            (
                AWSSecretsManagerOptions(secret_id="s", region_name="us-east-1", profile_name="p"),
                "auth.profile_name",
            ),
            (AWSSecretsManagerOptions(secret_id="s"), "auth.region_name"),
        ):
            with self.assertRaises(ConfigError) as caught:
                make_client(options)
            self.assertIn(named, caught.exception.message)
