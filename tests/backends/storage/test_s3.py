"""The S3 storage (``pypi.storage = s3``) against real S3 servers.

SeaweedFS (``PPC_TEST_S3_URL``, a real S3 API enforcing SigV4) runs the shared conformance suite
and most tests; moto (``PPC_TEST_AWS_URL``) checks what SeaweedFS does not report back
(server-side encryption, ACLs, storage classes).  Every storage gets a bucket of its own, made
by ``start()`` and emptied and removed afterwards.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import urllib.request
import zipfile
from typing import IO, Any, cast
from urllib.parse import urlsplit

import attrs
from botocore.exceptions import ClientError
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pypicloud_tx.backends._threads import ThreadPoolService
from pypicloud_tx.backends.storage._objects import (
    METADATA_BUDGET,
    Layout,
    ObjectReader,
    decode_metadata,
    encode_metadata,
)
from pypicloud_tx.backends.storage.s3 import S3Options, S3Storage
from pypicloud_tx.config.options import parse_options
from pypicloud_tx.config.registry import resolve
from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.errors import BackendUnavailable, ConfigError, Conflict, InvalidUpload, NotFound
from pypicloud_tx.interfaces import IStorage
from pypicloud_tx.runtime import Runtime
from pypicloud_tx.web.download import FileBody
from tests.s3buckets import moto, new_bucket_name, raw_client, remove_bucket, seaweed

from .conformance import WHEN, IStorageConformance, package_file

MB = 1024 * 1024
#: Options that make a dead endpoint fail fast in tests.
FAST = {"connect_timeout": "2", "read_timeout": "10", "max_attempts": "1"}


def build(options: dict[str, str]) -> S3Storage:
    """An S3Storage from ``storage.*`` options, on the synchronous runtime."""
    return S3Storage.from_config(
        parse_options(S3Options, "storage", options), Runtime.synchronous()
    )


def make_wheel(name: str = "demo_pkg", version: str = "1.0", summary: str = "A demo") -> bytes:
    """A small but real wheel whose METADATA says ``name``, ``version`` and ``summary``."""
    metadata = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: {summary}\n"
        "Requires-Python: >=3.9\nRequires-Dist: attrs\n"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "")
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)
        archive.writestr(
            f"{name}-{version}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
        )
        archive.writestr(f"{name}-{version}.dist-info/RECORD", "")
    return buffer.getvalue()


class FailingAfter(io.RawIOBase):
    """An upload stream that yields ``good`` bytes, then fails (the client went away)."""

    def __init__(self, good: int) -> None:
        self.good = good
        self.sent = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.sent >= self.good:
            raise RuntimeError("client went away")
        n = min(size if size and size > 0 else self.good, self.good - self.sent)
        self.sent += n
        return b"z" * n


class S3Case(SynchronousTestCase):
    """Builds started storages, each on a bucket of its own, removed afterwards."""

    server: dict[str, str]

    def setUp(self) -> None:
        self.server = seaweed()
        self.client = raw_client(self.server)

    def started(self, **options: str) -> S3Storage:
        """A started storage on a new bucket; ``options`` add to or override the defaults."""
        bucket = options.pop("bucket", None) or new_bucket_name()
        storage = build({**self.server, **FAST, "bucket": bucket, **options})
        self.addCleanup(remove_bucket, self.client, bucket)
        self.successResultOf(storage.start())
        self.addCleanup(lambda: self.successResultOf(storage.stop()))
        return storage

    def keys(self, storage: S3Storage) -> list[str]:
        """Every key in the storage's bucket, sorted."""
        found = self.client.list_objects_v2(Bucket=storage.bucket).get("Contents", [])
        return sorted(item["Key"] for item in found)

    def put(
        self,
        storage: S3Storage,
        data: bytes,
        core: bytes | None = None,
        overwrite: bool = False,
        **fields: Any,
    ) -> PackageFile:
        file = package_file(data, **fields)
        self.successResultOf(storage.put(file, io.BytesIO(data), core, overwrite))
        return file

    def listed(self, storage: S3Storage) -> dict[str, PackageFile]:
        return {f.filename: f for f in self.successResultOf(storage.list())}

    def pypicloud_upload(
        self, storage: S3Storage, data: bytes, filename: str, prefix: str, hashed: bool
    ) -> str:
        """Store ``data`` as pypicloud's S3Storage.upload() did: its key, its metadata."""
        key = Layout(prefix, hashed).key("demo-pkg", filename)
        self.client.put_object(
            Bucket=storage.bucket,
            Key=key,
            Body=data,
            Metadata={
                "name": "demo-pkg",
                "version": "1.0",
                "summary": "A demo",
                "requires_python": ">=3.9",
                "hash_sha256": hashlib.sha256(data).hexdigest(),
                "hash_md5": hashlib.md5(data).hexdigest(),
                "uploader": "carol",
            },
        )
        return key

    def pending_uploads(self, storage: S3Storage) -> list[Any]:
        return cast(
            list[Any],
            self.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []),
        )


