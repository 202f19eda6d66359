"""The reading pages: home, the project list (search, sort, pages), a project's page, file
downloads through the session, static files, and the headers every page carries."""

from __future__ import annotations

import datetime as dt
import hashlib

from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.web.ui.render import safe_next
from tests.distfactory import core_metadata
from tests.web.harness import _fired
from tests.web.ui.harness import UiTestCase

PRIVATE = {"package.secret.user.bob": "rw"}


def markdown_metadata(name: str, version: str, summary: str, description: str) -> bytes:
    """METADATA whose description is Markdown."""
    head = core_metadata(name, version, summary=summary).decode().rstrip("\n")
    return (
        head
        + "\nDescription-Content-Type: text/markdown; charset=UTF-8; variant=GFM\n\n"
        + description
    ).encode()


class HomeTests(UiTestCase):
    def test_home_shows_snippets_with_the_real_url(self) -> None:
        """The home page tells pip, uv, poetry and twine users the index URL the visitor
        reached, and that nobody is logged in."""
        self.make_ui()
        page = self.browser().get("/")
        self.assertEqual(page.code, 200)
        for text in (
            "pip install --index-url http://index.test/simple/",
            "uv pip install --index-url http://index.test/simple/",
            "poetry source add --priority=primary private http://index.test/simple/",
            "twine upload --repository-url http://index.test/simple/",
            "You are not logged in",
        ):
            self.assertIn(text, page.text)

    def test_download_url_overrides_the_shown_url(self) -> None:
        """``pypi.download_url`` is the URL the snippets show."""
        self.make_ui({"pypi.download_url": "https://pypi.example.com/base"})
        page = self.browser().get("/")
        self.assertIn("pip install --index-url https://pypi.example.com/base/simple/", page.text)
        self.assertNotIn("index.test/simple/", page.text)

    def test_home_shows_who_is_logged_in(self) -> None:
        """A logged-in visitor sees their name and a logout form."""
        self.make_ui()
        browser = self.browser()
        browser.log_in("alice")
        page = browser.get("/")
        self.assertIn("logged in as <strong>alice</strong> (admin)", page.text)
        self.assertIn('action="/logout"', page.text)

    def test_security_headers(self) -> None:
        """Every page carries a strict CSP (no inline script or style, no framing) and is
        never cached."""
        self.make_ui()
        for path in ("/", "/projects/", "/login", "/nothing-here-at-all/"):
            page = self.browser().get(path)
            if page.code == 404 and path.startswith("/nothing"):
                continue
            csp = page.header("content-security-policy") or ""
            self.assertIn("default-src 'none'", csp)
            self.assertIn("script-src 'self'", csp)
            self.assertIn("frame-ancestors 'none'", csp)
            self.assertNotIn("unsafe-inline", csp)
            self.assertNotIn("unsafe-eval", csp)
            self.assertEqual(page.header("x-frame-options"), "DENY")
            self.assertEqual(page.header("x-content-type-options"), "nosniff")
            self.assertEqual(page.header("cache-control"), "no-store")

    def test_pages_have_no_inline_script_or_foreign_assets(self) -> None:
        """Scripts and styles come from this site only (no CDN), as files: the CSP allows
        nothing else."""
        self.make_ui()
        self.seed()
        for path in ("/", "/projects/", "/project/demo/", "/login", "/register"):
            text = self.browser().get(path).text
            self.assertNotIn("<script>", text)
            self.assertNotIn("<style", text)
            self.assertNotIn("style=", text)
            self.assertNotIn("//cdn", text)
            self.assertIn('<script src="/static/ui.js?v=', text)


class StaticTests(UiTestCase):
    def test_static_files(self) -> None:
        """The style sheet and script are served with their types; the versioned URL may be
        cached for good; unknown names are 404 (no path is ever read from the URL)."""
        self.make_ui()
        browser = self.browser()
        home = browser.get("/").text
        css_url = home.split('<link rel="stylesheet" href="')[1].split('"')[0]
        css = browser.get(css_url)
        self.assertEqual(css.code, 200)
        self.assertEqual(css.header("content-type"), "text/css; charset=utf-8")
        self.assertIn("immutable", css.header("cache-control") or "")
        js = browser.get("/static/ui.js")
        self.assertEqual(js.header("content-type"), "text/javascript; charset=utf-8")
        self.assertNotIn("immutable", js.header("cache-control") or "")
        self.assertEqual(browser.get("/static/..%2Fsetup.py").code, 404)
        self.assertEqual(browser.get("/static/nothing.css").code, 404)


