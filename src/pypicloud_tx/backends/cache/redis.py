"""An :class:`~pypicloud_tx.interfaces.ICache` in Redis (``pypi.db = redis``), on txredisapi.

The client is asynchronous: no thread ever waits on the network.  The connection pool is
opened by :meth:`RedisCache.start` (or the first call) and reconnects by itself after the
server restarts.  A server that cannot be reached fails calls at once with
:class:`~pypicloud_tx.errors.BackendUnavailable`; nothing waits longer than the URL's
``socket_connect_timeout`` for a connection or ``socket_timeout`` for an answer.

Key layout
----------

Every key starts with ``db.prefix`` (``P``, default ``pypicloud:``).  The data lives in a
*generation* ``G`` (16 hex digits) named by ``P gen``, so that clearing or fully reloading the
cache is one atomic switch to a new generation, after which the old one is deleted::

    P gen                  string  the current generation G (absent: the cache is empty)
    P version              string  a counter INCRed by every change: the version token
    P lock:<name>          string  a lock held by one process (acquire_lock/release_lock)
    P G:set                set     canonical names of every project (as pypicloud's P set)
    P G:files:<name>       hash    filename -> JSON [version, upload time, summary], one
                                   field per file of the project
    P G:summary:<name>     hash    name, stable (absent for none), unstable, last_modified
                                   (ISO 8601, UTC), summary: the project's summary
    P G:package:<filename> hash    name (canonical project name), record (the file's full
                                   record as JSON text, as PackageFile.to_record makes it)

(``P gen`` is written ``pypicloud:gen``; ``P G:set`` is written ``pypicloud:3f0c...:set``.)
The names after the generation are pypicloud's (``set``, ``summary:``, ``package:``);
``files:<name>`` replaces pypicloud's ``set:<name>`` because it also carries what summaries
and searches need.  Keys pypicloud itself wrote are never read, so a pypicloud Redis cache
under the same prefix is simply ignored (the server rebuilds its own from storage).

Every change of files is one ``WATCH``/``MULTI``/``EXEC`` transaction over the generation,
the file hashes and the ``files:`` hashes of the projects it touches, so a project's files, its
summary and the project list always agree; readers run Lua scripts, each of which reads one
generation atomically.  ``summary()``, ``distinct()`` and ``all()`` read index keys only;
nothing scans the key space except clearing and reloading (to delete an old generation).

Redis Cluster is not supported: the read scripts touch keys they compute themselves.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import txredisapi
from OpenSSL.crypto import Error as OpenSSLError
from twisted.internet import defer
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
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
from pypicloud_tx.config.options import option
from pypicloud_tx.domain.models import PackageFile, ProjectSummary
from pypicloud_tx.errors import BackendUnavailable, ConfigError
from pypicloud_tx.interfaces import ICache, Progress
from pypicloud_tx.runtime import Runtime

log = Logger()
T = TypeVar("T")

#: Files per write transaction in a graceful reload, and commands sent at once while
#: building a new generation.
BATCH_SIZE = 500
#: Projects whose records one script reads during a graceful reload: Redis serves nobody else
#: while a script runs, so each reads a bounded part.
PROJECTS_PER_READ = 20
#: Seconds the keys of a generation being built live if the build never finishes.
BUILD_TTL = 3600
#: Keys per script of a full reload's writes, and the most arguments one write may have to go
#: through a script (more go as plain commands).
SCRIPT_KEYS = 100
SCRIPT_MAX_ARGS = 1000
#: Commands (mostly scripts) a full reload has in flight at once.
BUILD_COMMANDS_IN_FLIGHT = 20
#: Transactions retried when another process changed the same project meanwhile.
MAX_ATTEMPTS = 20
#: Seconds between attempts to rebuild a pool whose credentials were refused.
REAUTH_SECONDS = 5.0

#: The key layout, as data: (pattern, Redis type).  ``{P}`` is the prefix, ``{G}`` the
#: generation.  The module docstring and the operator documentation say the same.
KEY_LAYOUT: tuple[tuple[str, str], ...] = (
    ("{P}gen", "string"),
    ("{P}version", "string"),
    ("{P}lock:<name>", "string"),
    ("{P}{G}:set", "set"),
    ("{P}{G}:files:<name>", "hash"),
    ("{P}{G}:summary:<name>", "hash"),
    ("{P}{G}:package:<filename>", "hash"),
)

# -- the URL ------------------------------------------------------------------------------------

_CERT_REQS = ("required", "optional", "none")
_URL_PARAMETERS = (
    "db",
    "max_connections",
    "socket_connect_timeout",
    "socket_timeout",
    "ssl_ca_certs",
    "ssl_cert_reqs",
)


@attrs.frozen
class RedisURL:
    """What ``db.url`` says: where Redis is and how to talk to it.

    ``redis://[[username]:password@]host[:port][/db][?parameters]``, or ``rediss://`` for TLS.
    The parameters are redis-py's (which pypicloud used): ``db``, ``socket_timeout``,
    ``socket_connect_timeout``, ``max_connections``, ``ssl_ca_certs``, ``ssl_cert_reqs``.
    """

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    tls: bool = False
    ca_certs: str | None = None
    verify: bool = True
    connect_timeout: float = 5.0
    socket_timeout: float = 10.0
    max_connections: int = 4

    def __str__(self) -> str:
        """The URL without its password, for messages and logs."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{user}{host}:{self.port}/{self.db}"


