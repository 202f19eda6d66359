"""Package files in Google Cloud Storage (``pypi.storage = gcs``).

The key layout, metadata and sidecars are those of :mod:`._objects` (pypicloud's), so a bucket
pypicloud filled is served as it is.  Every call of the Google client runs on the ``storage``
thread pool, never on the reactor thread.

Uploads stream: a file up to ``storage.resumable_threshold`` goes in one request, a larger one
in a resumable upload that holds one chunk (``storage.resumable_chunksize``) in memory at a
time and is cancelled if anything fails (an unfinished resumable upload is never visible).
A new file is created with ``ifGenerationMatch=0``, so of two simultaneous uploads of one
filename exactly one wins; a large upload first looks whether the name is taken, to spare
uploading a doomed file.

An object's "ETag" here is its *generation*: it changes whenever the bytes change (and only
then), and reads after a ``seek`` ask for that generation, so a stream never mixes two
versions of an object.

Credentials: ``storage.gcp_service_account_json_filename`` (or
``GOOGLE_APPLICATION_CREDENTIALS``) names a service-account key, else Google's application
default credentials are used.  With ``storage.gcp_api_endpoint`` (or ``STORAGE_EMULATOR_HOST``)
at a plain ``http://`` URL, an emulator such as fake-gcs-server, requests carry no credentials
at all (a token is never sent in clear text); a service-account key, if given, still signs
the download URLs.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import datetime as _dt
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import attrs
import requests
from twisted.logger import Logger

from pypicloud_tx.backends.storage._objects import (
    LIST_CONCURRENCY,
    POOL_SIZE,
    Body,
    ObjectExists,
    ObjectInfo,
    ObjectStorage,
    ObjectStorageOptions,
    UploadReader,
    as_seconds,
    unavailable,
)
from pypicloud_tx.config.options import (
    as_bool,
    as_positive_size,
    as_size,
    as_str,
    one_line,
    option,
)
from pypicloud_tx.errors import ConfigError
from pypicloud_tx.runtime import Runtime

try:
    import google.auth
    import google.auth.credentials
    import google.auth.exceptions
    import google.auth.transport.requests
    from google.api_core import exceptions as api_exceptions
    from google.cloud import storage
    from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
    from google.cloud.storage.retry import DEFAULT_RETRY
    from google.oauth2 import service_account
except ModuleNotFoundError as e:  # the "gcs" extra is not installed
    raise ImportError(
        f"{e.name} is not installed: install pypicloud-tx[gcs] (google-cloud-storage)"
    ) from e

log = Logger()

#: GCS's unit for resumable upload chunks (all but the last are a multiple of it).
CHUNK_UNIT = 256 * 1024
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
#: The longest a V4 signed URL may live.
MAX_V4_EXPIRY = 7 * 24 * 3600
DEFAULT_ENDPOINT = "https://storage.googleapis.com"
#: The scopes the google-cloud-storage client asks for.
SCOPES = (
    "https://www.googleapis.com/auth/devstorage.full_control",
    "https://www.googleapis.com/auth/devstorage.read_only",
    "https://www.googleapis.com/auth/devstorage.read_write",
)
#: Project sent when an emulator creates a bucket and no project is configured.
EMULATOR_PROJECT = "pypicloud-tx"
PREDEFINED_ACLS = (
    "authenticatedRead",
    "bucketOwnerFullControl",
    "bucketOwnerRead",
    "private",
    "projectPrivate",
    "publicRead",
)
STORAGE_CLASSES = (
    "STANDARD",
    "NEARLINE",
    "COLDLINE",
    "ARCHIVE",
    "MULTI_REGIONAL",
    "REGIONAL",
    "DURABLE_REDUCED_AVAILABILITY",
)
#: Requests per chunk (resends of what GCS did not keep, status queries) before giving up.
MAX_CHUNK_REQUESTS = 20
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Answers to a resumable upload chunk that mean "more, please".
_RESUME_INCOMPLETE = 308


def as_chunk_size(text: str) -> int:
    value = as_positive_size(text)
    if value % CHUNK_UNIT:
        raise ValueError(f"{text.strip()!r} is not a multiple of 256KB (GCS's chunk unit)")
    return value


def as_endpoint(text: str) -> str:
    value = text.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


def as_predefined_acl(text: str) -> str:
    """A GCS predefined ACL; S3's spelling (``public-read``) is accepted too."""
    value = text.strip()
    if "-" in value:  # public-read -> publicRead
        head, *rest = value.split("-")
        value = head + "".join(part.capitalize() for part in rest)
    for name in PREDEFINED_ACLS:
        if value.lower() == name.lower():
            return name
    raise ValueError(f"{text.strip()!r} is not a GCS predefined ACL ({', '.join(PREDEFINED_ACLS)})")