class S3ConformanceTests(IStorageConformance, S3Case):
    """S3Storage on SeaweedFS passes the IStorage conformance suite (default layout)."""

    def make_storage(self) -> IStorage:
        return self.started()


class S3PrefixConformanceTests(IStorageConformance, S3Case):
    """S3Storage passes the suite with a key prefix and without the hash folder."""

    def make_storage(self) -> IStorage:
        return self.started(prefix="some/packages/", prepend_hash="false")


class ConfigurationTests(SynchronousTestCase):
    """Building an S3Storage from ``storage.*`` options (no network)."""

    def options(self, **values: str) -> S3Options:
        return parse_options(S3Options, "storage", {"bucket": "b", **values})

    def test_bucket_required(self) -> None:
        """Without ``storage.bucket`` the configuration is refused, naming the option."""
        e = self.assertRaises(ConfigError, parse_options, S3Options, "storage", {})
        self.assertIn("storage.bucket", e.message)

    def test_pypicloud_defaults(self) -> None:
        """Defaults are pypicloud's: hash folder on, no prefix, URLs valid a day, downloads
        redirected, private objects, signed (not public) URLs."""
        options = self.options()
        self.assertEqual(
            (
                options.prepend_hash,
                options.prefix,
                options.expire_after,
                options.redirect_urls,
                options.object_acl,
                options.public_url,
            ),
            (True, "", 86400, True, None, False),
        )

    def test_registry_names(self) -> None:
        """``pypi.storage = s3`` and pypicloud's class paths choose S3Storage."""
        for value in ("s3", "pypicloud.storage.S3Storage", "pypicloud.storage.s3.S3Storage"):
            self.assertIs(resolve("pypi.storage", value)[1], S3Storage)

    def test_botocore_options_passed_through(self) -> None:
        """Options pypicloud passed to botocore's Config reach the client's config."""
        storage = S3Storage.from_config(
            self.options(
                signature_version="s3v4",
                addressing_style="virtual",
                use_accelerate_endpoint="true",
                payload_signing_enabled="false",
                connect_timeout="3",
                read_timeout="7",
                max_pool_connections="4",
                user_agent_extra="ppc-test",
                proxies="http = http://proxy:3128\nhttps = http://proxy:3129",
                max_attempts="2",
                region_name="eu-west-1",
            ),
            Runtime.synchronous(),
        )
        config = storage.client.meta.config
        self.assertEqual(
            (
                config.signature_version,
                config.s3,
                config.connect_timeout,
                config.read_timeout,
                config.max_pool_connections,
                config.user_agent_extra,
                config.proxies,
                config.retries,
                storage.client.meta.region_name,
            ),
            (
                "s3v4",
                {
                    "addressing_style": "virtual",
                    "use_accelerate_endpoint": True,
                    "payload_signing_enabled": False,
                },
                3,
                7,
                4,
                "ppc-test",
                {"http": "http://proxy:3128", "https": "http://proxy:3129"},
                {"mode": "standard", "total_max_attempts": 2},
                "eu-west-1",
            ),
        )

    def test_refused_values(self) -> None:
        """Wrong values stop start-up with a message naming the option."""
        for values, named in (
            ({"server_side_encryption": "rot13"}, "storage.server_side_encryption"),
            ({"object_acl": "everyone-may-write"}, "storage.object_acl"),
            ({"addressing_style": "sideways"}, "storage.addressing_style"),
            ({"aws_access_key_id": "AKIA"}, "storage.aws_secret_access_key"),
            ({"endpoint_url": "not a url"}, "storage.endpoint_url"),
        ):
            e = self.assertRaises(
                ConfigError, S3Storage.from_config, self.options(**values), Runtime.synchronous()
            )
            self.assertIn(named, e.message)
        for values, named in (
            ({"multipart_chunksize": "1MB"}, "storage.multipart_chunksize"),
            ({"expire_after": "0"}, "storage.expire_after"),
            ({"prefix": "/abs"}, "storage.prefix"),
            ({"no_such_option": "x"}, "storage.no_such_option"),
            ({"proxies": "just a line"}, "storage.proxies"),
        ):
            e = self.assertRaises(
                ConfigError, parse_options, S3Options, "storage", {"bucket": "b", **values}
            )
            self.assertIn(named, e.message)

    def test_public_urls_for_aws(self) -> None:
        """With ``storage.public_url`` downloads go to pypicloud's public URL forms: the regional
        endpoint when a region is set, the bucket's virtual host otherwise; keys are quoted
        (``+`` would otherwise read as a space)."""
        file = package_file(b"x", filename="demo_pkg-1.0+local-py3-none-any.whl")
        key = Layout("p/", True).key("demo-pkg", file.filename).replace("+", "%2B")
        regional = S3Storage.from_config(
            self.options(public_url="true", region_name="eu-central-1", prefix="p/"),
            Runtime.synchronous(),
        )
        self.assertEqual(
            self.successResultOf(regional.download_url(file)),
            f"https://s3.eu-central-1.amazonaws.com/b/{key}",
        )
        classic = S3Storage.from_config(
            self.options(public_url="true", prefix="p/"), Runtime.synchronous()
        )
        self.assertEqual(
            self.successResultOf(classic.download_url(file)), f"https://b.s3.amazonaws.com/{key}"
        )

    def test_redirect_urls_off_streams(self) -> None:
        """With ``storage.redirect_urls = false`` download_url() is None: the server streams."""
        storage = S3Storage.from_config(self.options(redirect_urls="false"), Runtime.synchronous())
        self.assertIsNone(self.successResultOf(storage.download_url(package_file(b"x"))))


