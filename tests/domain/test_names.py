"""Tests for :mod:`pypicloud_tx.domain.names`: names, filenames and versions."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.domain.names import (
    DistName,
    canonical,
    is_canonical,
    is_valid_name,
    parse_filename,
    sort_key,
    versions_equal,
)
from pypicloud_tx.errors import InvalidUpload
from tests.distfactory import sdist_filename, wheel_filename

#: Valid PEP 508 project names.
names = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9._-]{0,30}[A-Za-z0-9])?\Z")

#: PEP 440 versions, as people write them (not necessarily normalised).
versions = st.builds(
    lambda epoch, release, pre, post, dev, local: (
        (f"{epoch}!" if epoch else "")
        + ".".join(map(str, release))
        + (f"{pre[0]}{pre[1]}" if pre else "")
        + (f".post{post}" if post is not None else "")
        + (f".dev{dev}" if dev is not None else "")
        + (f"+{local}" if local else "")
    ),
    st.integers(0, 3),
    st.lists(st.integers(0, 2000), min_size=1, max_size=4),
    st.none()
    | st.tuples(st.sampled_from(["a", "b", "rc", "-rc.", "alpha", "c"]), st.integers(0, 9)),
    st.none() | st.integers(0, 9),
    st.none() | st.integers(0, 9),
    st.none() | st.from_regex(r"\A[a-z0-9]{1,5}(\.[a-z0-9]{1,5}){0,2}\Z"),
)


def pep503(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class CanonicalTests(SynchronousTestCase):
    """Project names normalise as PEP 503 says."""

    @given(st.text())
    @example("FrIeNdLy-._.-bArD")
    def test_matches_pep503(self, name: str) -> None:
        """``canonical`` equals the PEP 503 regular expression, for any text."""
        self.assertEqual(canonical(name), pep503(name))

    @given(st.text())
    def test_idempotent(self, name: str) -> None:
        """Normalising a normalised name changes nothing."""
        once = canonical(name)
        self.assertEqual(canonical(once), once)
        self.assertTrue(is_canonical(once))

    def test_same_project(self) -> None:
        """The CONFORMANCE spellings reach one project."""
        self.assertEqual(
            {canonical(n) for n in ("Friendly-Bard", "friendly.bard", "FrIeNdLy-._.-bArD")},
            {"friendly-bard"},
        )
        self.assertFalse(is_canonical("Friendly-Bard"))

    @given(names)
    def test_valid_names(self, name: str) -> None:
        """Names PEP 508 allows are valid."""
        self.assertTrue(is_valid_name(name))

    def test_invalid_names(self) -> None:
        """Empty, non-ASCII, punctuated or edge-separated names are invalid."""
        for name in ("", "-foo", "foo_", ".foo", "fo o", "föo", "foo/bar", "foo\0", "\nfoo"):
            self.assertFalse(is_valid_name(name), name)

    def test_trailing_newline_invalid(self) -> None:
        """A name ending in a newline is invalid (``$`` must not match before it)."""
        self.assertFalse(is_valid_name("foo\n"))


class ParseFilenameTests(SynchronousTestCase):
    """``parse_filename`` reads the factory's (standard) filenames and refuses the rest."""

    @settings(max_examples=300)
    @given(names, versions)
    def test_wheel_filenames(self, name: str, version: str) -> None:
        """A standard wheel filename gives back the canonical name and an equal version."""
        parsed = parse_filename(wheel_filename(name, version))
        self.assertEqual(parsed.name, canonical(name))
        self.assertEqual(parsed.kind, "wheel")
        self.assertTrue(versions_equal(parsed.version, version))

    @settings(max_examples=300)
    @given(names, versions, st.sampled_from(["tar.gz", "zip"]))
    def test_sdist_filenames(self, name: str, version: str, archive: str) -> None:
        """A PEP 625 sdist filename gives back the canonical name and an equal version."""
        parsed = parse_filename(sdist_filename(name, version, archive))
        self.assertEqual(parsed.name, canonical(name))
        self.assertEqual(parsed.kind, "sdist")
        self.assertTrue(versions_equal(parsed.version, version))

    def test_examples(self) -> None:
        """Known filenames parse; the version keeps the filename's spelling."""
        self.assertEqual(
            parse_filename("friendly_bard-1.0.0-py3-none-any.whl"),
            DistName("friendly-bard", "1.0.0", "wheel"),
        )
        self.assertEqual(
            parse_filename("numpy-2.1.0-1-cp311-cp311-manylinux_2_17_x86_64.whl"),
            DistName("numpy", "2.1.0", "wheel"),
        )
        self.assertEqual(
            parse_filename("Friendly.Bard-2.0rc1.tar.gz"),
            DistName("friendly-bard", "2.0rc1", "sdist"),
        )
        self.assertEqual(parse_filename("foo-1.0.zip"), DistName("foo", "1.0", "sdist"))

    @given(
        st.builds(wheel_filename, names, versions) | st.builds(sdist_filename, names, versions),
        st.sampled_from(["/", "\\", "\0", "\n", "\r", "\x7f", "é"]),
        st.data(),
    )
    def test_bad_characters_refused(self, filename: str, bad: str, data: st.DataObject) -> None:
        """A separator, control character or non-ASCII character anywhere is refused."""
        at = data.draw(st.integers(0, len(filename)))
        self.assertRaises(InvalidUpload, parse_filename, filename[:at] + bad + filename[at:])

    def test_paths_refused(self) -> None:
        """Paths, dot names and empty names are refused with a message."""
        for filename in (
            "",
            ".",
            "..",
            "../foo-1.0.tar.gz",
            "foo/../../foo-1.0.tar.gz",
            "/etc/foo-1.0.tar.gz",
            "..\\foo-1.0.zip",
            ".foo-1.0.tar.gz",
            "foo-1.0.tar.gz\0.whl",
            "x" * 250 + "-1.0.tar.gz",
        ):
            self.assertRaises(InvalidUpload, parse_filename, filename)

    def test_wrong_extensions_refused(self) -> None:
        """Only .whl, .tar.gz and .zip are accepted (PEP 527); the message says so."""
        for filename in (
            "foo-1.0.egg",
            "foo-1.0.tar.bz2",
            "foo-1.0.tgz",
            "foo-1.0.exe",
            "foo-1.0.win32.msi",
            "foo-1.0.tar",
            "foo-1.0-py3-none-any.whl.txt",
            "foo-1.0.TAR.GZ",
        ):
            error = self.assertRaises(InvalidUpload, parse_filename, filename)
            self.assertIn(".whl", str(error))

    def test_malformed_refused(self) -> None:
        """Names that look like distributions but break the grammar are refused."""
        for filename in (
            "foo-1.0.whl",  # no tags
            "foo-bar-1.0-py3-none-any.whl",  # dash in a wheel's name
            "foo-notaversion-py3-none-any.whl",
            "foo.tar.gz",  # no version
            "foo-.tar.gz",
        ):
            self.assertRaises(InvalidUpload, parse_filename, filename)


class VersionTests(SynchronousTestCase):
    """Versions compare by PEP 440."""

    @given(versions)
    def test_equal_to_normalised(self, version: str) -> None:
        """A version equals its normalised spelling, and is not equal to a later one."""
        from packaging.version import Version

        self.assertTrue(versions_equal(version, str(Version(version))))
        self.assertFalse(versions_equal(version, str(Version(version)) + ".1"))

    def test_sort_key(self) -> None:
        """Unparsable versions sort first, the rest in PEP 440 order."""
        ordered = sorted(["1.0", "1.0rc1", "banana", "0.9", "1.0.post1", "1.0.dev0"], key=sort_key)
        self.assertEqual(ordered, ["banana", "0.9", "1.0.dev0", "1.0rc1", "1.0", "1.0.post1"])