def _positive_float(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"URL parameter {name} must be a number of seconds") from None
    if not value > 0:
        raise ValueError(f"URL parameter {name} must be more than zero")
    return value


def _whole(what: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{what} must be a whole number") from None
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}")
    return value


def parse_redis_url(text: str) -> RedisURL:
    """Read ``db.url``.  Messages never repeat the URL (it may hold a password).

    :raises ValueError: saying what is wrong with the URL.
    """
    parts = urlsplit(text.strip())
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("must start with redis:// (or rediss:// for TLS)")
    if not parts.hostname:
        raise ValueError("names no host (redis://host:6379/0)")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("has a port that is not a number from 1 to 65535") from None
    values: dict[str, Any] = {
        "host": parts.hostname,
        "port": port,
        "tls": parts.scheme == "rediss",
        # redis://:password@host is the classic form: an empty user name is no user name.
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }
    path = parts.path.strip("/")
    if path:
        values["db"] = _whole("the database number (the URL's path)", path, 0)
    query = parse_qs(parts.query, keep_blank_values=True)
    for name, given in query.items():
        if name not in _URL_PARAMETERS:
            known = ", ".join(_URL_PARAMETERS)
            raise ValueError(f"unknown URL parameter {name!r} (known: {known})")
        value = given[-1]
        if name == "db":
            values["db"] = _whole("URL parameter db", value, 0)
        elif name == "max_connections":
            values["max_connections"] = _whole("URL parameter max_connections", value, 1)
        elif name == "socket_timeout":
            values["socket_timeout"] = _positive_float(name, value)
        elif name == "socket_connect_timeout":
            values["connect_timeout"] = _positive_float(name, value)
        elif not values["tls"]:
            raise ValueError(f"URL parameter {name} needs a rediss:// (TLS) URL")
        elif name == "ssl_ca_certs":
            values["ca_certs"] = value
        elif value.lower() not in _CERT_REQS:
            raise ValueError(f"URL parameter ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
        else:
            values["verify"] = value.lower() != "none"
    return RedisURL(**values)


def as_prefix(text: str) -> str:
    """``db.prefix``: any text but an empty one (it keeps this cache's keys apart)."""
    value = text.strip()
    if not value:
        raise ValueError("must not be empty (the default is pypicloud:)")
    return value


def _tls_creator(url: RedisURL) -> Any:
    """How TLS connections check the server: the system's trust store, ``ssl_ca_certs``'s
    certificates, or (``ssl_cert_reqs=none``) not at all.

    :raises ConfigError: when ``ssl_ca_certs`` cannot be read.
    """
    if not url.verify:
        return CertificateOptions(verify=False)
    if url.ca_certs is None:
        return optionsForClientTLS(url.host, trustRoot=platformTrust())
    try:
        with open(url.ca_certs, "rb") as f:
            pem = f.read()
        marker = b"-----END CERTIFICATE-----"
        blocks = [block + marker for block in pem.split(marker) if b"-----BEGIN" in block]
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except (OSError, ValueError, OpenSSLError) as e:
        raise ConfigError(f"db.url: cannot read ssl_ca_certs {url.ca_certs}: {e}") from None
    if not certificates:
        raise ConfigError(f"db.url: ssl_ca_certs {url.ca_certs} holds no PEM certificate")
    return optionsForClientTLS(url.host, trustRoot=trustRootFromCertificates(certificates))


# -- the connection pool ------------------------------------------------------------------------


class _Factory(txredisapi.RedisFactory):  # type: ignore[misc]
    """txredisapi's pool, telling waiters when a connection comes or goes.

    ``problem`` says why the last connection failed or was lost (``None`` after a success).
    ``hopeless`` is set when the last attempt could not connect at all (refused, timed out,
    credentials refused): calls then fail at once instead of waiting for the next attempt.
    A lost connection (a restart, a failed TLS handshake) is worth waiting for.
    """

    # Reconnect quickly after a restart, and keep trying every 2 s while the server is down.
    initialDelay = 0.1
    maxDelay = 2.0

    def __init__(self, url: RedisURL, clock: Any) -> None:
        super().__init__(
            str(url),
            url.db or None,
            url.max_connections,
            isLazy=True,
            charset="utf-8",
            password=url.password,
            replyTimeout=url.socket_timeout,
            # "1.0" must stay a string: no guessing numbers from replies.
            convertNumbers=False,
            username=url.username,
        )
        self.problem: str | None = None
        self.hopeless = False
        self.refused = False
        self.created = clock.seconds()
        self._waiters: list[Deferred[None]] = []

    def changed(self) -> Deferred[None]:
        """Fires the next time a connection is made or an attempt fails."""
        d: Deferred[None] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        lost = protocol.connectionLost

        def connectionLost(reason: Failure) -> None:
            if not self.refused and not self.disconnectCalled:
                self.problem = reason.getErrorMessage()
                self._wake()
            lost(reason)

        protocol.connectionLost = connectionLost
        return protocol

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.problem = None
            self.hopeless = False
            self._wake()

    def connectionError(self, why: str) -> None:
        # AUTH or SELECT was refused; txredisapi has stopped reconnecting.  Nobody waits on
        # the pool's own Deferred (it is lazy), so it is not failed: that would be logged as
        # an unhandled error.
        self.deferred = None
        self.refused = self.hopeless = True
        self.problem = why.removeprefix("Redis error: ")
        self._wake()

    def attempt_failed(self, reason: Failure) -> None:
        if not self.refused:
            self.problem = reason.getErrorMessage()
            self.hopeless = True
            self._wake()


@implementer(IStreamClientEndpoint)
@attrs.define
class _ReportingEndpoint:
    """An endpoint that tells the pool when an attempt to connect fails, and why."""

    inner: Any
    factory: _Factory | None = None

    def connect(self, protocol_factory: Any) -> Deferred[Any]:
        def failed(reason: Failure) -> Failure:
            if self.factory is not None:
                self.factory.attempt_failed(reason)
            return reason

        d: Deferred[Any] = self.inner.connect(protocol_factory)
        return d.addErrback(failed)


# -- Lua scripts: each reads one generation atomically ------------------------------------------
#
# Answers that may hold many items come back as one JSON text (made with Redis's cjson, or by
# joining records that are JSON already): txredisapi parses each element of an array reply in
# Python, which costs far more than json.loads of the whole.  Lists are built as arrays of
# objects or strings, never as empty Lua tables (which cjson writes as {}).

# KEYS[1] = P gen; ARGV[1] = P; ARGV[2] = filename.  -> record JSON or nil
# ARGV[1] = seconds; then, per key of KEYS: n, a command, its n - 1 arguments.  Runs each
# command on its key and gives the key that expiry.  A full reload sends its writes through this
# in groups: one round trip of the client per group instead of two commands per key.
_WRITE_EXPIRING = """
local pos = 2
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[pos])
  redis.call(ARGV[pos + 1], key, unpack(ARGV, pos + 2, pos + n))
  redis.call('EXPIRE', key, ARGV[1])
  pos = pos + n + 1
end
return #KEYS
"""

# KEYS: keys of the new generation, kept for good from now on.
_PERSIST = """
for _, key in ipairs(KEYS) do redis.call('PERSIST', key) end
return #KEYS
"""

_FETCH = """
local g = redis.call('GET', KEYS[1])
if not g then return false end
return redis.call('HGET', ARGV[1] .. g .. ':package:' .. ARGV[2], 'record')
"""

# KEYS[1] = P gen; ARGV[1] = P; ARGV[2] = name.  -> JSON [record, ...]
_ALL = """
local g = redis.call('GET', KEYS[1])
if not g then return '[]' end
local base = ARGV[1] .. g .. ':'
local out = {}
for _, f in ipairs(redis.call('HKEYS', base .. 'files:' .. ARGV[2])) do
  local r = redis.call('HGET', base .. 'package:' .. f, 'record')
  if r then out[#out + 1] = r end
end
return '[' .. table.concat(out, ',') .. ']'
"""

# KEYS[1] = P gen; ARGV[1] = P.  -> JSON {"gen": G or absent, "names": [name, ...]}
_NAMES = """
local g = redis.call('GET', KEYS[1])
if not g then return '{"names":[]}' end
local names = redis.call('SMEMBERS', ARGV[1] .. g .. ':set')
if #names == 0 then return '{"gen":' .. cjson.encode(g) .. ',"names":[]}' end
return cjson.encode({gen = g, names = names})
"""

# KEYS[1] = P gen; ARGV[1] = P.  -> JSON [{"name": ..., "stable": ..., ...}, ...]
_SUMMARIES = """
local g = redis.call('GET', KEYS[1])
if not g then return '[]' end
local base = ARGV[1] .. g .. ':'
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', base .. 'set')) do
  local h = redis.call('HGETALL', base .. 'summary:' .. n)
  if #h > 0 then
    local s = {}
    for i = 1, #h, 2 do s[h[i]] = h[i + 1] end
    out[#out + 1] = cjson.encode(s)
  end
end
return '[' .. table.concat(out, ',') .. ']'
"""

# KEYS[1] = P gen; ARGV[1] = P.
# -> JSON {"gen": G or absent, "rows": [[name, filename, row], ...]}
_ROWS = """
local g = redis.call('GET', KEYS[1])
if not g then return '{"rows":[]}' end
local base = ARGV[1] .. g .. ':'
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', base .. 'set')) do
  local h = redis.call('HGETALL', base .. 'files:' .. n)
  for i = 1, #h, 2 do out[#out + 1] = cjson.encode({n, h[i], h[i + 1]}) end
end
return '{"gen":' .. cjson.encode(g) .. ',"rows":[' .. table.concat(out, ',') .. ']}'
"""

# KEYS[1] = P gen; ARGV[1] = P; ARGV[2] = G expected; ARGV[3...] = filenames.
# -> JSON [record, ...] of those still there, or 0 when the generation has changed
_RECORDS = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
local base = ARGV[1] .. ARGV[2] .. ':package:'
local out = {}
for i = 3, #ARGV do
  local r = redis.call('HGET', base .. ARGV[i], 'record')
  if r then out[#out + 1] = r end
end
return '[' .. table.concat(out, ',') .. ']'
"""

# KEYS[1] = P gen; ARGV[1] = P; ARGV[2] = G expected; ARGV[3...] = project names.
# -> JSON [[filename, record JSON text], ...] for every file of those projects, or 0 when the
# generation has changed
_PROJECT_RECORDS = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
local base = ARGV[1] .. ARGV[2] .. ':'
local out = {}
for i = 3, #ARGV do
  for _, f in ipairs(redis.call('HKEYS', base .. 'files:' .. ARGV[i])) do
    local r = redis.call('HGET', base .. 'package:' .. f, 'record')
    if r then out[#out + 1] = cjson.encode({f, r}) end
  end
end
return '[' .. table.concat(out, ',') .. ']'
"""

# KEYS[1] = the lock; ARGV[1] = the holder's token.  -> 1 when released
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# -- keys ---------------------------------------------------------------------------------------


@attrs.frozen
class _Keys:
    """The names of one cache's keys (see the module docstring)."""

    prefix: str

    @property
    def gen(self) -> str:
        return self.prefix + "gen"

    @property
    def version(self) -> str:
        return self.prefix + "version"

    def lock(self, name: str) -> str:
        return f"{self.prefix}lock:{name}"

    def base(self, gen: str) -> str:
        return f"{self.prefix}{gen}:"

    def names(self, gen: str) -> str:
        return self.base(gen) + "set"

    def files(self, gen: str, name: str) -> str:
        return f"{self.base(gen)}files:{name}"

    def summary(self, gen: str, name: str) -> str:
        return f"{self.base(gen)}summary:{name}"

    def package(self, gen: str, filename: str) -> str:
        return f"{self.base(gen)}package:{filename}"

    def pattern(self, gen: str) -> str:
        """A SCAN pattern matching every key of generation ``gen`` and nothing else."""
        return re.sub(r"([\\*?\[\]])", r"\\\1", self.base(gen)) + "*"


def _new_generation() -> str:
    return secrets.token_hex(8)


def _bump_version(keys: _Keys) -> list[tuple[Any, ...]]:
    # A random start: after a FLUSHDB the counter can never come back to a value some process
    # still holds as the token of what it memoised.
    return [("SET", keys.version, secrets.randbelow(2**52) + 1, "NX"), ("INCR", keys.version)]


def _row(file: PackageFile) -> str:
    return json.dumps(
        [file.version, file.upload_time.isoformat(), file.summary],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _summary_row(name: str, row: str) -> SummaryRow:
    version, when, summary = json.loads(row)
    return SummaryRow(name, version, _dt.datetime.fromisoformat(when), summary)


def _summary_fields(summary: ProjectSummary) -> list[str]:
    fields = [
        "name",
        summary.name,
        "unstable",
        summary.unstable,
        "last_modified",
        summary.last_modified.isoformat(),
        "summary",
        summary.summary,
    ]
    if summary.stable is not None:
        fields += ["stable", summary.stable]
    return fields


def _project_summary(fields: Mapping[str, str]) -> ProjectSummary:
    return ProjectSummary(
        name=fields["name"],
        stable=fields.get("stable"),
        unstable=fields["unstable"],
        last_modified=_dt.datetime.fromisoformat(fields["last_modified"]),
        summary=fields.get("summary", ""),
    )


def _file(record: str) -> PackageFile:
    return PackageFile.from_record(json.loads(record))


async def _gather(ds: Sequence[Deferred[Any]]) -> list[Any]:
    """The results of Deferreds already under way, in order; the first failure is raised as
    itself (``gatherResults`` would wrap it in ``FirstError``)."""
    results = []
    try:
        for d in ds:
            results.append(await d)
    except BaseException:
        for d in ds:
            d.addErrback(lambda _: None)  # the others' failures are not news
        raise
    return results


class _GenerationChanged(Exception):
    """The cache was cleared or reloaded between two reads of one answer: read again."""


@attrs.frozen
class _Build:
    """What a full reload writes into a new generation: commands, and the keys they make."""

    commands: list[tuple[Any, ...]]
    keys: list[str]
    count: int


def _build(keys: _Keys, gen: str, files: Iterable[PackageFile]) -> _Build:
    """The commands that write ``files`` as generation ``gen`` (CPU work: run off the
    reactor)."""
    by_name: dict[str, dict[str, PackageFile]] = {}
    for f in latest_per_filename(files).values():
        by_name.setdefault(f.name, {})[f.filename] = f
    writes: list[tuple[str, str, tuple[Any, ...]]] = []

    def make(command: str, key: str, *args: Any) -> None:
        writes.append((command, key, args))

    for name, group in by_name.items():
        for filename, f in group.items():
            make("HSET", keys.package(gen, filename), "name", name, "record", record_json(f))
        rows = [part for filename, f in group.items() for part in (filename, _row(f))]
        make("HSET", keys.files(gen, name), *rows)
        [summary] = summarize(
            SummaryRow(name, f.version, f.upload_time, f.summary) for f in group.values()
        )
        make("HSET", keys.summary(gen, name), *_summary_fields(summary))
    if by_name:
        make("SADD", keys.names(gen), *sorted(by_name))
    return _Build(
        _expiring(writes), [key for _, key, _ in writes], sum(len(g) for g in by_name.values())
    )


def _expiring(writes: Sequence[tuple[str, str, tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
    """Commands that make each of ``writes`` ``(command, key, arguments)`` and give its key
    :data:`BUILD_TTL` (until the switch every key expires, so a build that dies half-way
    cleans up after itself): groups of them in one :data:`_WRITE_EXPIRING` script each; a
    write with very many arguments (a project with thousands of files) on its own, as Lua's
    ``unpack`` takes a few thousand values at most."""
    commands: list[tuple[Any, ...]] = []
    keys: list[str] = []
    argv: list[Any] = [BUILD_TTL]

    def flush() -> None:
        if keys:
            commands.append(("EVAL", _WRITE_EXPIRING, len(keys), *keys, *argv))
            keys.clear()
            del argv[1:]

    for command, key, args in writes:
        if len(args) > SCRIPT_MAX_ARGS:
            commands.extend([(command, key, *args), ("EXPIRE", key, BUILD_TTL)])
            continue
        if len(keys) >= SCRIPT_KEYS or len(argv) + len(args) > SCRIPT_MAX_ARGS * 4:
            flush()
        keys.append(key)
        argv.extend([len(args) + 1, command, *args])
    flush()
    return commands


# -- the cache ----------------------------------------------------------------------------------


@implementer(ICache)
@attrs.define
class RedisCache:
    """File records in Redis, shared by every process that uses the same URL and prefix.

    :ivar batch_size: files per write transaction in a graceful reload.
    """

    @attrs.frozen
    class Options:
        url: RedisURL = option(  # noqa: RUF009  (an attrs field, not a shared default)
            parse_redis_url,
            doc="redis://[[username]:password@]host[:port][/db], or rediss:// for TLS; "
            "parameters socket_timeout, socket_connect_timeout, max_connections, "
            "ssl_ca_certs, ssl_cert_reqs",
        )
        prefix: str = option(
            as_prefix, default="pypicloud:", doc="the start of every key this cache writes"
        )

    _url: RedisURL = attrs.field(alias="url")
    _prefix: str = attrs.field(alias="prefix")
    _reactor: Any = attrs.field(alias="reactor")
    _run: RunBlocking = attrs.field(alias="run")
    batch_size: int = BATCH_SIZE
    _keys: _Keys = attrs.field(init=False)
    _tls: Any = attrs.field(init=False, default=None)
    _factory: _Factory | None = attrs.field(init=False, default=None)
    _closing: list[Deferred[Any]] = attrs.field(init=False, factory=list)
    _stopped: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self._keys = _Keys(self._prefix)
        if self._url.tls:
            self._tls = _tls_creator(self._url)

    @classmethod
    def from_config(cls, options: RedisCache.Options, runtime: Runtime) -> RedisCache:
        """Build the cache; no connection is made until :meth:`start`.

        :raises ConfigError: when ``ssl_ca_certs`` cannot be read.
        """
        reactor = runtime.reactor
        if reactor is None:
            # txredisapi itself runs on the global reactor; so does this, then.
            from twisted.internet import reactor
        return cls(
            url=options.url,
            prefix=options.prefix,
            reactor=reactor,
            run=runtime.threads("db", 2),
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Connect, and check that Redis answers.

        :raises BackendUnavailable: when it does not (the application retries later).
        """

        async def start() -> None:
            factory = self._factory
            if factory is not None and factory.refused:
                self._drop_pool()  # try the credentials again: they may have been fixed
            await self._call(lambda pool: pool.ping())
            log.info("connected to the Redis cache at {url}", url=str(self._url))

        return Deferred.fromCoroutine(start())

    def stop(self) -> Deferred[None]:
        """Close every connection; later calls fail with BackendUnavailable."""

        async def stop() -> None:
            self._stopped = True
            self._drop_pool()
            closing, self._closing = self._closing, []
            await gatherResults(closing, consumeErrors=True)
            # txredisapi hands new connections over on the next reactor turn: let it pass.
            d: Deferred[None] = Deferred()
            self._reactor.callLater(0, d.callback, None)
            await d

        return Deferred.fromCoroutine(stop())

    def _drop_pool(self) -> None:
        if self._factory is not None:
            self._closing.append(self._factory.disconnect())
            self._factory = None

    def _pool(self) -> _Factory:
        factory = self._factory
        # Credentials refused: txredisapi gave up.  Try again now and then, so that fixing
        # the server's users does not need a restart of every process.
        if (
            factory is not None
            and factory.refused
            and self._reactor.seconds() - factory.created >= REAUTH_SECONDS
        ):
            self._drop_pool()
            factory = None
        if factory is None:
            factory = _Factory(self._url, self._reactor)
            inner: Any = HostnameEndpoint(
                self._reactor, self._url.host, self._url.port, timeout=self._url.connect_timeout
            )
            if self._tls is not None:
                inner = wrapClientTLS(self._tls, inner)
            endpoint = _ReportingEndpoint(inner, factory)
            factory.startConnecting(endpoint)
            self._factory = factory
        return factory

    # -- running calls --------------------------------------------------------------------------

    def _unavailable(self, why: str) -> BackendUnavailable:
        return BackendUnavailable(f"the Redis cache at {self._url} {why} (check db.url)")

    async def _ready(self) -> Any:
        """A connection pool with at least one live connection.

        :raises BackendUnavailable: at once when the last attempt to connect failed, else
            after ``socket_connect_timeout`` without a connection.
        """
        if self._stopped:
            raise BackendUnavailable("the Redis cache has been stopped")
        factory = self._pool()
        limit = self._url.connect_timeout
        deadline = self._reactor.seconds() + limit
        # Connecting for the first time, or again after losing the connection.
        while not factory.size and not factory.hopeless:
            left = deadline - self._reactor.seconds()
            try:
                if left <= 0:
                    raise defer.TimeoutError()
                await factory.changed().addTimeout(left, self._reactor)
            except defer.TimeoutError:
                why = f": {factory.problem}" if factory.problem else ""
                raise self._unavailable(f"gave no connection within {limit:g} s{why}") from None
        if factory.size:
            return factory.handler
        if factory.refused:
            raise self._unavailable(f"refused the connection: {factory.problem}")
        raise self._unavailable(f"is unreachable: {factory.problem}")

    async def _call(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``work(pool)``, with Redis's errors turned into BackendUnavailable.

        A connection that broke (the server restarted since it was last used) is retried once,
        on a fresh connection: ``work`` must be safe to run twice.  ``work`` makes a few round
        trips at most; a deadline guards against waiting forever for a pool connection that
        died after :meth:`_ready` saw it (txredisapi would wait for its return).
        """
        url = self._url
        deadline = url.connect_timeout + 4 * url.socket_timeout
        for attempt in range(2):
            pool = await self._ready()
            try:
                return await Deferred.fromCoroutine(_awaited(work(pool))).addTimeout(
                    deadline, self._reactor
                )
            except defer.TimeoutError:
                raise self._unavailable(f"did not finish a call within {deadline:g} s") from None
            except txredisapi.TimeoutError:
                raise self._unavailable(
                    f"did not answer within {self._url.socket_timeout:g} s"
                ) from None
            except txredisapi.ConnectionError as e:
                if attempt:
                    # The pool knows better why (a TLS handshake that failed, say).
                    factory = self._factory
                    why = (factory.problem if factory else None) or str(e)
                    raise self._unavailable(f"lost the connection: {why}") from None
                log.info("the Redis connection broke ({error}); retrying", error=str(e))
            except txredisapi.ResponseError as e:
                raise self._unavailable(f"answered with an error: {e}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _eval(self, script: str, *args: Any, keys: Sequence[str] = ()) -> Deferred[Any]:
        async def work(pool: Any) -> Any:
            return await pool.eval(script, [self._keys.gen, *keys], list(args))

        return Deferred.fromCoroutine(self._call(work))

    # -- writing --------------------------------------------------------------------------------

    async def _change(self, upserts: Sequence[PackageFile], removals: Sequence[str]) -> None:
        """Save ``upserts`` and forget the files named in ``removals``, atomically, with the
        summaries of every project they touch."""
        for _ in range(MAX_ATTEMPTS):
            if await self._call(lambda pool: self._change_once(pool, upserts, removals)):
                return
        raise self._unavailable(
            f"kept changing the same projects: gave up after {MAX_ATTEMPTS} attempts"
        )

    async def _change_once(
        self, pool: Any, upserts: Sequence[PackageFile], removals: Sequence[str]
    ) -> bool:
        """One optimistic transaction; ``False`` when another writer got in first."""
        keys = self._keys
        t = await pool.watch([keys.gen])
        try:
            gen = await t.get(keys.gen)
            commands: list[tuple[Any, ...]] = []
            if gen is None:
                if not upserts:
                    await self._end_watch(t)
                    return True
                gen = _new_generation()
                commands.append(("SET", keys.gen, gen))
            new = latest_per_filename(upserts)
            filenames = list(dict.fromkeys([*new, *removals]))
            package_keys = [keys.package(gen, f) for f in filenames]
            await t.watch(package_keys)
            old_names = dict(
                zip(
                    filenames,
                    await _gather([t.hget(k, "name") for k in package_keys]),
                    strict=True,
                )
            )
            projects = sorted({f.name for f in new.values()} | {n for n in old_names.values() if n})
            if not projects:
                await self._end_watch(t)
                return True
            files_keys = [keys.files(gen, p) for p in projects]
            await t.watch(files_keys)
            current = await _gather([t.hgetall(k) for k in files_keys])
            rows: dict[str, dict[str, str]] = dict(zip(projects, current, strict=True))

            for filename in filenames:
                old = old_names[filename]
                file = new.get(filename)
                if old and (file is None or old != file.name):
                    rows[old].pop(filename, None)
                    commands.append(("HDEL", keys.files(gen, old), filename))
                if file is None:
                    commands.append(("DEL", keys.package(gen, filename)))
                    continue
                row = _row(file)
                rows[file.name][filename] = row
                commands += [
                    (
                        "HSET",
                        keys.package(gen, filename),
                        "name",
                        file.name,
                        "record",
                        record_json(file),
                    ),
                    ("HSET", keys.files(gen, file.name), filename, row),
                ]
            for project in projects:
                key = keys.summary(gen, project)
                commands.append(("DEL", key))
                if rows[project]:
                    [summary] = summarize(_summary_row(project, r) for r in rows[project].values())
                    commands += [
                        ("HSET", key, *_summary_fields(summary)),
                        ("SADD", keys.names(gen), project),
                    ]
                else:
                    commands.append(("SREM", keys.names(gen), project))
            commands += _bump_version(keys)

            await t.multi()
            await _gather([t.execute_command(*c) for c in commands])
            replies = await t.commit()
        except txredisapi.WatchError:
            return False
        except BaseException:
            _abandon(t)
            raise
        _check(replies)
        return True

    async def _end_watch(self, t: Any) -> None:
        # An empty MULTI/EXEC instead of UNWATCH: txredisapi hands the connection back to the
        # pool as soon as unwatch() is called, before UNWATCH is even sent, so another
        # caller's WATCH on it could be undone.  EXEC's answer returns it only afterwards.
        await t.multi()
        with contextlib.suppress(txredisapi.WatchError):
            await t.commit()

    def save(self, file: PackageFile) -> Deferred[None]:
        return Deferred.fromCoroutine(self._change([file], []))

    def delete(self, file: PackageFile) -> Deferred[None]:
        return Deferred.fromCoroutine(self._change([], [file.filename]))

    def clear_all(self) -> Deferred[None]:
        """Switch to no generation at once, then delete the old one's keys."""

        async def clear() -> None:
            old = await self._switch(None, [])
            await self._drop_generation(old)

        return Deferred.fromCoroutine(clear())

    async def _switch(self, gen: str | None, made: Sequence[str]) -> str | None:
        """Make ``gen`` (``None``: none) the current generation, keeping the keys ``made`` for
        it for good; returns the generation it replaced."""
        keys = self._keys

        async def switch(pool: Any) -> tuple[bool, str | None]:
            t = await pool.watch([keys.gen])
            try:
                old = await t.get(keys.gen)
                commands: list[tuple[Any, ...]] = [
                    ("EVAL", _PERSIST, len(group), *group)
                    for group in batches(made, SCRIPT_KEYS * 5)
                ]
                commands.append(("SET", keys.gen, gen) if gen else ("DEL", keys.gen))
                commands += _bump_version(keys)
                await t.multi()
                await _gather([t.execute_command(*c) for c in commands])
                replies = await t.commit()
            except txredisapi.WatchError:
                return False, None
            except BaseException:
                _abandon(t)
                raise
            _check(replies)
            return True, old

        for _ in range(MAX_ATTEMPTS):
            done, old = await self._call(switch)
            if done:
                return old
        raise self._unavailable("kept changing its generation: gave up switching")

    async def _drop_generation(self, gen: str | None) -> None:
        """Delete the keys of a generation nobody reads any more (best effort)."""
        if gen is None:
            return
        pattern = self._keys.pattern(gen)
        cursor, deleted = "0", 0

        async def step(pool: Any) -> tuple[str, int]:
            after, found = await pool.scan(cursor, pattern, 1000)
            return str(after), (await pool.execute_command("UNLINK", *found)) if found else 0

        try:
            while True:
                cursor, count = await self._call(step)
                deleted += count
                if cursor == "0":
                    break
        except BackendUnavailable as e:
            log.warn(
                "could not delete the old cache generation {gen}: {error}",
                gen=gen,
                error=e.message,
            )
            return
        log.debug("deleted {count} keys of generation {gen}", count=deleted, gen=gen)

    def reload_from_storage(
        self, files: Sequence[PackageFile], graceful: bool, progress: Progress | None = None
    ) -> Deferred[None]:
        if graceful:
            return Deferred.fromCoroutine(self._reload_gracefully(files, progress))
        return Deferred.fromCoroutine(self._reload(files, progress))

    async def _reload(self, files: Sequence[PackageFile], progress: Progress | None) -> None:
        """Write everything into a new generation, then switch to it in one step: readers see
        the old files until then."""
        gen = _new_generation()
        build = await self._run(_build, self._keys, gen, files)
        # Told in files: the share of the generation's commands sent so far.
        tally = Tally(progress, build.count)
        sent = 0
        for batch in batches(build.commands, BUILD_COMMANDS_IN_FLIGHT):

            async def write(pool: Any, batch: Sequence[tuple[Any, ...]] = batch) -> None:
                await _gather([pool.execute_command(*c) for c in batch])

            await self._call(write)
            sent += len(batch)
            tally.add(build.count * sent // len(build.commands) - tally.done)
        old = await self._switch(gen, build.keys)
        await self._drop_generation(old)
        log.info("reloaded the cache: {count} files", count=build.count)

    async def _reload_gracefully(
        self, files: Sequence[PackageFile], progress: Progress | None
    ) -> None:
        current = await self._current_records()
        write, remove = await self._run(plan_reload, current, files)
        tally = Tally(progress, len(write) + len(remove))
        # Grouped by project: each transaction then touches few projects' summaries.
        write.sort(key=lambda f: (f.name, f.filename))
        for upserts in batches(write, self.batch_size):
            await self._change(upserts, [])
            tally.add(len(upserts))
        for removals in batches(remove, self.batch_size):
            await self._change([], removals)
            tally.add(len(removals))
        changed = sum(1 for f in write if f.filename in current)
        log.info(
            "reloaded the cache gracefully: {added} added, {changed} replaced, {removed} removed",
            added=len(write) - changed,
            changed=changed,
            removed=len(remove),
        )

    async def _current_records(self) -> dict[str, str]:
        """``{filename: record JSON}`` for every file, read a few projects at a time."""
        for _ in range(MAX_ATTEMPTS):
            found = json.loads(await self._eval(_NAMES, self._prefix))
            current: dict[str, str] = {}
            for batch in batches(sorted(found["names"]), PROJECTS_PER_READ):
                text = await self._eval(_PROJECT_RECORDS, self._prefix, found.get("gen"), *batch)
                if not isinstance(text, str):
                    break  # switched to another generation meanwhile: start again
                current.update(json.loads(text))
            else:
                return current
        raise self._unavailable("kept changing its generation: gave up reading it")

    # -- reading --------------------------------------------------------------------------------

    def fetch(self, filename: str) -> Deferred[PackageFile | None]:
        def parse(record: str | None) -> PackageFile | None:
            return None if record is None else _file(record)

        return self._eval(_FETCH, self._prefix, filename).addCallback(parse)

    def all(self, name: str) -> Deferred[list[PackageFile]]:
        def parse(text: str) -> list[PackageFile]:
            return [PackageFile.from_record(r) for r in json.loads(text)]

        return self._eval(_ALL, self._prefix, name).addCallback(parse)

    def distinct(self) -> Deferred[list[str]]:
        def parse(text: str) -> list[str]:
            return sorted(json.loads(text)["names"])

        return self._eval(_NAMES, self._prefix).addCallback(parse)

    def summary(self) -> Deferred[list[ProjectSummary]]:
        def parse(text: str) -> list[ProjectSummary]:
            found = (_project_summary(fields) for fields in json.loads(text))
            return sorted(found, key=lambda s: s.name)

        return self._eval(_SUMMARIES, self._prefix).addCallback(parse)

    def search(
        self, criteria: Mapping[str, Sequence[str]], query_type: str
    ) -> Deferred[list[PackageFile]]:
        try:
            terms = search_terms(criteria, query_type)
        except ValueError:
            return defer.fail()
        return Deferred.fromCoroutine(self._search(terms, query_type))

    async def _search(self, terms: dict[str, list[str]], query_type: str) -> list[PackageFile]:
        if not terms:
            return []
        for _ in range(MAX_ATTEMPTS):
            text = await self._eval(_ROWS, self._prefix)
            found, filenames = await self._run(_matching, text, terms, query_type)
            if not filenames:
                return []
            try:
                return await self._records(found, filenames)
            except _GenerationChanged:
                continue
        raise self._unavailable("kept changing its generation: gave up searching")

    async def _records(self, gen: str, filenames: Sequence[str]) -> list[PackageFile]:
        result: list[PackageFile] = []
        for batch in batches(filenames, BATCH_SIZE):
            text = await self._eval(_RECORDS, self._prefix, gen, *batch)
            if not isinstance(text, str):
                raise _GenerationChanged()
            result += [PackageFile.from_record(r) for r in json.loads(text)]
        return result

    def version_token(self) -> Deferred[object | None]:
        """The change counter ``P version``: every write by any process INCRs it."""

        async def work(pool: Any) -> object | None:
            token: object | None = await pool.get(self._keys.version)
            return token

        return Deferred.fromCoroutine(self._call(work))

    def check_health(self) -> Deferred[tuple[bool, str]]:
        async def check() -> tuple[bool, str]:
            try:
                await self._call(lambda pool: pool.ping())
            except BackendUnavailable as e:
                return (False, e.message)
            return (True, "")

        return Deferred.fromCoroutine(check())

    # -- a lock, for "only one process rebuilds" (not part of ICache) -----------------------------

    def acquire_lock(self, name: str, seconds: float) -> Deferred[str | None]:
        """Take the lock ``name`` for at most ``seconds``; fires with a token to release it
        with, or ``None`` when another holder has it."""
        token = secrets.token_hex(16)

        async def work(pool: Any) -> str | None:
            done = await pool.set(
                self._keys.lock(name),
                token,
                pexpire=max(1, int(seconds * 1000)),
                only_if_not_exists=True,
            )
            return token if done == "OK" else None

        return Deferred.fromCoroutine(self._call(work))

    def release_lock(self, name: str, token: str) -> Deferred[bool]:
        """Release the lock taken with ``token``; ``False`` when it had expired (and maybe been
        taken by someone else, whose lock is left alone)."""

        async def work(pool: Any) -> bool:
            return bool(await pool.eval(_RELEASE, [self._keys.lock(name)], [token]))

        return Deferred.fromCoroutine(self._call(work))


def _matching(
    text: str, terms: Mapping[str, Sequence[str]], query_type: str
) -> tuple[str, list[str]]:
    """The generation read, and the filenames whose project name and summary answer the
    search, from the JSON ``_ROWS`` answers (CPU work: run off the reactor)."""
    found = json.loads(text)
    return found.get("gen", ""), [
        filename
        for name, filename, row in found["rows"]
        if matches(name, json.loads(row)[2], terms, query_type)
    ]


async def _awaited(work: Awaitable[T]) -> T:
    return await work


def _check(replies: Any) -> None:
    """Raise the first error among a transaction's answers."""
    if not isinstance(replies, list):
        raise txredisapi.ResponseError(f"unexpected answer to EXEC: {replies!r}")
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def _abandon(t: Any) -> None:
    """Drop a connection left inside WATCH or MULTI: it must never go back to the pool.

    The pool replaces it with a new one.
    """
    transport = getattr(t, "transport", None)
    if transport is not None:
        transport.abortConnection()
