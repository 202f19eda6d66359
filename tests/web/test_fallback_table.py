"""The fallback behaviour table of ``docs/fallback.md``, row by row, through the real routes
(in memory), with a fake upstream on the same test clock.

Users: ``alice`` (admin), ``bob`` (group ``devs``), ``carol``.  Unless a test says otherwise
everyone may read, and (in ``cache`` mode) ``devs`` may update the cache: bob may, carol and
anonymous callers may not.  ``private`` has a file uploaded here; upstream has ``private``
too (an attacker's 9.9, and a different file under the name of the local one), and ``demo``.
"""

from __future__ import annotations

from pypicloud_tx.domain.models import HOSTED, UPSTREAM
from tests.distfactory import core_metadata
from tests.web.fallback_harness import UPSTREAM_SIMPLE, FallbackCase, FallbackIndex

LOCAL = "private-1.0-py3-none-any.whl"
EVIL = "private-9.9-py3-none-any.whl"
DEMO1 = "demo-1.0-py3-none-any.whl"
DEMO2 = "demo-2.0-py3-none-any.whl"
VIA_US = "../../api/package/{name}/{filename}"
DIRECT = "http://upstream.test/files/{filename}"


class TableCase(FallbackCase):
    def prepare(self, **options: str | None) -> FallbackIndex:
        """An index with ``options`` (``pypi_fallback`` for ``pypi.fallback``...), the local
        ``private`` 1.0 uploaded by bob, and the upstream projects."""
        ix = self.make_fallback(
            {"pypi.cache_update": "devs", **{k.replace("_", ".", 1): v for k, v in options.items()}}
        )
        filename, data = self.wheel("private", "1.0")
        response, body = self.upload(filename, data, user="bob")
        self.assertEqual(response.code, 200, body)
        ix.upstream.add(*self.wheel("private", "9.9"))
        ix.upstream.add(LOCAL, self.wheel("private", "1.0", summary="not ours")[1])
        ix.upstream.add(
            *self.wheel("demo", "1.0", requires_python=">=3.8"),
            metadata=core_metadata("demo", "1.0", requires_python=">=3.8"),
            requires_python=">=3.8",
        )
        ix.upstream.add(*self.wheel("demo", "2.0"))
        return ix

    def assert_denied(self, name: str, user: str | None, status: int) -> None:
        code, _, _ = self.page(name, user)
        self.assertEqual(code, status, f"{name} as {user}")

    def assert_redirected(self, name: str, user: str | None) -> None:
        code, _, response = self.page(name, user)
        self.assertEqual(code, 302, f"{name} as {user}")
        self.assertEqual(self.location(response), f"{UPSTREAM_SIMPLE}/{name}/")

    def urls(self, **files: str) -> dict[str, str]:
        return {
            filename: how.format(name=filename.split("-")[0], filename=filename)
            for filename, how in files.items()
        }


class NoneModeTests(TableCase):
    """``pypi.fallback = none``: upstream is never asked."""

    def test_default_is_none(self) -> None:
        """Without pypi.fallback the mode is none (pypicloud's default is redirect: see
        docs/fallback.md), so an unknown project is a 404 and upstream sees nothing."""
        ix = self.prepare()
        self.assertEqual(ix.settings.fallback, "none")
        self.assert_denied("demo", "bob", 404)
        self.assertEqual(ix.upstream.requests, [])

    def test_stored_readable(self) -> None:
        """Row none/stored/may read: the local files only."""
        ix = self.prepare(pypi_fallback="none", pypi_always_show_upstream="true")
        self.assertEqual(self.listing("private"), self.urls(**{LOCAL: VIA_US}))
        self.assertEqual(ix.upstream.requests, [])

    def test_stored_unreadable(self) -> None:
        """Row none/stored/may not read: 401 anonymous, 403 logged in."""
        self.prepare(
            pypi_fallback="none",
            pypi_default_read="authenticated",
            **{"package.private.user.bob": "rw"},
        )
        self.assert_denied("private", None, 401)
        self.assert_denied("private", "carol", 403)

    def test_not_stored(self) -> None:
        """Row none/not stored: 404 for everyone."""
        ix = self.prepare(pypi_fallback="none")
        for user in (None, "bob", "alice"):
            self.assert_denied("demo", user, 404)
        self.assertEqual(ix.upstream.requests, [])


