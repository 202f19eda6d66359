"""Downloading files: bytes, HEAD, Range, ETag, caching headers and 404s."""

from __future__ import annotations

import hashlib
import io
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.web.download import StreamPusher
from tests.web.harness import RouteTestCase


class DownloadTests(RouteTestCase):
    def setUp(self) -> None:
        self.make_index({"pypi.stream_files": "true", "pypi.package_max_age": "3600"})
        self.wheel_file = self.wheel("demo", "1.0")
        self.sdist_file = self.sdist("demo", "1.0")
        for f in (self.wheel_file, self.sdist_file):
            response, body = self.upload(*f)
            self.assertEqual(response.code, 200, body)
        self.path = f"/api/package/demo/{self.wheel_file[0]}"

    def header(self, response: object, name: bytes) -> list[bytes] | None:
        return response.headers.getRawHeaders(name)  # type: ignore[attr-defined,no-any-return]

    def test_get_bytes_and_headers(self) -> None:
        """GET serves the exact bytes with ETag, Content-Length, Accept-Ranges and
        ``Cache-Control: max-age=<pypi.package_max_age>``."""
        _filename, data = self.wheel_file
        response, body = self.request("GET", self.path)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, data)
        self.assertEqual(
            self.header(response, b"etag"), [f'"{hashlib.sha256(data).hexdigest()}"'.encode()]
        )
        self.assertEqual(self.header(response, b"cache-control"), [b"max-age=3600"])
        self.assertEqual(self.header(response, b"accept-ranges"), [b"bytes"])
        self.assertTrue(self.header(response, b"content-type"))
        status, headers, body = self.ix.wire("GET", self.path)
        self.assertEqual((status, body), (200, data))
        self.assertEqual(headers["content-length"], [str(len(data))])

    def test_sdist_has_no_content_encoding(self) -> None:
        """A .tar.gz is served as-is: no Content-Encoding, not a gzip content type."""
        filename, data = self.sdist_file
        status, headers, body = self.ix.wire(
            "GET", f"/api/package/demo/{filename}", {"Accept-Encoding": "gzip"}
        )
        self.assertEqual((status, body), (200, data))
        self.assertNotIn("content-encoding", headers)
        self.assertNotIn("gzip", headers["content-type"][0])

    def test_head(self) -> None:
        """HEAD answers 200 with the GET headers (length included) and no body."""
        _, get, _ = self.ix.wire("GET", self.path)
        status, head, body = self.ix.wire("HEAD", self.path)
        self.assertEqual((status, body), (200, b""))
        for name in ("etag", "cache-control", "content-length", "content-type", "accept-ranges"):
            self.assertEqual(head[name], get[name], name)
        self.assertEqual(head["content-length"], [str(len(self.wheel_file[1]))])
        response, body = self.request("HEAD", self.path)
        self.assertEqual((response.code, body), (200, b""))

    def test_range(self) -> None:
        """``Range: bytes=a-b`` gets 206 with Content-Range and exactly those bytes."""
        data = self.wheel_file[1]
        response, body = self.request("GET", self.path, headers={b"Range": [b"bytes=10-29"]})
        self.assertEqual(response.code, 206)
        self.assertEqual(body, data[10:30])
        self.assertEqual(
            self.header(response, b"content-range"), [f"bytes 10-29/{len(data)}".encode()]
        )
        _, headers, _ = self.ix.wire("GET", self.path, {"Range": "bytes=10-29"})
        self.assertEqual(headers["content-length"], ["20"])

    def test_open_ended_and_suffix_range(self) -> None:
        """``bytes=n-`` serves from n to the end; ``bytes=-n`` serves the last n bytes."""
        data = self.wheel_file[1]
        response, body = self.request("GET", self.path, headers={b"Range": [b"bytes=100-"]})
        self.assertEqual((response.code, body), (206, data[100:]))
        response, body = self.request("GET", self.path, headers={b"Range": [b"bytes=-50"]})
        self.assertEqual((response.code, body), (206, data[-50:]))
        self.assertEqual(
            self.header(response, b"content-range"),
            [f"bytes {len(data) - 50}-{len(data) - 1}/{len(data)}".encode()],
        )

    def test_range_past_end_is_clamped(self) -> None:
        """A range whose end is past the file ends at the last byte."""
        data = self.wheel_file[1]
        response, body = self.request(
            "GET", self.path, headers={b"Range": [f"bytes=5-{len(data) * 2}".encode()]}
        )
        self.assertEqual((response.code, body), (206, data[5:]))

    def test_unsatisfiable_range_416(self) -> None:
        """A range starting past the end is 416 with ``Content-Range: bytes */<size>``."""
        data = self.wheel_file[1]
        response, body = self.request(
            "GET", self.path, headers={b"Range": [f"bytes={len(data)}-".encode()]}
        )
        self.assertEqual(response.code, 416)
        self.assertEqual(self.header(response, b"content-range"), [f"bytes */{len(data)}".encode()])
        self.assertEqual(body, b"")

    def test_if_none_match_304(self) -> None:
        """If-None-Match with the file's ETag gets 304 and no body."""
        response, _ = self.request("GET", self.path)
        (tag,) = self.header(response, b"etag") or []
        response, body = self.request("GET", self.path, headers={b"If-None-Match": [tag]})
        self.assertEqual((response.code, body), (304, b""))
        response, body = self.request("GET", self.path, headers={b"If-None-Match": [b'"other"']})
        self.assertEqual(response.code, 200)

    def test_unknown_file_404(self) -> None:
        """An unknown file is 404 (uv then tries the next index), for GET and HEAD."""
        for method in ("GET", "HEAD"):
            response, _ = self.request(method, "/api/package/demo/demo-9.0-py3-none-any.whl")
            self.assertEqual(response.code, 404, method)

    def test_wrong_project_404(self) -> None:
        """A file requested under another project's URL is 404, even if that project exists."""
        response, _body = self.upload(*self.wheel("other", "1.0"))
        self.assertEqual(response.code, 200)
        response, _ = self.request("GET", f"/api/package/other/{self.wheel_file[0]}")
        self.assertEqual(response.code, 404)

    def test_non_canonical_project_in_url(self) -> None:
        """The project segment of a file URL may be spelled non-canonically."""
        response, body = self.request("GET", f"/api/package/Demo/{self.wheel_file[0]}")
        self.assertEqual((response.code, body), (200, self.wheel_file[1]))

    def test_metadata_headers(self) -> None:
        """``<file>.metadata`` carries a Content-Type, an ETag and the package Cache-Control."""
        response, body = self.request("GET", self.path + ".metadata")
        self.assertEqual(response.code, 200)
        self.assertTrue(self.header(response, b"content-type"))
        self.assertEqual(
            self.header(response, b"etag"), [f'"{hashlib.sha256(body).hexdigest()}"'.encode()]
        )
        self.assertEqual(self.header(response, b"cache-control"), [b"max-age=3600"])

    def test_default_storage_serves_without_stream_files(self) -> None:
        """Without ``pypi.stream_files`` a storage with no redirect URL still streams the file."""
        self.make_index()
        filename, data = self.wheel("demo", "1.0")
        self.upload(filename, data)
        response, body = self.request("GET", f"/api/package/demo/{filename}")
        self.assertEqual((response.code, body), (200, data))
        self.assertEqual(self.header(response, b"cache-control"), [b"max-age=0"])