class ProjectListTests(UiTestCase):
    def fill(self, count: int) -> None:
        """``count`` projects straight into the cache (``p0000``...), one a minute apart."""
        start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        for i in range(count):
            name = f"p{i:04d}"
            _fired(
                self.ix.cache.save(
                    PackageFile(
                        name=name,
                        version="1.0",
                        filename=f"{name}-1.0-py3-none-any.whl",
                        size=10,
                        sha256=hashlib.sha256(name.encode()).hexdigest(),
                        upload_time=start + dt.timedelta(minutes=i),
                        summary=f"Summary number {i} " + ("special" if i % 7 == 0 else "plain"),
                    )
                )
            )

    def names(self, text: str) -> list[str]:
        return [part.split("/")[0] for part in text.split('<td><a href="/project/')[1:]]

    def test_pages_of_fifty_sorted_by_name(self) -> None:
        """120 projects: pages of 50 by name, links to the next and previous pages; a page
        past the end shows the last one."""
        self.make_ui()
        self.fill(120)
        browser = self.browser()
        first = browser.get("/projects/")
        self.assertEqual(self.names(first.text), [f"p{i:04d}" for i in range(50)])
        self.assertIn("120 packages", first.text)
        self.assertIn('rel="next" href="/projects/?q=&amp;sort=name&amp;page=2"', first.text)
        third = browser.get("/projects/?page=3")
        self.assertEqual(self.names(third.text), [f"p{i:04d}" for i in range(100, 120)])
        self.assertIn('rel="prev"', third.text)
        self.assertEqual(self.names(browser.get("/projects/?page=99").text), self.names(third.text))
        self.assertEqual(self.names(browser.get("/projects/?page=x").text), self.names(first.text))

    def test_sort_by_last_upload(self) -> None:
        """``sort=updated`` lists the most recently uploaded first."""
        self.make_ui()
        self.fill(60)
        page = self.browser().get("/projects/?sort=updated")
        self.assertEqual(self.names(page.text)[:3], ["p0059", "p0058", "p0057"])

    def test_search_name_and_summary(self) -> None:
        """Search matches words in names and summaries, ignoring case; every word must match."""
        self.make_ui()
        self.fill(30)
        browser = self.browser()
        self.assertEqual(self.names(browser.get("/projects/?q=P0012").text), ["p0012"])
        self.assertEqual(
            self.names(browser.get("/projects/?q=SPECIAL").text),
            ["p0000", "p0007", "p0014", "p0021", "p0028"],
        )
        self.assertEqual(self.names(browser.get("/projects/?q=special+number+14").text), ["p0014"])
        empty = browser.get("/projects/?q=nothing-like-this")
        self.assertEqual(self.names(empty.text), [])
        self.assertIn("0 packages matching", empty.text)

    def test_lists_only_readable_projects(self) -> None:
        """A project only bob may read is not listed for anonymous visitors, and is for bob."""
        self.make_ui(PRIVATE)
        self.seed("demo")
        self.seed("secret")
        self.assertEqual(self.names(self.browser().get("/projects/").text), ["demo"])
        bob = self.browser()
        bob.log_in("bob")
        self.assertEqual(self.names(bob.get("/projects/").text), ["demo", "secret"])

    def test_page_weight_with_ten_thousand_projects(self) -> None:
        """With 10,000 projects the list page, with its style sheet and script, weighs under
        100 KB."""
        self.make_ui()
        self.fill(10_000)
        browser = self.browser()
        page = browser.get("/projects/")
        self.assertIn("10000 packages", page.text)
        self.assertIn("page 1 of 200", page.text)
        css = browser.get("/static/ui.css").body
        js = browser.get("/static/ui.js").body
        total = len(page.body) + len(css) + len(js)
        self.assertLess(total, 100_000, (len(page.body), len(css), len(js)))
        search = browser.get("/projects/?q=special&sort=updated&page=3")
        self.assertLess(len(search.body), 100_000)


