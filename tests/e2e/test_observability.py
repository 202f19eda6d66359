"""Observability of a real ``twist --log-format=json pypicloud``: request ids in the JSON log
and in the answers, the access log, and ``/metrics`` as a scraper reads it."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.distfactory import encode_upload, make_wheel, twine_fields
from tests.e2e.server import IndexProcess, ServerCase, basic_auth, http_request

#: How long the log file gets to show the events of requests already answered.
LOG_TIMEOUT = 10.0


class JsonLogServer(IndexProcess):
    """``twist --log-format=json pypicloud ... --access-log``."""

    def command(self) -> list[str]:
        return [
            "--log-format=json" if arg == "--log-format=text" else arg for arg in super().command()
        ]

    def events(self) -> list[dict[str, Any]]:
        """Every event in the log so far (twist writes one JSON record per line)."""
        found = []
        for line in self.log_text().splitlines():
            line = line.lstrip("\x1e").strip()
            if line.startswith("{"):
                found.append(json.loads(line))
        return found


def metric_samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``{(sample name, labels): value}`` of a Prometheus text exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


class ObservabilityTests(ServerCase):
    def start_json_server(self) -> JsonLogServer:
        server = JsonLogServer(self.make_folder())
        self.addCleanup(server.kill)
        server.start()
        return server

    def wait_for_events(
        self, server: JsonLogServer, wanted: Any, what: str
    ) -> list[dict[str, Any]]:
        """The log's events once ``wanted(events)`` holds (bounded wait)."""
        deadline = time.monotonic() + LOG_TIMEOUT
        while True:
            events = server.events()
            if wanted(events):
                return events
            if time.monotonic() > deadline:
                self.fail(f"the log never showed {what}\n{server.log_tail()}")
            time.sleep(0.05)

    def test_request_ids_in_the_json_log(self) -> None:
        """Every line twist writes is JSON.  An upload sent with ``X-Request-ID`` gets it
        back, and both the event of the stored file and its access-log event carry it as
        ``request_id``; a request without one gets a new id, also on its access event;
        start-up events carry none."""
        server = self.start_json_server()
        filename, data = make_wheel("e2e-observed", "1.0")
        content_type, body = encode_upload(
            twine_fields(filename, data, "e2e-observed", "1.0"), (filename, data)
        )
        upload = http_request(
            server.port,
            "POST",
            "/legacy/",
            body,
            {
                "Content-Type": content_type,
                "Authorization": basic_auth("alice"),
                "X-Request-ID": "e2e-upload-1",
            },
        )
        self.assertEqual(upload.status, 200, f"{upload.text}\n{server.log_tail()}")
        self.assertEqual(upload.headers["x-request-id"], "e2e-upload-1")
        page = http_request(server.port, "GET", "/simple/e2e-observed/")
        self.assertEqual(page.status, 200)
        rid = page.headers["x-request-id"]
        self.assertRegex(rid, r"^[0-9a-f]{16}$")

        def access(events: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
            return [
                e
                for e in events
                if e.get("log_namespace") == "pypicloud_tx.access"
                and e.get("request_id") == request_id
            ]

        events = self.wait_for_events(
            server, lambda ev: access(ev, "e2e-upload-1") and access(ev, rid), "access events"
        )
        lines = [
            line.lstrip("\x1e").strip()
            for line in server.log_text().splitlines()
            if line.strip() and not line.startswith("---- start")
        ]
        self.assertTrue(all(line.startswith("{") for line in lines), server.log_tail())

        stored = [e for e in events if e.get("log_format") == "stored {filename} for {user}"]
        self.assertEqual(
            [(e["filename"], e["user"], e.get("request_id")) for e in stored],
            [(filename, "alice", "e2e-upload-1")],
        )
        [posted] = access(events, "e2e-upload-1")
        self.assertEqual(
            (posted["method"], posted["uri"], posted["status"], posted["route"], posted["user"]),
            ("POST", "/legacy/", 200, "/legacy/", "alice"),
        )
        [got] = access(events, rid)
        self.assertEqual((got["uri"], got["status"]), ("/simple/e2e-observed/", 200))
        self.assertGreater(got["duration"], 0)
        first_request = next(
            i for i, e in enumerate(events) if e.get("log_namespace") == "pypicloud_tx.access"
        )
        before_requests = events[:first_request]  # start-up, until the harness's first /ping
        self.assertTrue(before_requests)
        self.assertFalse([e for e in before_requests if "request_id" in e])

    def test_metrics_endpoint(self) -> None:
        """A scraper on 127.0.0.1 reads the counts of what happened: the start-up rebuild of
        the empty cache, requests by route pattern, the bytes uploaded and streamed, the
        storage calls, the backends in use and the process's own figures; the same request
        forwarded for an outside client is refused."""
        server = self.start_json_server()
        filename, data = make_wheel("e2e-metered", "2.0")
        self.upload_ok(server, (filename, data), "e2e-metered", "2.0")
        self.assertEqual(http_request(server.port, "GET", "/simple/e2e-metered/").status, 200)
        download = http_request(server.port, "GET", f"/api/package/e2e-metered/{filename}")
        self.assertEqual(download.body, data)

        answer = http_request(server.port, "GET", "/metrics")
        self.assertEqual(answer.status, 200, answer.text)
        self.assertTrue(answer.headers["content-type"].startswith("text/plain; version=0.0.4"))
        found = metric_samples(answer.body)

        def sample(name: str, **labels: str) -> float:
            return found.get((name, frozenset(labels.items())), -1.0)

        requests = "pypicloud_http_requests_total"
        self.assertEqual(
            sample(requests, route="/simple/<project>/", method="GET", status="200"), 1
        )
        self.assertEqual(
            sample(requests, route="/api/package/<project>/<filename>", method="GET", status="200"),
            1,
        )
        self.assertEqual(sample("pypicloud_upload_bytes_total", origin="hosted"), len(data))
        self.assertEqual(sample("pypicloud_download_bytes_total"), len(data))
        self.assertEqual(
            sample(
                "pypicloud_backend_call_duration_seconds_count", backend="storage", operation="put"
            ),
            1,
        )
        self.assertEqual(sample("pypicloud_cache_rebuilds_total"), 1)
        for role, kind in (("storage", "file"), ("cache", "sql"), ("access", "config")):
            self.assertEqual(sample("pypicloud_backend_info", backend=role, kind=kind), 1)
        self.assertGreater(sample("process_resident_memory_bytes"), 0)
        labels = " ".join(v for _, key in found for _, v in key)
        self.assertNotIn("e2e-metered", labels)
        self.assertNotIn(filename, labels)

        refused = http_request(
            server.port, "GET", "/metrics", headers={"X-Forwarded-For": "198.51.100.7"}
        )
        self.assertEqual(refused.status, 403)
        self.assertNotIn(b"pypicloud_", refused.body)
        self.assertIsNotNone(re.search(r"pypi\.metrics_allow", refused.text))
