"""A real ``twist pypicloud`` under races, slow clients, big files and failing backends."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import threading
import time
from urllib.parse import urlsplit

from twisted.logger import Logger

from tests.distfactory import encode_upload, make_wheel, twine_fields
from tests.e2e.server import (
    HTTP_TIMEOUT,
    Response,
    ServerCase,
    StreamedUpload,
    TcpProxy,
    basic_auth,
    http_request,
    write_big_wheel,
)
from tests.pgdb import new_postgres_database
from tests.realservices import require_service
from tests.redisdb import delete_redis_keys

MiB = 1024 * 1024
log = Logger()


class ConcurrencyTests(ServerCase):
    """One atomic decision per filename."""

    def test_simultaneous_uploads_of_one_filename(self) -> None:
        """Eight simultaneous uploads of one filename with different bytes: exactly one 200
        and seven 409s saying the file already exists; the served bytes are the winner's."""
        server = self.start_server()
        bodies = []
        for i in range(8):
            filename, data = make_wheel("e2e-race", "1.0", description=f"variant {i}")
            fields = twine_fields(filename, data, "e2e-race", "1.0")
            bodies.append((data, *encode_upload(fields, (filename, data))))
        self.assertEqual(len({data for data, _, _ in bodies}), 8)
        barrier = threading.Barrier(len(bodies))
        answers: list[Response | BaseException | None] = [None] * len(bodies)

        def upload(i: int) -> None:
            _, content_type, body = bodies[i]
            try:
                barrier.wait(HTTP_TIMEOUT)
                answers[i] = http_request(
                    server.port,
                    "POST",
                    "/legacy/",
                    body,
                    {"Content-Type": content_type},
                    user="alice",
                )
            except BaseException as e:  # reported below
                answers[i] = e

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(HTTP_TIMEOUT * 2)
        statuses = []
        for answer in answers:
            self.assertIsInstance(answer, Response, repr(answer))
            assert isinstance(answer, Response)
            statuses.append(answer.status)
        self.assertEqual(sorted(statuses), [200] + [409] * 7, server.log_tail())
        for answer in answers:
            assert isinstance(answer, Response)
            if answer.status == 409:
                self.assertIn("already exists", answer.text)
        winner = bodies[statuses.index(200)][0]
        served = server.get("/api/package/e2e-race/e2e_race-1.0-py3-none-any.whl")
        self.assertEqual(served.status, 200)
        self.assertEqual(served.body, winner)
        listed = server.project_json("e2e-race")["files"]
        self.assertEqual(
            [f["hashes"]["sha256"] for f in listed], [hashlib.sha256(winner).hexdigest()]
        )


