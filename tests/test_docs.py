"""The configuration reference in docs/ is generated from the code and covers every option."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from types import ModuleType
from typing import Any

import attrs
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pypicloud_tx.config import loader, registry
from pypicloud_tx.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
EXTENSION = os.path.join(DOCS, "_ext", "ppc_options.py")
PREFIXES = {"pypi.storage": "storage", "pypi.db": "db", "pypi.auth": "auth"}
#: The access lines, with a real name where the reference writes <name> and <package>.
PATTERNS = {
    "user.<name>": "user.alice",
    "group.<name>": "group.devs",
    "package.<package>.user.<name>": "package.mypkg.user.alice",
    "package.<package>.group.<name>": "package.mypkg.group.devs",
}


def load_extension() -> ModuleType:
    """``docs/_ext/ppc_options.py``, imported from its file (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("ppc_options", EXTENSION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def backends() -> list[tuple[str, str, type[Any]]]:
    """``(kind, short name, class)`` of every registered backend."""
    return [
        (kind, name, registry.resolve(kind, name)[1])
        for kind, table in registry.KINDS.items()
        for name in table
    ]


def accepted_options() -> set[str]:
    """Every option name the loader accepts, read from the loader's and backends' own tables."""
    names = set(loader.CORE) | set(loader.DEFAULT_BACKENDS)
    names |= set(loader.ALWAYS_ON) | set(loader.NOT_YET) | set(PATTERNS)
    for kind, _name, cls in backends():
        for field in attrs.fields(cls.Options):
            names.add(f"{PREFIXES[kind]}.{field.name.replace('__', '.')}")
    return names


#: Backends without required options, so that only the option under test can be refused.
QUIET = {"pypi.storage": "memory", "pypi.db": "memory", "pypi.auth": "memory"}


def unknown_to_loader(raw: dict[str, str]) -> bool:
    """Whether :func:`loader.parse_settings` refuses ``raw`` (over :data:`QUIET`'s backends)
    for naming an unknown option."""
    try:
        loader.parse_settings({**QUIET, **raw})
    except ConfigError as e:
        return "unknown option" in str(e)
    return False


@attrs.frozen
class Commented:
    """Fields commented the ways config/model.py's Settings are."""

    #: ``pypi.realm``: the realm,
    #: on two lines.
    realm: str = "pypi"
    #: ``pypi.old`` (deprecated): superseded.
    old: str = ""
    #: ``session.key`` / ``session.other``: one secret for both.
    key: str = ""
    secure: bool = False
    #: no option name here.
    plain: str = ""


class ReferenceContentTests(SynchronousTestCase):
    """What the reference says, checked against the loader without building the site."""

    def setUp(self) -> None:
        self.extension = load_extension()

    def test_every_accepted_option_is_documented(self) -> None:
        """Each option the loader accepts (general, backend choice, every backend's, access
        lines) has a row in the generated reference."""
        missing = accepted_options() - self.extension.option_names()
        self.assertEqual(missing, set())

    def test_every_documented_option_is_accepted(self) -> None:
        """No row documents a name the loader would refuse as unknown (the reference invents
        nothing): each is tried in a file choosing its backend."""
        choices: dict[str, dict[str, str]] = {}
        for kind, name, cls in backends():
            for field in attrs.fields(cls.Options):
                option = f"{PREFIXES[kind]}.{field.name.replace('__', '.')}"
                choices.setdefault(option, {kind: name})
        refused = []
        for option in sorted(self.extension.option_names()):
            if option in ("host", "port", "listen"):  # [server:main], not the options section
                continue
            raw = {**choices.get(option, {}), PATTERNS.get(option, option): "x"}
            if unknown_to_loader(raw):
                refused.append(option)
        self.assertEqual(refused, [])

    def test_an_unknown_option_is_refused(self) -> None:
        """The acceptance check above can fail: a name no table has is refused as unknown."""
        for option in ("pypi", "storage", "db", "auth"):
            self.assertTrue(unknown_to_loader({f"{option}.no_such_option": "x"}), option)
        self.assertTrue(unknown_to_loader({"pypi.db": "sql", "db.no_such_option": "x"}))

    def test_every_backend_option_has_a_doc(self) -> None:
        """Each field of each registered backend's Options has a non-empty ``doc=``: it is the
        reference's meaning column."""
        undocumented = [
            f"{kind} = {name}: {field.name}"
            for kind, name, cls in backends()
            for field in attrs.fields(cls.Options)
            if not str(field.metadata.get("doc", "")).strip()
        ]
        self.assertEqual(undocumented, [])

    def test_every_general_option_has_a_doc(self) -> None:
        """Each option of the loader's CORE has a meaning (the extension's CORE_DOCS, else the
        ``#:`` comment of its Settings field), and CORE_DOCS keeps none for a removed option."""
        core = [row for table in self.extension.core_tables() for row in table.rows]
        self.assertEqual([row.name for row in core if not row.doc.strip()], [])
        self.assertTrue(set(loader.CORE) <= {row.name for row in core})
        self.assertEqual(set(self.extension.CORE_DOCS) - set(loader.CORE), set())

    def test_settings_comments_are_read(self) -> None:
        """A Settings field's ``#:`` comment, without its leading option name, is the meaning
        of an option CORE_DOCS does not describe."""
        comments = self.extension.field_comments(Commented)
        self.assertEqual(
            comments,
            {
                "realm": "The realm, on two lines.",
                "old": "Superseded.",
                "key": "One secret for both.",
                "plain": "No option name here.",
            },
        )
        self.assertIn("secure", attrs.fields_dict(Commented))  # no comment: no entry

    def test_defaults_come_from_the_code(self) -> None:
        """Defaults are the Settings' and Options' own: pypi.max_upload_size shows 1GB,
        pypi.realm pypi, storage.dir is required, and redis's db.prefix is pypicloud:."""
        rows = {
            (table.title, row.name): row
            for tables in self.extension.reference().values()
            for table in tables
            for row in table.rows
        }
        index = "The index (``pypi.*``)"
        self.assertEqual(rows[index, "pypi.max_upload_size"].default, "1GB")
        self.assertEqual(rows[index, "pypi.realm"].default, "pypi")
        self.assertEqual(rows[index, "pypi.storage"].default, "file")
        self.assertIsNone(rows["``pypi.storage = file``", "storage.dir"].default)
        self.assertEqual(rows["``pypi.db = redis``", "db.prefix"].default, "pypicloud:")
        self.assertEqual(rows["``pypi.auth = remote``", "auth.uri.verify"].default, "/verify")

    def test_guides_are_pages(self) -> None:
        """Each backend's "see" link names a page that exists in docs/."""
        for table in (t for tables in self.extension.reference().values() for t in tables):
            if table.guide is not None:
                self.assertTrue(os.path.exists(os.path.join(DOCS, table.guide + ".md")), table)


def sphinx_build(srcdir: str, outdir: str) -> subprocess.CompletedProcess[str]:
    """``sphinx-build -W`` of ``srcdir`` with docs/conf.py (skipped locally without Sphinx)."""
    if (
        importlib.util.find_spec("sphinx") is None
        or importlib.util.find_spec("myst_parser") is None
    ):
        message = "Sphinx and myst-parser are not installed: pip install -e '.[docs]'"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise AssertionError(message)
        raise SkipTest(message)
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "-c", DOCS, srcdir, outdir],
        capture_output=True,
        text=True,
        timeout=300,
    )