class FakeRequest:
    """What StreamPusher uses of a request, recording what it is told."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.finished = False
        self.lost = False
        self.producer: Any = None
        self._finish: Deferred[None] = Deferred()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def notifyFinish(self) -> Deferred[None]:
        return self._finish

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def finish(self) -> None:
        self.finished = True

    def loseConnection(self) -> None:
        self.lost = True

    def client_gone(self) -> None:
        self._finish.errback(Exception("connection lost"))


class HeldReads:
    """A RunBlocking whose calls wait until :meth:`release` (standing in for a thread pool)
    and which records that nothing ran before then."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def __call__(self, work: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append((d, work, args))
        return d

    def release(self) -> None:
        d, work, args = self.waiting.pop(0)
        try:
            result = work(*args)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)


class StreamPusherTests(SynchronousTestCase):
    DATA = bytes(range(256)) * 4096  # 1 MiB

    def test_reads_run_off_the_calling_thread(self) -> None:
        """Every read (and the seek of a Range) goes through run_blocking: nothing is written
        until a read returns, one read is in flight at a time, and the body is exact."""
        reads = HeldReads()
        request = FakeRequest()
        stream = io.BytesIO(self.DATA)
        StreamPusher(request, stream, 1000, len(self.DATA) - 1000, reads).start()
        self.assertEqual(request.written, [])
        self.assertEqual(len(reads.waiting), 1)
        while reads.waiting:
            reads.release()
            self.assertLessEqual(len(reads.waiting), 1)
        self.assertEqual(b"".join(request.written), self.DATA[1000:])
        self.assertTrue(request.finished)
        self.assertTrue(stream.closed)

    def test_pause_and_resume(self) -> None:
        """While paused no read is started; resuming continues where it stopped."""
        reads = HeldReads()
        request = FakeRequest()
        pusher = StreamPusher(request, io.BytesIO(self.DATA), 0, len(self.DATA), reads)
        pusher.start()
        pusher.pauseProducing()
        reads.release()
        self.assertEqual(reads.waiting, [])
        pusher.resumeProducing()
        while reads.waiting:
            reads.release()
        self.assertEqual(b"".join(request.written), self.DATA)

    def test_client_gone_during_a_read(self) -> None:
        """When the client goes away while a read is in flight, the stream is closed only
        after that read returns, and nothing more is written."""
        reads = HeldReads()
        request = FakeRequest()
        stream = io.BytesIO(self.DATA)
        StreamPusher(request, stream, 0, len(self.DATA), reads).start()
        request.client_gone()
        self.assertFalse(stream.closed)
        reads.release()
        self.assertTrue(stream.closed)
        self.assertEqual(request.written, [])
        self.assertEqual(reads.waiting, [])

    def test_read_error_drops_the_connection(self) -> None:
        """A read that fails half-way (an object store connection broke) drops the
        connection: the client never mistakes a partial body for the file."""
        reads = HeldReads()
        request = FakeRequest()
        stream = io.BytesIO(self.DATA)
        StreamPusher(request, stream, 0, len(self.DATA), reads).start()
        reads.release()
        stream.close()
        reads.release()
        self.assertTrue(request.lost)
        self.assertFalse(request.finished)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_short_stream_drops_the_connection(self) -> None:
        """A stored file shorter than its record ends in a dropped connection."""
        request = FakeRequest()
        StreamPusher(request, io.BytesIO(b"abc"), 0, 10).start()
        self.assertTrue(request.lost)
        self.assertFalse(request.finished)
