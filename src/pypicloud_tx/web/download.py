"""Serving a stored file's bytes: HEAD, Range, ETag and caching headers."""

from __future__ import annotations

import re
from typing import IO, Any, Literal, TypeVar

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from zope.interface import implementer

from pypicloud_tx.backends._threads import RunBlocking, run_synchronously
from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.web.requestlog import request_id, request_metrics

log = Logger()
T = TypeVar("T")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def content_type(filename: str) -> bytes:
    # Never a type that invites a client or proxy to decompress a .tar.gz.
    return (
        b"application/zip" if filename.endswith((".whl", ".zip")) else b"application/octet-stream"
    )


def parse_range(header: bytes | None, size: int) -> tuple[int, int] | Literal[False] | None:
    """``(start, end inclusive)`` for one satisfiable byte range, ``None`` to send it all,
    ``False`` when unsatisfiable.  Multiple ranges are answered with the whole file."""
    if not header:
        return None
    match = _RANGE.match(header.decode("latin-1").strip())
    if not match:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = int(last)
        if length == 0:
            return False
        return (max(0, size - length), size - 1)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return False
    return (start, end)


class FileBody(resource.Resource):
    """Streams one open file; closes it when done or when the client goes away."""

    isLeaf = True

    def __init__(
        self,
        file: PackageFile,
        stream: IO[bytes],
        max_age: int,
        run_blocking: RunBlocking | None = None,
    ) -> None:
        """:param run_blocking: where the stream is read (a thread pool; ``None`` reads on
        the calling thread, for streams that never block)."""
        super().__init__()
        self._file = file
        self._stream = stream
        self._max_age = max_age
        self._run_blocking = run_blocking

    def render(self, request: Any) -> int | bytes:
        f = self._file
        tag = f'"{f.sha256}"'.encode()
        request.setHeader(b"Content-Type", content_type(f.filename))
        request.setHeader(b"ETag", tag)
        request.setHeader(b"Accept-Ranges", b"bytes")
        request.setHeader(b"Cache-Control", f"max-age={self._max_age}".encode())
        request.setLastModified(f.upload_time.timestamp())
        if_none_match = request.getHeader(b"if-none-match")
        if if_none_match and tag in [t.strip() for t in if_none_match.split(b",")]:
            self._stream.close()
            request.setResponseCode(304)
            return b""
        wanted = parse_range(request.getHeader(b"range"), f.size)
        if wanted is False:
            self._stream.close()
            request.setResponseCode(416)
            request.setHeader(b"Content-Range", f"bytes */{f.size}".encode())
            return b""
        if request.method == b"HEAD":
            self._stream.close()
            request.setHeader(b"Content-Length", str(f.size).encode())
            return b""
        if wanted is None:
            start, length = 0, f.size
        else:
            start, end = wanted
            length = end - start + 1
            request.setResponseCode(206)
            request.setHeader(b"Content-Range", f"bytes {start}-{end}/{f.size}".encode())
        request.setHeader(b"Content-Length", str(length).encode())
        StreamPusher(request, self._stream, start, length, self._run_blocking).start()
        return server.NOT_DONE_YET


@implementer(IPushProducer)
class StreamPusher:
    """Writes ``length`` bytes of ``stream`` from ``start`` to the request, as fast as the
    client takes them: paused when the transport's buffer is full, resumed when it drains.

    Reads (and the first seek) run through ``run_blocking``: a stream may be a socket to an
    object store, and a read must never block the reactor thread.  One read is in flight at a
    time; the stream is closed once no read uses it.
    """

    CHUNK = 256 * 1024

    def __init__(
        self,
        request: Any,
        stream: IO[bytes],
        start: int,
        length: int,
        run_blocking: RunBlocking | None = None,
    ) -> None:
        self._request = request
        self._stream = stream
        self._seek_to = start
        self._remaining = length
        self._run = run_blocking or run_synchronously
        self._paused = False
        self._pumping = False
        self._reading = False
        self._done = False
        self._closed = False
        # Bytes sent are counted per chunk, so a long download shows in the rate as it goes.
        metrics = request_metrics(request)
        self._sent = None if metrics is None else metrics.download_bytes

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addBoth(lambda _: self._close())
        self._pump()

    def _next_chunk(self, size: int) -> bytes:
        if self._seek_to:
            self._stream.seek(self._seek_to)
            self._seek_to = 0
        return self._stream.read(size)

    def _pump(self) -> None:
        # A loop rather than recursion: with a stream read at once, thousands of chunks in a
        # row must not deepen the stack.
        if self._pumping:
            return
        self._pumping = True
        try:
            while not (self._reading or self._done or self._paused):
                if self._remaining <= 0:
                    self._finish()
                    return
                self._reading = True
                d = self._run(self._next_chunk, min(self.CHUNK, self._remaining))
                d.addCallbacks(self._got, self._failed)
        finally:
            self._pumping = False

    def _got(self, chunk: bytes) -> None:
        self._reading = False
        if self._done:
            self._close_stream()
            return
        if not chunk:
            self._finish()
            return
        self._remaining -= len(chunk)
        self._request.write(chunk)
        if self._sent is not None:
            self._sent.inc(len(chunk))
        self._pump()

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        if not self._done:
            log.failure(
                "reading a stored file failed", failure, request_id=request_id(self._request)
            )
            self._close()
            self._request.unregisterProducer()
            self._request.loseConnection()
        self._close_stream()

    def _finish(self) -> None:
        self._close()
        self._request.unregisterProducer()
        if self._remaining > 0:
            # The stored file is shorter than its record: never let a client mistake a
            # partial body for the whole file.
            log.error(
                "stored file ended {remaining} bytes early",
                remaining=self._remaining,
                request_id=request_id(self._request),
            )
            self._request.loseConnection()
            return
        self._request.finish()

    def _close(self) -> None:
        if not self._done:
            self._done = True
        if not self._reading:
            self._close_stream()

    def _close_stream(self) -> None:
        if not self._closed:
            self._closed = True
            self._stream.close()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._close()