def as_storage_class(text: str) -> str:
    value = text.strip().upper().replace("-", "_")
    if value not in STORAGE_CLASSES:
        raise ValueError(
            f"{text.strip()!r} is not a GCS storage class ({', '.join(STORAGE_CLASSES)})"
        )
    return value


@attrs.frozen(kw_only=True)
class GCSOptions(ObjectStorageOptions):
    """``storage.*`` options of the GCS storage: pypicloud's, plus an endpoint (emulators),
    timeouts, retries and the resumable chunk size."""

    object_acl: str | None = option(
        as_predefined_acl, default=None, doc="Predefined ACL of uploaded objects (e.g. publicRead)."
    )
    storage_class: str | None = option(
        as_storage_class, default=None, doc="Storage class of uploaded files (e.g. NEARLINE)."
    )
    gcp_service_account_json_filename: str | None = option(
        as_str, default=None, doc="Service-account JSON key (else GOOGLE_APPLICATION_CREDENTIALS)."
    )
    gcp_project_id: str | None = option(
        as_str, default=None, doc="Project a missing bucket is created in."
    )
    gcp_use_iam_signer: bool = option(
        as_bool, default=False, doc="Sign URLs with the IAM signBlob API (no private key)."
    )
    gcp_api_endpoint: str | None = option(
        as_endpoint, default=None, doc="JSON API endpoint: an emulator or a private endpoint."
    )
    retry_deadline: int = option(
        as_seconds, default=30, doc="Seconds a failing request is retried for (0: no retries)."
    )
    resumable_threshold: int = option(
        as_size, default=DEFAULT_CHUNK_SIZE, doc="Larger files use a resumable upload."
    )
    resumable_chunksize: int = option(
        as_chunk_size,
        default=DEFAULT_CHUNK_SIZE,
        doc="Size of each chunk of a resumable upload (a multiple of 256KB).",
    )


# -- credentials --------------------------------------------------------------------------------


@attrs.frozen
class Credentials:
    """What :func:`load_credentials` found: the credentials requests carry, the project, and
    how URLs are signed (a key, or the IAM signBlob API on behalf of ``credentials``)."""

    credentials: Any
    project: str | None
    signer: Any = None
    iam_signer: bool = False


def _read_key(path: str, option_name: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except OSError as e:
        raise ConfigError(f"{option_name}: cannot read {path}: {e.strerror}") from None
    except ValueError:
        raise ConfigError(f"{option_name}: {path} is not a JSON key file") from None
    if not isinstance(info, dict):
        raise ConfigError(f"{option_name}: {path} is not a JSON key file")
    return info


def _service_account(info: Mapping[str, Any], path: str, option_name: str) -> Any:
    try:
        return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{option_name}: {path} is not a usable service-account key: {one_line(str(e))}"
        ) from None


