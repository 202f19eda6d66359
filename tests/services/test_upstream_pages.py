"""Reading upstream project pages and choosing files for requirements (pure functions in
``domain/upstream_pages.py``)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.domain.upstream_pages import (
    UpstreamPageError,
    UpstreamProject,
    choose_files,
    parse_project_html,
    parse_project_json,
    parse_project_page,
    parse_requirement,
)
from pypicloud_tx.errors import InvalidUpload

PAGE = "https://up.test/simple/demo/"
SHA = "ab" * 32


def json_page(*files: dict[str, object]) -> bytes:
    return json.dumps({"meta": {"api-version": "1.1"}, "name": "demo", "files": files}).encode()


def entry(filename: str, url: str | None = None, **fields: object) -> dict[str, object]:
    return {
        "filename": filename,
        "url": url or f"../../f/{filename}",
        "hashes": {"sha256": SHA},
        **fields,
    }


class JsonPageTests(SynchronousTestCase):
    """PEP 691 pages."""

    def test_fields(self) -> None:
        """URLs are resolved against the page, hashes lower-cased, yanked true becomes an
        empty reason, dist-info-metadata is read as core-metadata, files come oldest first."""
        project = parse_project_json(
            json_page(
                entry(
                    "demo-2.0.tar.gz",
                    hashes={"SHA256": SHA.upper(), "md5": "00" * 16},
                    yanked=True,
                    **{"dist-info-metadata": {"sha256": SHA}},
                ),
                entry(
                    "demo-1.0-py3-none-any.whl", "https://files.test/x/demo-1.0-py3-none-any.whl"
                ),
            ),
            PAGE,
            "Demo",
        )
        self.assertEqual(project.name, "demo")
        first, second = project.files
        self.assertEqual(first.url, "https://files.test/x/demo-1.0-py3-none-any.whl")
        self.assertEqual(second.url, "https://up.test/f/demo-2.0.tar.gz")
        self.assertEqual(dict(second.hashes), {"sha256": SHA, "md5": "00" * 16})
        self.assertEqual(second.yanked, "")
        self.assertEqual(second.core_metadata, {"sha256": SHA})
        self.assertIsNone(first.yanked)
        self.assertIs(first.core_metadata, False)

    def test_untrusted_entries_dropped(self) -> None:
        """Files of another project, paths, eggs, non-HTTP URLs, bad hashes and duplicates
        never reach the listing."""
        project = parse_project_json(
            json_page(
                entry("other-1.0-py3-none-any.whl"),
                entry("../demo-1.0.tar.gz"),
                entry("demo-1.0-py3.8.egg"),
                entry("demo-1.0.zip", "file:///etc/passwd"),
                entry("demo-1.1.tar.gz", hashes={"sha256": "not hex", "nope": "aa"}),
                entry("demo-1.1.tar.gz"),
            ),
            PAGE,
            "demo",
        )
        (only,) = project.files
        self.assertEqual(only.filename, "demo-1.1.tar.gz")
        self.assertEqual(dict(only.hashes), {})

    def test_not_a_page(self) -> None:
        """A body that is not JSON, or JSON without a files list, is an UpstreamPageError."""
        for body in (b"<html>", b'{"name": "demo"}', b"[]"):
            with self.assertRaises(UpstreamPageError):
                parse_project_json(body, PAGE, "demo")

    @given(st.binary(max_size=300))
    def test_any_bytes(self, body: bytes) -> None:
        """Whatever upstream sends, parsing gives a project or an UpstreamPageError."""
        for kind in ("application/vnd.pypi.simple.v1+json", "text/html"):
            try:
                project = parse_project_page(body, kind, PAGE, "demo")
            except UpstreamPageError:
                continue
            self.assertIsInstance(project, UpstreamProject)


class HtmlPageTests(SynchronousTestCase):
    """PEP 503 pages."""

    def test_anchors(self) -> None:
        """Anchor text is the filename, the fragment the hash, data-* attributes the rest;
        <base href> moves relative links; entities are decoded."""
        body = (
            b'<html><head><base href="https://mirror.test/pkgs/"></head><body>'
            b'<a href="a/demo-1.0.tar.gz#sha256=' + SHA.encode() + b'" '
            b'data-requires-python="&gt;=3.8" data-yanked="" '
            b'data-core-metadata="sha256=' + SHA.encode() + b'">demo-1.0.tar.gz</a>'
            b'<a href="/b/demo-2.0-py3-none-any.whl">demo-2.0-py3-none-any.whl</a>'
            b'<a href="javascript:alert(1)">demo-3.0.tar.gz</a>'
            b"</body></html>"
        )
        project = parse_project_html(body, PAGE, "demo")
        first, second = project.files
        self.assertEqual(first.url, "https://mirror.test/pkgs/a/demo-1.0.tar.gz")
        self.assertEqual(first.sha256, SHA)
        self.assertEqual(first.requires_python, ">=3.8")
        self.assertEqual(first.yanked, "")
        self.assertEqual(first.core_metadata, {"sha256": SHA})
        self.assertEqual(second.url, "https://mirror.test/b/demo-2.0-py3-none-any.whl")
        self.assertIsNone(second.yanked)
        self.assertEqual(dict(second.hashes), {})

    def test_content_type_decides(self) -> None:
        """The Content-Type picks the parser; an HTML type with a JSON body is read as JSON."""
        body = json_page(entry("demo-1.0.tar.gz"))
        for kind in ("application/vnd.pypi.simple.v1+json", "text/html; charset=utf-8", ""):
            self.assertEqual(len(parse_project_page(body, kind, PAGE, "demo").files), 1)
        with self.assertRaises(UpstreamPageError):
            parse_project_page(body, "image/png", PAGE, "demo")


def project_of(*filenames: str, yanked: tuple[str, ...] = ()) -> UpstreamProject:
    body = json_page(*(entry(f, yanked=f in yanked) for f in filenames))
    return parse_project_json(body, PAGE, "demo")


class ChooseTests(SynchronousTestCase):
    """Choosing the files of the newest matching version (POST /api/fetch)."""

    def setUp(self) -> None:
        self.project = project_of(
            "demo-1.0.tar.gz",
            "demo-1.0-py3-none-any.whl",
            "demo-1.5.tar.gz",
            "demo-2.0b1-py3-none-any.whl",
            "demo-1.9.tar.gz",
            yanked=("demo-1.9.tar.gz",),
        )

    def chosen(self, line: str, wheel: bool = True, prerelease: bool = False) -> list[str]:
        requirement = parse_requirement(line)
        assert requirement is not None
        return [f.filename for f in choose_files(self.project, requirement, wheel, prerelease)]

    def test_newest_stable_unyanked(self) -> None:
        """Without a specifier the newest final, unyanked version wins (its sdist when it has
        no wheel); a pre-release only with prerelease or when the specifier names one."""
        self.assertEqual(self.chosen("demo"), ["demo-1.5.tar.gz"])
        self.assertEqual(self.chosen("demo", prerelease=True), ["demo-2.0b1-py3-none-any.whl"])
        self.assertEqual(self.chosen("demo>=2.0b1"), ["demo-2.0b1-py3-none-any.whl"])

    def test_wheel_flag(self) -> None:
        """wheel=true takes a version's wheels, wheel=false its sdist."""
        self.assertEqual(self.chosen("demo<1.5"), ["demo-1.0-py3-none-any.whl"])
        self.assertEqual(self.chosen("demo<1.5", wheel=False), ["demo-1.0.tar.gz"])

    def test_yanked_only_when_pinned(self) -> None:
        """A yanked version is chosen only by an == pin (PEP 592)."""
        self.assertEqual(self.chosen("demo==1.9"), ["demo-1.9.tar.gz"])
        self.assertEqual(self.chosen("demo>1.5,<2"), [])

    def test_requirement_lines(self) -> None:
        """Comments and blank lines are skipped; options, URLs and garbage are refused with
        a message."""
        self.assertIsNone(parse_requirement("   # just a comment"))
        self.assertIsNone(parse_requirement(""))
        requirement = parse_requirement("Demo[extra] >= 1.0 ; python_version > '3' # note")
        assert requirement is not None
        self.assertEqual(requirement.name, "Demo")
        for line in ("-r other.txt", "demo @ https://x.test/demo.whl", "demo ==="):
            with self.assertRaises(InvalidUpload):
                parse_requirement(line)