class RedirectModeTests(TableCase):
    """``pypi.fallback = redirect``."""

    def test_stored_not_merged(self) -> None:
        """Row redirect/stored/may read/always_show off: the local files only, upstream not
        asked (an attacker's higher version upstream never shows)."""
        ix = self.prepare(pypi_fallback="redirect")
        self.assertEqual(self.listing("private", "carol"), self.urls(**{LOCAL: VIA_US}))
        self.assertEqual(ix.upstream.requests, [])

    def test_stored_merged_when_asked(self) -> None:
        """Row redirect/stored/may read/always_show on: local and upstream files; upstream's
        link straight to upstream; the local file wins over upstream's of the same name."""
        self.prepare(pypi_fallback="redirect", pypi_always_show_upstream="true")
        self.assertEqual(self.listing("private", "bob"), self.urls(**{LOCAL: VIA_US, EVIL: DIRECT}))

    def test_stored_unreadable_never_redirected(self) -> None:
        """Row redirect/stored/may not read: 401 anonymous, 403 logged in; a private name is
        never sent upstream (pypicloud redirected logged-in callers)."""
        ix = self.prepare(
            pypi_fallback="redirect",
            pypi_default_read="authenticated",
            **{"package.private.user.bob": "rw"},
        )
        self.assert_denied("private", None, 401)
        self.assert_denied("private", "carol", 403)
        self.assertEqual(ix.upstream.requests, [])

    def test_not_stored(self) -> None:
        """Row redirect/not stored: 302 to the upstream page for everyone, readable or not,
        without asking upstream; /pypi/<name>/json goes to upstream's JSON API."""
        ix = self.prepare(
            pypi_fallback="redirect",
            pypi_default_read="authenticated",
        )
        for user in (None, "carol", "bob"):
            self.assert_redirected("demo", user)
        response, _ = self.request("GET", "/pypi/demo/json")
        self.assertEqual(self.location(response), "http://upstream.test/pypi/demo/json")
        response, _ = self.request("GET", "/pypi/demo/1.0/json")
        self.assertEqual(self.location(response), "http://upstream.test/pypi/demo/1.0/json")
        self.assertEqual(ix.upstream.requests, [])

    def test_disallowed(self) -> None:
        """Row redirect/pypi.disallow_fallback: 404, as with none."""
        self.prepare(pypi_fallback="redirect", pypi_disallow_fallback="Demo")
        self.assert_denied("demo", "bob", 404)