def load_credentials(options: GCSOptions, endpoint: str | None, here: str = ".") -> Credentials:
    """The credentials for ``options`` (pypicloud's rules, plus anonymous emulators).

    :raises ConfigError: naming the option or variable at fault.
    """
    anonymous = bool(endpoint and endpoint.startswith("http://"))
    key: Any = None
    if options.gcp_service_account_json_filename:
        name = "storage.gcp_service_account_json_filename"
        path = os.path.join(here, os.path.expanduser(options.gcp_service_account_json_filename))
        info = _read_key(path, name)
        if info.get("type") != "service_account":
            raise ConfigError(f"{name}: {path} is not a service-account key")
        key = _service_account(info, path, name)
    elif os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        name = "GOOGLE_APPLICATION_CREDENTIALS"
        path = os.environ[name]
        info = _read_key(path, name)
        if info.get("type") == "service_account":
            key = _service_account(info, path, name)
        # Any other kind (user, external account) is read by google.auth.default() below.
    signs = options.redirect_urls and not options.public_url
    if anonymous:
        project = options.gcp_project_id or getattr(key, "project_id", None) or EMULATOR_PROJECT
        if signs and key is None:
            raise ConfigError(
                "storage.gcp_service_account_json_filename: signed download URLs need a "
                "service-account key (or set storage.redirect_urls = false to stream downloads)"
            )
        return Credentials(google.auth.credentials.AnonymousCredentials(), project, key)
    if key is not None:
        project = options.gcp_project_id or getattr(key, "project_id", None)
        if options.gcp_use_iam_signer:
            return Credentials(key, project, None, True)
        return Credentials(key, project, key)
    try:
        found, found_project = google.auth.default(scopes=SCOPES)
    except google.auth.exceptions.DefaultCredentialsError:
        raise ConfigError(
            "storage.gcp_service_account_json_filename: no Google credentials found; set it, "
            "or GOOGLE_APPLICATION_CREDENTIALS, or run where application default credentials "
            "exist"
        ) from None
    project = options.gcp_project_id or found_project
    can_sign = isinstance(found, google.auth.credentials.Signing)
    iam = options.gcp_use_iam_signer or not can_sign
    if signs and iam and not hasattr(found, "service_account_email"):
        raise ConfigError(
            "storage.gcp_service_account_json_filename: these credentials cannot sign download "
            "URLs; use a service-account key, or set storage.redirect_urls = false"
        )
    return Credentials(found, project, None, iam)


def make_session(credentials: Any) -> Any:
    """An authorized ``requests`` session, with room for every thread that uses it."""
    session = google.auth.transport.requests.AuthorizedSession(credentials)
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=4, pool_maxsize=POOL_SIZE * (1 + LIST_CONCURRENCY)
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


# -- the storage --------------------------------------------------------------------------------


class _ResponseBody:
    """A streamed GET, read as it arrives."""

    def __init__(self, response: requests.Response) -> None:
        self._response = response

    def read(self, amt: int = -1) -> bytes:
        data = self._response.raw.read(None if amt < 0 else amt)
        return bytes(data or b"")

    def close(self) -> None:
        self._response.close()


def _error(response: requests.Response) -> Exception:
    """The google.api_core exception for an error answer (what the client library raises)."""
    error: Exception = api_exceptions.from_http_response(response)
    return error


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, requests.RequestException) and not isinstance(e, requests.HTTPError):
        return True
    return isinstance(e, api_exceptions.GoogleAPICallError) and e.code in _TRANSIENT_STATUS


def _md5_b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


