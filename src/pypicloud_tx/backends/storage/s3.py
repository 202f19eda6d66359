"""Package files in Amazon S3 or an S3-compatible store (``pypi.storage = s3``).

MinIO, SeaweedFS, Ceph and the like work through ``storage.endpoint_url``.  Every boto3 call
runs on the ``storage`` thread pool, never on the reactor thread.  The key layout, metadata
and sidecars are described in :mod:`._objects`; they are pypicloud's, so a bucket pypicloud
filled is served as it is.

Uploads stream: below ``storage.multipart_threshold`` one ``PutObject``, above it a multipart
upload holding one part (``storage.multipart_chunksize``) in memory at a time, aborted if
anything fails.  A new file is created with ``If-None-Match: *`` (on ``PutObject`` or
``CompleteMultipartUpload``), so of two simultaneous uploads of one filename exactly one wins.
boto3's own ``upload_fileobj`` cannot send that header (s3transfer allows no ``IfNoneMatch``
in its extra arguments), hence the small multipart loop here.  A server that ignores the
header is detected at start-up; then a ``HeadObject`` comes first, and two uploads racing
between that look and their writes can both succeed (the later one's bytes are kept).
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as _dt
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import attrs
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from twisted.logger import Logger
from urllib3.exceptions import HTTPError as Urllib3Error

from pypicloud_tx.backends._aws import (
    AWSCredentialOptions,
    check_key_pair,
    error_code,
    error_message,
    session_client,
)
from pypicloud_tx.backends.storage._objects import (
    Body,
    ConditionalUnsupported,
    ObjectExists,
    ObjectInfo,
    ObjectStorage,
    ObjectStorageOptions,
    UploadReader,
    as_positive_int,
    normalise_etag,
    unavailable,
)
from pypicloud_tx.config.options import as_bool, as_positive_size, as_str, one_line, option
from pypicloud_tx.errors import ConfigError
from pypicloud_tx.runtime import Runtime

log = Logger()

#: S3's smallest part (except the last one).
MIN_PART_SIZE = 5 * 1024**2
DEFAULT_PART_SIZE = 8 * 1024**2
#: The longest a SigV4 presigned URL may live.
MAX_SIGV4_EXPIRY = 7 * 24 * 3600
SSE_VALUES = ("AES256", "aws:kms", "aws:kms:dsse")
CANNED_ACLS = (
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
)
_MISSING = frozenset({"NoSuchKey", "NotFound", "404"})
_NO_BUCKET = frozenset({"NoSuchBucket"})
_DENIED = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"})
_BAD_CREDENTIALS = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidSecurity",
    }
)
_WRONG_REGION = frozenset(
    {
        "PermanentRedirect",
        "301",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraintException",
    }
)
#: Answers to a conditional create whose key is taken (409: another conditional write of the
#: same key is in progress, and it will win).
_TAKEN = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})
_UNSUPPORTED = frozenset({"NotImplemented", "501"})
#: The answer to a read whose IfMatch names another version than the object's.
_PRECONDITION_FAILED = frozenset({"PreconditionFailed", "412"})


def _status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _is(e: ClientError, codes: frozenset[str]) -> bool:
    return error_code(e) in codes or str(_status(e)) in codes


@contextlib.contextmanager
def _creating(key: str, if_absent: bool, probing: bool = False) -> Iterator[None]:
    """A write of ``key``: with ``if_absent``, :class:`ObjectExists` when S3 refuses it because
    the key is taken, and (when ``probing``) :class:`ConditionalUnsupported` when it refuses
    the condition itself."""
    try:
        yield
    except ClientError as e:
        if if_absent and _is(e, _TAKEN):
            raise ObjectExists(key) from None
        if if_absent and probing and _is(e, _UNSUPPORTED):
            raise ConditionalUnsupported(key) from None
        raise


def as_optional_str(text: str) -> str | None:
    """A string, or ``None`` when empty."""
    return text.strip() or None


def as_verify(text: str) -> bool | str:
    """``storage.verify``: true/false, or the path of a CA bundle."""
    try:
        return as_bool(text)
    except ValueError:
        return text.strip()


def as_dict(text: str) -> dict[str, str]:
    """``key = value`` lines (pypicloud's ``storage.proxies``)."""
    result = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{line.strip()!r} is not a 'key = value' line")
        result[key.strip()] = value.strip()
    return result


def as_part_size(text: str) -> int:
    value = as_positive_size(text)
    if value < MIN_PART_SIZE:
        raise ValueError(f"{text.strip()!r} is below S3's smallest part size (5MB)")
    return value


def as_conditional(text: str) -> bool | None:
    value = text.strip().lower()
    if value == "auto":
        return None
    return as_bool(value)


@attrs.frozen(kw_only=True)
class S3Options(AWSCredentialOptions, ObjectStorageOptions):
    """``storage.*`` options of the S3 storage: pypicloud's, passed to boto3 as pypicloud
    did, plus a few of ours (timeouts' defaults, retries, multipart sizes, conditional
    writes).  The credentials' (boto3 session arguments) come from
    :class:`~pypicloud_tx.backends._aws.AWSCredentialOptions`."""

    # Endpoint (boto3 client arguments).
    endpoint_url: str | None = option(
        as_str, default=None, doc="S3 endpoint of MinIO, SeaweedFS, Ceph... (else AWS)."
    )
    api_version: str | None = option(as_str, default=None, doc="S3 API version.")
    use_ssl: bool | None = option(as_bool, default=None, doc="Use HTTPS (default true).")
    verify: bool | str | None = option(
        as_verify, default=None, doc="Verify TLS certificates: true, false or a CA bundle path."
    )
    # What uploaded objects get.
    server_side_encryption: str | None = option(
        as_optional_str, default=None, doc="AES256, aws:kms or aws:kms:dsse."
    )
    # botocore Config.
    signature_version: str | None = option(as_str, default=None, doc="e.g. s3v4.")
    user_agent: str | None = option(as_str, default=None, doc="HTTP User-Agent.")
    user_agent_extra: str | None = option(as_str, default=None, doc="Appended to User-Agent.")
    parameter_validation: bool | None = option(
        as_bool, default=None, doc="Validate request parameters client-side."
    )
    max_pool_connections: int | None = option(
        as_positive_int, default=None, doc="Connections kept open (botocore default 10)."
    )
    proxies: Mapping[str, str] | None = option(
        as_dict, default=None, doc="'scheme = proxy URL' lines."
    )
    max_attempts: int = option(
        as_positive_int, default=3, doc="Attempts per request, first one included."
    )
    request_checksum_calculation: str | None = option(
        as_str, default=None, doc="when_supported or when_required (older S3-compatibles)."
    )
    response_checksum_validation: str | None = option(
        as_str, default=None, doc="when_supported or when_required."
    )
    # botocore Config(s3={...}).
    use_accelerate_endpoint: bool | None = option(
        as_bool, default=None, doc="Use S3 Transfer Acceleration."
    )
    payload_signing_enabled: bool | None = option(
        as_bool, default=None, doc="Sign request bodies (SigV4)."
    )
    addressing_style: str | None = option(
        as_str, default=None, doc="auto, virtual or path (path for most S3-compatibles)."
    )
    # Ours.
    multipart_threshold: int = option(
        as_part_size, default=DEFAULT_PART_SIZE, doc="Files this large upload in parts."
    )
    multipart_chunksize: int = option(
        as_part_size, default=DEFAULT_PART_SIZE, doc="Size of each uploaded part."
    )
    conditional_put: bool | None = option(
        as_conditional,
        default=None,
        doc="Whether the server honours If-None-Match: auto (probe at start), true, false.",
    )


def client_config(options: S3Options) -> Config:
    """The botocore ``Config`` for ``options`` (pypicloud passed these options through)."""
    values: dict[str, Any] = {
        "connect_timeout": options.connect_timeout,
        "read_timeout": options.read_timeout,
        "retries": {"mode": "standard", "total_max_attempts": options.max_attempts},
        # botocore presigns with the retired SigV2 for us-east-1 unless told otherwise; new
        # regions and most S3-compatible servers accept only SigV4.
        "signature_version": "s3v4",
    }
    for name in (
        "region_name",
        "signature_version",
        "user_agent",
        "user_agent_extra",
        "parameter_validation",
        "max_pool_connections",
        "proxies",
        "request_checksum_calculation",
        "response_checksum_validation",
    ):
        value = getattr(options, name)
        if value is not None:
            values[name] = value
    s3 = {
        name: getattr(options, name)
        for name in ("use_accelerate_endpoint", "payload_signing_enabled", "addressing_style")
        if getattr(options, name) is not None
    }
    if s3:
        values["s3"] = s3
    try:
        return Config(**values)
    except (TypeError, ValueError, BotoCoreError) as e:
        raise ConfigError(f"storage: invalid S3 client option: {one_line(str(e))}") from None


def make_client(options: S3Options) -> Any:
    """A boto3 S3 client for ``options``.

    :raises ConfigError: naming the option at fault.
    """
    check_key_pair(options, "storage")
    if options.server_side_encryption not in (None, *SSE_VALUES):
        raise ConfigError(
            f"storage.server_side_encryption: {options.server_side_encryption!r} is not one "
            f"of {', '.join(SSE_VALUES)}"
        )
    if options.object_acl is not None and options.object_acl not in CANNED_ACLS:
        raise ConfigError(
            f"storage.object_acl: {options.object_acl!r} is not a canned S3 ACL "
            f"({', '.join(CANNED_ACLS)})"
        )
    if options.addressing_style not in (None, "auto", "virtual", "path"):
        raise ConfigError(
            f"storage.addressing_style: {options.addressing_style!r} is not auto, virtual or path"
        )
    arguments: dict[str, Any] = {"config": client_config(options)}
    for name in ("endpoint_url", "api_version", "use_ssl", "verify"):
        value = getattr(options, name)
        if value is not None:
            arguments[name] = value
    try:
        return session_client("s3", "storage", options, options.region_name, **arguments)
    except BotoCoreError as e:
        raise ConfigError(f"storage: cannot make an S3 client: {one_line(str(e))}") from None


@attrs.define(kw_only=True)
class S3Storage(ObjectStorage):
    """An :class:`~pypicloud_tx.interfaces.IStorage` in an S3 bucket."""

    Options = S3Options
    service = "S3"

    client: Any
    bucket: str
    region_name: str | None = None
    put_args: Mapping[str, str] = attrs.field(factory=dict)
    storage_class: str | None = None
    multipart_threshold: int = DEFAULT_PART_SIZE
    multipart_chunksize: int = DEFAULT_PART_SIZE

    @classmethod
    def from_config(cls, options: S3Options, runtime: Runtime) -> S3Storage:
        """A storage on ``storage.bucket`` (created by :meth:`start` if missing)."""
        return cls(**cls.arguments(options, runtime))

    @classmethod
    def arguments(cls, options: S3Options, runtime: Runtime) -> dict[str, Any]:
        """The constructor arguments for ``options`` (shared with subclasses)."""
        put_args = {}
        if options.server_side_encryption:
            put_args["ServerSideEncryption"] = options.server_side_encryption
        if options.object_acl:
            put_args["ACL"] = options.object_acl
        client = make_client(options)
        if options.expire_after > MAX_SIGV4_EXPIRY and options.signature_version in (None, "s3v4"):
            log.warn(
                "storage.expire_after is {seconds}s but SigV4 URLs live at most 7 days "
                "(604800s): S3 will refuse the redirect URLs",
                seconds=options.expire_after,
            )
        if "." in options.bucket and not options.region_name and not options.endpoint_url:
            log.warn(
                "signed S3 URLs may not work for a bucket with '.' in its name: set "
                "storage.region_name to the bucket's region"
            )
        return {
            **cls.option_arguments(options, runtime),
            "conditional": options.conditional_put,
            "client": client,
            "bucket": options.bucket,
            "region_name": options.region_name,
            "put_args": put_args,
            "storage_class": options.storage_class,
            "multipart_threshold": options.multipart_threshold,
            "multipart_chunksize": options.multipart_chunksize,
        }

    # -- errors ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _vendor_errors(self) -> Iterator[None]:
        try:
            yield
        except ClientError as e:
            raise self._client_error(e) from e
        except (NoCredentialsError, PartialCredentialsError) as e:
            raise unavailable(
                "No AWS credentials found: set storage.aws_access_key_id and "
                "storage.aws_secret_access_key, or configure the AWS credential chain."
            ) from e
        except (BotoConnectionError, HTTPClientError, Urllib3Error) as e:
            raise unavailable(
                f"Cannot reach S3 at {self.client.meta.endpoint_url} ({type(e).__name__}): "
                "check storage.endpoint_url, storage.region_name and the network."
            ) from e
        except BotoCoreError as e:
            raise unavailable(f"S3 request failed: {type(e).__name__}: {e}") from e

    def _client_error(self, e: ClientError) -> Exception:
        code = error_code(e) or str(_status(e))
        bucket = self.bucket
        if _is(e, _NO_BUCKET):
            return unavailable(f"The S3 bucket {bucket!r} does not exist: check storage.bucket.")
        if _is(e, _BAD_CREDENTIALS):
            return unavailable(
                f"S3 refused the credentials ({code}): check storage.aws_access_key_id and "
                "storage.aws_secret_access_key."
            )
        if _is(e, _DENIED):
            return unavailable(
                f"S3 refused access to the bucket {bucket!r} ({code}): check the credentials "
                "(storage.aws_access_key_id) and the bucket policy."
            )
        if _is(e, _WRONG_REGION):
            return unavailable(
                f"The S3 bucket {bucket!r} is in another region ({code}): set "
                "storage.region_name to its region."
            )
        return unavailable(f"S3 answered {code} for the bucket {bucket!r}: {error_message(e)}")

    # -- vendor calls ------------------------------------------------------------------------

    def _v_ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            if not _is(e, _MISSING | _NO_BUCKET):
                raise
        log.info(
            "creating the S3 bucket {bucket} in {region}",
            bucket=self.bucket,
            region=self.region_name or "the default region",
        )
        arguments: dict[str, Any] = {"Bucket": self.bucket}
        if self.region_name and self.region_name != "us-east-1":
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": self.region_name}
        try:
            self.client.create_bucket(**arguments)
        except ClientError as e:
            if error_code(e) == "BucketAlreadyOwnedByYou":
                return  # another process made it first
            if error_code(e) == "BucketAlreadyExists":
                raise unavailable(
                    f"The S3 bucket name {self.bucket!r} belongs to another account: choose "
                    "another storage.bucket."
                ) from e
            raise

    def _v_list(self, prefix: str) -> Iterator[ObjectInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            for item in page.get("Contents", ()):
                yield ObjectInfo(
                    key=item["Key"],
                    size=int(item["Size"]),
                    etag=normalise_etag(item.get("ETag")),
                    last_modified=item["LastModified"],
                )

    def _v_head(self, key: str) -> ObjectInfo:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _is(e, _MISSING):
                raise self._missing(key) from None
            raise
        return ObjectInfo(
            key=key,
            size=int(head["ContentLength"]),
            etag=normalise_etag(head.get("ETag")),
            last_modified=head.get("LastModified") or _dt.datetime.now(_dt.UTC),
            metadata=head.get("Metadata") or {},
        )

    def _get_object(self, key: str, **arguments: Any) -> dict[str, Any]:
        """``GetObject`` of ``key``: :class:`NotFound` if absent, an :class:`OSError` if an
        ``IfMatch`` in ``arguments`` fails (the object was replaced)."""
        try:
            response: dict[str, Any] = self.client.get_object(
                Bucket=self.bucket, Key=key, **arguments
            )
        except ClientError as e:
            if _is(e, _MISSING):
                raise self._missing(key) from None
            if "IfMatch" in arguments and _is(e, _PRECONDITION_FAILED):
                raise OSError(f"{key} was replaced while it was being read") from None
            raise
        return response

    def _v_read(self, key: str) -> bytes:
        body = self._get_object(key)["Body"]
        try:
            return body.read()  # type: ignore[no-any-return]
        finally:
            body.close()

    def _v_write(self, key: str, data: bytes, content_type: str, if_absent: bool) -> None:
        arguments = dict(self.put_args)
        if if_absent:
            arguments["IfNoneMatch"] = "*"
        with _creating(key, if_absent, probing=True):
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, **arguments
            )

    def _v_upload(
        self,
        key: str,
        reader: UploadReader,
        metadata: Mapping[str, str],
        content_type: str,
        if_absent: bool,
    ) -> str:
        arguments: dict[str, Any] = {
            **self.put_args,
            "Metadata": dict(metadata),
            "ContentType": content_type,
        }
        if self.storage_class:
            arguments["StorageClass"] = self.storage_class
        if reader.size < self.multipart_threshold:
            data = reader.read_exact(reader.size)
            reader.finish()
            if if_absent:
                arguments["IfNoneMatch"] = "*"
            with _creating(key, if_absent):
                response = self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=data, **arguments
                )
            return normalise_etag(response.get("ETag"))
        if if_absent:
            self._refuse_taken(key)  # the completion decides
        return self._multipart(key, reader, arguments, if_absent)

    def _multipart(
        self, key: str, reader: UploadReader, arguments: dict[str, Any], if_absent: bool
    ) -> str:
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **arguments)[
            "UploadId"
        ]
        try:
            parts: builtins.list[dict[str, Any]] = []
            while reader.remaining > 0:
                chunk = reader.read_exact(self.multipart_chunksize)
                number = len(parts) + 1
                response = self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                )
                parts.append({"ETag": response["ETag"], "PartNumber": number})
            reader.finish()
            completion: dict[str, Any] = {"MultipartUpload": {"Parts": parts}}
            if if_absent:
                completion["IfNoneMatch"] = "*"
            with _creating(key, if_absent):
                response = self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, **completion
                )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception as e:
                log.warn(
                    "cannot abort the multipart upload of {key} ({why}); a bucket lifecycle "
                    "rule for incomplete multipart uploads removes its parts",
                    key=key,
                    why=type(e).__name__,
                )
            raise
        return normalise_etag(response.get("ETag"))

    def _v_open(self, key: str, start: int, etag: str | None) -> tuple[Body, int, str]:
        arguments: dict[str, Any] = {}
        if start:
            arguments["Range"] = f"bytes={start}-"
        if etag:
            arguments["IfMatch"] = f'"{etag}"'
        response = self._get_object(key, **arguments)
        size = int(response["ContentLength"])
        content_range = response.get("ContentRange")
        if content_range and "/" in content_range:
            size = int(content_range.rsplit("/", 1)[1])
        return response["Body"], size, normalise_etag(response.get("ETag"))

    def _v_delete(self, keys: builtins.list[str]) -> None:
        # One DeleteObject per key: DeleteObjects needs a Content-MD5 or checksum header
        # that some S3-compatible servers refuse or require differently.
        for key in keys:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except ClientError as e:
                if not _is(e, _MISSING):
                    raise

    def _v_signed_url(self, key: str) -> str:
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=self.expire_after,
            )
        )

    def _v_public_url(self, key: str) -> str:
        path = quote(key, safe="/")
        endpoint = self.client.meta.endpoint_url.rstrip("/")
        if self.client.meta.config.s3 and self.client.meta.config.s3.get(
            "addressing_style"
        ) not in (None, "auto", "path"):
            scheme, _, host = endpoint.partition("://")
            return f"{scheme}://{self.bucket}.{host}/{path}"
        if "amazonaws.com" in endpoint and "." not in self.bucket and not self.region_name:
            return f"https://{self.bucket}.s3.amazonaws.com/{path}"
        return f"{endpoint}/{self.bucket}/{path}"

    def _v_health(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if _is(e, _MISSING):  # HEAD answers have no body, hence no NoSuchBucket code
                raise unavailable(
                    f"The S3 bucket {self.bucket!r} does not exist: check storage.bucket."
                ) from e
            raise

    def _v_close(self) -> None:
        self.client.close()
