"""Several ``twist pypicloud`` processes on one cache and one storage behave as one index."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tests.distfactory import encode_upload, make_wheel, twine_fields
from tests.e2e.server import (
    HTTP_TIMEOUT,
    IndexProcess,
    Response,
    ServerCase,
    StreamedUpload,
    http_request,
    write_big_wheel,
)
from tests.pgdb import new_postgres_database
from tests.realservices import require_service
from tests.redisdb import delete_redis_keys

MiB = 1024 * 1024


if TYPE_CHECKING:
    _Base = ServerCase
else:
    _Base = object


class SharedIndexTests(_Base):
    """Two processes sharing a cache (chosen by :meth:`cache_options`) and a package folder.

    A mixin, so that trial runs it only through the concrete cases.
    """

    def cache_options(self) -> Mapping[str, str]:
        raise NotImplementedError

    def setUp(self) -> None:
        super().setUp()
        shared = self.make_folder()
        options = {"storage.dir": os.path.join(shared, "packages"), **self.cache_options()}
        self.one_options = options
        self.one = self.start_server(options)
        self.two = self.start_server(options)

    def files_of(self, server: IndexProcess, name: str) -> list[str]:
        answer = server.get(f"/simple/{name}/", accept="application/vnd.pypi.simple.v1+json")
        if answer.status == 404:
            return []
        self.assertEqual(answer.status, 200, answer.text)
        return sorted(f["filename"] for f in answer.json()["files"])

    def test_upload_listed_and_installable_through_the_other(self) -> None:
        """A file uploaded through one process is listed by the other at once, and pip
        downloads the same bytes through it."""
        wheel = make_wheel("e2e-shared", "1.0")
        self.upload_ok(self.one, wheel, "e2e-shared", "1.0")
        self.assertEqual(self.files_of(self.two, "e2e-shared"), [wheel[0]])
        _, got = self.pip_download(self.two, "e2e-shared==1.0")
        self.assertEqual(got, {wheel[0]: wheel[1]})

    def test_delete_disappears_from_both(self) -> None:
        """A file deleted through one process is gone from both listings and downloads."""
        wheel = make_wheel("e2e-shared-del", "1.0")
        self.upload_ok(self.two, wheel, "e2e-shared-del", "1.0")
        self.assertEqual(self.files_of(self.one, "e2e-shared-del"), [wheel[0]])
        answer = self.one.request("DELETE", f"/api/package/e2e-shared-del/{wheel[0]}", user="alice")
        self.assertEqual(answer.status, 200, answer.text)
        for server in (self.one, self.two):
            self.assertEqual(self.files_of(server, "e2e-shared-del"), [])
            path = f"/api/package/e2e-shared-del/{wheel[0]}"
            self.assertEqual(server.get(path).status, 404)

    def test_same_filename_through_both_at_once(self) -> None:
        """Two uploads of one filename with different bytes, one through each process at the
        same moment: exactly one 200 and one 409, and both serve the winner's bytes."""
        uploads = []
        for i, server in enumerate((self.one, self.two)):
            filename, data = make_wheel("e2e-shared-race", "1.0", description=f"variant {i}")
            fields = twine_fields(filename, data, "e2e-shared-race", "1.0")
            uploads.append((server, data, *encode_upload(fields, (filename, data))))
        barrier = threading.Barrier(2)
        answers: list[Response | BaseException | None] = [None, None]

        def upload(i: int) -> None:
            server, _, content_type, body = uploads[i]
            try:
                barrier.wait(HTTP_TIMEOUT)
                answers[i] = http_request(
                    server.port, "POST", "/legacy/", body, {"Content-Type": content_type}, "alice"
                )
            except BaseException as e:  # reported below
                answers[i] = e

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(HTTP_TIMEOUT * 2)
        statuses = []
        for answer in answers:
            assert isinstance(answer, Response), repr(answer)
            statuses.append(answer.status)
        self.assertEqual(sorted(statuses), [200, 409], [a.text for a in answers])  # type: ignore[union-attr]
        winner = uploads[statuses.index(200)][1]
        for server in (self.one, self.two):
            served = server.get("/api/package/e2e-shared-race/e2e_shared_race-1.0-py3-none-any.whl")
            self.assertEqual(
                hashlib.sha256(served.body).hexdigest(), hashlib.sha256(winner).hexdigest()
            )

    def test_process_killed_mid_upload(self) -> None:
        """A process killed half-way through receiving an upload leaves nothing listed or
        served; the other process then accepts the same file whole."""
        wheel = write_big_wheel(self.make_folder(), "e2e-shared-kill", "1.0", 8 * MiB)
        upload = StreamedUpload(self.one.port, wheel)
        self.addCleanup(upload.close)
        upload.begin()
        upload.send(4 * MiB)
        time.sleep(0.2)  # let the server spool what it got
        self.one.kill()
        self.assertEqual(self.files_of(self.two, "e2e-shared-kill"), [])
        again = StreamedUpload(self.two.port, wheel)
        self.addCleanup(again.close)
        answer = again.run()
        self.assertEqual(answer.status, 200, answer.body)
        self.assertEqual(self.files_of(self.two, "e2e-shared-kill"), [wheel.filename])
        served = self.two.get(f"/api/package/e2e-shared-kill/{wheel.filename}")
        self.assertEqual(hashlib.sha256(served.body).hexdigest(), wheel.sha256)

    def test_one_rebuild_when_starting_together(self) -> None:
        """Two processes started at the same moment on an empty cache over a full storage:
        exactly one rebuilds the cache (the other waits for it), and both serve every file."""
        wheels = [make_wheel(f"e2e-stampede-{i}", "1.0") for i in range(3)]
        for i, wheel in enumerate(wheels):
            self.upload_ok(self.one, wheel, f"e2e-stampede-{i}", "1.0")
        folder = self.make_folder()
        options = {
            "storage.dir": self.one_options["storage.dir"],
            **self.cache_options(),  # a new, empty cache
        }
        for i in range(2):
            os.makedirs(os.path.join(folder, str(i)))
        servers = [IndexProcess(os.path.join(folder, str(i)), options) for i in range(2)]
        errors: list[BaseException] = []

        def start(server: IndexProcess) -> None:
            try:
                server.start()
            except BaseException as e:  # reported below
                errors.append(e)

        for server in servers:
            self.addCleanup(server.kill)
        threads = [threading.Thread(target=start, args=(s,)) for s in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        logs = [server.log_text() for server in servers]
        rebuilt = [log.count("rebuilt the empty cache from storage: 3 files") for log in logs]
        self.assertEqual(sorted(rebuilt), [0, 1], "\n".join(logs))
        for server in servers:
            for i, wheel in enumerate(wheels):
                self.assertEqual(self.files_of(server, f"e2e-stampede-{i}"), [wheel[0]])


class PostgreSQLSharedIndexTests(SharedIndexTests, ServerCase):
    """Two processes on one PostgreSQL cache."""

    def cache_options(self) -> Mapping[str, str]:
        url = new_postgres_database(self)
        return {"pypi.db": "sql", "db.url": url.render_as_string(hide_password=False)}


class RedisSharedIndexTests(SharedIndexTests, ServerCase):
    """Two processes on one Redis cache (a key prefix of their own)."""

    def cache_options(self) -> Mapping[str, str]:
        url = require_service("PPC_TEST_REDIS_URL", "Redis")
        prefix = f"e2e-{secrets.token_hex(6)}:"
        self.addCleanup(delete_redis_keys, url, prefix)
        return {"pypi.db": "redis", "db.url": url, "db.prefix": prefix}
