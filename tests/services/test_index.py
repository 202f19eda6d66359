"""``PackageIndex`` directly: crash recovery, ordering of writes, and cache reloads."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from typing import Any

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.backends._threads import run_synchronously
from pypicloud_tx.backends.cache.memory import MemoryCache
from pypicloud_tx.backends.storage.memory import MemoryStorage
from pypicloud_tx.domain.models import Identity, PackageFile, Upload
from pypicloud_tx.domain.policy import Policy
from pypicloud_tx.errors import BackendUnavailable, Conflict
from pypicloud_tx.services.index import PackageIndex
from tests.distfactory import make_wheel, twine_fields

BOB = Identity(username="bob")
WHEN = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)


class OpenAccess:
    """An access backend with no per-package rules."""

    def package_acls(self) -> Any:
        return succeed({})

    def check_health(self) -> Any:
        return succeed((True, ""))


def make_upload(filename: str, data: bytes) -> Upload:
    fields = twine_fields(filename, data, "demo", "1.0")
    return Upload(
        filename=filename,
        stream=io.BytesIO(data),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data).hexdigest(),
        blake2b_256=hashlib.blake2b(data, digest_size=32).hexdigest(),
        fields={k: tuple(v for kk, v in fields if kk == k) for k, _ in fields},
    )


def record(filename: str, data: bytes) -> PackageFile:
    return PackageFile(
        name="demo",
        version="1.0",
        filename=filename,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        upload_time=WHEN,
    )


class FlakyCache(MemoryCache):
    """A memory cache whose ``save`` fails while ``down`` is set."""

    down = False

    def save(self, file: PackageFile) -> Any:
        if self.down:
            return fail(BackendUnavailable("cache down"))
        return super().save(file)


class WatchedStorage(MemoryStorage):
    """A memory storage whose ``delete`` calls ``on_delete`` and then fails."""

    on_delete: Any = None

    def delete(self, file: PackageFile) -> Any:
        self.on_delete(file)
        return fail(BackendUnavailable("storage down"))


class IndexTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.storage = WatchedStorage()
        self.cache = FlakyCache()
        self.index = PackageIndex(
            self.storage,
            self.cache,
            OpenAccess(),
            Policy(default_read=("everyone",), default_write=("authenticated",)),
            run_synchronously,
            now=lambda: WHEN,
        )
        self.filename, self.data = make_wheel("demo", "1.0")

    def run_(self, coroutine: Any) -> Any:
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(coroutine)

    def listed(self) -> list[str]:
        return [f.filename for f in self.successResultOf(self.cache.all("demo"))]

    def stored_bytes(self) -> bytes:
        file = record(self.filename, self.data)
        return self.successResultOf(self.storage.open(file)).read()  # type: ignore[no-any-return]

    def test_same_bytes_after_crash_succeeds(self) -> None:
        """A file stored before a crash but never recorded in the cache: uploading the same
        bytes again succeeds and lists it."""
        self.successResultOf(
            self.storage.put(record(self.filename, self.data), io.BytesIO(self.data), None, False)
        )
        self.assertEqual(self.listed(), [])
        stored = self.successResultOf(
            self.run_(self.index.upload(BOB, make_upload(self.filename, self.data)))
        )
        self.assertEqual(stored.sha256, hashlib.sha256(self.data).hexdigest())
        self.assertEqual(self.listed(), [self.filename])
        self.assertEqual(self.stored_bytes(), self.data)

    def test_different_bytes_after_crash_conflict(self) -> None:
        """If storage holds other bytes under the filename, the upload is a Conflict and the
        stored bytes stay."""
        _, other = make_wheel("demo", "1.0", summary="other")
        self.successResultOf(
            self.storage.put(record(self.filename, other), io.BytesIO(other), None, False)
        )
        failure = self.failureResultOf(
            self.run_(self.index.upload(BOB, make_upload(self.filename, self.data))), Conflict
        )
        self.assertIn("already exists", failure.value.message)
        self.assertEqual(self.listed(), [])
        file = record(self.filename, other)
        self.assertEqual(self.successResultOf(self.storage.open(file)).read(), other)

    def test_cache_failure_then_retry(self) -> None:
        """When the cache fails after the blob is stored, the upload fails, nothing is listed,
        and a retry of the same upload succeeds."""
        self.cache.down = True
        self.failureResultOf(
            self.run_(self.index.upload(BOB, make_upload(self.filename, self.data))),
            BackendUnavailable,
        )
        self.assertEqual(self.listed(), [])
        self.assertEqual(self.stored_bytes(), self.data)
        self.cache.down = False
        self.successResultOf(
            self.run_(self.index.upload(BOB, make_upload(self.filename, self.data)))
        )
        self.assertEqual(self.listed(), [self.filename])

    def test_delete_cache_before_storage(self) -> None:
        """Delete removes the cache record before the blob, so a failing storage delete never
        leaves a listed file without bytes."""
        self.successResultOf(
            self.run_(self.index.upload(BOB, make_upload(self.filename, self.data)))
        )
        seen: list[list[str]] = []

        self.storage.on_delete = lambda file: seen.append(self.listed())
        self.failureResultOf(
            self.run_(self.index.delete(BOB, "demo", self.filename)), BackendUnavailable
        )
        self.assertEqual(seen, [[]])
        self.assertEqual(self.listed(), [])

    def test_reload_if_needed_rebuilds_empty_cache(self) -> None:
        """An empty cache is rebuilt from storage (records intact); the call says so."""
        self.successResultOf(
            self.run_(self.index.upload(BOB, make_upload(self.filename, self.data)))
        )
        before = self.successResultOf(self.cache.fetch(self.filename))
        self.successResultOf(self.cache.clear_all())
        self.assertTrue(self.successResultOf(self.run_(self.index.reload_if_needed())))
        after = self.successResultOf(self.cache.fetch(self.filename))
        self.assertEqual(after, before)
        self.assertEqual(after.upload_time, WHEN)

    def test_reload_waits_for_another_rebuilder(self) -> None:
        """While another process holds the rebuild lock, reload_if_needed waits (polling on
        the clock) and does not rebuild; once the cache is filled it returns without a
        second rebuild."""
        self.successResultOf(
            self.run_(self.index.upload(BOB, make_upload(self.filename, self.data)))
        )
        self.successResultOf(self.cache.clear_all())
        other = self.successResultOf(self.cache.acquire_lock("rebuild", 600))
        assert other is not None
        clock = Clock()
        rebuilds: list[int] = []
        original = self.index.rebuild

        async def counted(progress: Any = None) -> int:
            rebuilds.append(1)
            return await original(progress)

        self.index.rebuild = counted  # type: ignore[method-assign]
        d = self.run_(self.index.reload_if_needed(lambda s: deferLater(clock, s)))
        clock.advance(5)
        self.assertNoResult(d)
        # The other process fills the cache and lets go.
        self.successResultOf(self.cache.save(record(self.filename, self.data)))
        self.successResultOf(self.cache.release_lock("rebuild", other))
        clock.advance(1)
        self.assertFalse(self.successResultOf(d))
        self.assertEqual(rebuilds, [])

    def test_reload_takes_over_from_a_dead_rebuilder(self) -> None:
        """When the lock's holder died (its lock expires), a waiting process rebuilds."""
        self.successResultOf(
            self.run_(self.index.upload(BOB, make_upload(self.filename, self.data)))
        )
        self.successResultOf(self.cache.clear_all())
        now = [0.0]
        self.cache._clock = lambda: now[0]  # type: ignore[attr-defined]
        self.assertIsNotNone(self.successResultOf(self.cache.acquire_lock("rebuild", 30)))
        clock = Clock()

        def sleep(seconds: float) -> Any:
            now[0] += seconds
            return deferLater(clock, seconds)

        d = self.run_(self.index.reload_if_needed(sleep))
        clock.pump([1.0] * 29)
        self.assertNoResult(d)
        clock.pump([1.0] * 2)
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(self.listed(), [self.filename])
        # The lock was released after the rebuild.
        self.assertIsNotNone(self.successResultOf(self.cache.acquire_lock("rebuild", 30)))

    def test_reload_if_needed_leaves_full_cache(self) -> None:
        """A cache that holds anything is left alone, even if storage holds more."""
        self.successResultOf(
            self.run_(self.index.upload(BOB, make_upload(self.filename, self.data)))
        )
        extra_name, extra = make_wheel("demo", "2.0")
        extra_record = PackageFile(
            name="demo",
            version="2.0",
            filename=extra_name,
            size=len(extra),
            sha256=hashlib.sha256(extra).hexdigest(),
            upload_time=WHEN,
        )
        self.successResultOf(self.storage.put(extra_record, io.BytesIO(extra), None, False))
        self.assertFalse(self.successResultOf(self.run_(self.index.reload_if_needed())))
        self.assertEqual(self.listed(), [self.filename])