class MetadataEncodingTests(SynchronousTestCase):
    """What goes into object metadata, and reading pypicloud's."""

    def test_fits_and_is_ascii(self) -> None:
        """A huge non-ASCII summary is folded to printable ASCII and cut so that all metadata
        stays within S3's 2 KB; the other fields are kept whole."""
        file = package_file(
            b"x",
            summary="Caf\u00e9 na\u00efve \u65e5\u672c\n" * 500,
            requires_python=">=3.9",
            uploader="b\u00e9a",
        )
        meta = encode_metadata(file)
        self.assertLessEqual(sum(len(k) + len(v) for k, v in meta.items()), METADATA_BUDGET)
        self.assertTrue(all(v.isascii() and v.isprintable() for v in meta.values()))
        self.assertTrue(meta["summary"].startswith("Cafe naive Cafe naive"))
        self.assertEqual(
            (meta["hash-sha256"], meta["requires-python"], meta["uploader"], meta["name"]),
            (file.sha256, ">=3.9", "bea", "demo-pkg"),
        )

    def test_reads_pypicloud_keys(self) -> None:
        """pypicloud's underscored keys and our dashed ones read the same."""
        pypicloud = {
            "name": "demo-pkg",
            "version": "1.0",
            "summary": "s",
            "requires_python": ">=3.8",
            "hash_sha256": "a" * 64,
            "hash_md5": "b" * 32,
            "uploader": "alice",
        }
        ours = {k.replace("_", "-"): v for k, v in pypicloud.items()}
        expected = {
            "name": "demo-pkg",
            "version": "1.0",
            "summary": "s",
            "requires_python": ">=3.8",
            "sha256": "a" * 64,
            "md5": "b" * 32,
            "uploader": "alice",
        }
        self.assertEqual(decode_metadata(pypicloud), expected)
        self.assertEqual(decode_metadata(ours), expected)

    def test_round_trip(self) -> None:
        """Every fixed field of a record survives encoding (except the yank state, which lives
        only in the sidecar)."""
        file = package_file(
            b"x", summary="plain", requires_python=">=3", uploader="u", metadata_sha256="c" * 64
        )
        decoded = decode_metadata(encode_metadata(file))
        for field in ("name", "version", "summary", "requires_python", "sha256", "md5"):
            self.assertEqual(decoded[field], getattr(file, field))
        self.assertEqual(
            (decoded["blake2b_256"], decoded["upload_time"], decoded["metadata_sha256"]),
            (file.blake2b_256, WHEN, "c" * 64),
        )

    def test_pypicloud_key_layout(self) -> None:
        """Keys are pypicloud's: prefix, first 4 hex digits of md5(filename), name, filename."""
        filename = "demo_pkg-1.0-py3-none-any.whl"
        digest = hashlib.md5(filename.encode()).hexdigest()[:4]
        self.assertEqual(
            Layout("pre/", True).key("demo-pkg", filename), f"pre/{digest}/demo-pkg/{filename}"
        )
        self.assertEqual(Layout("pre", False).key("demo-pkg", filename), f"predemo-pkg/{filename}")
        self.assertIsNone(Layout("pre/", True).parse(f"pre/0000/demo-pkg/{filename}"))