@attrs.define(kw_only=True)
class GoogleCloudStorage(ObjectStorage):
    """An :class:`~pypicloud_tx.interfaces.IStorage` in a GCS bucket."""

    Options = GCSOptions
    service = "GCS"

    client: Any
    session: Any
    bucket: str
    credentials: Credentials
    url_endpoint: str | None = None
    region_name: str | None = None
    predefined_acl: str | None = None
    storage_class: str | None = None
    threshold: int = DEFAULT_CHUNK_SIZE
    chunk_size: int = DEFAULT_CHUNK_SIZE
    timeout: tuple[float, float] = (10, 60)
    retry: Any = None
    retry_deadline: float = 30
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_config(cls, options: GCSOptions, runtime: Runtime) -> GoogleCloudStorage:
        """A storage on ``storage.bucket`` (created by :meth:`start` if missing)."""
        endpoint = options.gcp_api_endpoint or os.environ.get("STORAGE_EMULATOR_HOST") or None
        if endpoint is not None:
            endpoint = as_endpoint(endpoint)
        found = load_credentials(options, endpoint, runtime.here)
        expire_after = options.expire_after
        if expire_after > MAX_V4_EXPIRY and options.redirect_urls and not options.public_url:
            log.warn(
                "storage.expire_after is {seconds}s but GCS signed URLs live at most 7 days: "
                "using 604800s",
                seconds=expire_after,
            )
            expire_after = MAX_V4_EXPIRY
        session = make_session(found.credentials)
        arguments: dict[str, Any] = {
            "project": found.project,
            "credentials": found.credentials,
            "_http": session,
        }
        if endpoint is not None:
            arguments["client_options"] = {"api_endpoint": endpoint}
        try:
            client = storage.Client(**arguments)
        except (ValueError, google.auth.exceptions.GoogleAuthError) as e:
            session.close()
            raise ConfigError(f"storage: cannot make a GCS client: {one_line(str(e))}") from None
        retry = (
            DEFAULT_RETRY.with_timeout(float(options.retry_deadline))
            if options.retry_deadline
            else None
        )
        return cls(
            **{**cls.option_arguments(options, runtime), "expire_after": expire_after},
            # GCS always honours ifGenerationMatch=0: nothing to probe.
            conditional=True,
            client=client,
            session=session,
            bucket=options.bucket,
            credentials=found,
            url_endpoint=endpoint,
            region_name=options.region_name,
            predefined_acl=options.object_acl,
            storage_class=options.storage_class,
            threshold=options.resumable_threshold,
            chunk_size=options.resumable_chunksize,
            timeout=(float(options.connect_timeout), float(options.read_timeout)),
            retry=retry,
            retry_deadline=float(options.retry_deadline),
        )

    @property
    def endpoint(self) -> str:
        """Where the JSON API is (the emulator's address, or Google's)."""
        return str(self.client.api_endpoint).rstrip("/")

    def _blob(self, key: str) -> Any:
        return self.client.bucket(self.bucket).blob(key)

    def _media_url(self, key: str) -> str:
        """Where the bytes of ``key`` are downloaded from (JSON API, ``alt=media``)."""
        bucket, name = quote(self.bucket, safe=""), quote(key, safe="")
        return f"{self.endpoint}/download/storage/v1/b/{bucket}/o/{name}"

    # -- errors ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _vendor_errors(self) -> Iterator[None]:
        try:
            yield
        except api_exceptions.RetryError as e:
            cause = e.cause
            if isinstance(cause, api_exceptions.GoogleAPICallError):
                raise self._api_error(cause) from e
            raise self._unreachable(cause or e) from e
        except api_exceptions.GoogleAPICallError as e:
            raise self._api_error(e) from e
        except google.auth.exceptions.TransportError as e:  # getting a token, signing
            raise unavailable(
                f"Cannot reach Google's token or signing service ({type(e).__name__}): check "
                "the network and storage.gcp_service_account_json_filename."
            ) from e
        except google.auth.exceptions.GoogleAuthError as e:
            raise unavailable(
                f"Cannot get Google credentials ({type(e).__name__}): check "
                "storage.gcp_service_account_json_filename or GOOGLE_APPLICATION_CREDENTIALS."
            ) from e
        except requests.RequestException as e:
            raise self._unreachable(e) from e
        except DataCorruption as e:
            raise unavailable(f"Data from GCS was corrupted in transit: {type(e).__name__}.") from e
        except InvalidResponse as e:
            raise unavailable(
                f"GCS gave an unexpected answer ({getattr(e.response, 'status_code', '?')}) for "
                f"the bucket {self.bucket!r}."
            ) from e

    def _unreachable(self, e: BaseException) -> Exception:
        return unavailable(
            f"Cannot reach GCS at {self.endpoint} ({type(e).__name__}): check "
            "storage.gcp_api_endpoint and the network."
        )

    def _api_error(self, e: api_exceptions.GoogleAPICallError) -> Exception:
        bucket = self.bucket
        if isinstance(e, api_exceptions.NotFound):
            return unavailable(f"The GCS bucket {bucket!r} does not exist: check storage.bucket.")
        if isinstance(e, api_exceptions.Unauthorized):
            return unavailable(
                "GCS refused the credentials (401): check "
                "storage.gcp_service_account_json_filename or GOOGLE_APPLICATION_CREDENTIALS."
            )
        if isinstance(e, api_exceptions.Forbidden):
            return unavailable(
                f"GCS refused access to the bucket {bucket!r} (403: {self._reason(e)}): check "
                "the service account's roles on the bucket."
            )
        if e.code in _TRANSIENT_STATUS:
            return unavailable(
                f"GCS is unavailable ({e.code}: {self._reason(e)}) for the bucket {bucket!r}."
            )
        return unavailable(f"GCS answered {e.code} for the bucket {bucket!r}: {self._reason(e)}")

    @staticmethod
    def _reason(e: api_exceptions.GoogleAPICallError) -> str:
        # The message starts with the method and URL; the reason is after them.
        message = str(e.message or "")
        _, sep, rest = message.partition(": ")
        return one_line(rest if sep and message.split(" ", 1)[0].isupper() else message)[:300]

    @staticmethod
    def _object_missing(e: api_exceptions.GoogleAPICallError) -> bool:
        """A 404 about the object (not the bucket)."""
        return isinstance(e, api_exceptions.NotFound) and (
            "bucket does not exist" not in str(e.message).lower()
        )

    # -- vendor calls ------------------------------------------------------------------------

    def _list_one(self) -> None:
        """List at most one object: the cheapest call that needs the bucket to exist (and
        only the ``storage.objects.list`` permission, which the storage needs anyway)."""
        blobs = self.client.list_blobs(
            self.bucket, max_results=1, timeout=self.timeout, retry=self.retry
        )
        for _blob in blobs:
            break

    def _v_ensure_bucket(self) -> None:
        try:
            self._list_one()
            return
        except api_exceptions.NotFound:
            pass
        log.info(
            "creating the GCS bucket {bucket} in {location}",
            bucket=self.bucket,
            location=self.region_name or "the default location (US)",
        )
        try:
            self.client.create_bucket(
                self.bucket,
                project=self.credentials.project,
                location=self.region_name,
                timeout=self.timeout,
                retry=self.retry,
            )
        except ValueError as e:  # no project to create it in
            raise unavailable(
                f"Cannot create the GCS bucket {self.bucket!r} ({one_line(str(e))}): set "
                "storage.gcp_project_id, or create the bucket."
            ) from None
        except api_exceptions.Conflict:
            try:
                self._list_one()  # made by another process in the meantime
            except api_exceptions.GoogleAPICallError:
                raise unavailable(
                    f"The GCS bucket name {self.bucket!r} is taken by another project: choose "
                    "another storage.bucket."
                ) from None

    def _v_list(self, prefix: str) -> Iterator[ObjectInfo]:
        blobs = self.client.list_blobs(
            self.bucket,
            prefix=prefix or None,
            fields="items(name,size,generation,updated,timeCreated),nextPageToken",
            timeout=self.timeout,
            retry=self.retry,
        )
        for blob in blobs:
            yield self._info(blob)

    @staticmethod
    def _info(blob: Any, metadata: bool = False) -> ObjectInfo:
        return ObjectInfo(
            key=blob.name,
            size=int(blob.size or 0),
            etag=str(blob.generation or ""),
            last_modified=blob.updated or blob.time_created or _dt.datetime.now(_dt.UTC),
            metadata=dict(blob.metadata or {}) if metadata else None,
        )

    def _v_head(self, key: str) -> ObjectInfo:
        blob = self._blob(key)
        try:
            blob.reload(timeout=self.timeout, retry=self.retry)
        except api_exceptions.NotFound as e:
            if self._object_missing(e):
                raise self._missing(key) from None
            raise
        return self._info(blob, metadata=True)

    def _v_read(self, key: str) -> bytes:
        try:
            return bytes(self._blob(key).download_as_bytes(timeout=self.timeout, retry=self.retry))
        except api_exceptions.NotFound as e:
            if self._object_missing(e):
                raise self._missing(key) from None
            raise

    def _new_blob(self, key: str, content_type: str, metadata: Mapping[str, str] | None) -> Any:
        blob = self._blob(key)
        blob.content_type = content_type
        if metadata is not None:
            blob.metadata = dict(metadata)
            if self.storage_class:
                blob.storage_class = self.storage_class
        return blob

    def _v_write(self, key: str, data: bytes, content_type: str, if_absent: bool) -> None:
        self._write(self._new_blob(key, content_type, None), data, if_absent)

    def _write(self, blob: Any, data: bytes, if_absent: bool) -> str:
        """One upload request; the new generation."""
        try:
            blob.upload_from_string(
                data,
                content_type=blob.content_type,
                predefined_acl=self.predefined_acl,
                if_generation_match=0 if if_absent else None,
                timeout=self.timeout,
                retry=self.retry,
            )
        except api_exceptions.PreconditionFailed:
            if not if_absent or not blob.metadata:
                raise ObjectExists(blob.name) from None
            # A retried create whose first attempt succeeded is refused too: then the object
            # in place is ours (our bytes, our upload time).
            found = self._blob(blob.name)
            try:
                found.reload(timeout=self.timeout, retry=self.retry)
            except api_exceptions.NotFound:
                raise ObjectExists(blob.name) from None
            md5 = _md5_b64(hashlib.md5(data, usedforsecurity=False).digest())
            ours = blob.metadata.get("upload-time")
            if found.md5_hash != md5 or (found.metadata or {}).get("upload-time") != ours:
                raise ObjectExists(blob.name) from None
            return str(found.generation)
        return str(blob.generation)

    def _v_upload(
        self,
        key: str,
        reader: UploadReader,
        metadata: Mapping[str, str],
        content_type: str,
        if_absent: bool,
    ) -> str:
        blob = self._new_blob(key, content_type, metadata)
        if reader.size <= self.threshold:
            data = reader.read_exact(reader.size)
            reader.finish()
            return self._write(blob, data, if_absent)
        if if_absent:
            self._refuse_taken(key)  # finalising the upload decides
        return self._resumable(blob, reader, if_absent)

    def _resumable(self, blob: Any, reader: UploadReader, if_absent: bool) -> str:
        """A resumable upload of ``reader``, one chunk in memory at a time."""
        try:
            url = blob.create_resumable_upload_session(
                content_type=blob.content_type,
                size=reader.size,
                predefined_acl=self.predefined_acl,
                if_generation_match=0 if if_absent else None,
                checksum=None,  # ours: the md5 of what was sent, checked at the end
                timeout=self.timeout,
                retry=self.retry,
            )
        except api_exceptions.PreconditionFailed:
            raise ObjectExists(blob.name) from None
        try:
            md5 = hashlib.md5(usedforsecurity=False)
            offset = 0
            result: dict[str, Any] | None = None
            while result is None:
                chunk = reader.read_exact(self.chunk_size)
                if reader.remaining == 0:
                    reader.finish()  # refuse a longer stream before the object is final
                md5.update(chunk)
                try:
                    result = self._send_chunk(url, chunk, offset, reader.size)
                except api_exceptions.PreconditionFailed:
                    raise ObjectExists(blob.name) from None
                offset += len(chunk)
                if result is None and offset >= reader.size:
                    raise unavailable(f"GCS did not finish the upload of {blob.name}.")
        except BaseException:
            self._cancel(url, blob.name)
            raise
        generation = str(result.get("generation", ""))
        stored_md5 = result.get("md5Hash")
        if stored_md5 and stored_md5 != _md5_b64(md5.digest()):
            with contextlib.suppress(Exception):
                self._blob(blob.name).delete(
                    if_generation_match=int(generation), timeout=self.timeout, retry=self.retry
                )
            raise unavailable(f"The upload of {blob.name} to GCS was corrupted; try again.")
        return generation

    def _send_chunk(self, url: str, chunk: bytes, offset: int, total: int) -> dict[str, Any] | None:
        """Send ``chunk`` (bytes ``offset``... of ``total``) to the session ``url``, resuming
        after transient errors; the object resource once the upload is complete."""
        end = offset + len(chunk)
        position = offset
        deadline = time.monotonic() + self.retry_deadline
        delay = 1.0
        failed = False
        for _ in range(MAX_CHUNK_REQUESTS):
            try:
                if failed:
                    response = self.session.put(
                        url, headers={"Content-Range": f"bytes */{total}"}, timeout=self.timeout
                    )
                else:
                    response = self.session.put(
                        url,
                        data=chunk[position - offset :],
                        headers={"Content-Range": f"bytes {position}-{end - 1}/{total}"},
                        timeout=self.timeout,
                    )
                if response.status_code in (200, 201):
                    return dict(response.json())
                if response.status_code != _RESUME_INCOMPLETE:
                    raise _error(response)
                failed = False
                position = self._persisted(response, offset)
                if position >= end:
                    return None
            except Exception as e:
                if not _is_transient(e) or time.monotonic() + delay > deadline:
                    raise
                log.info("resuming an upload to GCS after {error}", error=type(e).__name__)
                self.sleep(delay)
                delay = min(delay * 2, 16)
                failed = True
        raise unavailable(f"GCS keeps refusing part of a resumable upload (at byte {position}).")

    @staticmethod
    def _persisted(response: requests.Response, offset: int) -> int:
        """How many bytes the session holds, from a 308's ``Range: bytes=0-N``."""
        answer = response.headers.get("Range", "")
        persisted = int(answer.rsplit("-", 1)[1]) + 1 if answer else 0
        if persisted < offset:
            raise unavailable("GCS lost part of a resumable upload; try again.")
        return persisted

    def _cancel(self, url: str, key: str) -> None:
        """Cancel a resumable upload session (an unfinished one is never visible anyway)."""
        try:
            self.session.delete(url, timeout=self.timeout)
        except Exception as e:
            log.warn(
                "cannot cancel the resumable upload of {key} ({why}); GCS drops it after a week",
                key=key,
                why=type(e).__name__,
            )

    def _v_open(self, key: str, start: int, etag: str | None) -> tuple[Body, int, str]:
        params = {"alt": "media"}
        if etag:
            params["ifGenerationMatch"] = etag
        headers = {"Range": f"bytes={start}-"} if start else {}

        def get() -> requests.Response:
            response: requests.Response = self.session.get(
                self._media_url(key),
                params=params,
                headers=headers,
                stream=True,
                timeout=self.timeout,
            )
            if response.status_code >= 400:
                try:
                    raise _error(response)
                finally:
                    response.close()
            return response

        try:
            response = self.retry(get)() if self.retry is not None else get()
        except api_exceptions.NotFound as e:
            if self._object_missing(e):
                raise self._missing(key) from None
            raise
        except api_exceptions.PreconditionFailed:
            raise OSError(f"{key} was replaced while it was being read") from None
        generation = response.headers.get("x-goog-generation", "")
        if etag and generation and generation != etag:  # an emulator ignoring the condition
            response.close()
            raise OSError(f"{key} was replaced while it was being read")
        size = int(
            response.headers.get("x-goog-stored-content-length")
            or response.headers.get("Content-Length")
            or 0
        )
        content_range = response.headers.get("Content-Range", "")
        if "/" in content_range and not content_range.endswith("*"):
            size = int(content_range.rsplit("/", 1)[1])
        return _ResponseBody(response), size, generation or (etag or "")

    def _v_delete(self, keys: builtins.list[str]) -> None:
        for key in keys:
            try:
                self._blob(key).delete(timeout=self.timeout, retry=self.retry)
            except api_exceptions.NotFound as e:
                if not self._object_missing(e):
                    raise

    def _v_signed_url(self, key: str) -> str:
        arguments: dict[str, Any] = {
            "version": "v4",
            "expiration": _dt.timedelta(seconds=self.expire_after),
            "method": "GET",
        }
        if self.url_endpoint is not None:
            arguments["api_access_endpoint"] = self.url_endpoint
        if self.credentials.signer is not None:
            arguments["credentials"] = self.credentials.signer
        elif self.credentials.iam_signer:
            # No private key (e.g. on Compute Engine): the IAM signBlob API signs for us.
            credentials = self.credentials.credentials
            if not credentials.valid:
                credentials.refresh(google.auth.transport.requests.Request())
            arguments["service_account_email"] = credentials.service_account_email
            arguments["access_token"] = credentials.token
        return str(self._blob(key).generate_signed_url(**arguments))

    def _v_public_url(self, key: str) -> str:
        base = self.url_endpoint or DEFAULT_ENDPOINT
        return f"{base}/{self.bucket}/{quote(key, safe='/')}"

    def _v_health(self) -> None:
        self._list_one()

    def _v_close(self) -> None:
        self.client.close()
