"""An index under test (``tests/web/harness.py``) whose fallback reads a fake upstream
(``tests/services/upstream_app.py``), both in memory, on one test clock."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs
from treq.testing import StubTreq

from pypicloud_tx.application import build_fallback
from pypicloud_tx.services.upstream import UpstreamClient
from pypicloud_tx.web.root import IndexSite, build_resource
from tests.services.upstream_app import FakeUpstream
from tests.web.harness import Index, RouteTestCase, _fired

UPSTREAM_SIMPLE = "http://upstream.test/simple"
JSON = b"application/vnd.pypi.simple.v1+json"


class FallbackIndex(Index):
    """:class:`Index` with ``pypi.fallback_base_url`` pointing at a :class:`FakeUpstream`."""

    def __init__(self, options: Mapping[str, str | None] | None = None) -> None:
        super().__init__({"pypi.fallback_base_url": "http://upstream.test", **(options or {})})
        self.upstream = FakeUpstream()
        self.upstream_treq = StubTreq(self.upstream.resource())
        self.client = UpstreamClient(
            self.upstream_treq,
            self.clock,
            self.settings.fallback_simple_url,
            timeout=self.settings.fallback_timeout,
            max_connections=self.settings.fallback_max_connections,
        )
        self.fallback = build_fallback(
            self.settings, self.index, self.runtime, upstream=self.client
        )
        self.ctx = attrs.evolve(self.ctx, fallback=self.fallback)
        self.resource = build_resource(self.ctx)
        self.treq = StubTreq(self.resource)
        agent = self.treq._agent
        agent._serverFactory = IndexSite(
            self.resource, self.settings.max_upload_size, reactor=agent._memoryReactor
        )

    def flush(self) -> None:
        self.treq.flush()
        self.upstream_treq.flush()

    def held(self) -> list[tuple[str, str]]:
        """``(filename, origin)`` of every file the cache holds."""
        found = []
        for name in _fired(self.cache.distinct()):
            found.extend((f.filename, f.origin) for f in _fired(self.cache.all(name)))
        return sorted(found)


class FallbackCase(RouteTestCase):
    """Route tests with an upstream; :meth:`_pump` moves bytes for both servers."""

    ix: FallbackIndex

    def make_fallback(self, options: Mapping[str, str | None] | None = None) -> FallbackIndex:
        self.ix = FallbackIndex(options)
        return self.ix

    def _pump(self, d: Any, limit: int = 100_000) -> Any:
        done: list[bool] = []

        def finished(result: Any) -> Any:
            done.append(True)
            return result

        d.addBoth(finished)
        for _ in range(limit):
            if done:
                break
            self.ix.flush()
        return d

    def start(self, path: str, user: str | None = None, accept: bytes | None = None) -> Any:
        """Send a GET without waiting for it (for concurrent requests)."""
        from tests.web.harness import basic

        headers: dict[bytes, list[bytes]] = basic(user) if user else {}
        if accept:
            headers[b"Accept"] = [accept]
        return self.ix.treq.request(
            "GET", "http://index.test" + path, headers=headers, allow_redirects=False
        )

    def page(self, name: str, user: str | None = None) -> tuple[int, Any, Any]:
        """``(status, JSON page or None, response)`` of ``/simple/<name>/`` as pip asks."""
        response, body = self.request("GET", f"/simple/{name}/", user, headers={b"Accept": [JSON]})
        data = json.loads(body) if response.code == 200 else None
        return response.code, data, response

    def listing(self, name: str, user: str | None = None) -> dict[str, str]:
        """``{filename: url}`` of a page that must answer 200."""
        status, data, _ = self.page(name, user)
        self.assertEqual(status, 200, data)
        return {f["filename"]: f["url"] for f in data["files"]}

    def location(self, response: Any) -> str:
        return response.headers.getRawHeaders(b"location")[0].decode()  # type: ignore[no-any-return]