class LayoutTests(S3Case):
    """What lands in the bucket."""

    def test_objects_written(self) -> None:
        """put() writes the file, a JSON sidecar and the core metadata under pypicloud's key,
        with the pypicloud-compatible metadata and a Content-Type that is never gzip."""
        storage = self.started(prefix="pkgs/")
        file = self.put(storage, b"wheel", b"Name: demo-pkg\n", summary="s", uploader="bob")
        key = Layout("pkgs/", True).key("demo-pkg", file.filename)
        self.assertEqual(self.keys(storage), [key, key + ".meta", key + ".metadata"])
        head = self.client.head_object(Bucket=storage.bucket, Key=key)
        self.assertEqual(
            {k: head["Metadata"].get(k) for k in ("name", "version", "summary", "uploader")},
            {"name": "demo-pkg", "version": "1.0", "summary": "s", "uploader": "bob"},
        )
        self.assertEqual(head["Metadata"]["hash-sha256"], file.sha256)
        self.assertEqual(head["ContentType"], "application/zip")
        tarball = self.put(storage, b"sdist", filename="demo_pkg-2.0.tar.gz")
        head = self.client.head_object(
            Bucket=storage.bucket, Key=Layout("pkgs/", True).key("demo-pkg", tarball.filename)
        )
        # SeaweedFS replaces application/octet-stream by a type guessed from the name
        # (application/gzip); moto keeps it (MotoOptionTests).  Never Content-Encoding.
        self.assertIn(head["ContentType"], ("application/octet-stream", "application/gzip"))
        self.assertNotIn("ContentEncoding", head)

    def test_delete_removes_every_object(self) -> None:
        """delete() leaves nothing of the file in the bucket."""
        storage = self.started()
        file = self.put(storage, b"data", b"Name: demo-pkg\n")
        self.successResultOf(storage.delete(file))
        self.assertEqual(self.keys(storage), [])

    def test_sidecar_without_object_not_listed(self) -> None:
        """A sidecar whose object is gone (an interrupted delete) is never listed."""
        storage = self.started()
        file = self.put(storage, b"data")
        key = Layout("", True).key(file.name, file.filename)
        self.client.delete_object(Bucket=storage.bucket, Key=key)
        self.assertEqual(self.listed(storage), {})

    def test_stale_sidecar_ignored(self) -> None:
        """When the object was replaced but its sidecar was not (a crash between the two),
        list() reports the object's real digests and size, not the stale record."""
        storage = self.started()
        file = self.put(storage, b"old bytes", summary="old")
        key = Layout("", True).key(file.name, file.filename)
        self.client.put_object(
            Bucket=storage.bucket,
            Key=key,
            Body=b"new bytes!",
            Metadata={"name": "demo-pkg", "version": "1.0", "summary": "new"},
        )
        listed = self.listed(storage)[file.filename]
        self.assertEqual(
            (listed.sha256, listed.size, listed.summary),
            (hashlib.sha256(b"new bytes!").hexdigest(), 10, "new"),
        )

    def test_foreign_keys_ignored(self) -> None:
        """Objects that are not where a package file goes (other data in the bucket, another
        prefix, a key without the hash folder) are not listed."""
        storage = self.started(prefix="pkgs/")
        kept = self.put(storage, b"kept")
        for key in (
            "readme.txt",
            "pkgs/notes.txt",
            "pkgs/demo-pkg/demo_pkg-1.0-py3-none-any.whl",
            "pkgs/ffff/demo-pkg/demo_pkg-3.0.tar.gz",
            "other/1234/demo-pkg/demo_pkg-1.0.tar.gz",
        ):
            self.client.put_object(Bucket=storage.bucket, Key=key, Body=b"junk")
        self.assertEqual(list(self.listed(storage)), [kept.filename])

    def test_save_record_keeps_the_object(self) -> None:
        """save_record() rewrites only the sidecar: the object's bytes and ETag stay."""
        storage = self.started()
        file = self.put(storage, b"data")
        key = Layout("", True).key(file.name, file.filename)
        before = self.client.head_object(Bucket=storage.bucket, Key=key)["ETag"]
        self.successResultOf(storage.save_record(attrs.evolve(file, yanked="bad")))
        self.assertEqual(self.client.head_object(Bucket=storage.bucket, Key=key)["ETag"], before)
        self.assertEqual(self.listed(storage)[file.filename].yanked, "bad")