class ProjectPageTests(UiTestCase):
    def test_versions_files_and_marks(self) -> None:
        """Versions newest first with pre-releases and yanked versions marked; the files of
        the shown version with size, upload time, sha256, requires-python and a link."""
        self.make_ui()
        self.seed("demo", "1.0", requires_python=">=3.8")
        self.seed("demo", "1.1", requires_python=">=3.9", summary="The demo")
        self.seed("demo", "2.0b1")
        filename = "demo-1.1-py3-none-any.whl"
        stored = _fired(self.ix.cache.fetch(filename))
        self.assertEqual(
            self.request("POST", "/api/package/demo/demo-1.0-py3-none-any.whl/yank", "bob")[0].code,
            200,
        )
        page = self.browser().get("/project/demo/")
        self.assertEqual(page.code, 200)
        text = page.text
        # The newest stable version is shown first; 2.0b1 is newer but a pre-release.
        self.assertIn('<span class="version">1.1</span>', text)
        versions = text.split('<ol class="versions" reversed>')[1].split("</ol>")[0]
        self.assertLess(versions.index("2.0b1"), versions.index("1.1"))
        self.assertLess(versions.index("1.1"), versions.index(">1.0<"))
        self.assertIn('2.0b1</a>\n<span class="badge pre">pre-release</span>', versions)
        self.assertIn('1.0</a>\n<span class="badge yanked">yanked</span>', versions)
        self.assertIn(f'href="/files/demo/{filename}"', text)
        self.assertIn(stored.sha256, text)
        self.assertIn(f"{stored.size} bytes" if stored.size < 1000 else "kB", text)
        self.assertIn(stored.upload_time.strftime("%Y-%m-%d %H:%M UTC"), text)
        self.assertIn("&gt;=3.9", text)
        self.assertIn("pip install --index-url http://index.test/simple/ demo==1.1", text)
        self.assertIn("The demo", text)

    def test_version_page(self) -> None:
        """``/project/<name>/<version>/`` shows that version and says it is not the newest;
        an unknown version is a 404 page."""
        self.make_ui()
        self.seed("demo", "1.0")
        self.seed("demo", "1.1")
        browser = self.browser()
        page = browser.get("/project/demo/1.0/")
        self.assertIn('<span class="version">1.0</span>', page.text)
        self.assertIn("This is not the newest version", page.text)
        self.assertIn('href="/files/demo/demo-1.0-py3-none-any.whl"', page.text)
        self.assertNotIn('href="/files/demo/demo-1.1-py3-none-any.whl"', page.text)
        missing = browser.get("/project/demo/9.9/")
        self.assertEqual(missing.code, 404)
        self.assertIn("demo has no version 9.9", missing.text)
        self.assertEqual(missing.header("content-type"), "text/html; charset=utf-8")

    def test_yanked_file_marked(self) -> None:
        """A yanked file shows the mark and the reason."""
        self.make_ui()
        self.seed("demo", "1.0")
        self.request(
            "POST",
            "/api/package/demo/demo-1.0-py3-none-any.whl/yank",
            "bob",
            headers={b"Content-Type": [b"application/x-www-form-urlencoded"]},
            data=b"reason=broken+build",
        )
        page = self.browser().get("/project/demo/1.0/")
        self.assertIn(
            '<span class="badge yanked">yanked</span> <span class="reason">broken build', page.text
        )

    def test_canonical_redirect_and_unknown(self) -> None:
        """A non-canonical name redirects to the canonical page; an unknown project is a 404
        page."""
        self.make_ui()
        self.seed("demo")
        browser = self.browser()
        page = browser.get("/project/Demo/")
        self.assertEqual((page.code, page.location), (303, "/project/demo/"))
        self.assertEqual(browser.get("/project/nothing/").code, 404)

    def test_private_project_needs_login(self) -> None:
        """An anonymous visitor of a project only bob may read is sent to log in, and back."""
        self.make_ui(PRIVATE)
        self.seed("secret")
        browser = self.browser()
        page = browser.get("/project/secret/")
        self.assertEqual(page.code, 303)
        self.assertEqual(page.location, "/login?next=%2Fproject%2Fsecret%2F")
        carol = self.browser()
        carol.log_in("carol")
        self.assertEqual(carol.get("/project/secret/").code, 403)
        bob = self.browser()
        landing = bob.log_in("bob")
        self.assertEqual(landing.location, "/")
        login = bob.submit(
            "/login?next=%2Fproject%2Fsecret%2F",
            "/login",
            {"username": "bob", "password": "bobpw", "next": "/project/secret/"},
        )
        self.assertEqual(login.location, "/project/secret/")
        self.assertEqual(bob.get("/project/secret/").code, 200)

    def test_markdown_description_rendered(self) -> None:
        """A Markdown description is rendered to HTML."""
        self.make_ui()
        metadata = markdown_metadata("demo", "1.0", "s", "# Title\n\nSome *emphasis* here.\n")
        self.seed("demo", metadata=metadata)
        page = self.browser().get("/project/demo/")
        self.assertIn("<em>emphasis</em>", page.text)
        self.assertIn("Title", page.text)

    def test_rst_description_rendered(self) -> None:
        """A reStructuredText description (no content type) is rendered to HTML; one that
        does not render is shown as plain text."""
        self.make_ui()
        head = core_metadata("demo", "1.0", summary="s").decode().rstrip("\n")
        rst = "Title\n=====\n\nSome **strong** words.\n"
        self.seed("demo", "1.0", metadata=(head + "\n\n" + rst).encode())
        self.assertIn("<strong>strong</strong>", self.browser().get("/project/demo/").text)

    def test_malicious_summary_and_description_are_inert(self) -> None:
        """Script in a summary is escaped; script, event handlers and javascript: links in a
        description are removed."""
        self.make_ui()
        evil = '<script>alert("summary")</script>'
        description = (
            "# Hello\n\n<script>alert('description')</script>\n\n"
            '<img src="x" onerror="alert(1)">\n\n[click](javascript:alert(2))\n\n'
            '<a href="javascript:alert(3)">link</a>\n'
        )
        self.seed("demo", metadata=markdown_metadata("demo", "1.0", evil, description))
        browser = self.browser()
        for path in ("/project/demo/", "/projects/", "/projects/?q=script"):
            text = browser.get(path).text
            self.assertNotIn("<script>alert", text)
            self.assertIn("&lt;script&gt;alert(&#34;summary&#34;)&lt;/script&gt;", text)
        text = browser.get("/project/demo/").text
        self.assertNotIn("onerror", text)
        self.assertNotIn('href="javascript:', text)
        self.assertNotIn("<script>", text)


class DownloadTests(UiTestCase):
    def test_download_through_the_session(self) -> None:
        """``/files/`` serves a file to the visitor the session names; a private one needs a
        login."""
        self.make_ui(PRIVATE)
        filename, data = self.wheel("secret", "1.0")
        self.upload(filename, data, user="bob")
        anonymous = self.browser().get(f"/files/secret/{filename}")
        self.assertEqual(anonymous.code, 303)
        bob = self.browser()
        bob.log_in("bob")
        got = bob.get(f"/files/secret/{filename}")
        self.assertEqual(got.code, 200)
        self.assertEqual(got.body, data)


class SafeNextTests(UiTestCase):
    def test_only_local_paths(self) -> None:
        """Where to go after login is a path of this site, never another site."""
        for bad in (
            None,
            "",
            "https://evil.example/",
            "//evil.example/x",
            "/\\evil.example",
            "\\\\evil.example",
            "/ok\r\nSet-Cookie: x=1",
            "javascript:alert(1)",
            "evil.example",
            "/" + "x" * 3000,
        ):
            self.assertEqual(safe_next(bad), "/", bad)
        self.assertEqual(safe_next("/projects/?q=a&sort=name"), "/projects/?q=a&sort=name")