class RenderedReferenceTests(SynchronousTestCase):
    """The directive as Sphinx renders it, in a small site of its own (so that other pages'
    links do not matter here; the whole site is built by .ci/run and tox -e docs)."""

    def test_rendered_page_lists_every_option(self) -> None:
        """Built with warnings as errors, the page shows every accepted option's name, and a
        section titled ``<kind> = <name>`` for every registered backend."""
        extension = load_extension()
        src = self.mktemp()
        os.makedirs(src)
        guides = sorted({t.guide for ts in extension.reference().values() for t in ts} - {None})
        for guide in guides:
            with open(os.path.join(src, guide + ".md"), "w", encoding="utf-8") as f:
                f.write(f"# {guide}\n")
        parts = "\n".join(
            f"## {part}\n\n```{{ppc-options}} {part}\n```\n" for part in extension.reference()
        )
        toctree = "\n".join(guides)
        with open(os.path.join(src, "index.md"), "w", encoding="utf-8") as f:
            f.write(f"# Reference\n\n{parts}\n```{{toctree}}\n:hidden:\n\n{toctree}\n```\n")
        out = self.mktemp()
        result = sphinx_build(src, out)
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(os.path.join(out, "index.html"), encoding="utf-8") as f:
            page = f.read()
        text = html.unescape(re.sub(r"<[^>]+>", "", page))
        missing = sorted(name for name in accepted_options() if name not in text)
        self.assertEqual(missing, [])
        for kind, name, _cls in backends():
            self.assertIn(f"{kind} = {name}", text)
            self.assertIn(f'id="ref-{PREFIXES[kind]}-{name.replace("_", "-")}"', page)

    def test_reference_page_uses_the_directive(self) -> None:
        """docs/reference.md renders each part of the generated reference."""
        with open(os.path.join(DOCS, "reference.md"), encoding="utf-8") as f:
            page = f.read()
        for part in load_extension().reference():
            self.assertIn(f"```{{ppc-options}} {part}\n```", page)


class SiteTests(SynchronousTestCase):
    """The site's table of contents and its configuration."""

    def test_every_page_is_in_the_index(self) -> None:
        """Every Markdown page in docs/ is in a toctree of docs/index.md (Sphinx -W refuses a
        page outside every toctree; this says which one, before a build)."""
        with open(os.path.join(DOCS, "index.md"), encoding="utf-8") as f:
            index = f.read()
        listed = set()
        for block in re.findall(r"```\{toctree\}\n(.*?)```", index, re.DOTALL):
            listed |= {
                line.strip() for line in block.splitlines() if line.strip() and ":" not in line
            }
        pages = {
            name[: -len(".md")]
            for name in os.listdir(DOCS)
            if name.endswith(".md") and name != "index.md"
        }
        self.assertEqual(pages - listed, set())
        self.assertEqual(listed - pages, set())

    def test_readme_links_stay_valid(self) -> None:
        """README.md's links into docs/ name files that exist (GitHub renders them as they are)."""
        with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        links = re.findall(r"\]\((docs/[^)#]+)", readme)
        self.assertTrue(links)
        for link in links:
            self.assertTrue(os.path.exists(os.path.join(ROOT, link)), link)