class PypicloudBucketTests(S3Case):
    """A bucket written by pypicloud is served as it is."""

    def check_served(self, storage: S3Storage, prefix: str, hashed: bool) -> None:
        wheel = make_wheel(summary="Caf\u00e9 demo")
        filename = "demo_pkg-1.0-py3-none-any.whl"
        key = self.pypicloud_upload(storage, wheel, filename, prefix, hashed)
        listed = self.listed(storage)
        self.assertEqual(list(listed), [filename])
        file = listed[filename]
        self.assertEqual(
            (
                file.name,
                file.version,
                file.size,
                file.sha256,
                file.summary,
                file.requires_python,
                file.uploader,
                file.metadata.get("requires_dist"),
            ),
            (
                "demo-pkg",
                "1.0",
                len(wheel),
                hashlib.sha256(wheel).hexdigest(),
                "Caf\u00e9 demo",
                ">=3.9",
                "carol",
                ["attrs"],
            ),
        )
        stream = self.successResultOf(storage.open(file))
        self.addCleanup(stream.close)
        self.assertEqual(stream.read(), wheel)
        core = self.successResultOf(storage.open_metadata(file))
        self.assertIn(b"Summary: Caf\xc3\xa9 demo", core)
        self.assertEqual(file.metadata_sha256, hashlib.sha256(core).hexdigest())
        # The record read back was saved: the next rebuild reads it instead of the archive.
        self.assertEqual(self.keys(storage), sorted([key, key + ".meta", key + ".metadata"]))
        self.assertEqual(self.listed(storage)[filename].to_record(), file.to_record())

    def test_default_layout(self) -> None:
        """Objects under ``<hash>/<name>/<filename>`` with pypicloud's metadata are listed with
        their metadata read back from the archive, can be opened, and get a sidecar."""
        self.check_served(self.started(), "", True)

    def test_prefix_without_hash(self) -> None:
        """pypicloud's ``storage.prefix`` and ``storage.prepend_hash = false`` layout works."""
        self.check_served(self.started(prefix="pypi/", prepend_hash="false"), "pypi/", False)

    def test_old_object_without_metadata(self) -> None:
        """An object from before pypicloud stored metadata (none at all) is listed with the
        name and version of its filename and digests computed from its bytes."""
        storage = self.started()
        filename = "demo_pkg-2.0rc1.tar.gz"
        key = Layout("", True).key("demo-pkg", filename)
        self.client.put_object(Bucket=storage.bucket, Key=key, Body=b"not really a tarball")
        file = self.listed(storage)[filename]
        self.assertEqual(
            (file.name, file.version, file.sha256, file.summary, file.metadata_sha256),
            ("demo-pkg", "2.0rc1", hashlib.sha256(b"not really a tarball").hexdigest(), "", None),
        )


