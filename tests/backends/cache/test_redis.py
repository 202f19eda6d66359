"""The Redis cache: the ICache conformance suite against a real Redis, and what only Redis does.

The shared server (``PPC_TEST_REDIS_URL``) is used with a key prefix of each test's own, deleted
afterwards; it is never flushed.  Tests that stop, restart or configure a server (passwords,
TLS, MONITOR) start a private ``redis-server`` on a free port.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from pypicloud_tx.backends._threads import ThreadPoolService, run_synchronously
from pypicloud_tx.backends.cache import redis as redis_module
from pypicloud_tx.backends.cache.memo import MemoizedCache
from pypicloud_tx.backends.cache.redis import (
    KEY_LAYOUT,
    SCRIPT_KEYS,
    SCRIPT_MAX_ARGS,
    RedisCache,
    RedisURL,
    _build,
    parse_redis_url,
)
from pypicloud_tx.config.options import parse_options
from pypicloud_tx.errors import BackendUnavailable, ConfigError
from pypicloud_tx.interfaces import ICache
from pypicloud_tx.runtime import Runtime
from tests.realservices import require_service

from .conformance import ICacheConformance, every_field, make_file

PASSWORD = "s3cret-p@ss/wörd"


def _runtime(threads: Any = None) -> Runtime:
    return Runtime(reactor=reactor, threads=threads or (lambda name, size: run_synchronously))


def build(url: str, prefix: str, runtime: Runtime | None = None) -> RedisCache:
    options = parse_options(RedisCache.Options, "db", {"url": url, "prefix": prefix})
    return RedisCache.from_config(options, runtime or _runtime())


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def raw_connection(url: RedisURL, test: TestCase) -> Any:
    """A plain txredisapi connection, to look at what the cache wrote; closed afterwards."""
    conn = await txredisapi.Connection(
        url.host,
        url.port,
        dbid=url.db,
        reconnect=False,
        password=url.password,
        convertNumbers=False,
    )
    test.addCleanup(conn.disconnect)
    return conn


async def keys_under(conn: Any, prefix: str) -> list[str]:
    pattern = re.sub(r"([\\*?\[\]])", r"\\\1", prefix) + "*"
    cursor, found = "0", []
    for _ in range(10_000):
        cursor, batch = await conn.scan(cursor, pattern, 1000)
        found += batch
        if str(cursor) == "0":
            return sorted(found)
    raise AssertionError("SCAN did not finish")


class PrivateRedis:
    """A redis-server of the test's own, on a free port, that the test may stop and restart."""

    def __init__(self, test: TestCase, *args: str, tls: tuple[str, str] | None = None) -> None:
        """Start ``redis-server`` with ``args``; with ``tls`` (certificate and key files) the
        port speaks TLS only."""
        if shutil.which("redis-server") is None:
            message = "redis-server is not installed"
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                raise AssertionError(message)
            raise SkipTest(message)
        self.port = free_port()
        self.args = args
        if tls is not None:
            cert, key = tls
            self.args = (
                *args,
                *("--port", "0", "--tls-port", str(self.port)),
                *("--tls-cert-file", cert, "--tls-key-file", key, "--tls-auth-clients", "no"),
            )
        self.dir = tempfile.mkdtemp(prefix="ppc-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        test.addCleanup(self.stop)
        test.addCleanup(shutil.rmtree, self.dir, True)
        self.start()

    def start(self) -> None:
        """Start the server (again, on the same port) and wait until it accepts connections."""
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """Kill the server at once (as a crash would) and wait for it to be gone."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def url(self, auth: str = "", db: int = 0, scheme: str = "redis", query: str = "") -> str:
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}{query}"


class RedisTestCase(TestCase):
    """Makes caches with a prefix of their own on the shared Redis; deletes it afterwards."""

    timeout = 60

    def setUp(self) -> None:
        self.shared_url = require_service("PPC_TEST_REDIS_URL", "Redis")

    def new_prefix(self) -> str:
        prefix = f"ppc-test:{uuid.uuid4().hex[:12]}:"
        self.addCleanup(lambda: Deferred.fromCoroutine(self._delete_keys(prefix)))
        return prefix

    async def _delete_keys(self, prefix: str) -> None:
        conn = await txredisapi.Connection(
            **_connection_args(parse_redis_url(self.shared_url)), reconnect=False
        )
        try:
            found = await keys_under(conn, prefix)
            if found:
                await conn.delete(found)
        finally:
            await conn.disconnect()

    async def started(
        self, url: str | None = None, prefix: str | None = None, runtime: Runtime | None = None
    ) -> RedisCache:
        cache = build(url or self.shared_url, prefix or self.new_prefix(), runtime)
        self.addCleanup(cache.stop)
        await cache.start()
        return cache

    async def raw(self, url: str | None = None) -> Any:
        return await raw_connection(parse_redis_url(url or self.shared_url), self)


def _connection_args(url: RedisURL) -> dict[str, Any]:
    return {
        "host": url.host,
        "port": url.port,
        "dbid": url.db,
        "password": url.password,
        "convertNumbers": False,
    }


def _coroutine_test(test: Callable[..., Any]) -> Callable[..., Deferred[None]]:
    """Run an ``async def`` test method under trial."""

    def run(self: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(test(self))

    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    return run


# -- the shared suite ---------------------------------------------------------------------------


class RedisConformanceTests(ICacheConformance, RedisTestCase):
    """RedisCache on the shared Redis passes the shared suite (its CPU work inline)."""

    def make_cache(self) -> Deferred[ICache]:
        return Deferred.fromCoroutine(self.started())  # type: ignore[arg-type]


class RedisThreadedConformanceTests(ICacheConformance, RedisTestCase):
    """RedisCache passes the shared suite with its CPU work (reload plans, search matching)
    on a real thread pool."""

    def make_cache(self) -> Deferred[ICache]:
        pool = ThreadPoolService(reactor, "db", 2)  # type: ignore[arg-type]
        pool.startService()
        self.addCleanup(pool.stopService)
        runtime = _runtime(lambda name, size: pool.run)
        return Deferred.fromCoroutine(self.started(runtime=runtime))  # type: ignore[arg-type]


# -- key layout ---------------------------------------------------------------------------------


def _layout_regex(pattern: str, prefix: str) -> re.Pattern[str]:
    text = re.escape(pattern)
    text = text.replace(re.escape("{P}"), re.escape(prefix))
    text = text.replace(re.escape("{G}"), "[0-9a-f]{16}")
    text = re.sub(r"<[a-z]+>", ".+", text)
    return re.compile(text + r"\Z")


class KeyLayoutTests(RedisTestCase):
    """The keys in Redis are exactly the documented ones."""

    @_coroutine_test
    async def test_keys_match_documented_layout(self) -> None:
        """Every key the cache writes matches one pattern of KEY_LAYOUT, with the documented
        Redis type, and every documented pattern is used."""
        prefix = self.new_prefix()
        cache = await self.started(prefix=prefix)
        for f in (
            make_file("alpha", "1.0", summary="first"),
            make_file("alpha", "1.1", kind="wheel", summary="second"),
            make_file("beta", "2.0rc1"),
            every_field(),
        ):
            await cache.save(f)
        token = await cache.acquire_lock("rebuild", 30)
        self.assertIsNotNone(token)
        conn = await self.raw()
        keys = await keys_under(conn, prefix)
        used = set()
        for key in keys:
            matched = [
                (pattern, kind)
                for pattern, kind in KEY_LAYOUT
                if _layout_regex(pattern, prefix).match(key)
            ]
            self.assertEqual(len(matched), 1, f"{key!r} matches {matched}")
            [(pattern, kind)] = matched
            self.assertEqual(await conn.execute_command("TYPE", key), kind, key)
            used.add(pattern)
        self.assertEqual(used, {pattern for pattern, _ in KEY_LAYOUT})
        gen = await conn.get(prefix + "gen")
        self.assertEqual(
            sorted(k for k in keys if ":package:" in k),
            sorted(
                f"{prefix}{gen}:package:{f}"
                for f in (
                    "alpha-1.0.tar.gz",
                    "alpha-1.1-py3-none-any.whl",
                    "beta-2.0rc1.tar.gz",
                    every_field().filename,
                )
            ),
        )

    def test_docstring_documents_layout(self) -> None:
        """The module docstring lists every pattern of KEY_LAYOUT with its type."""
        doc = redis_module.__doc__ or ""
        for pattern, kind in KEY_LAYOUT:
            spelled = pattern.replace("{P}", "P ").replace("{G}", "G")
            self.assertRegex(doc, re.escape(spelled) + r"\s+" + kind)

    @_coroutine_test
    async def test_stored_values(self) -> None:
        """A file's hash holds its project and full record as UTF-8 JSON; the project's summary
        hash and files hash hold readable fields (unicode as itself, not escaped)."""
        prefix = self.new_prefix()
        cache = await self.started(prefix=prefix)
        original = every_field()
        await cache.save(original)
        conn = await self.raw()
        gen = await conn.get(prefix + "gen")
        package = await conn.hgetall(f"{prefix}{gen}:package:{original.filename}")
        self.assertEqual(package["name"], "zaphod-beeblebrox")
        self.assertIn("☃", package["record"])
        self.assertEqual(json.loads(package["record"]), original.to_record())
        summary = await conn.hgetall(f"{prefix}{gen}:summary:zaphod-beeblebrox")
        self.assertEqual(
            summary,
            {
                "name": "zaphod-beeblebrox",
                "stable": "2.0.post1",
                "unstable": "2.0.post1",
                "last_modified": "2023-12-31T23:59:58.999999+00:00",
                "summary": "Ünïcödé ☃ summary — 包 🚀",
            },
        )
        files = await conn.hgetall(f"{prefix}{gen}:files:zaphod-beeblebrox")
        self.assertEqual(
            files,
            {
                original.filename: json.dumps(
                    ["2.0.post1", "2023-12-31T23:59:58.999999+00:00", original.summary],
                    ensure_ascii=False,
                    separators=(",", ":"),
                )
            },
        )
        self.assertEqual(await conn.smembers(f"{prefix}{gen}:set"), {"zaphod-beeblebrox"})

    @_coroutine_test
    async def test_pypicloud_keys_ignored(self) -> None:
        """Keys pypicloud wrote under the same prefix (P set, P set:<name>, P package:<file>,
        P summary:<name>) are not read: the cache counts as empty, so the server rebuilds it."""
        prefix = self.new_prefix()
        conn = await self.raw()
        await conn.sadd(prefix + "set", "legacy")
        await conn.sadd(prefix + "set:legacy", "legacy-1.0.tar.gz")
        await conn.hmset(
            prefix + "package:legacy-1.0.tar.gz",
            {"name": "legacy", "version": "1.0", "filename": "legacy-1.0.tar.gz"},
        )
        await conn.hmset(prefix + "summary:legacy", {"name": "legacy", "summary": ""})
        cache = await self.started(prefix=prefix)
        self.assertEqual(await cache.distinct(), [])
        self.assertIsNone(await cache.fetch("legacy-1.0.tar.gz"))
        self.assertEqual(await cache.all("legacy"), [])
        await cache.save(make_file("new"))
        self.assertEqual(await cache.distinct(), ["new"])

    @_coroutine_test
    async def test_prefixes_kept_apart(self) -> None:
        """Two caches with different prefixes on one database never see each other's files,
        and clearing one leaves the other alone."""
        one = await self.started()
        two = await self.started()
        await one.save(make_file("one"))
        await two.save(make_file("two"))
        self.assertEqual(await one.distinct(), ["one"])
        await one.clear_all()
        self.assertEqual(await one.distinct(), [])
        self.assertEqual(await two.distinct(), ["two"])

    @_coroutine_test
    async def test_prefix_with_glob_characters(self) -> None:
        """A prefix holding SCAN wildcards (* ? [ ]) deletes only its own keys when cleared."""
        base = self.new_prefix()
        star = await self.started(prefix=base + "a*[x]?:")
        other = await self.started(prefix=base + "ab[x]c:")
        await star.save(make_file("mine"))
        await other.save(make_file("theirs"))
        await star.reload_from_storage([make_file("fresh")], False)
        await star.clear_all()
        self.assertEqual(await other.distinct(), ["theirs"])
        conn = await self.raw()
        self.assertEqual(
            [k for k in await keys_under(conn, base) if k.startswith(base + "a*")],
            [base + "a*[x]?:version"],
        )


# -- generations, reloads, version token ---------------------------------------------------------


class GenerationTests(RedisTestCase):
    """Clearing and full reloads switch generations in one step and clean up after."""

    @_coroutine_test
    async def test_full_reload_leaves_one_persistent_generation(self) -> None:
        """After a full reload only the new generation's keys remain, none of them expiring
        (the build's safety TTL was removed when it became current)."""
        prefix = self.new_prefix()
        cache = await self.started(prefix=prefix)
        for i in range(5):
            await cache.save(make_file("old", f"1.{i}"))
        conn = await self.raw()
        old_gen = await conn.get(prefix + "gen")
        await cache.reload_from_storage([make_file("new", f"2.{i}") for i in range(3)], False)
        new_gen = await conn.get(prefix + "gen")
        self.assertNotEqual(old_gen, new_gen)
        keys = await keys_under(conn, prefix)
        self.assertEqual([k for k in keys if old_gen in k], [])
        data = [k for k in keys if new_gen in k]
        self.assertEqual(len(data), 3 + 3)  # 3 files, files:new, summary:new, set
        for key in data:
            self.assertEqual(await conn.ttl(key), -1, key)
        self.assertEqual(await cache.distinct(), ["new"])

    @_coroutine_test
    async def test_full_reload_of_many_projects_and_a_huge_one(self) -> None:
        """A full reload writes its keys through scripts, many keys per script, and a project
        too big for one script's arguments as plain commands: every file, summary and name
        arrives, and no key of the new generation expires."""
        prefix = self.new_prefix()
        cache = await self.started(prefix=prefix)
        many = [make_file(f"p{i:03d}", "1.0") for i in range(SCRIPT_KEYS * 2 + 7)]
        # Two fields per file in the project's files hash: more arguments than a script takes.
        huge = [make_file("huge", f"1.{i}") for i in range(SCRIPT_MAX_ARGS // 2 + 10)]
        build = _build(cache._keys, "g", many + huge)
        scripts = [c for c in build.commands if c[0] == "EVAL"]
        plain = [c for c in build.commands if c[0] != "EVAL"]
        self.assertGreater(len(scripts), 2)
        self.assertLess(len(build.commands), len(build.keys))
        self.assertEqual([c[0] for c in plain], ["HSET", "EXPIRE"])
        await cache.reload_from_storage(many + huge, False)
        self.assertEqual(len(await cache.distinct()), len(many) + 1)
        self.assertEqual(len(await cache.all("huge")), len(huge))
        self.assertEqual(len(await cache.all("p123")), 1)
        summaries = {s.name: s for s in await cache.summary()}
        self.assertEqual(summaries["huge"].stable, f"1.{len(huge) - 1}")
        conn = await self.raw()
        gen = await conn.get(prefix + "gen")
        keys = [k for k in await keys_under(conn, prefix) if gen in k]
        self.assertEqual(len(keys), len(many) * 3 + len(huge) + 2 + 1)
        for key in keys[:: max(1, len(keys) // 50)] + [k for k in keys if "huge" in k][:5]:
            self.assertEqual(await conn.ttl(key), -1, key)

    @_coroutine_test
    async def test_readers_see_old_generation_until_switch(self) -> None:
        """While a full reload writes its new generation, another process still reads the old
        files: nothing is emptied first."""
        prefix = self.new_prefix()
        cache = await self.started(prefix=prefix)
        reader = await self.started(prefix=prefix)
        await cache.save(make_file("before"))
        seen: list[list[str]] = []
        original = RedisCache._switch

        async def spy(self: RedisCache, gen: str | None, made: Sequence[str]) -> str | None:
            # The new generation is fully written; it is not current yet.
            seen.append(await reader.distinct())
            return await original(self, gen, made)

        self.patch(RedisCache, "_switch", spy)
        await cache.reload_from_storage([make_file("after", f"1.{i}") for i in range(3)], False)
        self.assertEqual(seen, [["before"]])
        self.assertEqual(await reader.distinct(), ["after"])

    @_coroutine_test
    async def test_clear_all_deletes_every_data_key(self) -> None:
        """clear_all() leaves only the version counter behind."""
        prefix = self.new_prefix()
        cache = await self.started(prefix=prefix)
        await cache.save(every_field())
        await cache.save(make_file())
        await cache.clear_all()
        conn = await self.raw()
        self.assertEqual(await keys_under(conn, prefix), [prefix + "version"])

    @_coroutine_test
    async def test_graceful_reload_in_batches(self) -> None:
        """A graceful reload larger than one batch writes, keeps and removes the right files,
        in the current generation (no switch)."""
        prefix = self.new_prefix()
        cache = await self.started(prefix=prefix)
        cache.batch_size = 3
        old = [make_file("old", f"1.{i}") for i in range(8)]
        kept = [make_file("kept", f"2.{i}") for i in range(5)]
        for f in old + kept:
            await cache.save(f)
        conn = await self.raw()
        gen = await conn.get(prefix + "gen")
        new = [make_file("new", f"3.{i}", summary="n", minutes=i) for i in range(10)]
        await cache.reload_from_storage(kept + new, True)
        self.assertEqual(await conn.get(prefix + "gen"), gen)
        self.assertEqual(await cache.distinct(), ["kept", "new"])
        self.assertEqual(len(await cache.all("new")), 10)
        self.assertEqual(len(await cache.all("kept")), 5)
        [_, summary] = await cache.summary()
        self.assertEqual((summary.name, summary.unstable), ("new", "3.9"))

    @_coroutine_test
    async def test_graceful_reload_moves_file_between_projects(self) -> None:
        """A filename listed under another project than the cache holds it under moves: the
        old project loses it (and vanishes when empty)."""
        cache = await self.started()
        await cache.save(make_file("old-name", filename="thing-1.0.tar.gz"))
        moved = make_file("new-name", filename="thing-1.0.tar.gz")
        await cache.reload_from_storage([moved], True)
        self.assertEqual(await cache.distinct(), ["new-name"])
        self.assertEqual(await cache.all("old-name"), [])
        self.assertEqual([s.name for s in await cache.summary()], ["new-name"])
        fetched = await cache.fetch("thing-1.0.tar.gz")
        assert fetched is not None
        self.assertEqual(fetched.name, "new-name")

    @_coroutine_test
    async def test_version_token_changes_on_every_write(self) -> None:
        """The token changes with each save, delete, clear and reload (by any process), and
        not with reads."""
        prefix = self.new_prefix()
        cache = await self.started(prefix=prefix)
        other = await self.started(prefix=prefix)
        tokens = [await cache.version_token()]

        async def changed() -> None:
            token = await cache.version_token()
            self.assertNotIn(token, tokens)
            tokens.append(token)

        await other.save(make_file())
        await changed()
        await cache.distinct()
        await cache.summary()
        self.assertEqual(await cache.version_token(), tokens[-1])
        await cache.save(make_file(version="2.0"))
        await changed()
        await other.delete(make_file(version="2.0"))
        await changed()
        await cache.reload_from_storage([make_file("x")], True)
        await changed()
        await cache.reload_from_storage([make_file("y")], False)
        await changed()
        await cache.clear_all()
        await changed()

    @_coroutine_test
    async def test_memoised_reads_see_other_processes_writes(self) -> None:
        """A MemoizedCache over Redis answers from memory, yet sees a file saved by another
        process at once: the shared token changed."""
        prefix = self.new_prefix()
        memo = MemoizedCache(await self.started(prefix=prefix))
        other = await self.started(prefix=prefix)
        await other.save(make_file("a"))
        self.assertEqual(await memo.distinct(), ["a"])
        self.assertEqual(await memo.distinct(), ["a"])
        await other.save(make_file("b"))
        self.assertEqual(await memo.distinct(), ["a", "b"])


# -- atomicity and concurrency ------------------------------------------------------------------

#: Commands that change data.
_WRITES = {"HSET", "HDEL", "DEL", "SADD", "SREM", "SET", "INCR", "UNLINK", "PERSIST", "EXPIRE"}
_MONITOR_LINE = re.compile(r'^[\d.]+ \[(\d+) ([^\]]+)\] "([A-Za-z]+)"')


class AtomicityTests(RedisTestCase):
    """Readers never see half of a change."""

    @_coroutine_test
    async def test_every_change_is_one_transaction(self) -> None:
        """MONITOR on a private server shows that every data change of save, delete, yank
        (re-save) and graceful reload runs inside MULTI/EXEC: no reader can see a file without
        its project, or a project whose summary disagrees with its files."""
        if shutil.which("redis-cli") is None:
            raise SkipTest("redis-cli is not installed")
        server = PrivateRedis(self)
        cache = await self.started(server.url(), "mon:")
        await cache.save(make_file("warm-up"))
        monitor = subprocess.Popen(
            ["redis-cli", "-p", str(server.port), "monitor"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(monitor.kill)
        conn = await self.raw(server.url())
        for _ in range(200):
            if "cmd=monitor" in await conn.execute_command("CLIENT", "LIST"):
                break
            await sleep(0.02)
        else:
            self.fail("MONITOR never started")
        await cache.save(make_file(version="1.0", summary="one"))
        await cache.save(make_file(version="1.1", summary="two"))
        await cache.save(make_file(version="1.1", summary="two", yanked="bad"))
        await cache.delete(make_file(version="1.0"))
        cache.batch_size = 2
        await cache.reload_from_storage(
            [make_file("n", f"0.{i}") for i in range(5)] + [make_file(version="1.1")], True
        )
        await conn.ping()  # the last command MONITOR reports
        await sleep(0.2)
        monitor.send_signal(signal.SIGTERM)
        output = monitor.communicate(timeout=10)[0].decode("utf-8", "replace")

        in_multi: dict[str, bool] = {}
        writes = 0
        for line in output.splitlines():
            match = _MONITOR_LINE.match(line)
            if not match:
                continue
            client, command = match.group(2), match.group(3).upper()
            if command == "MULTI":
                in_multi[client] = True
            elif command in ("EXEC", "DISCARD"):
                in_multi[client] = False
            elif command in _WRITES and client != "lua":
                writes += 1
                self.assertTrue(in_multi.get(client), f"outside MULTI/EXEC: {line}")
        self.assertGreater(writes, 30)

    @_coroutine_test
    async def test_reader_sees_whole_saves_only(self) -> None:
        """While a writer keeps re-saving files with new summaries, every atomic snapshot of
        a file's record, its project's files hash and the project's summary agrees."""
        prefix = self.new_prefix()
        writer = await self.started(prefix=prefix)
        conn = await self.raw()
        snapshot = """
        local g = redis.call('GET', KEYS[1])
        if not g then return {} end
        local b = ARGV[1] .. g .. ':'
        return {redis.call('HGET', b .. 'package:' .. ARGV[2], 'record'),
                redis.call('HGET', b .. 'files:pkg', ARGV[2]),
                redis.call('HGET', b .. 'summary:pkg', 'summary')}
        """
        stop = False
        checked = 0

        async def read() -> None:
            nonlocal checked
            while not stop:
                got = await conn.eval(snapshot, [prefix + "gen"], [prefix, "pkg-1.0.tar.gz"])
                if got and got[0] is not None:
                    record, row, summary = got
                    self.assertEqual(json.loads(record)["summary"], json.loads(row)[2])
                    self.assertEqual(json.loads(record)["summary"], summary)
                    checked += 1
                await sleep(0)

        reading = Deferred.fromCoroutine(read())
        for i in range(100):
            await writer.save(make_file(summary=f"summary {i}", minutes=i))
        stop = True
        await reading
        self.assertGreater(checked, 10)

    @_coroutine_test
    async def test_concurrent_writers_of_one_project(self) -> None:
        """Two processes saving 20 files of one project at once lose none of them, and the
        project's summary is computed from all of them (conflicting transactions retry)."""
        prefix = self.new_prefix()
        one = await self.started(prefix=prefix)
        two = await self.started(prefix=prefix)
        files = [make_file(version=f"1.{i}", minutes=i, summary=f"s{i}") for i in range(20)]
        await gatherResults([(one if i % 2 else two).save(f) for i, f in enumerate(files)])
        self.assertEqual(len(await one.all("pkg")), 20)
        [summary] = await two.summary()
        self.assertEqual((summary.unstable, summary.summary), ("1.19", "s19"))
        await gatherResults([(one if i % 2 else two).delete(f) for i, f in enumerate(files)])
        self.assertEqual(await one.distinct(), [])
        self.assertEqual(await one.summary(), [])


# -- the lock (for "one process rebuilds") ------------------------------------------------------


class LockTests(RedisTestCase):
    """acquire_lock/release_lock: one holder at a time, shared by every process."""

    @_coroutine_test
    async def test_one_holder(self) -> None:
        """Of two processes only the first gets the lock; a wrong token cannot release it;
        once released, the other gets it."""
        prefix = self.new_prefix()
        one = await self.started(prefix=prefix)
        two = await self.started(prefix=prefix)
        token = await one.acquire_lock("rebuild", 30)
        assert token is not None
        self.assertIsNone(await two.acquire_lock("rebuild", 30))
        self.assertFalse(await two.release_lock("rebuild", "not-the-token"))
        self.assertIsNone(await two.acquire_lock("rebuild", 30))
        self.assertTrue(await one.release_lock("rebuild", token))
        self.assertIsNotNone(await two.acquire_lock("rebuild", 30))

    @_coroutine_test
    async def test_expires(self) -> None:
        """A lock whose holder died frees itself after its time; the late holder's release
        then leaves the new holder's lock alone."""
        prefix = self.new_prefix()
        one = await self.started(prefix=prefix)
        two = await self.started(prefix=prefix)
        token = await one.acquire_lock("rebuild", 0.1)
        assert token is not None
        await sleep(0.3)
        second = await two.acquire_lock("rebuild", 30)
        self.assertIsNotNone(second)
        self.assertFalse(await one.release_lock("rebuild", token))
        self.assertIsNone(await one.acquire_lock("rebuild", 30))


# -- unicode --------------------------------------------------------------------------------------


class UnicodeTests(RedisTestCase):
    """Text outside ASCII round-trips, in keys and in values."""

    @_coroutine_test
    async def test_unicode_names_and_summaries(self) -> None:
        """Project names, filenames and summaries in any script work in every read."""
        cache = await self.started()
        files = [
            make_file("ünïcode", "1.0", filename="ünïcode-1.0.tar.gz", summary="Grüße ☃"),
            make_file("包", "2.0", filename="包-2.0.tar.gz", summary="软件包 🚀"),
        ]
        for f in files:
            await cache.save(f)
        self.assertEqual(await cache.distinct(), sorted(["ünïcode", "包"]))
        fetched = await cache.fetch("包-2.0.tar.gz")
        assert fetched is not None
        self.assertEqual(fetched.summary, "软件包 🚀")
        self.assertEqual([f.filename for f in await cache.all("ünïcode")], ["ünïcode-1.0.tar.gz"])
        summaries = {s.name: s.summary for s in await cache.summary()}
        self.assertEqual(summaries, {"ünïcode": "Grüße ☃", "包": "软件包 🚀"})
        # Full case folding: "GRÜSSE" finds "Grüße".
        found = await cache.search({"summary": ["GRÜSSE", "🚀"]}, "or")
        self.assertEqual(sorted(f.name for f in found), sorted(["ünïcode", "包"]))
        found = await cache.search({"name": ["ÜNÏ"], "summary": ["☃"]}, "and")
        self.assertEqual([f.name for f in found], ["ünïcode"])
        await cache.delete(files[1])
        self.assertEqual(await cache.distinct(), ["ünïcode"])


# -- availability ---------------------------------------------------------------------------------


class ReconnectTests(TestCase):
    """A private Redis that stops and comes back."""

    timeout = 60

    async def started(self, url: str) -> RedisCache:
        cache = build(url, "rc:")
        self.addCleanup(cache.stop)
        await cache.start()
        return cache

    @_coroutine_test
    async def test_down_then_back(self) -> None:
        """With the server killed, calls fail quickly with BackendUnavailable and health says
        why; once it is back, the same cache works again without being restarted."""
        server = PrivateRedis(self)
        cache = await self.started(server.url())
        await cache.save(make_file())
        server.stop()
        for call in (
            lambda: cache.fetch("pkg-1.0.tar.gz"),
            lambda: cache.save(make_file("other")),
            cache.distinct,
        ):
            began = time.monotonic()
            try:
                await call()
            except BackendUnavailable as e:
                self.assertIn(f"127.0.0.1:{server.port}", e.message)
                self.assertIn("db.url", e.message)
            else:
                self.fail("a call succeeded with the server down")
            self.assertLess(time.monotonic() - began, 3)
        healthy, reason = await cache.check_health()
        self.assertFalse(healthy)
        self.assertIn("Redis", reason)

        server.start()
        for _ in range(100):
            if (await cache.check_health())[0]:
                break
            await sleep(0.1)
        else:
            self.fail("the cache did not reconnect within 10 s")
        await cache.save(make_file("after"))  # the data died with the server (--save '')
        self.assertEqual(await cache.distinct(), ["after"])

    @_coroutine_test
    async def test_first_call_after_restart_succeeds(self) -> None:
        """A call made right after a restart, on connections the cache has not yet seen
        die, succeeds: the broken connection is retried once on a new one."""
        server = PrivateRedis(self)
        cache = await self.started(server.url())
        await cache.save(make_file())
        server.stop()
        server.start()
        # No reactor turn has passed: the pool still holds the dead connections.
        await cache.save(make_file("again"))
        self.assertEqual(await cache.distinct(), ["again"])

    @_coroutine_test
    async def test_start_waits_for_nothing_when_unreachable(self) -> None:
        """start() against a closed port fails within a second with BackendUnavailable naming
        the URL (without its password) and db.url; health reports the same."""
        url = f"redis://:{PASSWORD.replace('/', '%2F')}@127.0.0.1:{free_port()}/0"
        cache = build(url, "x:")
        self.addCleanup(cache.stop)
        began = time.monotonic()
        try:
            await cache.start()
        except BackendUnavailable as e:
            message = e.message
        else:
            self.fail("start() succeeded against a closed port")
        self.assertLess(time.monotonic() - began, 1)
        self.assertIn("is unreachable", message)
        self.assertIn("db.url", message)
        self.assertNotIn(PASSWORD, message)
        self.assertNotIn("s3cret", message)
        healthy, reason = await cache.check_health()
        self.assertFalse(healthy)
        self.assertNotIn("s3cret", reason)

    @_coroutine_test
    async def test_stopped(self) -> None:
        """After stop(), calls fail with BackendUnavailable instead of reconnecting."""
        server = PrivateRedis(self)
        cache = await self.started(server.url())
        await cache.stop()
        try:
            await cache.distinct()
        except BackendUnavailable as e:
            self.assertIn("stopped", e.message)
        else:
            self.fail("a stopped cache answered")


class AuthTests(TestCase):
    """Passwords, ACL users and database numbers from the URL, on a private Redis."""

    timeout = 60

    @_coroutine_test
    async def test_password_and_database(self) -> None:
        """A URL with a (percent-encoded) password and database 3 authenticates and writes
        into database 3 only."""
        server = PrivateRedis(self, "--requirepass", PASSWORD)
        auth = ":" + PASSWORD.replace("@", "%40").replace("/", "%2F")
        cache = build(server.url(auth + "@", db=3), "auth:")
        self.addCleanup(cache.stop)
        await cache.start()
        await cache.save(make_file())
        url = parse_redis_url(server.url(auth + "@", db=3))
        self.assertEqual(url.password, PASSWORD)
        in_3 = await raw_connection(url, self)
        self.assertTrue(await keys_under(in_3, "auth:"))
        in_0 = await raw_connection(parse_redis_url(server.url(auth + "@", db=0)), self)
        self.assertEqual(await keys_under(in_0, "auth:"), [])

    @_coroutine_test
    async def test_acl_user(self) -> None:
        """redis://user:password@host authenticates as an ACL user (AUTH user password)."""
        server = PrivateRedis(
            self,
            "--user",
            "ppc",
            "on",
            ">ppc-pass",
            "~*",
            "&*",
            "+@all",
            "--user",
            "default",
            "off",
        )
        cache = build(server.url("ppc:ppc-pass@"), "acl:")
        self.addCleanup(cache.stop)
        await cache.start()
        await cache.save(make_file())
        self.assertEqual(await cache.distinct(), ["pkg"])

    @_coroutine_test
    async def test_wrong_password(self) -> None:
        """A refused password fails start() quickly with BackendUnavailable saying the server
        refused, without the password; a later start() tries again."""
        server = PrivateRedis(self, "--requirepass", PASSWORD)
        cache = build(server.url(":wrong-s3cret@"), "bad:")
        self.addCleanup(cache.stop)
        for _ in range(2):
            began = time.monotonic()
            try:
                await cache.start()
            except BackendUnavailable as e:
                message = e.message
            else:
                self.fail("start() succeeded with a wrong password")
            self.assertLess(time.monotonic() - began, 3)
            self.assertIn("refused the connection", message)
            self.assertNotIn("wrong-s3cret", message)

    @_coroutine_test
    async def test_fixed_password_needs_no_restart(self) -> None:
        """After Redis refused the password, changing the server to accept it is enough: the
        cache tries the credentials again by itself, without start()."""
        self.patch(redis_module, "REAUTH_SECONDS", 0.2)
        server = PrivateRedis(self, "--requirepass", PASSWORD)
        cache = build(server.url(":later-s3cret@"), "later:")
        self.addCleanup(cache.stop)
        try:
            await cache.start()
        except BackendUnavailable:
            pass
        else:
            self.fail("start() succeeded with a wrong password")
        admin = await raw_connection(
            parse_redis_url(server.url(f":{PASSWORD}@".replace("/", "%2F"))), self
        )
        await admin.execute_command("CONFIG", "SET", "requirepass", "later-s3cret")
        for _ in range(50):
            if (await cache.check_health())[0]:
                break
            await sleep(0.1)
        else:
            self.fail("the cache never tried the password again")
        await cache.save(make_file())
        self.assertEqual(await cache.distinct(), ["pkg"])


class TLSTests(TestCase):
    """rediss:// against a private Redis with a self-signed certificate."""

    timeout = 60

    def setUp(self) -> None:
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.x509.oid import NameOID
        except ImportError:
            raise SkipTest("cryptography is not installed") from None
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ppc test redis")])
        now = _dt.datetime.now(_dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        # Absolute: redis-server runs in a folder of its own.
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.cert = os.path.join(self.dir, "cert.pem")
        keyfile = os.path.join(self.dir, "key.pem")
        with open(self.cert, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(keyfile, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        self.server = PrivateRedis(self, tls=(self.cert, keyfile))

    def tls_url(self, query: str) -> str:
        return self.server.url(scheme="rediss", query=query)

    @_coroutine_test
    async def test_trusted_certificate(self) -> None:
        """With ssl_ca_certs naming the server's CA, rediss:// works end to end."""
        cache = build(self.tls_url(f"?ssl_ca_certs={self.cert}"), "tls:")
        self.addCleanup(cache.stop)
        await cache.start()
        await cache.save(every_field())
        self.assertEqual(await cache.distinct(), ["zaphod-beeblebrox"])

    @_coroutine_test
    async def test_untrusted_certificate(self) -> None:
        """A certificate the system does not trust makes start() fail with BackendUnavailable
        (bounded by socket_connect_timeout), saying what failed."""
        cache = build(self.tls_url("?socket_connect_timeout=1.5"), "tls:")
        self.addCleanup(cache.stop)
        began = time.monotonic()
        try:
            await cache.start()
        except BackendUnavailable as e:
            self.assertIn("rediss://127.0.0.1", e.message)
            self.assertIn("certificate verify failed", e.message)
        else:
            self.fail("connected to a server with an untrusted certificate")
        self.assertLess(time.monotonic() - began, 5)

    @_coroutine_test
    async def test_verification_off(self) -> None:
        """ssl_cert_reqs=none connects without checking the certificate."""
        cache = build(self.tls_url("?ssl_cert_reqs=none"), "tls:")
        self.addCleanup(cache.stop)
        await cache.start()
        self.assertEqual(await cache.check_health(), (True, ""))


# -- configuration --------------------------------------------------------------------------------


class URLTests(SynchronousTestCase):
    """Reading db.url and db.prefix."""

    def test_plain(self) -> None:
        """Host only: port 6379, database 0, no credentials, no TLS."""
        self.assertEqual(
            parse_redis_url("redis://cache.example"),
            RedisURL(host="cache.example", port=6379, db=0),
        )

    def test_everything(self) -> None:
        """User, percent-encoded password, port, database and parameters are all read."""
        url = parse_redis_url(
            "rediss://ppc:p%40ss%2Fw%C3%B6rd@cache.example:6380/5?socket_timeout=2.5"
            "&socket_connect_timeout=1&max_connections=8&ssl_cert_reqs=none"
        )
        self.assertEqual(
            (url.host, url.port, url.db, url.username, url.password, url.tls, url.verify),
            ("cache.example", 6380, 5, "ppc", "p@ss/wörd", True, False),
        )
        self.assertEqual(
            (url.socket_timeout, url.connect_timeout, url.max_connections), (2.5, 1, 8)
        )

    def test_password_only(self) -> None:
        """redis://:password@host (redis-py's form) has a password and no user."""
        url = parse_redis_url("redis://:pw@h:1/2")
        self.assertEqual((url.username, url.password, url.port, url.db), (None, "pw", 1, 2))

    def test_db_parameter_and_ipv6(self) -> None:
        """?db= sets the database; an IPv6 host in brackets is read."""
        url = parse_redis_url("redis://[::1]:7000?db=4")
        self.assertEqual((url.host, url.port, url.db), ("::1", 7000, 4))
        self.assertEqual(str(url), "redis://[::1]:7000/4")

    def test_user_without_password(self) -> None:
        """A user name alone is kept (shown in messages) and sends no AUTH; "?db=" wins over
        the path."""
        url = parse_redis_url("redis://reader@h/1?db=2")
        self.assertEqual((url.username, url.password, url.db), ("reader", None, 2))
        self.assertEqual(str(url), "redis://reader@h:6379/2")

    def test_password_never_shown(self) -> None:
        """str() and repr() of a URL leave the password out."""
        url = parse_redis_url(f"redis://ppc:{PASSWORD.replace('/', '%2F')}@h/0")
        self.assertEqual(str(url), "redis://ppc@h:6379/0")
        self.assertNotIn("s3cret", repr(url))

    def test_bad_urls(self) -> None:
        """Bad URLs are refused with messages naming db.url and never the password."""
        for text, expected in [
            ("http://h/0", "redis://"),
            ("redis:///0", "no host"),
            ("redis://:s3cret@h:99999/0", "port"),
            ("redis://:s3cret@h/zero", "database number"),
            ("redis://:s3cret@h/0?timeout=3", "unknown URL parameter 'timeout'"),
            ("redis://:s3cret@h/0?ssl_cert_reqs=none", "rediss://"),
            ("rediss://:s3cret@h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
            ("redis://:s3cret@h/0?socket_timeout=0", "more than zero"),
            ("redis://:s3cret@h/0?max_connections=0", "at least 1"),
        ]:
            with self.assertRaises(ConfigError) as raised:
                parse_options(RedisCache.Options, "db", {"url": text})
            message = str(raised.exception)
            self.assertTrue(message.startswith("db.url: "), message)
            self.assertIn(expected, message)
            self.assertNotIn("s3cret", message)

    def test_prefix(self) -> None:
        """db.prefix defaults to pypicloud's "pypicloud:" and may not be empty."""
        options = parse_options(RedisCache.Options, "db", {"url": "redis://h"})
        self.assertEqual(options.prefix, "pypicloud:")
        with self.assertRaises(ConfigError) as raised:
            parse_options(RedisCache.Options, "db", {"url": "redis://h", "prefix": " "})
        self.assertIn("db.prefix", str(raised.exception))

    def test_unreadable_ca_file(self) -> None:
        """An ssl_ca_certs file that cannot be read is a configuration error naming db.url."""
        options = parse_options(
            RedisCache.Options, "db", {"url": "rediss://h/0?ssl_ca_certs=/nonexistent/ca.pem"}
        )
        with self.assertRaises(ConfigError) as raised:
            RedisCache.from_config(options, Runtime.synchronous())
        self.assertIn("db.url", str(raised.exception))

    def test_from_config_does_no_io(self) -> None:
        """Building the cache connects to nothing: a closed port only fails on use."""
        build(f"redis://127.0.0.1:{free_port()}/0", "p:")
