"""The upstream client against a small Klein app (in memory, ``StubTreq``) on a test clock:
PEP 691 first, HTML fallback, ETag revalidation, verified downloads, timeouts and limits."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.domain.upstream_pages import UpstreamFile
from pypicloud_tx.errors import NotFound
from pypicloud_tx.services.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamTimeout,
    public_url,
)
from pypicloud_tx.web.errors import STATUS
from tests.distfactory import core_metadata, make_wheel
from tests.services.upstream_app import FakeUpstream

UPSTREAM = "http://upstream.test/simple"


class ClientCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.upstream = FakeUpstream()
        self.stub = StubTreq(self.upstream.resource())
        self.clock = Clock()
        self.name, self.data = make_wheel("demo", "1.0", requires_python=">=3.8")
        self.metadata = core_metadata("demo", "1.0", requires_python=">=3.8")
        self.upstream.add(
            self.name, self.data, metadata=self.metadata, requires_python=">=3.8", yanked="bad"
        )

    def client(self, url: str = UPSTREAM, **kw: Any) -> UpstreamClient:
        return UpstreamClient(self.stub, self.clock, url, **kw)

    def project(self, client: UpstreamClient, etag: str | None = None) -> Any:
        d = client.project("demo", etag)
        self.stub.flush()
        return d

    def file(self, client: UpstreamClient) -> UpstreamFile:
        page = self.successResultOf(self.project(client))
        found = page.project.file(self.name)
        assert found is not None
        return found  # type: ignore[no-any-return]


class PageTests(ClientCase):
    """Reading project pages."""

    def test_json_page_keeps_every_field(self) -> None:
        """A PEP 691 page is asked for first and read whole: absolute file URL, sha256,
        requires-python, yanked reason, size, upload time and the core-metadata hash."""
        page = self.successResultOf(self.project(self.client()))
        (f,) = page.project.files
        self.assertEqual(f.url, f"http://upstream.test/files/{self.name}")
        self.assertEqual(f.sha256, hashlib.sha256(self.data).hexdigest())
        self.assertEqual(f.requires_python, ">=3.8")
        self.assertEqual(f.yanked, "bad")
        self.assertEqual(f.size, len(self.data))
        self.assertEqual(f.upload_time.isoformat(), "2024-05-06T07:08:09.123456+00:00")
        self.assertEqual(f.core_metadata, {"sha256": hashlib.sha256(self.metadata).hexdigest()})
        self.assertTrue(page.etag)

    def test_html_fallback(self) -> None:
        """An upstream that only speaks HTML is read from its anchors: the same URL, hash,
        requires-python, yanked and core metadata; no size or upload time (HTML has none)."""
        self.upstream.html_only = True
        page = self.successResultOf(self.project(self.client()))
        (f,) = page.project.files
        self.assertEqual(f.url, f"http://upstream.test/files/{self.name}")
        self.assertEqual(f.sha256, hashlib.sha256(self.data).hexdigest())
        self.assertEqual(f.requires_python, ">=3.8")
        self.assertEqual(f.yanked, "bad")
        self.assertIsNone(f.size)
        self.assertIsNone(f.upload_time)
        self.assertEqual(f.core_metadata, {"sha256": hashlib.sha256(self.metadata).hexdigest()})

    def test_etag_revalidation(self) -> None:
        """Sending the ETag back gets 304 from an unchanged upstream: the fetch says "not
        modified" (no project) and keeps the tag; a changed page comes back whole."""
        client = self.client()
        first = self.successResultOf(self.project(client))
        again = self.successResultOf(self.project(client, first.etag))
        self.assertIsNone(again.project)
        self.assertEqual(again.etag, first.etag)
        self.upstream.add(*make_wheel("demo", "2.0"))
        changed = self.successResultOf(self.project(client, first.etag))
        self.assertEqual(len(changed.project.files), 2)
        self.assertNotEqual(changed.etag, first.etag)

    def test_unknown_project(self) -> None:
        """404 upstream is NotFound (not an outage)."""
        d = self.client().project("nothing-here", None)
        self.stub.flush()
        self.failureResultOf(d, NotFound)

    def test_error_status(self) -> None:
        """An error status is an UpstreamError answered 502, naming the URL."""
        self.upstream.status = 500
        failure = self.failureResultOf(self.project(self.client()), UpstreamError)
        self.assertNotIsInstance(failure.value, UpstreamTimeout)
        self.assertEqual(STATUS[type(failure.value)], 502)
        self.assertIn("http://upstream.test/simple/demo/ answered 500", failure.value.message)

    def test_timeout_on_clock(self) -> None:
        """A page that never comes fails with UpstreamTimeout (504) once
        pypi.fallback_timeout has passed on the injected clock, not before; no timer is left."""
        self.upstream.hang = True
        d = self.project(self.client(timeout=3.0))
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        failure = self.failureResultOf(d, UpstreamTimeout)
        self.assertEqual(STATUS[type(failure.value)], 504)
        self.assertIn("did not answer within 3 s (pypi.fallback_timeout)", failure.value.message)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """A caller that gives up gets CancelledError, not an upstream error."""
        self.upstream.hang = True
        d = self.project(self.client())
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connections_bounded(self) -> None:
        """With max_connections 2, five concurrent page fetches put two requests on the wire;
        the others wait for a free slot, and go out as the first ones end."""
        self.upstream.hang = True
        client = self.client(max_connections=2, timeout=5.0)
        pending = [client.project("demo", None) for _ in range(5)]
        self.stub.flush()
        self.assertEqual(len(self.upstream.requests), 2)
        self.clock.advance(5)
        self.stub.flush()
        self.assertEqual(len(self.upstream.requests), 4)
        for d in pending[:2]:
            self.failureResultOf(d, UpstreamTimeout)
        # Every fetch ends: none is left waiting for a slot or an answer (an abandoned
        # coroutine, freed by the garbage collector later, would fail another test).
        self.clock.advance(5)
        self.stub.flush()
        self.assertEqual(len(self.upstream.requests), 5)
        for d in pending[2:4]:
            self.failureResultOf(d, UpstreamTimeout)
        self.clock.advance(5)
        self.stub.flush()
        self.failureResultOf(pending[4], UpstreamTimeout)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_credentials(self) -> None:
        """Credentials in the upstream URL go as Basic auth to that host and never appear in
        a message."""
        self.upstream.status = 503
        client = self.client("http://mirror:s3cret@upstream.test/simple")
        failure = self.failureResultOf(self.project(client), UpstreamError)
        expected = b"Basic " + base64.b64encode(b"mirror:s3cret")
        self.assertEqual(self.upstream.authorizations, [expected])
        self.assertNotIn("s3cret", failure.value.message)
        self.assertEqual(client.simple_url, UPSTREAM)

    def test_public_url(self) -> None:
        """public_url drops user and password, keeping host, port and path."""
        self.assertEqual(
            public_url("https://u:p@example.test:8443/simple"), "https://example.test:8443/simple"
        )
        self.assertEqual(public_url("https://example.test/x"), "https://example.test/x")