class CacheModeTests(TableCase):
    """``pypi.fallback = cache``."""

    def test_stored_not_merged(self) -> None:
        """Row cache/stored/always_show off: the local files only, for every reader; an
        upstream file of the project cannot be downloaded through this server."""
        ix = self.prepare(pypi_fallback="cache")
        for user in (None, "carol", "bob", "alice"):
            self.assertEqual(self.listing("private", user), self.urls(**{LOCAL: VIA_US}))
        response, _ = self.request("GET", f"/api/package/private/{EVIL}", "bob")
        self.assertEqual(response.code, 404)
        self.assertEqual(ix.upstream.requests, [])

    def test_stored_merged_may_update(self) -> None:
        """Row cache/stored/may update/always_show on: local and upstream files, upstream's
        linked through this server (downloading caches them)."""
        self.prepare(pypi_fallback="cache", pypi_always_show_upstream="true")
        self.assertEqual(self.listing("private", "bob"), self.urls(**{LOCAL: VIA_US, EVIL: VIA_US}))

    def test_stored_merged_may_not_update(self) -> None:
        """Row cache/stored/may not update/always_show on: local and upstream files,
        upstream's linked straight to upstream (nothing gets cached)."""
        self.prepare(pypi_fallback="cache", pypi_always_show_upstream="true")
        for user in (None, "carol"):
            self.assertEqual(
                self.listing("private", user), self.urls(**{LOCAL: VIA_US, EVIL: DIRECT})
            )

    def test_stored_unreadable(self) -> None:
        """Row cache/stored/may not read: 401 anonymous, 403 logged in."""
        self.prepare(
            pypi_fallback="cache",
            pypi_default_read="authenticated",
            **{"package.private.user.bob": "rw"},
        )
        self.assert_denied("private", None, 401)
        self.assert_denied("private", "carol", 403)

    def test_not_stored_may_update(self) -> None:
        """Row cache/not stored/may read/may update: upstream's files, linked through this
        server, with upstream's hashes, requires-python, core-metadata, size, upload time."""
        self.prepare(pypi_fallback="cache")
        for user in ("bob", "alice"):
            self.assertEqual(
                self.listing("demo", user), self.urls(**{DEMO1: VIA_US, DEMO2: VIA_US})
            )
        _, data, _ = self.page("demo", "bob")
        first = data["files"][0]
        self.assertEqual(first["requires-python"], ">=3.8")
        self.assertEqual(set(first["hashes"]), {"sha256"})
        self.assertEqual(set(first["core-metadata"]), {"sha256"})
        self.assertIsInstance(first["size"], int)
        self.assertTrue(first["upload-time"].endswith("Z"))
        self.assertEqual(data["versions"], ["1.0", "2.0"])

    def test_not_stored_unreadable(self) -> None:
        """Row cache/not stored/may not read: 401 anonymous, 404 logged in; upstream is
        not asked."""
        ix = self.prepare(
            pypi_fallback="cache",
            pypi_default_read="authenticated",
            **{"package.demo.user.alice": "rw"},
        )
        self.assert_denied("demo", None, 401)
        self.assert_denied("demo", "bob", 404)
        self.assertEqual(ix.upstream.requests, [])

    def test_not_stored_may_not_update(self) -> None:
        """Row cache/not stored/may read/may not update: 401 anonymous (so pip sends its
        credentials), 404 logged in with always_show off, 302 upstream with it on."""
        self.prepare(pypi_fallback="cache")
        self.assert_denied("demo", None, 401)
        self.assert_denied("demo", "carol", 404)
        self.prepare(pypi_fallback="cache", pypi_always_show_upstream="true")
        self.assert_denied("demo", None, 401)
        self.assert_redirected("demo", "carol")

    def test_cached_only_may_update(self) -> None:
        """Row cache/only cached files/may update: a mirror of upstream, so upstream's whole
        list shows (not only the versions cached so far: pypicloud hid them)."""
        ix = self.prepare(pypi_fallback="cache")
        response, _ = self.request("GET", f"/api/package/demo/{DEMO1}", "bob")
        self.assertEqual(response.code, 200)
        self.assertEqual(ix.held(), [(DEMO1, UPSTREAM), (LOCAL, HOSTED)])
        self.assertEqual(self.listing("demo", "bob"), self.urls(**{DEMO1: VIA_US, DEMO2: VIA_US}))

    def test_cached_only_may_not_update(self) -> None:
        """Row cache/only cached files/may not update: the cached files (always_show off),
        plus upstream's linked straight to upstream (always_show on)."""
        self.prepare(pypi_fallback="cache")
        self.assertEqual(self.request("GET", f"/api/package/demo/{DEMO1}", "bob")[0].code, 200)
        for user in (None, "carol"):
            self.assertEqual(self.listing("demo", user), self.urls(**{DEMO1: VIA_US}))
        self.prepare(pypi_fallback="cache", pypi_always_show_upstream="true")
        self.assertEqual(self.request("GET", f"/api/package/demo/{DEMO1}", "bob")[0].code, 200)
        self.assertEqual(self.listing("demo", "carol"), self.urls(**{DEMO1: VIA_US, DEMO2: DIRECT}))

    def test_disallowed(self) -> None:
        """Row cache/pypi.disallow_fallback: as none; the name is never sent upstream, not
        even for a download."""
        ix = self.prepare(pypi_fallback="cache", pypi_disallow_fallback="demo, other")
        self.assert_denied("demo", "bob", 404)
        response, _ = self.request("GET", f"/api/package/demo/{DEMO1}", "bob")
        self.assertEqual(response.code, 404)
        self.assertEqual(ix.upstream.requests, [])


class DeprecatedOptionTests(TableCase):
    """pypicloud's deprecated spellings."""

    def test_mirror_and_use_fallback(self) -> None:
        """fallback = mirror is cache with always_show_upstream; use_fallback = false is none
        and true is redirect (when pypi.fallback is not set); fallback_url names the
        upstream simple index."""
        ix = self.prepare(pypi_fallback="mirror")
        self.assertEqual((ix.settings.fallback, ix.settings.always_show_upstream), ("cache", True))
        ix = self.prepare(pypi_use_fallback="true")
        self.assertEqual(ix.settings.fallback, "redirect")
        ix = self.prepare(pypi_use_fallback="false")
        self.assertEqual(ix.settings.fallback, "none")
        ix = self.make_fallback(
            {
                "pypi.fallback": "redirect",
                "pypi.fallback_base_url": None,
                "pypi.fallback_url": "https://mirror.test/root/simple/",
            }
        )
        self.assert_redirected_to("demo", "https://mirror.test/root/simple/demo/")
        response, _ = self.request("GET", "/pypi/demo/json")
        self.assertEqual(self.location(response), "https://mirror.test/root/pypi/demo/json")

    def assert_redirected_to(self, name: str, url: str) -> None:
        code, _, response = self.page(name)
        self.assertEqual((code, self.location(response)), (302, url))
