"""The upstream index client (``pypi.fallback``): project pages and files, over treq.

Every exchange runs on the injected clock with a timeout (``pypi.fallback_timeout``): a page
or a metadata file must arrive whole within it; a file download must start within it and may
never pause longer than it (a large wheel may take longer in total).  At most
``pypi.fallback_max_connections`` exchanges run at once, over a pool of kept-alive
connections this client owns and closes in :meth:`UpstreamClient.stop`.

Pages are asked for as PEP 691 JSON first, HTML at a lower quality, and revalidated with
their ``ETag``.  A downloaded file is spooled to a temporary file while it is hashed; it is
handed over only when its size and every hash upstream gave for it match, so a partial or
corrupt download never reaches the storage.  Upstream answers in errors: a project upstream
does not have is :class:`~pypicloud_tx.errors.NotFound`; anything else is an
:class:`UpstreamError` (502) or :class:`UpstreamTimeout` (504) whose one-line message names
the upstream host and the option to check, never credentials.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
import typing
from collections.abc import Mapping
from typing import IO, Any, NoReturn
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseDone,
)
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from pypicloud_tx import __version__
from pypicloud_tx.backends._threads import RunBlocking, run_synchronously
from pypicloud_tx.domain.models import Upload
from pypicloud_tx.domain.upstream_pages import (
    PageFetch,
    UpstreamFile,
    UpstreamPageError,
    parse_project_page,
)
from pypicloud_tx.errors import NotFound, UpstreamError, UpstreamTimeout
from pypicloud_tx.interfaces import IUpstream
from pypicloud_tx.netfailures import cancelled, reason

log = Logger()

#: The largest project page read, in bytes (PyPI's largest JSON pages are a few MiB).
MAX_PAGE = 64 * 2**20
#: The largest PEP 658 metadata file read (as ``domain.dists`` caps it in archives).
MAX_METADATA = 10 * 2**20
#: What pip and uv ask for: JSON first.
ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
USER_AGENT = f"pypicloud-tx/{__version__} (upstream fallback)"
#: Files up to this size stay in memory while downloading; larger ones go to disk.
SPOOL_IN_MEMORY = 1024 * 1024


def public_url(url: str) -> str:
    """``url`` without the user and password it may carry (for messages and logs)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _credentials(url: str) -> tuple[str, str | None]:
    """``(url without credentials, Basic authorization value or None)``."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    pair = f"{parts.username}:{parts.password or ''}"
    token = base64.b64encode(unquote(pair).encode("utf-8")).decode("ascii")
    return public_url(url), f"Basic {token}"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


class _TooLarge(Exception):
    pass


class _Stalled(Exception):
    pass


def _timed_out(result: object, timeout: float) -> NoReturn:
    raise DeferredTimeout(f"no answer within {timeout} s")


class _Sink(typing.Protocol):
    def write(self, data: bytes, /) -> object: ...


class _Collect(Protocol):
    """Reads a body into ``sink`` up to ``limit`` bytes, updating ``digests``.

    With ``idle`` (seconds on ``clock``) the body fails with :class:`_Stalled` when no data
    arrives for that long.  Cancelling ``finished`` drops the connection.
    """

    def __init__(
        self,
        sink: _Sink,
        limit: int,
        digests: Mapping[str, Any] | None = None,
        clock: Any = None,
        idle: float | None = None,
    ) -> None:
        self._sink = sink
        self._limit = limit
        self._digests = dict(digests or {})
        self._clock = clock
        self._idle = idle
        self._timer: Any = None
        self.size = 0
        self.finished: Deferred[int] | None = Deferred(self._cancel)

    def connectionMade(self) -> None:
        self._arm()

    def _arm(self) -> None:
        if self._idle is None or self._clock is None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle)
        else:
            self._timer = self._clock.callLater(self._idle, self._fail, _Stalled())

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _cancel(self, d: Deferred[int]) -> None:
        self.finished = None
        self._disarm()
        self._drop()

    def _drop(self) -> None:
        stop = getattr(self.transport, "stopProducing", None)
        if stop is not None:
            stop()

    def _fail(self, error: Exception) -> None:
        finished, self.finished = self.finished, None
        self._disarm()
        self._drop()
        if finished is not None:
            finished.errback(error)

    def dataReceived(self, data: bytes) -> None:
        if self.finished is None:
            return
        self.size += len(data)
        if self.size > self._limit:
            self._fail(_TooLarge())
            return
        self._sink.write(data)
        for digest in self._digests.values():
            digest.update(data)
        self._arm()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        finished, self.finished = self.finished, None
        if finished is None:
            return
        # A body without Content-Length that ends with the connection is PotentialDataLoss:
        # whole as far as anyone can tell; the hashes decide.
        if reason.check(ResponseDone, PotentialDataLoss):
            finished.callback(self.size)
        else:
            finished.errback(reason)


def _header(response: Any, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def _final_url(response: Any, asked: str) -> str:
    """The URL the response came from (after redirects), for resolving relative links."""
    request = getattr(response, "request", None)
    uri = getattr(request, "absoluteURI", None)
    if isinstance(uri, bytes):
        return uri.decode("ascii", "replace")
    return asked


@implementer(IUpstream)
class UpstreamClient:
    """Reads ``simple_url``'s project pages and files.

    :param client: a :class:`treq.client.HTTPClient` (``treq.testing.StubTreq`` in tests).
    :param clock: the clock every timeout runs on.
    :param simple_url: the upstream simple index, e.g. ``https://pypi.org/simple``; may
        carry ``user:password@`` (sent as Basic credentials to that host only).
    :param timeout: seconds for one exchange (see the module docstring).
    :param max_connections: how many exchanges may run at once.
    :param pool: the client's connection pool, closed by :meth:`stop`.
    :param run_blocking: where large pages are parsed (synchronous by default).
    :param spool_dir: where downloads larger than :data:`SPOOL_IN_MEMORY` are written.
    """

    def __init__(
        self,
        client: Any,
        clock: Any,
        simple_url: str,
        timeout: float = 10.0,
        max_connections: int = 10,
        pool: HTTPConnectionPool | None = None,
        run_blocking: RunBlocking = run_synchronously,
        spool_dir: str | None = None,
        max_page: int = MAX_PAGE,
    ) -> None:
        self._client = client
        self._clock = clock
        self._simple, self._authorization = _credentials(simple_url.rstrip("/"))
        self._origin = _origin(self._simple)
        self._timeout = timeout
        self._slots = DeferredSemaphore(max_connections)
        self._pool = pool
        self._run_blocking = run_blocking
        self._spool_dir = spool_dir
        self._max_page = max_page
        self.requests = 0  # exchanges started (for tests and the benchmark's reports)

    @classmethod
    def build(
        cls,
        reactor: Any,
        simple_url: str,
        timeout: float,
        max_connections: int,
        run_blocking: RunBlocking = run_synchronously,
        spool_dir: str | None = None,
    ) -> UpstreamClient:
        """A client with its own pool of kept-alive connections on ``reactor``."""
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = max_connections
        agent = Agent(reactor, connectTimeout=timeout, pool=pool)
        return cls(
            HTTPClient(agent),
            reactor,
            simple_url,
            timeout=timeout,
            max_connections=max_connections,
            pool=pool,
            run_blocking=run_blocking,
            spool_dir=spool_dir,
        )

    @property
    def simple_url(self) -> str:
        """The upstream simple index, without credentials."""
        return self._simple

    def stop(self) -> Deferred[None]:
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()  # type: ignore[no-any-return]

    # -- IUpstream -------------------------------------------------------------------------

    def project(self, name: str, etag: str | None) -> Deferred[PageFetch]:
        return Deferred.fromCoroutine(self._project(name, etag))

    def download(self, file: UpstreamFile, max_size: int) -> Deferred[Upload]:
        return Deferred.fromCoroutine(self._download(file, max_size))

    def core_metadata(self, file: UpstreamFile) -> Deferred[bytes]:
        return Deferred.fromCoroutine(self._core_metadata(file))

    # -- exchanges -------------------------------------------------------------------------

    def _headers(self, url: str, extra: Mapping[str, str] | None = None) -> dict[str, list[str]]:
        headers = {"User-Agent": [USER_AGENT]}
        if self._authorization is not None and _origin(url) == self._origin:
            headers["Authorization"] = [self._authorization]
        for key, value in (extra or {}).items():
            headers[key] = [value]
        return headers

    def _error(self, message: str, timeout: bool = False) -> UpstreamError:
        log.warn("upstream index: {problem}", problem=message)
        return (UpstreamTimeout if timeout else UpstreamError)(message)

    async def _request(self, url: str, headers: Mapping[str, str] | None = None) -> Any:
        """The response (headers only) to a GET of ``url``; the caller reads the body."""
        self.requests += 1
        return await self._client.get(url, headers=self._headers(url, headers), unbuffered=True)

    async def _whole(
        self, url: str, limit: int, headers: Mapping[str, str] | None = None
    ) -> tuple[Any, bytes]:
        """``(response, body)`` of a GET that must complete within the timeout."""

        async def exchange() -> tuple[Any, bytes]:
            response = await self._request(url, headers)
            sink = _BytesSink()
            body = _Collect(sink, limit)
            assert body.finished is not None
            finished = body.finished
            response.deliverBody(body)
            await finished
            return response, sink.value()

        await self._slots.acquire()
        try:
            d = Deferred.fromCoroutine(exchange())
            d.addTimeout(self._timeout, self._clock, onTimeoutCancel=_timed_out)
            try:
                return await d
            except DeferredTimeout:
                raise self._error(
                    f"{public_url(url)} did not answer within {self._timeout:g} s "
                    "(pypi.fallback_timeout)",
                    timeout=True,
                ) from None
            except _TooLarge:
                raise self._error(f"{public_url(url)} sent more than {limit} bytes") from None
            except Exception as e:
                if cancelled(e):
                    raise CancelledError() from None
                raise self._error(
                    f"cannot reach {public_url(url)}: {reason(e)} (check pypi.fallback_base_url)"
                ) from None
        finally:
            self._slots.release()

    async def _project(self, name: str, etag: str | None) -> PageFetch:
        url = f"{self._simple}/{quote(name)}/"
        headers = {"Accept": ACCEPT}
        if etag:
            headers["If-None-Match"] = etag
        response, body = await self._whole(url, self._max_page, headers)
        code = response.code
        if code == 304:
            return PageFetch(None, etag)
        if code in (404, 410):
            raise NotFound(f"There is no project named {name} here nor on the upstream index.")
        if not 200 <= code < 300:
            raise self._error(f"{public_url(url)} answered {code}")
        content_type = _header(response, b"content-type") or ""
        try:
            project = await self._run_blocking(
                parse_project_page, body, content_type, _final_url(response, url), name
            )
        except UpstreamPageError as e:
            raise self._error(f"{public_url(url)}: {e}") from None
        return PageFetch(project, _header(response, b"etag"))

    async def _core_metadata(self, file: UpstreamFile) -> bytes:
        url = file.url + ".metadata"
        response, body = await self._whole(url, MAX_METADATA)
        if response.code in (404, 410):
            raise NotFound(f"The upstream index has no core metadata for {file.filename}.")
        if not 200 <= response.code < 300:
            raise self._error(f"{public_url(url)} answered {response.code}")
        for algorithm, expected in file.metadata_hashes.items():
            if hashlib.new(algorithm, body).hexdigest() != expected:
                raise self._error(
                    f"the core metadata of {file.filename} from upstream does not match its "
                    f"{algorithm} hash; not served"
                )
        return body

    async def _download(self, file: UpstreamFile, max_size: int) -> Upload:
        """See :meth:`IUpstream.download`."""
        if not file.hashes:
            raise self._error(
                f"the upstream index gives no hash for {file.filename}; it cannot be checked, "
                "so it is not cached"
            )
        if file.size is not None and file.size > max_size:
            raise self._error(
                f"{file.filename} is {file.size} bytes, more than pypi.max_upload_size allows"
            )
        digests: dict[str, Any] = {
            "sha256": hashlib.sha256(),
            "md5": hashlib.md5(usedforsecurity=False),
            "blake2b_256": hashlib.blake2b(digest_size=32),
        }
        for algorithm in file.hashes:
            if algorithm not in digests:
                digests[algorithm] = hashlib.new(algorithm)
        spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - handed to the caller
            max_size=SPOOL_IN_MEMORY, prefix="ppc-upstream-", dir=self._spool_dir
        )
        try:
            size = await self._fetch_into(file, spool, max_size, digests)
            found = {name: d.hexdigest() for name, d in digests.items()}
            if file.size is not None and size != file.size:
                raise self._error(
                    f"{file.filename} from upstream is {size} bytes, not the {file.size} its "
                    "page says; not cached"
                )
            for algorithm, expected in file.hashes.items():
                if found[algorithm] != expected:
                    raise self._error(
                        f"{file.filename} from upstream does not match its {algorithm} hash; "
                        "not cached"
                    )
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return Upload(
            filename=file.filename,
            stream=spool,
            size=size,
            sha256=found["sha256"],
            md5=found["md5"],
            blake2b_256=found["blake2b_256"],
        )

    async def _fetch_into(
        self, file: UpstreamFile, sink: IO[bytes], limit: int, digests: Mapping[str, Any]
    ) -> int:
        url = file.url
        await self._slots.acquire()
        try:
            started = Deferred.fromCoroutine(self._request(url))
            started.addTimeout(self._timeout, self._clock, onTimeoutCancel=_timed_out)
            try:
                response = await started
            except DeferredTimeout:
                raise self._error(
                    f"{public_url(url)} did not answer within {self._timeout:g} s "
                    "(pypi.fallback_timeout)",
                    timeout=True,
                ) from None
            except Exception as e:
                if cancelled(e):
                    raise CancelledError() from None
                raise self._error(f"cannot download {public_url(url)}: {reason(e)}") from None
            if not 200 <= response.code < 300:
                # Read nothing more: dropping the body closes the connection.
                response.deliverBody(_Discard())
                raise self._error(f"{public_url(url)} answered {response.code}")
            body = _Collect(sink, limit, digests, self._clock, self._timeout)
            assert body.finished is not None
            finished = body.finished
            response.deliverBody(body)
            try:
                return await finished
            except _Stalled:
                raise self._error(
                    f"the download of {file.filename} from upstream stalled for "
                    f"{self._timeout:g} s (pypi.fallback_timeout); not cached",
                    timeout=True,
                ) from None
            except _TooLarge:
                raise self._error(
                    f"{file.filename} is larger than pypi.max_upload_size allows; not cached"
                ) from None
            except Exception as e:
                if cancelled(e):
                    raise CancelledError() from None
                raise self._error(
                    f"the download of {file.filename} from upstream broke off: {reason(e)}; "
                    "not cached"
                ) from None
        finally:
            self._slots.release()


class _BytesSink:
    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._chunks.append(data)

    def value(self) -> bytes:
        return b"".join(self._chunks)


class _Discard(Protocol):
    def connectionMade(self) -> None:
        stop = getattr(self.transport, "stopProducing", None)
        if stop is not None:
            stop()
