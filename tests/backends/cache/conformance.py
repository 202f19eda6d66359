"""The behaviour every :class:`~pypicloud_tx.interfaces.ICache` must show.

Mix :class:`ICacheConformance` into a trial test case and define :meth:`make_cache`::

    class MemoryCacheTests(ICacheConformance, SynchronousTestCase):
        def make_cache(self) -> ICache:
            return MemoryCache()

``make_cache`` returns an empty, started cache, or a Deferred that fires with one; it registers
its own cleanup (``self.addCleanup``).  The tests are written as coroutines and run the same
way under both kinds of test case:

* with :class:`~twisted.trial.unittest.SynchronousTestCase`, every Deferred must already have
  fired (a memory backend, or a backend built with ``Runtime.synchronous()``);
* with :class:`~twisted.trial.unittest.TestCase`, the test returns a Deferred and trial spins
  the reactor (real thread pools, network clients).
"""

from __future__ import annotations

import datetime as _dt
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from pypicloud_tx.domain.models import UPSTREAM, PackageFile
from pypicloud_tx.interfaces import ICache

T = TypeVar("T")
UTC = _dt.UTC
T0 = _dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def make_file(
    name: str = "pkg",
    version: str = "1.0",
    *,
    kind: str = "sdist",
    minutes: int = 0,
    summary: str = "",
    **fields: Any,
) -> PackageFile:
    """A file of project ``name`` uploaded ``minutes`` after :data:`T0`."""
    stem = f"{name.replace('-', '_')}-{version}"
    filename = f"{stem}-py3-none-any.whl" if kind == "wheel" else f"{stem}.tar.gz"
    return PackageFile(
        name=name,
        version=version,
        filename=fields.pop("filename", filename),
        size=fields.pop("size", 1234),
        sha256=fields.pop("sha256", "ab" * 32),
        upload_time=T0 + _dt.timedelta(minutes=minutes),
        summary=summary,
        **fields,
    )


def every_field() -> PackageFile:
    """A file with every field set to something a careless backend would lose."""
    return PackageFile(
        name="zaphod-beeblebrox",
        version="2.0.post1",
        filename="Zaphod_Beeblebrox-2.0.post1-py3-none-any.whl",
        size=98765,
        sha256="0123456789abcdef" * 4,
        upload_time=_dt.datetime(2023, 12, 31, 23, 59, 58, 999999, tzinfo=UTC),
        display_name="Zaphod_Beeblebrox",
        md5="d41d8cd98f00b204e9800998ecf8427e",
        blake2b_256="fe" * 32,
        summary="Ünïcödé ☃ summary — 包 🚀",
        requires_python=">=3.9,<4",
        metadata_sha256="9f" * 32,
        yanked="",
        uploader="ford@example.test",
        origin=UPSTREAM,
        metadata={
            "requires_dist": ["attrs>=23", "tomli; python_version < '3.11'"],
            "classifiers": ["Programming Language :: Python :: 3", "Natural Language :: 日本語"],
            "description": "Long description\n\nwith *markup*, ☃ and ëmoji 🐍\n" * 50,
            "project_urls": {"Home": "https://example.test/ünï"},
            "keywords": None,
        },
    )


def _case(
    test: Callable[[Any], Coroutine[Any, Any, None]],
) -> Callable[[Any], Deferred[None] | None]:
    """Run a coroutine test synchronously or asynchronously, as the test case allows."""

    @functools.wraps(test)
    def run(self: ICacheConformance) -> Deferred[None] | None:
        d = Deferred.fromCoroutine(test(self))
        if isinstance(self, TestCase):
            return d
        assert isinstance(self, SynchronousTestCase)
        self.successResultOf(d)
        return None

    return run


async def _settle(result: Awaitable[T] | T) -> T:
    if isinstance(result, Deferred):
        return await result  # type: ignore[no-any-return]
    return result  # type: ignore[return-value]


def _recorder(seen: list[tuple[int, int]]) -> Callable[[int, int], None]:
    """A progress report that appends each ``(done, total)`` to ``seen``."""
    return lambda done, total: seen.append((done, total))


