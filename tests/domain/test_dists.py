"""Tests for :mod:`pypicloud_tx.domain.dists`, and for the test distribution factory itself."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence

from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.domain import dists
from pypicloud_tx.domain.dists import (
    MAX_METADATA_SIZE,
    DistInfo,
    check_agrees,
    digest_matches,
    inspect_distribution,
)
from pypicloud_tx.errors import InvalidUpload
from tests.distfactory import core_metadata, make_sdist, make_wheel


def inspect(filename: str, data: bytes) -> DistInfo:
    return inspect_distribution(io.BytesIO(data), filename)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in members.items():
            archive.writestr(path, data)
    return buffer.getvalue()


def tar_gz_bytes(members: Sequence[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                archive.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


class WheelTests(SynchronousTestCase):
    """Wheels give their ``*.dist-info/METADATA``, exactly, and its fields."""

    def test_metadata_fields(self) -> None:
        """Name, version, summary, Requires-Python and the other fields are read under
        twine's names, repeated fields as lists."""
        filename, data = make_wheel(
            "Friendly.Bard",
            "1.0.0",
            summary="Sings",
            requires_python=">=3.9",
            requires_dist=["attrs>=23", 'tomli; python_version < "3.11"'],
            description="Long\n\nstory",
            classifiers=["Topic :: A", "Topic :: B"],
        )
        info = inspect(filename, data)
        self.assertEqual(
            (info.name, info.version, info.summary, info.requires_python),
            ("Friendly.Bard", "1.0.0", "Sings", ">=3.9"),
        )
        self.assertEqual(
            info.fields,
            {
                "metadata_version": "2.1",
                "requires_dist": ["attrs>=23", 'tomli; python_version < "3.11"'],
                "classifiers": ["Topic :: A", "Topic :: B"],
                "description": "Long\n\nstory",
                "description_content_type": "text/plain",
            },
        )

    def test_core_metadata_exact(self) -> None:
        """``core_metadata`` is byte for byte the wheel's METADATA (PEP 658)."""
        metadata = (
            b"Metadata-Version: 2.3\r\nName: foo\r\nVersion: 2.0\r\n"
            b"Summary: caf\xc3\xa9  \r\nX-Unknown: kept\r\n\r\nbody \xe2\x9c\x93\r\n"
        )
        filename, data = make_wheel("foo", "2.0", metadata=metadata)
        info = inspect(filename, data)
        self.assertEqual(info.core_metadata, metadata)
        self.assertEqual(
            hashlib.sha256(info.core_metadata or b"").hexdigest(),
            hashlib.sha256(metadata).hexdigest(),
        )
        self.assertEqual(info.summary, "café")  # surrounding blanks trimmed

    def test_other_fields(self) -> None:
        """Keywords become one string; project URLs, platforms stay lists as twine sends them;
        unknown headers are ignored."""
        metadata = core_metadata(
            "foo",
            "1",
            extra_headers=[
                ("Keywords", "a,b,c"),
                ("Project-URL", "Home, https://example.org"),
                ("Project-URL", "Source, https://example.org/src"),
                ("Platform", "any"),
                ("Author", "Ann"),
                ("Author-email", "ann@example.org"),
                ("Home-page", "https://example.org"),
                ("License", "MIT"),
                ("X-Whatever", "ignored"),
            ],
        )
        filename, data = make_wheel("foo", "1", metadata=metadata)
        fields = inspect(filename, data).fields
        self.assertEqual(fields["keywords"], "a,b,c")
        self.assertEqual(
            fields["project_urls"],
            ["Home, https://example.org", "Source, https://example.org/src"],
        )
        self.assertEqual(fields["platform"], ["any"])
        self.assertEqual(fields["author"], "Ann")
        self.assertEqual(fields["author_email"], "ann@example.org")
        self.assertEqual(fields["home_page"], "https://example.org")
        self.assertEqual(fields["license"], "MIT")
        self.assertNotIn("x_whatever", fields)
        self.assertNotIn("name", fields)

    def test_lenient_metadata(self) -> None:
        """Fields packaging cannot read (a repeated project URL label, a non-UTF-8 body) do not
        fail the upload; the known ones are kept as written."""
        metadata = (
            b"Metadata-Version: 2.1\nName: foo\nVersion: 1\n"
            b"Project-URL: Home, https://a\nProject-URL: Home, https://b\n\nbad \xff body"
        )
        filename, data = make_wheel("foo", "1", metadata=metadata)
        info = inspect(filename, data)
        self.assertEqual(info.fields["project_urls"], ["Home, https://a", "Home, https://b"])
        self.assertEqual(info.fields["description"], "bad \ufffd body")
        self.assertEqual(info.core_metadata, metadata)

    def test_missing_name(self) -> None:
        """Metadata without a Name is refused."""
        filename, data = make_wheel("foo", "1", metadata=b"Metadata-Version: 2.1\nVersion: 1\n")
        self.assertIn("Name", str(self.assertRaises(InvalidUpload, inspect, filename, data)))

    def test_dist_info_mismatch(self) -> None:
        """A wheel whose .dist-info directory names another project or version is refused."""
        _, data = make_wheel("foo", "1.0")
        for filename in ("bar-1.0-py3-none-any.whl", "foo-2.0-py3-none-any.whl"):
            error = self.assertRaises(InvalidUpload, inspect, filename, data)
            self.assertIn("foo-1.0.dist-info", str(error))

    def test_dist_info_normalised_match(self) -> None:
        """The .dist-info directory matches the filename after name and version
        normalisation (legacy spellings still open)."""
        data = zip_bytes({"Foo.Bar-1.0.0.dist-info/METADATA": core_metadata("Foo.Bar", "1.0.0")})
        info = inspect("foo_bar-1.0-py3-none-any.whl", data)
        self.assertEqual(info.name, "Foo.Bar")

    def test_no_metadata(self) -> None:
        """A zip without a top-level .dist-info/METADATA is refused; a nested one does not
        count."""
        data = zip_bytes(
            {"foo/__init__.py": b"", "foo/foo-1.0.dist-info/METADATA": core_metadata("foo", "1.0")}
        )
        error = self.assertRaises(InvalidUpload, inspect, "foo-1.0-py3-none-any.whl", data)
        self.assertIn("no top-level *.dist-info/METADATA", str(error))

    def test_two_dist_infos(self) -> None:
        """A wheel with two .dist-info/METADATA members is refused."""
        data = zip_bytes(
            {
                "foo-1.0.dist-info/METADATA": core_metadata("foo", "1.0"),
                "bar-1.0.dist-info/METADATA": core_metadata("bar", "1.0"),
            }
        )
        error = self.assertRaises(InvalidUpload, inspect, "foo-1.0-py3-none-any.whl", data)
        self.assertIn("more than one", str(error))

    def test_metadata_bomb(self) -> None:
        """A METADATA member that expands beyond the cap (a zip bomb) is refused."""
        huge = core_metadata("foo", "1.0") + b"\n" + b"\0" * MAX_METADATA_SIZE
        data = zip_bytes({"foo-1.0.dist-info/METADATA": huge})
        self.assertLess(len(data), 100_000)
        error = self.assertRaises(InvalidUpload, inspect, "foo-1.0-py3-none-any.whl", data)
        self.assertIn("larger than", str(error))

    def test_lying_member_size(self) -> None:
        """A member whose declared size understates its data is refused, never read past the
        declared size."""
        metadata = core_metadata("foo", "1.0") + b"\n" + b"x" * 5000
        data = bytearray(zip_bytes({"foo-1.0.dist-info/METADATA": metadata}))
        # Patch the uncompressed size in the central directory (offset 24 after its
        # signature) and in the local header (offset 22) to 100 bytes.
        for signature, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
            at = data.find(signature) + offset
            data[at : at + 4] = (100).to_bytes(4, "little")
        error = self.assertRaises(InvalidUpload, inspect, "foo-1.0-py3-none-any.whl", bytes(data))
        self.assertIn("not a valid wheel", str(error))

    def test_not_a_zip(self) -> None:
        """Bytes that are not a zip archive are refused as not a valid wheel."""
        error = self.assertRaises(
            InvalidUpload, inspect, "foo-1.0-py3-none-any.whl", b"not a zip at all" * 100
        )
        self.assertIn("is not a valid wheel", str(error))

    def test_truncated_zip(self) -> None:
        """A wheel cut short is refused."""
        filename, data = make_wheel("foo", "1.0")
        self.assertRaises(InvalidUpload, inspect, filename, data[: len(data) // 2])

    def test_bad_filename(self) -> None:
        """A filename that is not a distribution's is refused before opening anything."""
        _filename, data = make_wheel("foo", "1.0")
        for bad in ("foo-1.0.egg", "foo-1.0.tar.bz2", "../foo-1.0-py3-none-any.whl", "x.whl"):
            self.assertRaises(InvalidUpload, inspect, bad, data)


class SdistTests(SynchronousTestCase):
    """Sdists give their top-level PKG-INFO, read from a stream and capped."""

    def test_tar_gz(self) -> None:
        """A .tar.gz sdist's PKG-INFO is read; sdists have no PEP 658 metadata."""
        filename, data = make_sdist(
            "friendly-bard",
            "2.0rc1",
            summary="S",
            requires_python=">=3.10",
            requires_dist=["attrs"],
            description="D",
        )
        self.assertEqual(filename, "friendly_bard-2.0rc1.tar.gz")
        info = inspect(filename, data)
        self.assertEqual(
            (info.name, info.version, info.summary, info.requires_python, info.core_metadata),
            ("friendly-bard", "2.0rc1", "S", ">=3.10", None),
        )
        self.assertEqual(info.fields["requires_dist"], ["attrs"])
        self.assertEqual(info.fields["description"], "D")

    def test_zip(self) -> None:
        """A .zip sdist's PKG-INFO is read."""
        filename, data = make_sdist("foo", "1.0", summary="zipped", archive="zip")
        self.assertEqual(filename, "foo-1.0.zip")
        info = inspect(filename, data)
        self.assertEqual((info.name, info.version, info.summary), ("foo", "1.0", "zipped"))
        self.assertIsNone(info.core_metadata)

    def test_shortest_pkg_info(self) -> None:
        """The top-level PKG-INFO is used, not one deeper in the tree (e.g. egg-info)."""
        data = tar_gz_bytes(
            [
                ("foo-1.0/foo.egg-info/PKG-INFO", core_metadata("foo", "1.0", summary="deep")),
                ("foo-1.0/PKG-INFO", core_metadata("foo", "1.0", summary="top")),
            ]
        )
        self.assertEqual(inspect("foo-1.0.tar.gz", data).summary, "top")

    def test_zip_prefers_named_directory(self) -> None:
        """In a zip sdist with several top-level PKG-INFO files, the filename's directory
        wins."""
        data = zip_bytes(
            {
                "aaa/PKG-INFO": core_metadata("foo", "1.0", summary="other"),
                "foo-1.0/PKG-INFO": core_metadata("foo", "1.0", summary="right"),
            }
        )
        self.assertEqual(inspect("foo-1.0.zip", data).summary, "right")

    def test_no_pkg_info(self) -> None:
        """An sdist without a top-level PKG-INFO is refused (root-level or nested do not
        count)."""
        for members in (
            [("PKG-INFO", core_metadata("foo", "1.0"))],
            [("foo-1.0/foo.egg-info/PKG-INFO", core_metadata("foo", "1.0"))],
            [("foo-1.0/setup.py", b"")],
        ):
            error = self.assertRaises(
                InvalidUpload, inspect, "foo-1.0.tar.gz", tar_gz_bytes(members)
            )
            self.assertIn("no PKG-INFO", str(error))
        error = self.assertRaises(
            InvalidUpload, inspect, "foo-1.0.zip", zip_bytes({"foo-1.0/setup.py": b""})
        )
        self.assertIn("no PKG-INFO", str(error))

    def test_pkg_info_link(self) -> None:
        """A PKG-INFO that is a symlink is refused, not followed."""
        link = tarfile.TarInfo("foo-1.0/PKG-INFO")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        error = self.assertRaises(InvalidUpload, inspect, "foo-1.0.tar.gz", tar_gz_bytes([link]))
        self.assertIn("not a regular file", str(error))

    def test_pkg_info_bomb(self) -> None:
        """A PKG-INFO larger than the cap is refused, in tar and zip sdists."""
        huge = core_metadata("foo", "1.0") + b"\n" + b"\0" * MAX_METADATA_SIZE
        data = tar_gz_bytes([("foo-1.0/PKG-INFO", huge)])
        self.assertLess(len(data), 100_000)
        error = self.assertRaises(InvalidUpload, inspect, "foo-1.0.tar.gz", data)
        self.assertIn("larger than", str(error))
        data = zip_bytes({"foo-1.0/PKG-INFO": huge})
        error = self.assertRaises(InvalidUpload, inspect, "foo-1.0.zip", data)
        self.assertIn("larger than", str(error))

    def test_scan_limit(self) -> None:
        """A tar whose members expand past the scan limit before PKG-INFO is refused before
        they are decompressed."""
        self.patch(dists, "MAX_TAR_SCAN", 10_000)
        data = tar_gz_bytes(
            [("foo-1.0/big.bin", b"\0" * 20_000), ("foo-1.0/PKG-INFO", core_metadata("foo", "1.0"))]
        )
        error = self.assertRaises(InvalidUpload, inspect, "foo-1.0.tar.gz", data)
        self.assertIn("no PKG-INFO found in the first", str(error))

    def test_not_gzip(self) -> None:
        """A plain tar or random bytes named .tar.gz are refused as not a valid sdist."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            info = tarfile.TarInfo("foo-1.0/PKG-INFO")
            payload = core_metadata("foo", "1.0")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
        for data in (buffer.getvalue(), b"\x1f\x8bgarbage" * 50, b""):
            error = self.assertRaises(InvalidUpload, inspect, "foo-1.0.tar.gz", data)
            self.assertIn("is not a valid sdist", str(error))

    def test_truncated_tar_gz(self) -> None:
        """A .tar.gz cut before its PKG-INFO is refused."""
        data = tar_gz_bytes(
            [
                ("foo-1.0/a.bin", os.urandom(50_000)),
                ("foo-1.0/PKG-INFO", core_metadata("foo", "1.0")),
            ]
        )
        self.assertRaises(InvalidUpload, inspect, "foo-1.0.tar.gz", data[:20_000])

    def test_stream_position_ignored(self) -> None:
        """The archive is read from the start whatever the stream's position."""
        filename, data = make_sdist("foo", "1.0")
        stream = io.BytesIO(data)
        stream.seek(len(data))
        self.assertEqual(inspect_distribution(stream, filename).name, "foo")


class AgreementTests(SynchronousTestCase):
    """``check_agrees`` compares metadata and filename after normalisation."""

    def info(self, name: str, version: str) -> DistInfo:
        return DistInfo(name=name, version=version)

    def test_agrees(self) -> None:
        """Names equal after PEP 503 normalisation and PEP 440-equal versions agree."""
        check_agrees(self.info("Friendly.Bard", "1.0"), "friendly_bard", "1.0.0")
        check_agrees(self.info("foo", "1.0rc1"), "FOO", "1.0-rc.1")

    def test_name_disagrees(self) -> None:
        """Another project name is refused, naming both."""
        error = self.assertRaises(InvalidUpload, check_agrees, self.info("foo", "1"), "bar", "1")
        self.assertIn("'foo'", str(error))
        self.assertIn("'bar'", str(error))

    def test_version_disagrees(self) -> None:
        """Another version is refused, naming both."""
        error = self.assertRaises(
            InvalidUpload, check_agrees, self.info("foo", "1.0"), "foo", "1.0.1"
        )
        self.assertIn("'1.0'", str(error))
        self.assertIn("'1.0.1'", str(error))

    def test_factory_sdist_agrees(self) -> None:
        """A factory sdist agrees with its own filename, and not with a renamed one."""
        filename, data = make_sdist("Foo.Bar", "1.0")
        info = inspect(filename, data)
        check_agrees(info, "foo_bar", "1.0")
        self.assertRaises(InvalidUpload, check_agrees, info, "foo_bar", "1.1")


class DigestTests(SynchronousTestCase):
    """``digest_matches`` accepts the encodings clients send, and nothing else."""

    data = b"some distribution bytes"

    def test_hex(self) -> None:
        """Hex digests match in lower and upper case, for sha256, blake2b and md5."""
        for digest in (
            hashlib.sha256(self.data),
            hashlib.blake2b(self.data, digest_size=32),
            hashlib.md5(self.data),
        ):
            actual = digest.hexdigest()
            self.assertTrue(digest_matches(actual, actual))
            self.assertTrue(digest_matches(actual.upper(), actual))

    def test_base64(self) -> None:
        """URL-safe base64, with or without padding, matches."""
        for digest in (hashlib.sha256(self.data), hashlib.md5(self.data)):
            encoded = base64.urlsafe_b64encode(digest.digest()).decode()
            self.assertTrue(encoded.endswith("="))
            self.assertTrue(digest_matches(encoded, digest.hexdigest()))
            self.assertTrue(digest_matches(encoded.rstrip("="), digest.hexdigest()))

    def test_wrong(self) -> None:
        """Another file's digest, a truncated digest, garbage and empty text do not match."""
        actual = hashlib.sha256(self.data).hexdigest()
        other = hashlib.sha256(b"other").digest()
        for sent in (
            other.hex(),
            base64.urlsafe_b64encode(other).decode(),
            actual[:-2],
            actual + "00",
            "zz" * 32,
            "not a digest!",
            "",
            "é" * 64,
            hashlib.md5(self.data).hexdigest(),
        ):
            self.assertFalse(digest_matches(sent, actual), sent)
        self.assertFalse(digest_matches(actual, "not hex"))


class FactoryTests(SynchronousTestCase):
    """The factory's files are real: pip and uv install the wheel, pip fetches the sdist."""

    def run_tool(self, *argv: str) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.dir, "index"))

    def write(self, filename: str, data: bytes) -> str:
        path = os.path.join(self.dir, "index", filename)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_reproducible(self) -> None:
        """The same arguments give the same bytes (so digests in tests are stable)."""
        self.assertEqual(make_wheel("foo", "1.0"), make_wheel("foo", "1.0"))
        self.assertEqual(make_sdist("foo", "1.0"), make_sdist("foo", "1.0"))

    def test_pip_installs_wheel(self) -> None:
        """pip installs the wheel (checking RECORD) and the package imports."""
        filename, data = make_wheel("Friendly.Bard", "1.2", requires_dist=[])
        path = self.write(filename, data)
        target = os.path.join(self.dir, "site")
        self.run_tool(
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
            "--target",
            target,
            path,
        )
        with open(os.path.join(target, "friendly_bard", "__init__.py")) as f:
            self.assertIn('"1.2"', f.read())
        self.assertTrue(os.path.isdir(os.path.join(target, "friendly_bard-1.2.dist-info")))

    def test_uv_installs_wheel(self) -> None:
        """uv installs the wheel offline."""
        uv = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
        if uv is None:
            self.skipTest("uv is not installed")
        filename, data = make_wheel("foo-bar", "0.1")
        path = self.write(filename, data)
        target = os.path.join(self.dir, "site")
        self.run_tool(
            uv,
            "pip",
            "install",
            "--offline",
            "--no-index",
            "--no-cache",
            "--python",
            sys.executable,
            "--target",
            target,
            path,
        )
        self.assertTrue(os.path.isfile(os.path.join(target, "foo_bar", "__init__.py")))

    def test_pip_downloads_sdist(self) -> None:
        """pip download finds the sdist in a find-links directory and builds its metadata."""
        filename, data = make_sdist("Foo.Bar", "3.0", summary="s")
        self.write(filename, data)
        out = os.path.join(self.dir, "out")
        self.run_tool(
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--find-links",
            os.path.join(self.dir, "index"),
            "-d",
            out,
            "foo.bar==3.0",
        )
        self.assertEqual(os.listdir(out), [filename])
