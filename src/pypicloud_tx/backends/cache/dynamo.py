"""An :class:`~pypicloud_tx.interfaces.ICache` in two DynamoDB tables (``pypi.db = dynamo``).

boto3 runs on the ``db`` thread pool; the reactor thread never waits for DynamoDB.  The tables
keep pypicloud's names and keys, so a pypicloud deployment's tables are found and read:

``<namespace>DynamoPackage`` (``db.tablenames`` first name), one item per file:
    ``filename`` (S, hash key); ``name`` (S, canonical project name, hash key of the global
    secondary index ``name-index``, projection ALL); ``version`` (S); ``last_modified`` (N, Unix
    seconds with microseconds, as pypicloud's flywheel wrote it); ``summary`` (S, left out when
    empty); ``data`` (M, ``hash_sha256``/``hash_md5`` as pypicloud kept them); ``record`` (S,
    :meth:`PackageFile.to_record` as JSON) or, above 64 KiB, ``record_z`` (B, the same JSON
    zlib-compressed).  Items without a record (written by pypicloud) are read from the other
    attributes.

``<namespace>PackageSummary`` (second name), one item per project:
    ``name`` (S, hash key); ``file_count`` (N); ``v:<version>`` (N, files of that version);
    ``last_modified``, ``summary``, ``version`` and ``newest`` (filename) of the most recent
    upload.  Counts change in the same transaction as the file item, so ``distinct()`` and
    ``summary()`` read only this small table, consistently.  The item named ``#meta`` (never a
    project name) holds ``schema`` and ``token``, a counter incremented after every change
    (:meth:`DynamoCache.version_token`).

DynamoDB refuses empty strings in key attributes (and, before 2020, anywhere): no attribute
written here is ever an empty string.  Global secondary indexes are eventually consistent, so
``all(name)`` may lag a change by a moment; everything else reads consistently.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import random
import re
import secrets
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar

import attrs
import boto3
from boto3.dynamodb.types import TypeDeserializer
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pypicloud_tx.backends._threads import RunBlocking
from pypicloud_tx.backends.cache._reload import (
    SummaryRow,
    Tally,
    batches,
    latest_per_filename,
    matches,
    plan_reload,
    record_json,
    search_terms,
    summarize,
)
from pypicloud_tx.config.options import as_bool, as_int, as_list, as_str, option
from pypicloud_tx.domain.models import PackageFile, ProjectSummary
from pypicloud_tx.domain.names import canonical
from pypicloud_tx.errors import BackendUnavailable, ConfigError, Conflict, PPCError
from pypicloud_tx.interfaces import ICache, Progress
from pypicloud_tx.runtime import Runtime

log = Logger()
T = TypeVar("T")

DEFAULT_TABLES = ("DynamoPackage", "PackageSummary")
NAME_INDEX = "name-index"
#: The summary-table key of the bookkeeping item; "#" never occurs in a project name.
META = "#meta"
SCHEMA = 1
VERSION_PREFIX = "v:"
THREADS = 10
#: DynamoDB's limits per BatchWriteItem and BatchGetItem call.
BATCH_WRITE = 25
BATCH_GET = 100
#: Records longer than this are stored compressed; compressed ones longer than RECORD_MAX lose
#: their long description (an item may not exceed 400 KB).
RECORD_INLINE = 64 * 1024
RECORD_MAX = 300 * 1024
#: Seconds to wait for a connection and for an answer (a 1 MB page comes in well under it).
CONNECT_TIMEOUT = 3
READ_TIMEOUT = 10
#: Attempts per request, including the first (botocore's "standard" retry mode).
REQUEST_ATTEMPTS = 3
#: Rounds of a conditional write or a batch's unprocessed items before giving up.
ATTEMPTS = 10
TABLE_WAIT_SECONDS = 300.0
#: How long a new version token is withheld: global secondary indexes catch up within it.
SETTLE_SECONDS = 3.0
EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)

_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_THROTTLED = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "LimitExceededException",
}
_REFUSED = {
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "MissingAuthenticationTokenException",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "IncompleteSignatureException",
}
_SERVER = {"InternalServerError", "InternalFailure", "ServiceUnavailable"}
_RETRY_REASONS = {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
_FIELDS = {f.name for f in attrs.fields(PackageFile)}
_PYPICLOUD_KEYS = {"hash_sha256": "sha256", "hash_md5": "md5"}
_deserializer = TypeDeserializer()
#: Placeholders for attribute names: several are DynamoDB reserved words.
_NAMES = {
    "#f": "filename",
    "#n": "name",
    "#ver": "version",
    "#lm": "last_modified",
    "#sm": "summary",
    "#fc": "file_count",
    "#nw": "newest",
    "#t": "token",
    "#s": "schema",
}
_PLACEHOLDER = re.compile(r"#\w+")


def _names(*expressions: str) -> dict[str, str]:
    """The ``ExpressionAttributeNames`` of :data:`_NAMES` the expressions use (DynamoDB
    refuses unused ones)."""
    used = set(_PLACEHOLDER.findall(" ".join(expressions)))
    return {k: v for k, v in _NAMES.items() if k in used}


# -- options ------------------------------------------------------------------------------------


def _two_names(text: str) -> tuple[str, ...]:
    names = as_list(text)
    if len(names) != 2:
        raise ValueError(
            f"{text.strip()!r} must be two table names (packages, then summaries), "
            "e.g. DynamoPackage PackageSummary"
        )
    return names


def _port(text: str) -> int:
    value = as_int(text)
    if not 0 < value < 65536:
        raise ValueError(f"{text.strip()!r} is not a TCP port")
    return value


def _optional(text: str) -> str | None:
    return text.strip() or None


def endpoint_url(host: str | None, port: int, secure: bool) -> str | None:
    """The endpoint URL ``db.host``/``db.port``/``db.secure`` describe, or ``None`` for AWS.

    A ``db.host`` that is already a URL (``http://localhost:8000``) is used as it is.
    """
    if host is None:
        return None
    if host.startswith(("http://", "https://")):
        return host.rstrip("/")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"{'https' if secure else 'http'}://{host}:{port}"


def table_names(namespace: str, tablenames: Sequence[str]) -> tuple[str, str]:
    """The packages and summaries table names: each of ``tablenames`` after ``namespace``.

    :raises ConfigError: if a name is not a valid DynamoDB table name.
    """
    files, summaries = (namespace + name for name in tablenames)
    for table in (files, summaries):
        if not _TABLE_NAME.match(table):
            raise ConfigError(
                f"db.namespace/db.tablenames: {table!r} is not a valid DynamoDB table name "
                "(3 to 255 letters, digits, '_', '-' or '.')"
            )
    return files, summaries


# -- item encoding ------------------------------------------------------------------------------


def _s(text: str) -> dict[str, str]:
    return {"S": text}


def _n(value: int | str) -> dict[str, str]:
    return {"N": str(value)}


def encode_time(when: _dt.datetime) -> str:
    """``when`` as Unix seconds with six decimals, exactly (flywheel's DateTimeType format)."""
    delta = when.astimezone(_dt.UTC) - EPOCH
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return str(Decimal(micros).scaleb(-6))


def decode_time(text: str | Decimal) -> _dt.datetime:
    """The inverse of :func:`encode_time`; also reads whole seconds."""
    micros = int(Decimal(text).scaleb(6).to_integral_value())
    return EPOCH + _dt.timedelta(microseconds=micros)


def _record_attribute(file: PackageFile) -> dict[str, Any] | None:
    raw = record_json(file).encode("utf-8")
    if len(raw) <= RECORD_INLINE:
        return {"record": _s(raw.decode("utf-8"))}
    packed = zlib.compress(raw, 6)
    if len(packed) <= RECORD_MAX:
        return {"record_z": {"B": packed}}
    return None


def file_item(file: PackageFile) -> dict[str, Any]:
    """The packages-table item of ``file`` (DynamoDB attribute values)."""
    item: dict[str, Any] = {
        "filename": _s(file.filename),
        "name": _s(file.name),
        "version": _s(file.version),
        "last_modified": _n(encode_time(file.upload_time)),
    }
    if file.summary:
        item["summary"] = _s(file.summary)
    hashes = {k: _s(v) for k, v in (("hash_sha256", file.sha256), ("hash_md5", file.md5)) if v}
    if hashes:
        item["data"] = {"M": hashes}
    record = _record_attribute(file)
    if record is None:
        rest = {k: v for k, v in file.metadata.items() if k != "description"}
        record = _record_attribute(attrs.evolve(file, metadata=rest))
        if record is None:
            record = _record_attribute(attrs.evolve(file, metadata={}))
        log.warn(
            "the metadata of {filename} is too large for DynamoDB; it is cached without it",
            filename=file.filename,
        )
        assert record is not None
    item.update(record)
    return item


def _plain(value: Any) -> Any:
    """A deserialised DynamoDB value made JSON-friendly: numbers as int/float, sets as sorted
    lists, binary values dropped."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (str, bool)) or value is None:
        return value
    return None  # boto3's Binary


def _record_text(item: Mapping[str, Any]) -> str | None:
    if "record" in item:
        return str(item["record"]["S"])
    if "record_z" in item:
        return zlib.decompress(bytes(item["record_z"]["B"])).decode("utf-8")
    return None


def decode_file(item: Mapping[str, Any]) -> PackageFile:
    """The :class:`PackageFile` of a packages-table item, ours or pypicloud's."""
    text = _record_text(item)
    if text is not None:
        return PackageFile.from_record(json.loads(text))
    plain = {k: _deserializer.deserialize(v) for k, v in item.items()}
    data = plain.get("data") or {}
    if isinstance(data, str):  # flywheel before 0.5 kept dicts as JSON text
        try:
            data = json.loads(data)
        except ValueError:
            data = {}
    extra = _plain(data) if isinstance(data, Mapping) else {}
    values: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    for key, value in extra.items():
        if key in _PYPICLOUD_KEYS:
            values[_PYPICLOUD_KEYS[key]] = value
        elif key in _FIELDS and key not in ("name", "filename", "version", "metadata"):
            values[key] = value
        else:
            metadata[key] = value
    when = plain.get("last_modified")
    values.update(
        name=canonical(str(plain["name"])),
        display_name=str(plain["name"]),
        version=str(plain.get("version") or ""),
        filename=str(plain["filename"]),
        upload_time=decode_time(when) if isinstance(when, Decimal) else EPOCH,
        summary=str(plain.get("summary") or ""),
        size=int(values.get("size") or 0),
        sha256=str(values.get("sha256") or ""),
        metadata=metadata,
    )
    return PackageFile.from_record(values)


class _Row(NamedTuple):
    """What the summaries need to know about one file."""

    filename: str
    name: str
    version: str
    upload_time: _dt.datetime
    summary: str


_ROW_ATTRIBUTES = "#f, #n, #ver, #lm, #sm"


def _row(item: Mapping[str, Any]) -> _Row:
    when = item.get("last_modified", {}).get("N")
    return _Row(
        filename=item["filename"]["S"],
        name=item["name"]["S"],
        version=item.get("version", {}).get("S", ""),
        upload_time=decode_time(when) if when is not None else EPOCH,
        summary=item.get("summary", {}).get("S", ""),
    )


def _file_row(file: PackageFile) -> _Row:
    return _Row(file.filename, file.name, file.version, file.upload_time, file.summary)


def _newest(rows: Iterable[_Row]) -> _Row:
    # Ties go to the greater filename: the same choice the conditional update makes.
    return max(rows, key=lambda r: (r.upload_time, r.filename))


def _newest_values(row: _Row) -> tuple[str, dict[str, Any]]:
    """An update expression setting the newest-upload attributes to ``row``'s."""
    values: dict[str, Any] = {
        ":lm": _n(encode_time(row.upload_time)),
        ":nw": _s(row.filename),
        ":ver": _s(row.version),
    }
    expression = "SET #lm = :lm, #nw = :nw, #ver = :ver"
    if row.summary:
        values[":sm"] = _s(row.summary)
        expression += ", #sm = :sm"
    else:
        expression += " REMOVE #sm"
    return expression, values


def summary_item(name: str, rows: Sequence[_Row]) -> dict[str, Any]:
    """The summaries-table item of project ``name`` holding ``rows`` (at least one)."""
    item: dict[str, Any] = {"name": _s(name), "file_count": _n(len(rows))}
    for version, count in Counter(r.version for r in rows).items():
        item[VERSION_PREFIX + version] = _n(count)
    newest = _newest(rows)
    item.update(
        last_modified=_n(encode_time(newest.upload_time)),
        newest=_s(newest.filename),
        version=_s(newest.version),
    )
    if newest.summary:
        item["summary"] = _s(newest.summary)
    return item


def decode_summary(item: Mapping[str, Any]) -> ProjectSummary | None:
    """The :class:`ProjectSummary` of one of our summaries-table items; ``None`` when the
    project has no files left."""
    name = item["name"]["S"]
    versions = [
        key[len(VERSION_PREFIX) :]
        for key, value in item.items()
        if key.startswith(VERSION_PREFIX) and int(Decimal(value.get("N", "0"))) > 0
    ]
    if int(Decimal(item["file_count"]["N"])) <= 0 or not versions:
        return None
    # The version rule (PEP 440, pre-releases) lives in summarize(); the newest upload is ours.
    [base] = summarize(SummaryRow(name, v, EPOCH, "") for v in versions)
    when = item.get("last_modified", {}).get("N")
    return attrs.evolve(
        base,
        last_modified=decode_time(when) if when is not None else EPOCH,
        summary=item.get("summary", {}).get("S", ""),
    )


def _backoff(attempt: int) -> None:
    time.sleep(min(1.0, 0.025 * 2**attempt) * random.uniform(0.5, 1.5))


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _is_ccf(error: ClientError) -> bool:
    return _code(error) == "ConditionalCheckFailedException"


class _Cancelled(Exception):
    """A transaction was cancelled; ``reasons`` has one code per item ("None" when fine)."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(reasons)
        self.reasons = reasons


# -- the cache ----------------------------------------------------------------------------------


@implementer(ICache)
@attrs.define
class DynamoCache:
    """File records in DynamoDB.

    :ivar where: where the tables are (an endpoint URL or a region), for messages.
    :ivar hint: which options to check when DynamoDB cannot be reached.
    :ivar page_size: items per Scan/Query page (``None``: DynamoDB's 1 MB pages).
    :ivar settle_seconds: how long a changed version token is withheld (see
        :meth:`version_token`).
    """

    @attrs.frozen
    class Options:
        region_name: str | None = option(
            _optional,
            default=None,
            doc="AWS region of the tables (required unless db.host is set; then us-east-1)",
        )
        aws_access_key_id: str | None = option(
            _optional, default=None, doc="access key id (default: boto3's credential chain)"
        )
        # Built by hand to keep the secret out of repr(), which may end up in a log.
        aws_secret_access_key: str | None = attrs.field(
            default=None,
            repr=False,
            metadata={"parse": _optional, "doc": "secret access key (with db.aws_access_key_id)"},
        )
        namespace: str = option(as_str, default="", doc="prefix of both table names")
        tablenames: tuple[str, ...] = option(
            _two_names, default=DEFAULT_TABLES, doc="the two table names (before the prefix)"
        )
        host: str | None = option(
            _optional, default=None, doc="host of a local endpoint (DynamoDB Local, moto)"
        )
        port: int = option(_port, default=8000, doc="port of db.host")
        secure: bool = option(as_bool, default=False, doc="use https for db.host")

    _client: Any = attrs.field(alias="client")
    _run: RunBlocking = attrs.field(alias="run")
    files_table: str
    summary_table: str
    where: str = "DynamoDB"
    hint: str = "check db.region_name and the network"
    page_size: int | None = None
    settle_seconds: float = SETTLE_SECONDS
    _clock: Callable[[], float] = attrs.field(alias="clock", default=time.monotonic)
    _index_has_all: bool = attrs.field(default=True, init=False)
    _seen_token: object = attrs.field(default=None, init=False)
    _seen_at: float = attrs.field(default=0.0, init=False)

    @classmethod
    def from_config(cls, options: DynamoCache.Options, runtime: Runtime) -> DynamoCache:
        """Build the cache; nothing is contacted until :meth:`start`.

        :raises ConfigError: for a missing region, half a key pair or a bad table name.
        """
        files, summaries = table_names(options.namespace, options.tablenames)
        if (options.aws_access_key_id is None) != (options.aws_secret_access_key is None):
            raise ConfigError(
                "db.aws_access_key_id and db.aws_secret_access_key: give both or neither"
            )
        endpoint = endpoint_url(options.host, options.port, options.secure)
        session = boto3.session.Session()
        region = options.region_name or session.region_name
        if region is None:
            if endpoint is None:
                raise ConfigError(
                    "db.region_name: required option is missing (the AWS region of the "
                    "cache tables, e.g. us-east-1; or db.host for a local endpoint)"
                )
            region = "us-east-1"
        client = session.client(
            "dynamodb",
            region_name=region,
            endpoint_url=endpoint,
            aws_access_key_id=options.aws_access_key_id,
            aws_secret_access_key=options.aws_secret_access_key,
            config=Config(
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                retries={"max_attempts": REQUEST_ATTEMPTS, "mode": "standard"},
                max_pool_connections=THREADS,
            ),
        )
        if endpoint is not None:
            where, hint = endpoint, "check db.host, db.port and db.secure"
        else:
            where, hint = f"region {region}", "check db.region_name and the network"
        return cls(
            client=client,
            run=runtime.threads("db", THREADS),
            files_table=files,
            summary_table=summaries,
            where=where,
            hint=hint,
        )

    # -- running blocking work ------------------------------------------------------------------

    def _call(self, work: Callable[..., T], *args: Any) -> Deferred[T]:
        return self._run(self._guarded, work, *args)

    def _guarded(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` with botocore's errors turned into ours."""
        try:
            return work(*args)
        except ClientError as e:
            raise self._client_error(e) from None
        except (HTTPClientError, BotoConnectionError) as e:
            lines = str(e).strip().splitlines()
            reason = lines[0] if lines else type(e).__name__
            log.warn("the DynamoDB cache is unreachable: {reason}", reason=reason)
            raise BackendUnavailable(
                f"the DynamoDB cache at {self.where} is unreachable ({self.hint}): {reason}"
            ) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise BackendUnavailable(
                "the DynamoDB cache has no AWS credentials: set db.aws_access_key_id and "
                "db.aws_secret_access_key, or give the server an AWS profile or role"
            ) from None

    def _client_error(self, error: ClientError) -> Exception:
        code = _code(error)
        lines = str(error.response.get("Error", {}).get("Message", "")).strip().splitlines()
        message = lines[0] if lines else code
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in _THROTTLED:
            text = (
                f"DynamoDB is throttling the cache ({code}): raise the capacity of "
                f"{self.files_table} and {self.summary_table}, or use on-demand billing"
            )
        elif code in _REFUSED:
            text = (
                f"DynamoDB refused the cache's credentials ({code}: {message}); check "
                "db.aws_access_key_id/db.aws_secret_access_key or the role's DynamoDB policy"
            )
        elif code == "ResourceNotFoundException":
            text = f"a DynamoDB cache table is missing ({message}); restart to create it"
        elif code in _SERVER or status >= 500:
            text = f"DynamoDB at {self.where} failed ({code}: {message})"
        else:
            unchanged: Exception = error
            return unchanged
        log.warn("{message}", message=text)
        return BackendUnavailable(text)

    def _pages(self, operation: str, **kwargs: Any) -> Iterator[list[dict[str, Any]]]:
        """Every page of a Scan or Query (each at most 1 MB, or ``page_size`` items)."""
        call = getattr(self._client, operation)
        if self.page_size:
            kwargs["Limit"] = self.page_size
        while True:
            response = call(**kwargs)
            yield response.get("Items", [])
            last = response.get("LastEvaluatedKey")
            if not last or last == kwargs.get("ExclusiveStartKey"):
                return
            kwargs["ExclusiveStartKey"] = last

    def _items(self, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for page in self._pages(operation, **kwargs):
            yield from page

    def _batch_write(
        self, table: str, requests: Sequence[dict[str, Any]], tally: Tally | None = None
    ) -> None:
        """Put or delete many items, 25 per call, retrying what DynamoDB leaves unprocessed;
        each call's items are added to ``tally``."""
        for chunk in batches(requests, BATCH_WRITE):
            pending: dict[str, Any] = {table: list(chunk)}
            for attempt in range(ATTEMPTS):
                response = self._client.batch_write_item(RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if not pending:
                    break
                _backoff(attempt)
            else:
                raise BackendUnavailable(
                    f"DynamoDB kept refusing writes to {table} (throttled); try again later "
                    "or raise the table's capacity"
                )
            if tally is not None:
                tally.add(len(chunk))

    def _batch_get(
        self, table: str, keys: Sequence[dict[str, Any]], consistent: bool = True
    ) -> list[dict[str, Any]]:
        """The items of ``keys`` that exist, 100 per call, retrying unprocessed keys."""
        found: list[dict[str, Any]] = []
        for chunk in batches(keys, BATCH_GET):
            pending: dict[str, Any] = {table: {"Keys": list(chunk), "ConsistentRead": consistent}}
            for attempt in range(ATTEMPTS):
                response = self._client.batch_get_item(RequestItems=pending)
                found.extend(response.get("Responses", {}).get(table, []))
                pending = response.get("UnprocessedKeys") or {}
                if not pending:
                    break
                _backoff(attempt)
            else:
                raise BackendUnavailable(
                    f"DynamoDB kept refusing reads from {table} (throttled); try again later"
                )
        return found

    def _get(
        self, table: str, key: dict[str, Any], projection: str | None = None
    ) -> dict[str, Any] | None:
        """One item, read consistently; ``projection`` may use the :data:`_NAMES`."""
        kwargs: dict[str, Any] = {"TableName": table, "Key": key, "ConsistentRead": True}
        if projection is not None:
            kwargs["ProjectionExpression"] = projection
            kwargs["ExpressionAttributeNames"] = _names(projection)
        item: dict[str, Any] | None = self._client.get_item(**kwargs).get("Item")
        return item

    def _update(
        self,
        table: str,
        key: dict[str, Any],
        expression: str,
        condition: str | None = None,
        values: dict[str, Any] | None = None,
        names: dict[str, str] | None = None,
        ignore_failed_condition: bool = False,
    ) -> bool:
        """UpdateItem; whether it happened (``False``: the condition failed, when ignored)."""
        kwargs: dict[str, Any] = {"TableName": table, "Key": key, "UpdateExpression": expression}
        if condition is not None:
            kwargs["ConditionExpression"] = condition
        used = _names(expression, condition or "")
        used.update(names or {})
        if used:
            kwargs["ExpressionAttributeNames"] = used
        if values:
            kwargs["ExpressionAttributeValues"] = values
        try:
            self._client.update_item(**kwargs)
        except ClientError as e:
            if ignore_failed_condition and _is_ccf(e):
                return False
            raise
        return True

    def _transact(self, items: list[dict[str, Any]]) -> None:
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as e:
            if _code(e) != "TransactionCanceledException":
                raise
            reasons = [
                str(r.get("Code", "None")) for r in e.response.get("CancellationReasons", [])
            ]
            if len(reasons) != len(items):
                raise  # no reason per item: nothing to go by
            raise _Cancelled(reasons) from None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Create the tables if they do not exist (waiting until they are ACTIVE), and give
        tables written by pypicloud the summary items this cache keeps."""
        return self._call(self._start)

    def stop(self) -> Deferred[None]:
        """Close the client's connections."""
        return self._run(self._client.close)

    def _start(self) -> None:
        files = self._ensure_table(
            self.files_table, attributes={"filename": "S", "name": "S"}, key="filename", index=True
        )
        self._ensure_table(self.summary_table, attributes={"name": "S"}, key="name")
        self._check_index(files)
        meta = self._get(self.summary_table, {"name": _s(META)})
        if meta is None or int(Decimal(meta.get("schema", {}).get("N", "0"))) < SCHEMA:
            if self._has_items(self.files_table, "filename") or self._has_items(
                self.summary_table, "name"
            ):
                log.info(
                    "counting the projects of {table} (tables written by pypicloud)",
                    table=self.files_table,
                )
                self._rebuild_summaries()
            self._update(
                self.summary_table,
                {"name": _s(META)},
                "SET #s = :s ADD #t :zero",
                values={":s": _n(SCHEMA), ":zero": _n(0)},
            )
        log.info(
            "DynamoDB cache ready: tables {files} and {summaries} at {where}",
            files=self.files_table,
            summaries=self.summary_table,
            where=self.where,
        )

    def _ensure_table(
        self, table: str, attributes: dict[str, str], key: str, index: bool = False
    ) -> dict[str, Any]:
        """The description of ``table`` once it is ACTIVE, creating it (on-demand billing) if
        it does not exist; another process creating it at the same moment is fine."""
        deadline = time.monotonic() + TABLE_WAIT_SECONDS
        for polls in itertools.count():
            try:
                description: dict[str, Any] = self._client.describe_table(TableName=table)
            except ClientError as e:
                if _code(e) != "ResourceNotFoundException":
                    raise
                self._create_table(table, attributes, key, index)
                status = "CREATING"
                if polls == 0:
                    continue  # a local endpoint has it ACTIVE at once
            else:
                status = description["Table"].get("TableStatus")
                indexes = description["Table"].get("GlobalSecondaryIndexes", [])
                if status == "ACTIVE" and all(
                    i.get("IndexStatus", "ACTIVE") == "ACTIVE" for i in indexes
                ):
                    return dict(description["Table"])
            if time.monotonic() > deadline:
                raise BackendUnavailable(
                    f"the DynamoDB table {table} did not become ACTIVE within "
                    f"{TABLE_WAIT_SECONDS:.0f} seconds (it is {status})"
                )
            log.info("waiting for table {table} ({status})", table=table, status=status)
            time.sleep(min(2.0, 0.1 * 2**polls))
        raise AssertionError("unreachable")

    def _create_table(self, table: str, attributes: dict[str, str], key: str, index: bool) -> None:
        arguments: dict[str, Any] = {
            "TableName": table,
            "AttributeDefinitions": [
                {"AttributeName": a, "AttributeType": t} for a, t in attributes.items()
            ],
            "KeySchema": [{"AttributeName": key, "KeyType": "HASH"}],
            "BillingMode": "PAY_PER_REQUEST",
        }
        if index:
            arguments["GlobalSecondaryIndexes"] = [
                {
                    "IndexName": NAME_INDEX,
                    "KeySchema": [{"AttributeName": "name", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ]
        try:
            self._client.create_table(**arguments)
        except ClientError as e:
            if _code(e) != "ResourceInUseException":  # another process is creating it
                raise
        else:
            log.info("created the DynamoDB table {table}", table=table)

    def _check_index(self, description: Mapping[str, Any]) -> None:
        for index in description.get("GlobalSecondaryIndexes", []):
            key = index.get("KeySchema", [])
            if index.get("IndexName") == NAME_INDEX and key[:1] == [
                {"AttributeName": "name", "KeyType": "HASH"}
            ]:
                projection = index.get("Projection", {}).get("ProjectionType")
                self._index_has_all = projection == "ALL"
                return
        raise ConfigError(
            f"db.tablenames: the table {self.files_table} has no global secondary index "
            f"{NAME_INDEX} on 'name', so pypicloud did not make it; choose other "
            "db.namespace/db.tablenames, or delete it and restart"
        )

    def _has_items(self, table: str, key: str) -> bool:
        """Whether ``table`` holds anything but the ``#meta`` item."""
        for page in self._pages(
            "scan",
            TableName=table,
            ProjectionExpression="#k",
            ExpressionAttributeNames={"#k": key},
        ):
            if any(item[key].get("S") != META for item in page):
                return True
        return False

    # -- summaries ------------------------------------------------------------------------------

    def _summary_names(self) -> list[str]:
        names = []
        for item in self._items(
            "scan",
            TableName=self.summary_table,
            ProjectionExpression="#n",
            ExpressionAttributeNames=_names("#n"),
            ConsistentRead=True,
        ):
            if item["name"]["S"] != META:
                names.append(item["name"]["S"])
        return names

    def _write_summaries(self, rows: Iterable[_Row]) -> set[str]:
        """Replace the summary items of the projects of ``rows``; the names written."""
        by_name: dict[str, list[_Row]] = {}
        for row in rows:
            by_name.setdefault(row.name, []).append(row)
        self._batch_write(
            self.summary_table,
            [{"PutRequest": {"Item": summary_item(n, r)}} for n, r in sorted(by_name.items())],
        )
        return set(by_name)

    def _drop_summaries_except(self, keep: set[str]) -> None:
        stale = [n for n in self._summary_names() if n not in keep]
        self._batch_write(
            self.summary_table, [{"DeleteRequest": {"Key": {"name": _s(n)}}} for n in stale]
        )

    def _rebuild_summaries(self) -> None:
        """Count every project of the packages table afresh (for tables pypicloud wrote)."""
        rows = [
            _row(item)
            for item in self._items(
                "scan",
                TableName=self.files_table,
                ProjectionExpression=_ROW_ATTRIBUTES,
                ExpressionAttributeNames=_names(_ROW_ATTRIBUTES),
                ConsistentRead=True,
            )
            if "name" in item
        ]
        self._drop_summaries_except(self._write_summaries(rows))

    def _project_items(self, name: str) -> list[dict[str, Any]]:
        """Every packages-table item of project ``name``, through the name index."""
        items = list(
            self._items(
                "query",
                TableName=self.files_table,
                IndexName=NAME_INDEX,
                KeyConditionExpression="#n = :n",
                ExpressionAttributeNames=_names("#n"),
                ExpressionAttributeValues={":n": _s(name)},
            )
        )
        if self._index_has_all:
            return items
        keys = [{"filename": item["filename"]} for item in items]
        return [i for i in self._batch_get(self.files_table, keys) if i.get("name") == _s(name)]

    def _adopt_summary(self, name: str) -> None:
        """Give project ``name`` a summary item of ours (it has pypicloud's, or none), counted
        from the name index."""
        rows = [_row(item) for item in self._project_items(name)]
        item = summary_item(name, rows) if rows else {"name": _s(name), "file_count": _n(0)}
        try:
            self._client.put_item(
                TableName=self.summary_table,
                Item=item,
                ConditionExpression="attribute_not_exists(#fc)",
                ExpressionAttributeNames=_names("#fc"),
            )
        except ClientError as e:
            if not _is_ccf(e):
                raise
            # Another process adopted it first.

    def _count_update(
        self, name: str, versions: Mapping[str, int], files: int, may_create: bool
    ) -> dict[str, Any]:
        """A transaction item adding ``files`` to project ``name``'s file count and each delta
        of ``versions`` to that version's count.  The summary item must be ours (or, with
        ``may_create``, absent)."""
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        parts = []
        if files:
            parts.append("#fc :fc")
            values[":fc"] = _n(files)
        for i, (version, delta) in enumerate(sorted(versions.items())):
            names[f"#v{i}"] = VERSION_PREFIX + version
            values[f":v{i}"] = _n(delta)
            parts.append(f"#v{i} :v{i}")
        expression = "ADD " + ", ".join(parts)
        condition = "attribute_exists(#fc)"
        if may_create:
            condition += " OR attribute_not_exists(#n)"
        return {
            "Update": {
                "TableName": self.summary_table,
                "Key": {"name": _s(name)},
                "UpdateExpression": expression,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {**_names(expression, condition), **names},
                "ExpressionAttributeValues": values,
            }
        }

    def _offer_newest(self, file: PackageFile, replaced: bool) -> None:
        """Make ``file`` its project's newest upload if it is (by time, then filename)."""
        expression, values = _newest_values(_file_row(file))
        done = self._update(
            self.summary_table,
            {"name": _s(file.name)},
            expression,
            "attribute_exists(#fc) AND (attribute_not_exists(#lm) OR #lm < :lm "
            "OR (#lm = :lm AND #nw <= :nw))",
            values,
            ignore_failed_condition=True,
        )
        if not done and replaced:
            # The newest file may have been saved again with an older time: find the newest.
            current = self._get(self.summary_table, {"name": _s(file.name)}, "#nw")
            if current is not None and current.get("newest") == _s(file.filename):
                self._recompute_newest(file.name, file.filename, {file.filename: file})

    def _recompute_newest(
        self, name: str, stale: str, known: Mapping[str, PackageFile | None]
    ) -> None:
        """Point project ``name``'s newest upload away from file ``stale``, looking through the
        name index; ``known`` overrides what the (eventually consistent) index says of some
        files (``None``: deleted)."""
        rows = {r.filename: r for r in map(_row, self._project_items(name))}
        for filename, file in known.items():
            if file is None:
                rows.pop(filename, None)
            else:
                rows[filename] = _file_row(file)
        if rows:
            expression, values = _newest_values(_newest(rows.values()))
        else:
            expression, values = "REMOVE #lm, #nw, #ver, #sm", {}
        values[":stale"] = _s(stale)
        self._update(
            self.summary_table,
            {"name": _s(name)},
            expression,
            "#nw = :stale",
            values,
            ignore_failed_condition=True,
        )

    def _after_removal(self, name: str, version: str, filename: str, gone: bool) -> None:
        """Tidy project ``name``'s summary after its file ``filename`` of ``version`` was
        deleted (``gone``) or got another version: drop the summary of a project left without
        files, the count of a version left without files, and a newest upload that is gone."""
        if gone:
            try:
                self._client.delete_item(
                    TableName=self.summary_table,
                    Key={"name": _s(name)},
                    ConditionExpression="#fc <= :zero",
                    ExpressionAttributeNames=_names("#fc"),
                    ExpressionAttributeValues={":zero": _n(0)},
                )
                return
            except ClientError as e:
                if not _is_ccf(e):
                    raise
        current = self._get(self.summary_table, {"name": _s(name)})
        if current is None:
            return
        counted = current.get(VERSION_PREFIX + version)
        if counted is not None and int(Decimal(counted["N"])) <= 0:
            self._update(
                self.summary_table,
                {"name": _s(name)},
                "REMOVE #v",
                "#v <= :zero",
                {":zero": _n(0)},
                names={"#v": VERSION_PREFIX + version},
                ignore_failed_condition=True,
            )
        if gone and current.get("newest") == _s(filename):
            self._recompute_newest(name, filename, {filename: None})

    def _bump(self) -> None:
        """Tell every process the contents changed (after the change, never before)."""
        self._update(self.summary_table, {"name": _s(META)}, "ADD #t :one", values={":one": _n(1)})

    def _stored_key(self, filename: str) -> tuple[str, str] | None:
        """``(name, version)`` of the stored item of ``filename``, read consistently."""
        item = self._get(self.files_table, {"filename": _s(filename)}, "#n, #ver")
        if item is None:
            return None
        return item["name"]["S"], item.get("version", {}).get("S", "")

    def _settle_cancel(self, reasons: list[str], attempt: int, what: str) -> None:
        """Wait before retrying a transaction that collided with another; fail on reasons a
        retry cannot cure."""
        if any(r in _RETRY_REASONS for r in reasons):
            _backoff(attempt)
        elif not all(r in ("None", "ConditionalCheckFailed") for r in reasons):
            raise BackendUnavailable(f"DynamoDB refused to {what}: {', '.join(reasons)}")

    # -- writing --------------------------------------------------------------------------------

    def save(self, file: PackageFile) -> Deferred[None]:
        return self._call(self._save, file)

    def _save(self, file: PackageFile) -> None:
        item = file_item(file)
        # What we believe is stored under this filename: (name, version), or None for nothing.
        # New files are the common case: try that first, and learn otherwise from the refusal.
        stored: tuple[str, str] | None = None
        for attempt in range(ATTEMPTS):
            put: dict[str, Any] = {"TableName": self.files_table, "Item": item}
            if stored is None:
                put["ConditionExpression"] = "attribute_not_exists(#f)"
                updates = [self._count_update(file.name, {file.version: 1}, 1, True)]
            else:
                put["ConditionExpression"] = "#n = :old_n AND #ver = :old_v"
                put["ExpressionAttributeValues"] = {
                    ":old_n": _s(stored[0]),
                    ":old_v": _s(stored[1]),
                }
                if stored == (file.name, file.version):
                    updates = []
                elif stored[0] == file.name:
                    deltas = {stored[1]: -1, file.version: 1}
                    updates = [self._count_update(file.name, deltas, 0, False)]
                else:
                    updates = [
                        self._count_update(stored[0], {stored[1]: -1}, -1, False),
                        self._count_update(file.name, {file.version: 1}, 1, True),
                    ]
            put["ExpressionAttributeNames"] = _names(put["ConditionExpression"])
            try:
                if updates:
                    self._transact([{"Put": put}, *updates])
                else:
                    self._client.put_item(**put)
                break
            except _Cancelled as c:
                self._settle_cancel(c.reasons, attempt, f"save {file.filename}")
                if c.reasons[0] == "ConditionalCheckFailed":
                    stored = self._stored_key(file.filename)
                    continue
                for update, reason in zip(updates, c.reasons[1:], strict=False):
                    if reason == "ConditionalCheckFailed":
                        self._adopt_summary(update["Update"]["Key"]["name"]["S"])
            except ClientError as e:
                if not _is_ccf(e):
                    raise
                stored = self._stored_key(file.filename)
        else:
            raise Conflict(f"{file.filename} was changed by too many requests at once; try again")
        if stored is not None and stored[0] != file.name:
            self._after_removal(stored[0], stored[1], file.filename, gone=True)
        elif stored is not None and stored[1] != file.version:
            self._after_removal(file.name, stored[1], file.filename, gone=False)
        self._offer_newest(file, replaced=stored is not None and stored[0] == file.name)
        self._bump()

    def delete(self, file: PackageFile) -> Deferred[None]:
        return self._call(self._delete, file.filename, (file.name, file.version))

    def _delete(self, filename: str, stored: tuple[str, str]) -> None:
        for attempt in range(ATTEMPTS):
            condition = "#n = :n AND #ver = :v"
            remove = {
                "TableName": self.files_table,
                "Key": {"filename": _s(filename)},
                "ConditionExpression": condition,
                "ExpressionAttributeNames": _names(condition),
                "ExpressionAttributeValues": {":n": _s(stored[0]), ":v": _s(stored[1])},
            }
            count = self._count_update(stored[0], {stored[1]: -1}, -1, False)
            try:
                self._transact([{"Delete": remove}, count])
                break
            except _Cancelled as c:
                self._settle_cancel(c.reasons, attempt, f"delete {filename}")
                if c.reasons[0] == "ConditionalCheckFailed":
                    found = self._stored_key(filename)
                    if found is None:
                        return  # not cached: nothing to forget
                    stored = found
                elif c.reasons[1:] == ["ConditionalCheckFailed"]:
                    self._adopt_summary(stored[0])
        else:
            raise Conflict(f"{filename} was changed by too many requests at once; try again")
        self._after_removal(stored[0], stored[1], filename, gone=True)
        self._bump()

    def clear_all(self) -> Deferred[None]:
        return self._call(self._clear_all)

    def _clear_all(self) -> None:
        self._clear()
        self._bump()

    def _clear(self) -> None:
        """Delete every item but ``#meta`` (emptying the tables keeps their settings, where
        pypicloud dropped and re-created them)."""
        keys = [
            {"DeleteRequest": {"Key": {"filename": item["filename"]}}}
            for item in self._items(
                "scan",
                TableName=self.files_table,
                ProjectionExpression="#f",
                ExpressionAttributeNames=_names("#f"),
            )
        ]
        self._batch_write(self.files_table, keys)
        self._drop_summaries_except(set())

    def reload_from_storage(
        self, files: Sequence[PackageFile], graceful: bool, progress: Progress | None = None
    ) -> Deferred[None]:
        return self._call(self._reload, files, graceful, progress)

    def _reload(
        self, files: Sequence[PackageFile], graceful: bool, progress: Progress | None
    ) -> None:
        wanted = latest_per_filename(files)
        rows = [_file_row(f) for f in wanted.values()]
        if not graceful:
            self._clear()
            puts = [{"PutRequest": {"Item": file_item(f)}} for f in wanted.values()]
            self._batch_write(self.files_table, puts, Tally(progress, len(puts)))
            self._write_summaries(rows)
            log.info("reloaded the cache: {count} files", count=len(wanted))
            self._bump()
            return
        current = {
            item["filename"]["S"]: _record_text(item) or ""
            for item in self._items("scan", TableName=self.files_table, ConsistentRead=True)
        }
        write, remove = plan_reload(current, wanted.values())
        tally = Tally(progress, len(write) + len(remove))
        # Additions first, removals last: readers find every file that stays, throughout.
        self._batch_write(
            self.files_table, [{"PutRequest": {"Item": file_item(f)}} for f in write], tally
        )
        written = self._write_summaries(rows)
        self._batch_write(
            self.files_table,
            [{"DeleteRequest": {"Key": {"filename": _s(name)}}} for name in remove],
            tally,
        )
        self._drop_summaries_except(written)
        changed = sum(1 for f in write if f.filename in current)
        log.info(
            "reloaded the cache gracefully: {added} added, {changed} replaced, {removed} removed",
            added=len(write) - changed,
            changed=changed,
            removed=len(remove),
        )
        self._bump()

    # -- reading --------------------------------------------------------------------------------

    def fetch(self, filename: str) -> Deferred[PackageFile | None]:
        def work() -> PackageFile | None:
            item = self._get(self.files_table, {"filename": _s(filename)})
            return None if item is None else decode_file(item)

        return self._call(work)

    def all(self, name: str) -> Deferred[list[PackageFile]]:
        return self._call(lambda: [decode_file(item) for item in self._project_items(name)])

    def distinct(self) -> Deferred[list[str]]:
        def work() -> list[str]:
            names = set()
            for item in self._items(
                "scan",
                TableName=self.summary_table,
                ProjectionExpression="#n, #fc",
                ExpressionAttributeNames=_names("#n, #fc"),
                ConsistentRead=True,
            ):
                name = item["name"]["S"]
                count = item.get("file_count", {}).get("N")
                # A summary without a count was written by pypicloud: its project has files.
                if name != META and (count is None or int(Decimal(count)) > 0):
                    names.add(name)
            return sorted(names)

        return self._call(work)

    def summary(self) -> Deferred[list[ProjectSummary]]:
        def work() -> list[ProjectSummary]:
            result = []
            for item in self._items("scan", TableName=self.summary_table, ConsistentRead=True):
                name = item["name"]["S"]
                if name == META:
                    continue
                if "file_count" in item:
                    found = decode_summary(item)
                    if found is not None:
                        result.append(found)
                    continue
                # Written by pypicloud (no counts): summarise the project's files.
                rows = [_row(i) for i in self._project_items(name)]
                result.extend(
                    summarize(SummaryRow(name, r.version, r.upload_time, r.summary) for r in rows)
                )
            return sorted(result, key=lambda s: s.name)

        return self._call(work)

    def search(
        self, criteria: Mapping[str, Sequence[str]], query_type: str
    ) -> Deferred[list[PackageFile]]:
        def work() -> list[PackageFile]:
            terms = search_terms(criteria, query_type)
            if not terms:
                return []
            found = [
                {"filename": item["filename"]}
                for item in self._items(
                    "scan",
                    TableName=self.files_table,
                    ProjectionExpression="#f, #n, #sm",
                    ExpressionAttributeNames=_names("#f, #n, #sm"),
                )
                if "name" in item
                and matches(
                    item["name"]["S"], item.get("summary", {}).get("S", ""), terms, query_type
                )
            ]
            return [decode_file(i) for i in self._batch_get(self.files_table, found, False)]

        return self._call(work)

    def version_token(self) -> Deferred[object | None]:
        """The change counter of the ``#meta`` item (one consistent read).

        A new value is answered only once this process has seen it for ``settle_seconds``,
        ``None`` until then: ``all()`` reads a global secondary index, which may lag a change
        by a moment, and what was read during that moment must not be kept.
        """

        def read() -> int:
            item = self._get(self.summary_table, {"name": _s(META)}, "#t")
            return int(Decimal(item["token"]["N"])) if item and "token" in item else 0

        def settle(token: int) -> object | None:
            now = self._clock()
            if token != self._seen_token:
                self._seen_token, self._seen_at = token, now
            if now - self._seen_at < self.settle_seconds:
                return None
            return token

        return self._call(read).addCallback(settle)

    # A lock is two attributes of the #meta item (never listed as a project): its token and
    # its expiry in wall-clock seconds, set and removed by conditional updates.

    def acquire_lock(self, name: str, seconds: float) -> Deferred[str | None]:
        token = secrets.token_hex(16)
        attrs_ = {"#lt": f"lock_{name}_token", "#le": f"lock_{name}_expires"}

        def work() -> str | None:
            now = time.time()
            taken = self._update(
                self.summary_table,
                {"name": _s(META)},
                "SET #lt = :token, #le = :expires",
                condition="attribute_not_exists(#lt) OR #le <= :now",
                values={
                    ":token": _s(token),
                    ":expires": _n(repr(now + seconds)),
                    ":now": _n(repr(now)),
                },
                names=attrs_,
                ignore_failed_condition=True,
            )
            return token if taken else None

        return self._call(work)

    def release_lock(self, name: str, token: str) -> Deferred[bool]:
        attrs_ = {"#lt": f"lock_{name}_token", "#le": f"lock_{name}_expires"}

        def work() -> bool:
            return self._update(
                self.summary_table,
                {"name": _s(META)},
                "REMOVE #lt, #le",
                condition="#lt = :token AND #le > :now",
                values={":token": _s(token), ":now": _n(repr(time.time()))},
                names=attrs_,
                ignore_failed_condition=True,
            )

        return self._call(work)

    def check_health(self) -> Deferred[tuple[bool, str]]:
        def work() -> tuple[bool, str]:
            self._get(self.summary_table, {"name": _s(META)})
            return (True, "")

        def unhealthy(failure: Failure) -> tuple[bool, str]:
            failure.trap(PPCError, ClientError)
            message = getattr(failure.value, "message", None) or str(failure.value)
            return (False, message.strip().splitlines()[0] if message.strip() else "error")

        return self._call(work).addErrback(unhealthy)