class DownloadTests(ClientCase):
    """Downloading files: nothing is handed over unless it is whole and its hashes match."""

    def download(self, client: UpstreamClient, max_size: int = 10**9) -> Any:
        d = client.download(self.file(client), max_size)
        self.stub.flush()
        return d

    def test_verified_download(self) -> None:
        """The bytes arrive in a stream with their sha256, md5 and blake2b digests."""
        got = self.successResultOf(self.download(self.client()))
        self.assertEqual(got.stream.read(), self.data)
        self.assertEqual(got.sha256, hashlib.sha256(self.data).hexdigest())
        self.assertEqual(got.md5, hashlib.md5(self.data).hexdigest())
        self.assertEqual(got.blake2b_256, hashlib.blake2b(self.data, digest_size=32).hexdigest())
        self.assertEqual(got.size, len(self.data))
        got.stream.close()

    def test_wrong_hash(self) -> None:
        """A file whose bytes do not match the page's sha256 is refused (502)."""
        self.upstream.lie.add(self.name)
        failure = self.failureResultOf(self.download(self.client()), UpstreamError)
        self.assertIn("does not match its sha256 hash; not cached", failure.value.message)

    def test_no_hash(self) -> None:
        """A file listed without any hash cannot be checked, so it is not fetched at all."""
        self.upstream.no_hash.add(self.name)
        client = self.client()
        failure = self.failureResultOf(self.download(client), UpstreamError)
        self.assertIn("gives no hash", failure.value.message)
        self.assertEqual(self.upstream.count("/files/"), 0)

    def test_truncated(self) -> None:
        """A body cut short (the connection closes early) is an error, never a file."""
        self.upstream.truncate.add(self.name)
        failure = self.failureResultOf(self.download(self.client()), UpstreamError)
        self.assertIn("broke off", failure.value.message)

    def test_stalled(self) -> None:
        """A body that stops arriving fails with UpstreamTimeout after the timeout without
        data, and leaves no timer behind."""
        self.upstream.stall.add(self.name)
        d = self.download(self.client(timeout=4.0))
        self.clock.advance(3.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        failure = self.failureResultOf(d, UpstreamTimeout)
        self.assertIn("stalled for 4 s", failure.value.message)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_too_large(self) -> None:
        """A file larger than the limit (by its listed size) is refused before downloading."""
        client = self.client()
        failure = self.failureResultOf(self.download(client, max_size=100), UpstreamError)
        self.assertIn("pypi.max_upload_size", failure.value.message)
        self.assertEqual(self.upstream.count("/files/"), 0)

    def test_core_metadata(self) -> None:
        """The PEP 658 file is fetched from ``<url>.metadata`` and checked against the page's
        hash; a different one is refused."""
        client = self.client()
        f = self.file(client)
        d = client.core_metadata(f)
        self.stub.flush()
        self.assertEqual(self.successResultOf(d), self.metadata)
        self.upstream.projects["demo"][self.name].metadata = b"Name: other\n"
        d = client.core_metadata(f)
        self.stub.flush()
        self.failureResultOf(d, UpstreamError)

    def test_stop_without_pool(self) -> None:
        """stop() fires at once for a client without its own pool; build() makes one whose
        stop() fires too (no connection was made)."""
        self.successResultOf(self.client().stop())
        built = UpstreamClient.build(Clock(), UPSTREAM, timeout=1.0, max_connections=2)
        self.successResultOf(built.stop())
