"""The in-memory storage."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.backends.storage.memory import MemoryStorage
from pypicloud_tx.config.options import parse_options
from pypicloud_tx.interfaces import IStorage
from pypicloud_tx.runtime import Runtime

from .conformance import IStorageConformance, package_file


class MemoryStorageConformanceTests(IStorageConformance, SynchronousTestCase):
    """MemoryStorage passes the IStorage conformance suite."""

    def make_storage(self) -> IStorage:
        return MemoryStorage.from_config(
            parse_options(MemoryStorage.Options, "storage", {}), Runtime.synchronous()
        )


class MemoryStorageTests(SynchronousTestCase):
    """What is particular to MemoryStorage."""

    def test_download_url_is_none(self) -> None:
        """The memory storage never redirects: downloads are streamed by the server."""
        storage = MemoryStorage()
        file = package_file(b"x")
        self.assertIsNone(self.successResultOf(storage.download_url(file)))

    def test_open_gives_independent_streams(self) -> None:
        """Each open() returns its own stream, so concurrent downloads do not share a position."""
        import io

        storage = MemoryStorage()
        file = package_file(b"abcdef")
        self.successResultOf(storage.put(file, io.BytesIO(b"abcdef"), None, False))
        first = self.successResultOf(storage.open(file))
        self.assertEqual(first.read(3), b"abc")
        second = self.successResultOf(storage.open(file))
        self.assertEqual(second.read(), b"abcdef")