class ICacheConformance:
    """The shared ICache suite.  See the module docstring for how to use it."""

    def make_cache(self) -> ICache | Deferred[ICache]:
        """An empty, started cache (or a Deferred firing with one); cleanup is registered."""
        raise NotImplementedError

    # The mixin is used with trial test cases; these keep type checkers informed.
    assertEqual: Any
    assertIs: Any
    assertIsNone: Any
    assertTrue: Any
    assertFalse: Any
    assertIsInstance: Any
    failureResultOf: Any

    async def cache(self, *files: PackageFile) -> ICache:
        cache = await _settle(self.make_cache())
        for f in files:
            await cache.save(f)
        return cache

    def assertSameFiles(self, actual: list[PackageFile], expected: list[PackageFile]) -> None:
        """Equal as records (metadata included), in any order."""

        def key(record: dict[str, Any]) -> str:
            return str(record["filename"])

        self.assertEqual(
            sorted((f.to_record() for f in actual), key=key),
            sorted((f.to_record() for f in expected), key=key),
        )

    # -- interface ------------------------------------------------------------------------------

    @_case
    async def test_provides_interface(self) -> None:
        """The cache provides every method of ICache."""
        cache = await self.cache()
        self.assertTrue(verifyObject(ICache, cache))

    @_case
    async def test_empty(self) -> None:
        """A new cache knows no files and no projects."""
        cache = await self.cache()
        self.assertIsNone(await cache.fetch("pkg-1.0.tar.gz"))
        self.assertEqual(await cache.all("pkg"), [])
        self.assertEqual(await cache.distinct(), [])
        self.assertEqual(await cache.summary(), [])
        self.assertEqual(await cache.search({"name": ["pkg"]}, "or"), [])

    # -- save, fetch, delete --------------------------------------------------------------------

    @_case
    async def test_round_trip_every_field(self) -> None:
        """fetch() returns every field saved, including unicode text, nested metadata,
        microseconds of upload_time in UTC, and an empty yank reason."""
        original = every_field()
        cache = await self.cache(original)
        fetched = await cache.fetch(original.filename)
        assert fetched is not None
        self.assertEqual(fetched.to_record(), original.to_record())
        self.assertEqual(fetched, original)
        self.assertEqual(fetched.upload_time.utcoffset(), _dt.timedelta(0))
        self.assertEqual(fetched.yanked, "")
        self.assertSameFiles(await cache.all(original.name), [original])

    @_case
    async def test_yanked_empty_reason_is_not_unyanked(self) -> None:
        """A yank with an empty reason ("") stays distinct from not yanked (None)."""
        plain = make_file(version="1.0")
        yanked = make_file(version="1.1", yanked="")
        reason = make_file(version="1.2", yanked="broken on Windows")
        cache = await self.cache(plain, yanked, reason)
        got = {f.version: f.yanked for f in await cache.all("pkg")}
        self.assertIs(got["1.0"], None)
        self.assertEqual(got["1.1"], "")
        self.assertEqual(got["1.2"], "broken on Windows")

    @_case
    async def test_save_replaces(self) -> None:
        """Saving a filename again replaces its record instead of adding a second one."""
        first = make_file(summary="first", metadata={"requires_dist": ["a"]})
        second = make_file(
            summary="second", yanked="oops", minutes=5, metadata={"requires_dist": ["b"]}
        )
        cache = await self.cache(first)
        await cache.save(second)
        fetched = await cache.fetch(first.filename)
        assert fetched is not None
        self.assertEqual(fetched.to_record(), second.to_record())
        self.assertSameFiles(await cache.all("pkg"), [second])
        [summary] = await cache.summary()
        self.assertEqual(summary.summary, "second")

    @_case
    async def test_delete(self) -> None:
        """A deleted file is gone from fetch, all, distinct and summary; others stay."""
        gone = make_file(version="1.0")
        kept = make_file(version="1.1")
        other = make_file("other", "3.0")
        cache = await self.cache(gone, kept, other)
        await cache.delete(gone)
        self.assertIsNone(await cache.fetch(gone.filename))
        self.assertSameFiles(await cache.all("pkg"), [kept])
        await cache.delete(kept)
        self.assertEqual(await cache.all("pkg"), [])
        self.assertEqual(await cache.distinct(), ["other"])
        self.assertEqual([s.name for s in await cache.summary()], ["other"])

    @_case
    async def test_delete_unknown(self) -> None:
        """Deleting a file the cache does not hold succeeds and changes nothing."""
        kept = make_file()
        cache = await self.cache(kept)
        await cache.delete(make_file("nope", "9.9"))
        self.assertSameFiles(await cache.all("pkg"), [kept])

    # -- all, distinct --------------------------------------------------------------------------

    @_case
    async def test_all_only_that_project(self) -> None:
        """all(name) returns exactly that project's files, not those of similar names."""
        mine = [make_file("foo", "1.0"), make_file("foo", "1.0", kind="wheel")]
        others = [make_file("foo-bar", "1.0"), make_file("foobar", "1.0"), make_file("fo", "1.0")]
        cache = await self.cache(*mine, *others)
        self.assertSameFiles(await cache.all("foo"), mine)
        self.assertEqual(await cache.all("FOO"), [])

    @_case
    async def test_distinct_sorted(self) -> None:
        """distinct() lists each project once, sorted as Python sorts strings."""
        names = ["zope-interface", "ab", "a-b", "a.b", "a0", "attrs", "zope-interface", "ab"]
        cache = await self.cache(*(make_file(n, f"1.{i}") for i, n in enumerate(names)))
        self.assertEqual(await cache.distinct(), sorted(set(names)))

    # -- summary --------------------------------------------------------------------------------

    @_case
    async def test_summary_stable_unstable(self) -> None:
        """stable is the newest final release, unstable the newest of all; last_modified and
        summary come from the last upload."""
        cache = await self.cache(
            make_file(version="1.0", minutes=0, summary="one"),
            make_file(version="1.1", minutes=1, summary="one point one"),
            make_file(version="2.0rc1", minutes=2, summary="two, almost"),
        )
        [summary] = await cache.summary()
        self.assertEqual(summary.name, "pkg")
        self.assertEqual(summary.stable, "1.1")
        self.assertEqual(summary.unstable, "2.0rc1")
        self.assertEqual(summary.last_modified, T0 + _dt.timedelta(minutes=2))
        self.assertEqual(summary.summary, "two, almost")

    @_case
    async def test_summary_pep440_order(self) -> None:
        """Versions are compared by PEP 440 (1.10 > 1.9), not as text."""
        cache = await self.cache(
            make_file(version="1.9", minutes=0), make_file(version="1.10", minutes=1)
        )
        [summary] = await cache.summary()
        self.assertEqual((summary.stable, summary.unstable), ("1.10", "1.10"))

    @_case
    async def test_summary_last_upload_not_highest_version(self) -> None:
        """A backport uploaded last sets last_modified and summary, not stable/unstable."""
        cache = await self.cache(
            make_file(version="2.0", minutes=0, summary="new line"),
            make_file(version="1.5.1", minutes=10, summary="backport"),
        )
        [summary] = await cache.summary()
        self.assertEqual(summary.stable, "2.0")
        self.assertEqual(summary.unstable, "2.0")
        self.assertEqual(summary.last_modified, T0 + _dt.timedelta(minutes=10))
        self.assertEqual(summary.summary, "backport")

    @_case
    async def test_summary_only_prereleases(self) -> None:
        """A project with only pre-releases has no stable version."""
        cache = await self.cache(make_file(version="0.1a1"), make_file(version="0.1b2", minutes=1))
        [summary] = await cache.summary()
        self.assertIsNone(summary.stable)
        self.assertEqual(summary.unstable, "0.1b2")

    @_case
    async def test_summary_per_project_sorted(self) -> None:
        """One summary per project, sorted by name, each from its own files only."""
        cache = await self.cache(
            make_file("zeta", "3.0", minutes=3, summary="Zeta"),
            make_file("alpha", "1.0", minutes=1, summary="Alpha"),
            make_file("alpha", "1.0", kind="wheel", minutes=2, summary="Alpha wheel"),
            make_file("mid", "0.5", minutes=4),
        )
        summaries = await cache.summary()
        self.assertEqual([s.name for s in summaries], ["alpha", "mid", "zeta"])
        alpha = summaries[0]
        self.assertEqual((alpha.stable, alpha.unstable), ("1.0", "1.0"))
        self.assertEqual(alpha.last_modified, T0 + _dt.timedelta(minutes=2))
        self.assertEqual(alpha.summary, "Alpha wheel")
        self.assertEqual(summaries[2].summary, "Zeta")

    # -- search ---------------------------------------------------------------------------------

    def _search_files(self) -> list[PackageFile]:
        return [
            make_file("requests", "2.0", summary="HTTP for Humans"),
            make_file("requests", "2.1", summary="HTTP for Humans"),
            make_file("httpx", "0.27", summary="The next generation HTTP client."),
            make_file("flask", "3.0", summary="A simple framework for building web apps"),
            make_file("unicodedata2", "15.0", summary="Ünïcödé database ☃"),
            make_file("my-pkg", "1.0", summary="100% pure_python"),
        ]

    async def _search(
        self, criteria: dict[str, list[str]], query_type: str
    ) -> list[tuple[str, str]]:
        cache = await self.cache(*self._search_files())
        found = await cache.search(criteria, query_type)
        return sorted((f.name, f.version) for f in found)

    @_case
    async def test_search_or(self) -> None:
        """With "or", a file matching any term of any field is returned, once per file."""
        found = await self._search({"name": ["flask"], "summary": ["humans"]}, "or")
        self.assertEqual(found, [("flask", "3.0"), ("requests", "2.0"), ("requests", "2.1")])

    @_case
    async def test_search_and(self) -> None:
        """With "and", every field given must contain one of its terms."""
        found = await self._search({"name": ["http", "req"], "summary": ["client"]}, "and")
        self.assertEqual(found, [("httpx", "0.27")])
        found = await self._search({"name": ["requests"], "summary": ["client"]}, "and")
        self.assertEqual(found, [])

    @_case
    async def test_search_case_insensitive_substring(self) -> None:
        """Terms match anywhere in the text, ignoring case, in any script."""
        self.assertEqual(
            await self._search({"summary": ["ÜNÏCÖDÉ"]}, "or"), [("unicodedata2", "15.0")]
        )
        self.assertEqual(
            await self._search({"name": ["QUEST"]}, "or"),
            [("requests", "2.0"), ("requests", "2.1")],
        )

    @_case
    async def test_search_name_normalised(self) -> None:
        """A name term is normalised like a project name: My_Pkg finds my-pkg."""
        self.assertEqual(await self._search({"name": ["My_Pkg"]}, "or"), [("my-pkg", "1.0")])

    @_case
    async def test_search_wildcards_are_literal(self) -> None:
        """% and _ are ordinary characters in a term, not SQL wildcards."""
        self.assertEqual(await self._search({"summary": ["0% p"]}, "or"), [("my-pkg", "1.0")])
        self.assertEqual(await self._search({"summary": ["e_p"]}, "or"), [("my-pkg", "1.0")])
        self.assertEqual(await self._search({"summary": ["%"]}, "or"), [("my-pkg", "1.0")])
        self.assertEqual(await self._search({"summary": ["r_h"]}, "or"), [])

    @_case
    async def test_search_no_terms(self) -> None:
        """No terms (or only empty ones) match nothing, with either query type."""
        self.assertEqual(await self._search({}, "or"), [])
        self.assertEqual(await self._search({}, "and"), [])
        self.assertEqual(await self._search({"name": [""], "summary": []}, "and"), [])

    @_case
    async def test_search_bad_query_type(self) -> None:
        """A query type other than "or"/"and" fails with ValueError."""
        cache = await self.cache(*self._search_files())
        try:
            await cache.search({"name": ["flask"]}, "xor")
        except ValueError:
            return
        raise self.failureException("search() accepted query_type 'xor'")  # type: ignore[attr-defined]

    # -- clear, reload --------------------------------------------------------------------------

    @_case
    async def test_clear_all(self) -> None:
        """clear_all() forgets every file of every project."""
        cache = await self.cache(make_file("a", "1"), make_file("b", "2"), every_field())
        await cache.clear_all()
        self.assertEqual(await cache.distinct(), [])
        self.assertEqual(await cache.summary(), [])
        self.assertIsNone(await cache.fetch(every_field().filename))

    def _reload_sets(self) -> tuple[list[PackageFile], list[PackageFile]]:
        """(what the cache holds before, what storage lists) for the reload tests."""
        unchanged = make_file("keep", "1.0", summary="same")
        before_changed = make_file("change", "1.0", summary="old", metadata={"k": ["old"]})
        after_changed = make_file("change", "1.0", summary="new", metadata={"k": ["new"]})
        vanished = make_file("vanish", "1.0")
        added = [make_file("new", f"1.{i}", minutes=i) for i in range(7)] + [every_field()]
        return [unchanged, before_changed, vanished], [unchanged, after_changed, *added]

    async def _check_reload(self, graceful: bool) -> None:
        before, after = self._reload_sets()
        cache = await self.cache(*before)
        await cache.reload_from_storage(after, graceful)
        self.assertEqual(await cache.distinct(), ["change", "keep", "new", "zaphod-beeblebrox"])
        self.assertIsNone(await cache.fetch(before[2].filename))
        for name in ("change", "keep", "new", "zaphod-beeblebrox"):
            self.assertSameFiles(await cache.all(name), [f for f in after if f.name == name])

    @_case
    async def test_reload(self) -> None:
        """A reload leaves exactly the listed files: stale ones gone, changed ones replaced."""
        await self._check_reload(graceful=False)

    @_case
    async def test_reload_graceful(self) -> None:
        """A graceful reload ends with exactly the listed files too."""
        await self._check_reload(graceful=True)

    @_case
    async def test_reload_progress(self) -> None:
        """A reload with a progress report tells it how far it got, never backwards, ending
        with everything done; in both modes, and with nothing to do too."""
        for graceful in (False, True):
            before, after = self._reload_sets()
            cache = await self.cache(*before)
            seen: list[tuple[int, int]] = []
            await cache.reload_from_storage(after, graceful, _recorder(seen))
            self.assertTrue(seen, graceful)
            self.assertEqual(seen[-1][0], seen[-1][1], (graceful, seen))
            self.assertGreater(seen[-1][1], 0, (graceful, seen))
            self.assertLessEqual(seen[-1][1], len(after) + len(before), (graceful, seen))
            self.assertEqual([d for d, _ in seen], sorted(d for d, _ in seen), seen)
            self.assertEqual(await cache.distinct(), ["change", "keep", "new", "zaphod-beeblebrox"])
        cache = await self.cache()
        seen = []
        await cache.reload_from_storage([], False, _recorder(seen))
        self.assertTrue(all(done == total == 0 for done, total in seen), seen)

    @_case
    async def test_reload_empty(self) -> None:
        """Reloading from an empty storage empties the cache, in both modes."""
        for graceful in (False, True):
            cache = await self.cache(make_file("a", "1"), make_file("b", "1"))
            await cache.reload_from_storage([], graceful)
            self.assertEqual(await cache.distinct(), [])

    @_case
    async def test_reload_duplicate_filenames(self) -> None:
        """A filename listed twice is kept once, as its last listing says."""
        first = make_file(summary="first")
        last = make_file(summary="last")
        for graceful in (False, True):
            cache = await self.cache()
            await cache.reload_from_storage([first, last], graceful)
            self.assertSameFiles(await cache.all("pkg"), [last])

    # -- health ---------------------------------------------------------------------------------

    @_case
    async def test_check_health(self) -> None:
        """A working cache reports itself healthy."""
        cache = await self.cache()
        self.assertEqual(await cache.check_health(), (True, ""))

    # -- locks ----------------------------------------------------------------------------------

    @_case
    async def test_lock_exclusive(self) -> None:
        """A lock is held by one taker at a time: a second take fails, a wrong token cannot
        release it, the right one can, and then it can be taken again; names are separate."""
        cache = await self.cache()
        token = await cache.acquire_lock("rebuild", 60)
        self.assertIsInstance(token, str)
        self.assertIsNone(await cache.acquire_lock("rebuild", 60))
        other = await cache.acquire_lock("other", 60)
        self.assertIsInstance(other, str)
        self.assertIs(await cache.release_lock("rebuild", "not-the-token"), False)
        self.assertIsNone(await cache.acquire_lock("rebuild", 60))
        self.assertIs(await cache.release_lock("rebuild", token), True)
        again = await cache.acquire_lock("rebuild", 60)
        self.assertIsInstance(again, str)
        self.assertTrue(again != token)
        self.assertIs(await cache.release_lock("rebuild", token), False)
        self.assertIs(await cache.release_lock("rebuild", again), True)
        self.assertIs(await cache.release_lock("other", other), True)

    @_case
    async def test_lock_expires(self) -> None:
        """A lock whose time is up can be taken by another, and its first holder's release
        then changes nothing."""
        cache = await self.cache()
        first = await cache.acquire_lock("rebuild", 0.01)
        self.assertIsInstance(first, str)
        time.sleep(0.1)
        second = await cache.acquire_lock("rebuild", 60)
        self.assertIsInstance(second, str)
        self.assertIs(await cache.release_lock("rebuild", first), False)
        self.assertIsNone(await cache.acquire_lock("rebuild", 60))
        self.assertIs(await cache.release_lock("rebuild", second), True)
