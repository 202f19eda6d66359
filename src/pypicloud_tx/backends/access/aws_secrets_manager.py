"""Users, groups and permissions in one AWS Secrets Manager secret
(``pypi.auth = aws_secrets_manager``).

The secret holds pypicloud's JSON document (see :mod:`._document`), so a secret written by
pypicloud keeps working, and pypicloud can still read one written here.  boto3 runs on the
``auth-aws`` thread pool, never on the reactor thread.

Reads (every login, every permission check) use a copy of the document at most
:data:`CACHE_SECONDS` old; every change re-reads the secret first, then writes the whole
document back.  Secrets Manager has no conditional write: two processes changing the secret at
the same moment are last-writer-wins (within one process changes are serialised).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from pypicloud_tx.backends._aws import (
    AWSCredentialOptions,
    check_key_pair,
    error_code,
    error_message,
    session_client,
)
from pypicloud_tx.backends._threads import RunBlocking
from pypicloud_tx.backends.access._document import DocumentAccessBackend, DocumentOptions
from pypicloud_tx.config.options import as_str, one_line, option
from pypicloud_tx.errors import BackendUnavailable, ConfigError
from pypicloud_tx.runtime import Runtime

log = Logger()

#: How long a read may use the document fetched before (seconds).  A change made through
#: another process (a deleted user, a revoked permission) takes up to this long to be seen.
CACHE_SECONDS = 10.0
#: The most a secret's text may hold (Secrets Manager's limit on SecretString).
MAX_SECRET_BYTES = 65536
THREADS = 4
#: Timeouts and retries of every call: a dead endpoint fails within seconds.
CLIENT_CONFIG = Config(
    connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 3}
)
_DENIED = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "ExpiredTokenException",
        "InvalidClientTokenId",
    }
)


@attrs.frozen(kw_only=True)
class AWSSecretsManagerOptions(AWSCredentialOptions, DocumentOptions):
    """pypicloud's options for this backend (the credentials' are those of
    :class:`~pypicloud_tx.backends._aws.AWSCredentialOptions`), plus ``auth.endpoint_url``."""

    secret_id: str = option(as_str, doc="Name or ARN of the secret holding the access document")
    region_name: str | None = option(
        as_str, default=None, doc="AWS region of the secret (else AWS_DEFAULT_REGION / profile)"
    )
    kms_key_id: str | None = option(
        as_str, default=None, doc="KMS key (ARN or alias) that encrypts the secret"
    )
    endpoint_url: str | None = option(
        as_str, default=None, doc="Secrets Manager endpoint (LocalStack, moto, a VPC endpoint)"
    )


def make_client(options: AWSSecretsManagerOptions, config: Config | None = None) -> Any:
    """A boto3 ``secretsmanager`` client for ``options``.

    :raises ConfigError: naming the option at fault (unknown profile, no region, half a key).
    """
    check_key_pair(options, "auth")
    try:
        return session_client(
            "secretsmanager",
            "auth",
            options,
            options.region_name,
            endpoint_url=options.endpoint_url,
            config=config or CLIENT_CONFIG,
        )
    except NoRegionError:
        raise ConfigError(
            "auth.region_name: no AWS region is set (set auth.region_name, or AWS_DEFAULT_REGION)"
        ) from None


class AWSSecretsManagerAccessBackend(DocumentAccessBackend):
    """The access document in one Secrets Manager secret, created on the first change.

    :param client: a boto3 ``secretsmanager`` client (see :func:`make_client`).
    :param run_aws: where the client's (blocking) calls run.
    :param seconds: the clock that times the read cache.
    """

    Options = AWSSecretsManagerOptions

    def __init__(
        self,
        client: Any,
        secret_id: str,
        run_aws: RunBlocking,
        run_passwords: RunBlocking,
        seconds: Callable[[], float],
        kms_key_id: str | None = None,
        admins: Iterable[str] = (),
        rounds: int | None = None,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        super().__init__(
            run_passwords,
            admins,
            rounds,
            source=f"the secret {secret_id!r} (auth.secret_id)",
        )
        self._client = client
        self._secret_id = secret_id
        self._kms_key_id = kms_key_id
        self._run_aws = run_aws
        self._seconds = seconds
        self._cache_seconds = cache_seconds
        self._cached: Mapping[str, Any] | None = None
        self._cached_until: float | None = None
        self._stores = 0  # how many times this process has written the secret
        # Readers waiting for a fetch already under way (None: no fetch under way).
        self._waiting: list[Deferred[Mapping[str, Any] | None]] | None = None

    @classmethod
    def from_config(
        cls, options: AWSSecretsManagerOptions, runtime: Runtime
    ) -> AWSSecretsManagerAccessBackend:
        """Build the client (no call is made until the first read).

        :raises ConfigError: for an unknown profile, no region, or half an access key.
        """
        reactor = runtime.reactor
        seconds = reactor.seconds if reactor is not None else time.monotonic
        return cls(
            client=make_client(options),
            secret_id=options.secret_id,
            run_aws=runtime.threads("auth-aws", THREADS),
            run_passwords=runtime.threads("passwords", 4),
            seconds=seconds,
            kms_key_id=options.kms_key_id,
            admins=options.admins,
            rounds=options.rounds,
        )

    # -- the two operations of DocumentAccessBackend --------------------------------------------

    async def fetch(self, fresh: bool) -> Mapping[str, Any] | None:
        if not fresh and self._cached_until is not None and self._seconds() < self._cached_until:
            return self._cached
        if fresh:
            return await self._get_and_remember()
        return await self._shared_fetch()

    async def store(self, document: dict[str, Any]) -> None:
        await self._run_aws(self._put, document)
        self._stores += 1
        self._remember(document)

    # -- the cache ------------------------------------------------------------------------------

    def _remember(self, document: Mapping[str, Any] | None) -> None:
        self._cached = document
        self._cached_until = self._seconds() + self._cache_seconds

    async def _get_and_remember(self) -> Mapping[str, Any] | None:
        stores = self._stores
        document = await self._run_aws(self._get)
        # A read that began before this process stored a change may return the older text:
        # keep caching what was stored.
        if self._stores == stores:
            self._remember(document)
        return document

    async def _shared_fetch(self) -> Mapping[str, Any] | None:
        """One call for every reader that arrives while it is under way."""
        if self._waiting is not None:
            waiter: Deferred[Mapping[str, Any] | None] = Deferred()
            self._waiting.append(waiter)
            return await waiter
        self._waiting = []
        try:
            document = await self._get_and_remember()
        except Exception as e:
            waiting, self._waiting = self._waiting, None
            for waiter in waiting:
                waiter.errback(e)
            raise
        waiting, self._waiting = self._waiting, None
        for waiter in waiting:
            waiter.callback(document)
        return document

    # -- blocking calls (on the auth-aws pool) --------------------------------------------------

    def _get(self) -> Mapping[str, Any] | None:
        """The secret's JSON, or ``None`` when the secret does not exist yet."""
        try:
            response = self._client.get_secret_value(SecretId=self._secret_id)
        except ClientError as e:
            if error_code(e) == "ResourceNotFoundException":
                return None
            raise self._refused(e, "read") from None
        except BotoCoreError as e:
            raise self._unreachable(e) from None
        text = response.get("SecretString")
        if text is None:
            raise BackendUnavailable(
                f"{self._source} holds binary data, not a JSON access document"
            )
        try:
            document = json.loads(text)
        except ValueError as e:
            raise BackendUnavailable(
                f"{self._source} is not valid JSON ({e}); fix or replace the secret's text"
            ) from None
        if not isinstance(document, dict):
            raise BackendUnavailable(f"{self._source} holds JSON that is not an object")
        return document

    def _put(self, document: dict[str, Any]) -> None:
        """Write ``document``, creating the secret (with the KMS key) if it does not exist."""
        text = json.dumps(document, separators=(",", ":"))
        size = len(text.encode("utf-8"))
        if size > MAX_SECRET_BYTES:
            raise BackendUnavailable(
                f"the access document would take {size} bytes, more than the {MAX_SECRET_BYTES} "
                f"a secret holds: nothing was changed in {self._source}"
            )
        extra = {} if self._kms_key_id is None else {"KmsKeyId": self._kms_key_id}
        try:
            try:
                self._client.update_secret(SecretId=self._secret_id, SecretString=text, **extra)
                return
            except ClientError as e:
                if error_code(e) != "ResourceNotFoundException":
                    raise
            try:
                self._client.create_secret(Name=self._secret_id, SecretString=text, **extra)
                log.info("created the secret {secret_id}", secret_id=self._secret_id)
            except ClientError as e:
                if error_code(e) != "ResourceExistsException":
                    raise
                # Another process created it a moment ago: write over it, as it would.
                self._client.update_secret(SecretId=self._secret_id, SecretString=text, **extra)
        except ClientError as e:
            raise self._refused(e, "write") from None
        except BotoCoreError as e:
            raise self._unreachable(e) from None

    # -- errors ---------------------------------------------------------------------------------

    def _endpoint(self) -> str:
        return str(getattr(self._client.meta, "endpoint_url", "") or "AWS Secrets Manager")

    def _unreachable(self, error: BotoCoreError) -> BackendUnavailable:
        if isinstance(error, NoCredentialsError | PartialCredentialsError):
            return BackendUnavailable(
                f"no AWS credentials to read {self._source}: set auth.aws_access_key_id and "
                "auth.aws_secret_access_key, auth.profile_name, or the usual AWS environment"
            )
        return BackendUnavailable(
            f"AWS Secrets Manager is unreachable at {self._endpoint()} (check auth.region_name, "
            f"auth.endpoint_url and the network): {one_line(str(error))}"
        )

    def _refused(self, error: ClientError, action: str) -> BackendUnavailable:
        code = error_code(error)
        message = " ".join(error_message(error).split())
        if code in _DENIED:
            hint = "check the credentials and the IAM policy"
        elif code == "InvalidRequestException":
            hint = "a secret scheduled for deletion must be restored first"
        elif code in ("DecryptionFailure", "EncryptionFailure", "KMSInvalidStateException"):
            hint = "check auth.kms_key_id and the key's policy"
        else:
            hint = "see the AWS message"
        return BackendUnavailable(
            f"AWS Secrets Manager refused to {action} {self._source}: {code}: {message} ({hint})"
        )