class SlowClientTests(ServerCase):
    """A client that stops sending holds nobody else up."""

    def test_stalled_upload_does_not_block_reads(self) -> None:
        """While one connection has sent headers and part of an upload body and then stalls
        (and another sent only part of its headers), ``GET /simple/`` answers within a
        second."""
        server = self.start_server()
        self.upload_ok(server, make_wheel("e2e-slow", "1.0"), "e2e-slow", "1.0")
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.addCleanup(stalled.close)
        stalled.sendall(
            b"POST /legacy/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=xyz\r\n"
            b"Content-Length: 10000000\r\n"
            + f"Authorization: {basic_auth('alice')}\r\n\r\n".encode()
            + b'--xyz\r\nContent-Disposition: form-data; name=":action"\r\n\r\nfile_upload\r\n'
            + b'--xyz\r\nContent-Disposition: form-data; name="content"; '
            b'filename="e2e_slow-2.0-py3-none-any.whl"\r\n\r\n' + b"PK" + os.urandom(64 * 1024)
        )
        half_headers = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.addCleanup(half_headers.close)
        half_headers.sendall(b"GET /simple/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        time.sleep(0.2)
        for _ in range(3):
            started = time.monotonic()
            answer = server.get("/simple/", timeout=5)
            took = time.monotonic() - started
            self.assertEqual(answer.status, 200)
            self.assertIn("e2e-slow", answer.text)
            self.assertLess(took, 1.0)


class LargeUploadTests(ServerCase):
    """Uploads are streamed to disk, not held in memory."""

    SIZE = 300 * MiB

    def test_memory_stays_flat_during_large_upload(self) -> None:
        """A 300 MB wheel uploads successfully while the server's resident memory (sampled
        from ``/proc``, and its high-water mark) stays under 150 MiB; the served file has the
        uploaded digest."""
        server = self.start_server()
        big = write_big_wheel(server.folder, "e2e-huge", "1.0", self.SIZE)
        self.addCleanup(os.remove, big.path)
        self.addCleanup(shutil.rmtree, server.storage_dir, ignore_errors=True)
        _, peak_before = server.rss_kib()
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                try:
                    samples.append(server.rss_kib()[0])
                except (OSError, KeyError):
                    return
                done.wait(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            started = time.monotonic()
            answer = StreamedUpload(server.port, big, timeout=120).run()
            took = time.monotonic() - started
        finally:
            done.set()
            sampler.join(5)
        self.assertEqual(answer.status, 200, f"{answer.text}\n{server.log_tail()}")
        _, peak = server.rss_kib()
        limit = 150 * 1024
        self.assertLess(max(samples), limit, f"sampled RSS peaked at {max(samples)} KiB")
        self.assertLess(peak, limit, f"VmHWM {peak} KiB (before the upload: {peak_before} KiB)")
        self.assertGreater(len(samples), 10)
        listed = server.project_json("e2e-huge")["files"]
        self.assertEqual(
            [(f["size"], f["hashes"]["sha256"]) for f in listed], [(big.size, big.sha256)]
        )
        log.info(
            "{mib} MiB upload in {seconds:.1f}s; peak RSS {rss} MiB sampled, VmHWM {hwm} MiB",
            mib=big.size // MiB,
            seconds=took,
            rss=max(samples) // 1024,
            hwm=peak // 1024,
        )


class StorageDownTests(ServerCase):
    """The package folder disappearing is reported, answered 503, and recovered from."""

    def test_storage_folder_renamed_away_and_back(self) -> None:
        """With the storage folder renamed away, ``/health`` is 503 naming storage and an
        upload is answered 503 (not 500); once it is back, both succeed again without a
        restart."""
        server = self.start_server()
        self.upload_ok(server, make_wheel("e2e-disk", "1.0"), "e2e-disk", "1.0")
        away = server.storage_dir + ".away"
        os.rename(server.storage_dir, away)
        renamed = [True]

        def restore() -> None:
            if renamed[0]:
                if os.path.isdir(server.storage_dir):  # recreated by the server: drop it
                    shutil.rmtree(server.storage_dir)
                os.rename(away, server.storage_dir)

        self.addCleanup(restore)

        health = server.get("/health")
        self.assertEqual(health.status, 503, health.text)
        report = health.json()
        self.assertFalse(report["backends"]["storage"]["ok"])
        self.assertTrue(report["backends"]["storage"]["message"])
        self.assertTrue(report["backends"]["cache"]["ok"])
        wheel = make_wheel("e2e-disk", "2.0")
        answer = server.upload(
            wheel[0], wheel[1], twine_fields(wheel[0], wheel[1], "e2e-disk", "2.0")
        )
        self.assertEqual(answer.status, 503, f"{answer.text}\n{server.log_tail()}")
        self.assertFalse(
            os.path.exists(server.storage_dir), "the upload recreated the missing storage folder"
        )
        self.assertEqual(
            [f["filename"] for f in server.project_json("e2e-disk")["files"]],
            ["e2e_disk-1.0-py3-none-any.whl"],
        )

        os.rename(away, server.storage_dir)
        renamed[0] = False
        self.assertEqual(server.get("/health").status, 200)
        self.upload_ok(server, wheel, "e2e-disk", "2.0")
        self.assertEqual(server.get(f"/api/package/e2e-disk/{wheel[0]}").body, wheel[1])


class DatabaseDownTests(ServerCase):
    """PostgreSQL going away (cut at a TCP proxy) is answered 503 quickly, then recovered."""

    def setUp(self) -> None:
        url = new_postgres_database(self)
        self.dbname = url.database
        self.proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
        self.proxy.start()
        self.addCleanup(self.proxy.stop)
        # A password in the URL (ignored by a trust-auth server) must never be shown.
        self.password = str(url.password or "e2e-" + secrets.token_hex(8))
        self.db_url = (
            f"postgresql+psycopg://{url.username}:{self.password}@127.0.0.1:"
            f"{self.proxy.port}/{self.dbname}"
        )

    def test_database_cut_and_restored(self) -> None:
        """With the proxy to PostgreSQL down, ``/simple/<name>/`` answers 503 within 5 s with a
        message, ``/health`` is 503 naming the cache; after the proxy is back, reads and
        uploads succeed again without restarting the server.  The database password appears
        in no answer and no log line."""
        server = self.start_server({"db.url": self.db_url})
        self.upload_ok(server, make_wheel("e2e-pg", "1.0"), "e2e-pg", "1.0")
        self.assertEqual(server.get("/simple/e2e-pg/").status, 200)

        self.proxy.stop()
        for path in ("/simple/e2e-pg/", "/simple/"):
            started = time.monotonic()
            answer = server.get(path, timeout=10)
            took = time.monotonic() - started
            self.assertEqual(answer.status, 503, f"{path}: {answer.text}\n{server.log_tail()}")
            self.assertLess(took, 5.0, path)
            self.assertIn("database", answer.text.lower())
            self.assertNotIn(self.password, answer.text)
        health = server.get("/health", timeout=10)
        self.assertEqual(health.status, 503, health.text)
        backends = health.json()["backends"]
        self.assertFalse(backends["cache"]["ok"])
        self.assertTrue(backends["cache"]["message"])
        self.assertTrue(backends["storage"]["ok"])

        self.proxy.start()
        deadline = time.monotonic() + 10
        while (status := server.get("/simple/e2e-pg/").status) != 200:
            self.assertLess(time.monotonic(), deadline, f"still {status}\n{server.log_tail()}")
            time.sleep(0.1)
        self.assertEqual(server.get("/health").status, 200)
        self.upload_ok(server, make_wheel("e2e-pg", "2.0"), "e2e-pg", "2.0")
        self.assertEqual(len(server.project_json("e2e-pg")["files"]), 2)
        self.assertNotIn(self.password, health.text)
        self.assertNotIn(self.password, server.log_text())


class RedisDownTests(ServerCase):
    """Redis going away (cut at a TCP proxy) is answered 503 quickly, then recovered."""

    def test_redis_cut_and_restored(self) -> None:
        """With the proxy to Redis down, reads answer 503 within 5 s with a message and
        ``/health`` is 503 naming the cache; once it is back, reads and uploads work again
        without restarting the server."""
        url = urlsplit(require_service("PPC_TEST_REDIS_URL", "Redis"))
        proxy = TcpProxy((url.hostname or "127.0.0.1", url.port or 6379))
        proxy.start()
        self.addCleanup(proxy.stop)
        prefix = f"e2e-down-{secrets.token_hex(6)}:"
        self.addCleanup(delete_redis_keys, f"redis://{url.netloc}{url.path}", prefix)
        server = self.start_server(
            {
                "pypi.db": "redis",
                "db.url": f"redis://127.0.0.1:{proxy.port}{url.path or '/0'}",
                "db.prefix": prefix,
            }
        )
        self.upload_ok(server, make_wheel("e2e-redis", "1.0"), "e2e-redis", "1.0")
        self.assertEqual(server.get("/simple/e2e-redis/").status, 200)

        proxy.stop()
        for path in ("/simple/e2e-redis/", "/simple/"):
            started = time.monotonic()
            answer = server.get(path, timeout=10)
            self.assertEqual(answer.status, 503, f"{path}: {answer.text}\n{server.log_tail()}")
            self.assertLess(time.monotonic() - started, 5.0, path)
            self.assertIn("redis", answer.text.lower())
        health = server.get("/health", timeout=10)
        self.assertEqual(health.status, 503, health.text)
        self.assertFalse(health.json()["backends"]["cache"]["ok"])

        proxy.start()
        deadline = time.monotonic() + 15
        while (status := server.get("/simple/e2e-redis/").status) != 200:
            self.assertLess(time.monotonic(), deadline, f"still {status}\n{server.log_tail()}")
            time.sleep(0.2)
        self.assertEqual(server.get("/health").status, 200)
        self.upload_ok(server, make_wheel("e2e-redis", "2.0"), "e2e-redis", "2.0")
        self.assertEqual(len(server.project_json("e2e-redis")["files"]), 2)