class ReadOnlyS3Storage(S3Storage):
    """An S3Storage whose credentials may read but not write (as under a read-only policy)."""

    def _v_write(self, key: str, data: bytes, content_type: str, if_absent: bool) -> None:
        raise ClientError(
            {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject"
        )


class ReadOnlyBucketTests(S3Case):
    """A bucket the server may not write to is still listed and served."""

    def test_write_back_refused(self) -> None:
        """When saving the read-back record is refused, list() still reports the pypicloud
        object (with its core metadata hash left unset, as no .metadata object exists)."""
        storage = self.started()
        wheel = make_wheel()
        self.pypicloud_upload(storage, wheel, "demo_pkg-1.0-py3-none-any.whl", "", True)
        readonly = ReadOnlyS3Storage(
            **{f.alias or f.name: getattr(storage, f.name) for f in attrs.fields(S3Storage)}
        )
        file = self.listed(readonly)["demo_pkg-1.0-py3-none-any.whl"]
        self.assertEqual(
            (file.sha256, file.summary, file.metadata_sha256),
            (hashlib.sha256(wheel).hexdigest(), "A demo", None),
        )
        self.assertEqual(len(self.keys(storage)), 1)


class DownloadTests(S3Case):
    """Redirect URLs and streamed reads."""

    def test_redirect_url_downloads(self) -> None:
        """download_url() gives a presigned URL that anyone can fetch without credentials,
        returning exactly the stored bytes."""
        storage = self.started()
        data = os.urandom(300_000)
        file = self.put(storage, data)
        url = self.successResultOf(storage.download_url(file))
        assert url is not None
        request = urllib.request.Request(url)
        self.assertFalse(request.has_header("Authorization"))
        with urllib.request.urlopen(request, timeout=10) as response:
            self.assertEqual(response.read(), data)

    def test_redirect_url_expires(self) -> None:
        """The presigned URL lives ``storage.expire_after`` seconds."""
        storage = self.started(expire_after="120")
        file = self.put(storage, b"data")
        url = self.successResultOf(storage.download_url(file))
        assert url is not None
        self.assertIn("X-Amz-Expires=120", url)

    def test_public_url_with_endpoint(self) -> None:
        """With ``storage.public_url`` and an endpoint, the URL is ``<endpoint>/<bucket>/<key>``."""
        storage = self.started(public_url="true")
        file = self.put(storage, b"data")
        key = Layout("", True).key(file.name, file.filename)
        self.assertEqual(
            self.successResultOf(storage.download_url(file)),
            f"{self.server['endpoint_url']}/{storage.bucket}/{key}",
        )

    def test_open_streams(self) -> None:
        """open() returns a stream that reads the object piece by piece (not a copy of it in
        memory) and knows the object's size."""
        storage = self.started()
        data = os.urandom(3 * MB + 17)
        file = self.put(storage, data)
        stream = self.successResultOf(storage.open(file))
        self.addCleanup(stream.close)
        self.assertIsInstance(stream, ObjectReader)
        self.assertEqual(cast(ObjectReader, stream).size, len(data))
        chunks = []
        while chunk := stream.read(64 * 1024):
            self.assertLessEqual(len(chunk), 64 * 1024)
            chunks.append(chunk)
        self.assertEqual(b"".join(chunks), data)

    def test_seek_reads_a_range(self) -> None:
        """Seeking, from the start, the current position or the end, then reading gives the
        bytes at that position (a new ranged GET each time)."""
        storage = self.started()
        data = bytes(range(256)) * 4096
        file = self.put(storage, data)
        stream = self.successResultOf(storage.open(file))
        self.addCleanup(stream.close)
        self.assertEqual(stream.read(10), data[:10])
        stream.seek(500_000)
        self.assertEqual(stream.read(1000), data[500_000:501_000])
        stream.seek(-100, io.SEEK_END)
        self.assertEqual(stream.read(), data[-100:])
        stream.seek(5)
        stream.seek(10, io.SEEK_CUR)
        self.assertEqual((stream.tell(), stream.read(5)), (15, data[15:20]))
        self.assertEqual(stream.read(0), b"")

    def test_range_request_through_file_body(self) -> None:
        """The web layer's FileBody answers a Range request on a streamed S3 object with 206
        and exactly the requested bytes."""
        storage = self.started()
        data = os.urandom(2 * MB)
        file = self.put(storage, data)
        stream = self.successResultOf(storage.open(file))
        treq = StubTreq(FileBody(file, stream, 60))
        response = self.successResultOf(
            treq.get("http://example.test/f", headers={b"Range": [b"bytes=1000000-1000999"]})
        )
        self.assertEqual(response.code, 206)
        self.assertEqual(self.successResultOf(response.content()), data[1_000_000:1_001_000])
        treq.flush()

    def test_replaced_while_reading(self) -> None:
        """A stream never mixes two versions: if the object is replaced after open(), a read
        that needs a new request fails with OSError instead of returning other bytes."""
        storage = self.started()
        file = self.put(storage, b"a" * 100_000)
        stream = self.successResultOf(storage.open(file))
        self.addCleanup(stream.close)
        self.assertEqual(stream.read(10), b"a" * 10)
        self.put(storage, b"b" * 100_000, overwrite=True)
        stream.seek(50_000)
        self.assertRaises(OSError, stream.read, 10)


class UploadTests(S3Case):
    """Multipart uploads, failures half-way and simultaneous uploads."""

    def small_parts(self, **options: str) -> S3Storage:
        return self.started(multipart_threshold="5MB", multipart_chunksize="5MB", **options)

    def test_large_upload_in_parts(self) -> None:
        """A 20 MB file with a 5 MB threshold is uploaded in 4 parts, reads back intact, and
        its sidecar matches the multipart ETag (the exact record is listed, not one read back
        from the object, which would have lost the non-ASCII summary)."""
        storage = self.small_parts()
        data = os.urandom(20 * MB)
        file = self.put(storage, data, summary="Gro\u00df")
        key = Layout("", True).key(file.name, file.filename)
        self.assertTrue(
            self.client.head_object(Bucket=storage.bucket, Key=key)["ETag"].endswith('-4"')
        )
        stream = self.successResultOf(storage.open(file))
        self.addCleanup(stream.close)
        self.assertEqual(hashlib.sha256(stream.read()).hexdigest(), file.sha256)
        self.assertEqual(self.listed(storage)[file.filename].to_record(), file.to_record())

    def test_failure_half_way_leaves_nothing(self) -> None:
        """A multipart upload whose stream fails after the first part leaves no object, no
        sidecar and no pending upload; the same file can be uploaded afterwards."""
        storage = self.small_parts()
        file = package_file(b"z" * (12 * MB))
        failure = self.failureResultOf(
            storage.put(file, cast(IO[bytes], FailingAfter(6 * MB)), b"Name: x\n", False),
            RuntimeError,
        )
        self.assertIn("client went away", str(failure.value))
        self.assertEqual((self.listed(storage), self.keys(storage)), ({}, []))
        self.assertEqual(self.pending_uploads(storage), [])
        self.successResultOf(storage.put(file, io.BytesIO(b"z" * (12 * MB)), None, False))
        self.assertEqual(list(self.listed(storage)), [file.filename])

    def test_multipart_size_mismatch(self) -> None:
        """A multipart upload shorter or longer than announced fails with InvalidUpload and
        leaves nothing behind."""
        storage = self.small_parts()
        file = package_file(b"q" * (11 * MB))
        for data in (b"q" * (11 * MB - 1), b"q" * (11 * MB + 1)):
            self.failureResultOf(storage.put(file, io.BytesIO(data), None, False), InvalidUpload)
        self.assertEqual((self.keys(storage), self.pending_uploads(storage)), ([], []))

    def test_multipart_duplicate_conflicts(self) -> None:
        """A large duplicate fails with Conflict, leaves the first bytes and no pending upload."""
        storage = self.small_parts()
        first = self.put(storage, b"1" * (6 * MB))
        second = package_file(b"2" * (6 * MB))
        self.failureResultOf(
            storage.put(second, io.BytesIO(b"2" * (6 * MB)), None, False), Conflict
        )
        stream = self.successResultOf(storage.open(first))
        self.addCleanup(stream.close)
        self.assertEqual(stream.read(3), b"111")
        self.assertEqual(self.pending_uploads(storage), [])

    def test_simultaneous_uploads_one_wins(self) -> None:
        """Eight simultaneous uploads of one filename: one succeeds, seven get Conflict, and
        the stored bytes and record are the winner's."""
        storage = self.started()
        results: dict[int, str] = {}

        def upload(i: int) -> None:
            data = bytes([65 + i]) * 1000
            d = storage.put(package_file(data, summary=str(i)), io.BytesIO(data), None, False)
            d.addCallbacks(
                lambda _: results.__setitem__(i, "ok"),
                lambda f: results.__setitem__(i, f.type.__name__),
            )

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(sorted(results.values()), ["Conflict"] * 7 + ["ok"])
        winner = next(i for i, result in results.items() if result == "ok")
        listed = self.listed(storage)["demo_pkg-1.0-py3-none-any.whl"]
        stream = self.successResultOf(storage.open(listed))
        self.addCleanup(stream.close)
        self.assertEqual(
            (stream.read(), listed.summary), (bytes([65 + winner]) * 1000, str(winner))
        )

    def test_conditional_writes_detected(self) -> None:
        """start() finds that SeaweedFS honours If-None-Match."""
        self.assertTrue(self.started().conditional)

    def test_without_conditional_writes(self) -> None:
        """With ``storage.conditional_put = false`` a duplicate is still refused (by looking
        first) and the first upload's bytes stay."""
        storage = self.started(conditional_put="false")
        self.assertFalse(storage.conditional)
        first = self.put(storage, b"first")
        self.failureResultOf(
            storage.put(package_file(b"second"), io.BytesIO(b"second"), None, False), Conflict
        )
        stream = self.successResultOf(storage.open(first))
        self.addCleanup(stream.close)
        self.assertEqual(stream.read(), b"first")


class LifecycleTests(S3Case):
    """Start-up, health and unreachable servers."""

    def test_bucket_created(self) -> None:
        """start() creates a missing bucket; starting again (as another process) is fine."""
        bucket = new_bucket_name()
        storage = self.started(bucket=bucket)
        self.client.head_bucket(Bucket=bucket)
        self.successResultOf(build({**self.server, "bucket": bucket}).start())
        self.assertEqual(self.successResultOf(storage.check_health()), (True, ""))

    def test_missing_bucket_unhealthy(self) -> None:
        """A storage on a bucket that does not exist (never started) reports it by name."""
        storage = build({**self.server, **FAST, "bucket": new_bucket_name()})
        healthy, message = self.successResultOf(storage.check_health())
        self.assertFalse(healthy)
        self.assertIn("storage.bucket", message)

    def test_unreachable_endpoint(self) -> None:
        """A dead endpoint fails start(), list() and put() quickly with BackendUnavailable
        naming storage.endpoint_url, and check_health() reports it."""
        with socket_closed_port() as port:
            storage = build(
                {**self.server, **FAST, "endpoint_url": f"http://127.0.0.1:{port}", "bucket": "b"}
            )
            began = time.monotonic()
            for d in (
                storage.start(),
                storage.list(),
                storage.put(package_file(b"x"), io.BytesIO(b"x"), None, False),
                storage.open(package_file(b"x")),
            ):
                failure = self.failureResultOf(d, BackendUnavailable)
                self.assertIn("storage.endpoint_url", failure.value.message)
            healthy, message = self.successResultOf(storage.check_health())
            self.assertEqual((healthy, "storage.endpoint_url" in message), (False, True))
            self.assertLess(time.monotonic() - began, 10)

    def test_bad_credentials(self) -> None:
        """Wrong credentials fail with BackendUnavailable naming the options to check, and the
        secret never appears in the message."""
        storage = build(
            {**self.server, **FAST, "bucket": new_bucket_name(), "aws_secret_access_key": "WRONG1"}
        )
        failure = self.failureResultOf(storage.list(), BackendUnavailable)
        self.assertIn("storage.aws_access_key_id", failure.value.message)
        self.assertNotIn("WRONG1", failure.value.message)

    def test_open_missing_bucket_object(self) -> None:
        """open() of a file in an empty bucket is NotFound, not a server error."""
        storage = self.started()
        self.failureResultOf(storage.open(package_file(b"nothing")), NotFound)


class socket_closed_port:
    """A local TCP port nobody listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        pass


class MotoOptionTests(S3Case):
    """Object options, checked on moto (which reports them back)."""

    def setUp(self) -> None:
        self.server = moto()
        self.client = raw_client(self.server)

    def test_server_side_encryption(self) -> None:
        """``storage.server_side_encryption`` encrypts the file and its sidecars."""
        storage = self.started(server_side_encryption="AES256")
        file = self.put(storage, b"secret", b"Name: demo-pkg\n")
        key = Layout("", True).key(file.name, file.filename)
        for name in (key, key + ".meta", key + ".metadata"):
            head = self.client.head_object(Bucket=storage.bucket, Key=name)
            self.assertEqual(head.get("ServerSideEncryption"), "AES256")

    def test_object_acl(self) -> None:
        """``storage.object_acl`` sets the canned ACL of uploaded objects."""
        storage = self.started(object_acl="public-read")
        file = self.put(storage, b"public")
        key = Layout("", True).key(file.name, file.filename)
        grants = self.client.get_object_acl(Bucket=storage.bucket, Key=key)["Grants"]
        self.assertIn(
            ("http://acs.amazonaws.com/groups/global/AllUsers", "READ"),
            [(g["Grantee"].get("URI"), g["Permission"]) for g in grants],
        )

    def test_storage_class(self) -> None:
        """``storage.storage_class`` sets the class of uploaded files, also in parts."""
        storage = self.started(
            storage_class="STANDARD_IA", multipart_threshold="5MB", multipart_chunksize="5MB"
        )
        small = self.put(storage, b"small")
        large = self.put(storage, b"L" * (6 * MB), filename="demo_pkg-2.0.tar.gz")
        for file in (small, large):
            key = Layout("", True).key(file.name, file.filename)
            head = self.client.head_object(Bucket=storage.bucket, Key=key)
            self.assertEqual(head.get("StorageClass"), "STANDARD_IA")

    def test_content_types(self) -> None:
        """Wheels and zips are stored as application/zip, tarballs as application/octet-stream,
        never with a Content-Encoding (a redirected client must not unpack a .tar.gz)."""
        storage = self.started()
        for filename, expected in (
            ("demo_pkg-1.0-py3-none-any.whl", "application/zip"),
            ("demo_pkg-1.0.zip", "application/zip"),
            ("demo_pkg-1.0.tar.gz", "application/octet-stream"),
        ):
            file = self.put(storage, b"bytes", filename=filename)
            key = Layout("", True).key(file.name, file.filename)
            head = self.client.head_object(Bucket=storage.bucket, Key=key)
            self.assertEqual((head["ContentType"], head.get("ContentEncoding")), (expected, None))

    def test_conformance_basics_on_moto(self) -> None:
        """The basic cycle works on moto too: put, conflict, list, open, delete."""
        storage = self.started()
        file = self.put(storage, b"bytes", b"Name: demo-pkg\n")
        self.failureResultOf(
            storage.put(package_file(b"other"), io.BytesIO(b"other"), None, False), Conflict
        )
        self.assertEqual(self.listed(storage)[file.filename].to_record(), file.to_record())
        self.successResultOf(storage.delete(file))
        self.assertEqual(self.keys(storage), [])


class ThreadPoolTests(TestCase):
    """With a real thread pool (as in the server) every call answers through the reactor."""

    def test_cycle_on_threads(self) -> Deferred[None]:
        """start, put, list, open, download_url, delete and health work off the reactor."""
        from twisted.internet import reactor

        server = seaweed()
        client = raw_client(server)
        bucket = new_bucket_name()
        pool = ThreadPoolService(reactor, "storage", 4)  # type: ignore[arg-type]
        pool.startService()
        self.addCleanup(pool.stopService)
        self.addCleanup(remove_bucket, client, bucket)
        runtime = Runtime(reactor=reactor, threads=lambda name, size: pool.run)
        storage = S3Storage.from_config(
            parse_options(S3Options, "storage", {**server, **FAST, "bucket": bucket}), runtime
        )
        file = package_file(b"threaded")

        async def cycle() -> None:
            await storage.start()
            await storage.put(file, io.BytesIO(b"threaded"), b"Name: demo-pkg\n", False)
            self.assertEqual(await storage.list(), [file])
            stream = await storage.open(file)
            self.assertEqual(stream.read(), b"threaded")
            stream.close()
            url = await storage.download_url(file)
            self.assertEqual(
                urlsplit(url).path, f"/{bucket}/" + storage.layout.key(file.name, file.filename)
            )
            self.assertEqual(await storage.check_health(), (True, ""))
            await storage.delete(file)
            self.assertEqual(await storage.list(), [])
            await storage.stop()

        return Deferred.fromCoroutine(cycle())
