"""The S3 storage (``pypi.storage = s3``) against real S3 servers.

SeaweedFS (``PPC_TEST_S3_URL``, a real S3 API enforcing SigV4) runs the shared conformance suite
and most tests; moto (``PPC_TEST_AWS_URL``) checks what SeaweedFS does not report back
(server-side encryption, ACLs, storage classes).  Every storage gets a bucket of its own, made
by ``start()`` and emptied and removed afterwards.  The tests every object store passes are in
:mod:`.objectstore_cases`; this module supplies their S3 hooks and adds what only S3 has.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any, cast

import attrs
from botocore.exceptions import ClientError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pypicloud_tx.backends.storage._objects import (
    METADATA_BUDGET,
    Layout,
    decode_metadata,
    encode_metadata,
)
from pypicloud_tx.backends.storage.s3 import S3Options, S3Storage
from pypicloud_tx.config.options import parse_options
from pypicloud_tx.errors import BackendUnavailable, Conflict
from pypicloud_tx.runtime import Runtime
from tests.s3buckets import moto, new_bucket_name, raw_client, remove_bucket, seaweed

from . import objectstore_cases as cases
from .conformance import WHEN, package_file
from .objectstore_cases import MB, make_wheel

#: Options that make a dead endpoint fail fast in tests.
FAST = {"connect_timeout": "2", "read_timeout": "10", "max_attempts": "1"}
#: S3's smallest part, so that multipart uploads stay small in tests.
SMALL_PARTS = {"multipart_threshold": "5MB", "multipart_chunksize": "5MB"}


def build(options: dict[str, str], runtime: Runtime | None = None) -> S3Storage:
    """An S3Storage from ``storage.*`` options, on ``runtime`` (else the synchronous one)."""
    return S3Storage.from_config(
        parse_options(S3Options, "storage", options), runtime or Runtime.synchronous()
    )


class S3Case(cases.ObjectStoreCase[S3Storage], SynchronousTestCase):
    """Builds started storages on SeaweedFS, each on a bucket of its own, removed afterwards,
    and looks behind their back with a plain boto3 client."""

    endpoint_option = "endpoint_url"
    part = 5 * MB
    part_options = SMALL_PARTS
    # SeaweedFS replaces application/octet-stream by a type guessed from the name
    # (application/gzip); moto keeps it (MotoOptionTests).
    tarball_types = ("application/octet-stream", "application/gzip")
    pypicloud_summary = "A demo"  # S3 metadata is ASCII

    server: dict[str, str]

    def setUp(self) -> None:
        self.server = seaweed()
        self.client = raw_client(self.server)

    def unstarted(self, runtime: Runtime | None = None, /, **options: str) -> S3Storage:
        return build({**self.server, **FAST, **options}, runtime)

    def new_bucket(self) -> str:
        return new_bucket_name()

    def remove_bucket(self, bucket: str) -> None:
        remove_bucket(self.client, bucket)

    def keys(self, storage: S3Storage) -> list[str]:
        found = self.client.list_objects_v2(Bucket=storage.bucket).get("Contents", [])
        return sorted(item["Key"] for item in found)

    def head(self, storage: S3Storage, key: str) -> dict[str, Any]:
        """The HEAD answer for the object ``key``."""
        return cast(dict[str, Any], self.client.head_object(Bucket=storage.bucket, Key=key))

    def write_raw(
        self, storage: S3Storage, key: str, data: bytes, metadata: dict[str, str] | None = None
    ) -> None:
        self.client.put_object(Bucket=storage.bucket, Key=key, Body=data, Metadata=metadata or {})

    def delete_raw(self, storage: S3Storage, key: str) -> None:
        self.client.delete_object(Bucket=storage.bucket, Key=key)

    def raw_metadata(self, storage: S3Storage, key: str) -> dict[str, str]:
        return cast(dict[str, str], self.head(storage, key)["Metadata"])

    def raw_type(self, storage: S3Storage, key: str) -> tuple[str, str | None]:
        head = self.head(storage, key)
        return head["ContentType"], head.get("ContentEncoding")

    def raw_version(self, storage: S3Storage, key: str) -> object:
        return self.head(storage, key)["ETag"]

    def object_url(self, storage: S3Storage, key: str) -> str:
        return f"{self.server['endpoint_url']}/{storage.bucket}/{key}"

    def pending_uploads(self, storage: S3Storage) -> list[Any]:
        return cast(
            list[Any],
            self.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []),
        )


class S3ConformanceTests(cases.DefaultLayoutConformance[S3Storage], S3Case):
    """S3Storage on SeaweedFS passes the IStorage conformance suite (default layout)."""


class S3PrefixConformanceTests(cases.PrefixLayoutConformance[S3Storage], S3Case):
    """S3Storage passes the suite with a key prefix and without the hash folder."""


class ConfigurationTests(cases.ConfigurationCases[S3Storage, S3Options], SynchronousTestCase):
    """Building an S3Storage from ``storage.*`` options (no network)."""

    options_type = S3Options
    storage_type = S3Storage
    registry_names = ("s3", "pypicloud.storage.S3Storage", "pypicloud.storage.s3.S3Storage")
    vendor_refusals = (
        ({"server_side_encryption": "rot13"}, "storage.server_side_encryption"),
        ({"addressing_style": "sideways"}, "storage.addressing_style"),
        ({"aws_access_key_id": "AKIA"}, "storage.aws_secret_access_key"),
        ({"endpoint_url": "not a url"}, "storage.endpoint_url"),
        ({"multipart_chunksize": "1MB"}, "storage.multipart_chunksize"),
        ({"proxies": "just a line"}, "storage.proxies"),
    )

    def configured(self, **values: str) -> S3Storage:
        return S3Storage.from_config(self.options(**values), Runtime.synchronous())

    def test_botocore_options_passed_through(self) -> None:
        """Options pypicloud passed to botocore's Config reach the client's config."""
        storage = self.configured(
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

    def test_public_urls_for_aws(self) -> None:
        """With ``storage.public_url`` downloads go to pypicloud's public URL forms: the regional
        endpoint when a region is set, the bucket's virtual host otherwise; keys are quoted
        (``+`` would otherwise read as a space)."""
        file = package_file(b"x", filename="demo_pkg-1.0+local-py3-none-any.whl")
        key = Layout("p/", True).key("demo-pkg", file.filename).replace("+", "%2B")
        regional = self.configured(public_url="true", region_name="eu-central-1", prefix="p/")
        self.assertEqual(
            self.successResultOf(regional.download_url(file)),
            f"https://s3.eu-central-1.amazonaws.com/b/{key}",
        )
        classic = self.configured(public_url="true", prefix="p/")
        self.assertEqual(
            self.successResultOf(classic.download_url(file)), f"https://b.s3.amazonaws.com/{key}"
        )


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


class LayoutTests(cases.LayoutCases[S3Storage], S3Case):
    """What lands in the bucket."""


class PypicloudBucketTests(cases.PypicloudBucketCases[S3Storage], S3Case):
    """A bucket written by pypicloud is served as it is."""


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


class DownloadTests(cases.DownloadCases[S3Storage], S3Case):
    """Presigned URLs and streamed reads."""

    def test_redirect_url_expires(self) -> None:
        """The presigned URL lives ``storage.expire_after`` seconds."""
        storage = self.started(expire_after="120")
        file = self.store(storage, b"data")
        url = self.successResultOf(storage.download_url(file))
        assert url is not None
        self.assertIn("X-Amz-Expires=120", url)


class UploadTests(cases.UploadCases[S3Storage], S3Case):
    """Multipart uploads, failures half-way and simultaneous uploads."""

    def test_large_upload_in_parts(self) -> None:
        """A 20 MB file with a 5 MB threshold is uploaded in 4 parts, reads back intact, and
        its sidecar matches the multipart ETag (the exact record is listed, not one read back
        from the object, which would have lost the non-ASCII summary)."""
        storage = self.in_parts()
        data = os.urandom(20 * MB)
        file = self.store(storage, data, summary="Gro\u00df")
        key = Layout("", True).key(file.name, file.filename)
        self.assertTrue(self.head(storage, key)["ETag"].endswith('-4"'))
        self.assertEqual(hashlib.sha256(self.read(storage, file)).hexdigest(), file.sha256)
        self.assertEqual(self.listed(storage)[file.filename].to_record(), file.to_record())

    def test_conditional_writes_detected(self) -> None:
        """start() finds that SeaweedFS honours If-None-Match."""
        self.assertTrue(self.started().conditional)

    def test_without_conditional_writes(self) -> None:
        """With ``storage.conditional_put = false`` a duplicate is still refused (by looking
        first) and the first upload's bytes stay."""
        storage = self.started(conditional_put="false")
        self.assertFalse(storage.conditional)
        first = self.store(storage, b"first")
        self.failureResultOf(
            storage.put(package_file(b"second"), io.BytesIO(b"second"), None, False), Conflict
        )
        self.assertEqual(self.read(storage, first), b"first")


class LifecycleTests(cases.LifecycleCases[S3Storage], S3Case):
    """Start-up, health and unreachable servers."""

    def test_bucket_created(self) -> None:
        """start() creates a missing bucket; starting again (as another process) is fine."""
        bucket = new_bucket_name()
        storage = self.started(bucket=bucket)
        self.client.head_bucket(Bucket=bucket)
        self.successResultOf(build({**self.server, "bucket": bucket}).start())
        self.assertEqual(self.successResultOf(storage.check_health()), (True, ""))

    def test_bad_credentials(self) -> None:
        """Wrong credentials fail with BackendUnavailable naming the options to check, and the
        secret never appears in the message."""
        storage = self.unstarted(bucket=new_bucket_name(), aws_secret_access_key="WRONG1")
        failure = self.failureResultOf(storage.list(), BackendUnavailable)
        self.assertIn("storage.aws_access_key_id", failure.value.message)
        self.assertNotIn("WRONG1", failure.value.message)


class MotoOptionTests(S3Case):
    """Object options, checked on moto (which reports them back)."""

    def setUp(self) -> None:
        self.server = moto()
        self.client = raw_client(self.server)

    def test_server_side_encryption(self) -> None:
        """``storage.server_side_encryption`` encrypts the file and its sidecars."""
        storage = self.started(server_side_encryption="AES256")
        file = self.store(storage, b"secret", b"Name: demo-pkg\n")
        key = Layout("", True).key(file.name, file.filename)
        for name in (key, key + ".meta", key + ".metadata"):
            self.assertEqual(self.head(storage, name).get("ServerSideEncryption"), "AES256")

    def test_object_acl(self) -> None:
        """``storage.object_acl`` sets the canned ACL of uploaded objects."""
        storage = self.started(object_acl="public-read")
        file = self.store(storage, b"public")
        key = Layout("", True).key(file.name, file.filename)
        grants = self.client.get_object_acl(Bucket=storage.bucket, Key=key)["Grants"]
        self.assertIn(
            ("http://acs.amazonaws.com/groups/global/AllUsers", "READ"),
            [(g["Grantee"].get("URI"), g["Permission"]) for g in grants],
        )

    def test_storage_class(self) -> None:
        """``storage.storage_class`` sets the class of uploaded files, also in parts."""
        storage = self.in_parts(storage_class="STANDARD_IA")
        small = self.store(storage, b"small")
        large = self.store(storage, b"L" * (6 * MB), filename="demo_pkg-2.0.tar.gz")
        for file in (small, large):
            key = Layout("", True).key(file.name, file.filename)
            self.assertEqual(self.head(storage, key).get("StorageClass"), "STANDARD_IA")

    def test_content_types(self) -> None:
        """Wheels and zips are stored as application/zip, tarballs as application/octet-stream,
        never with a Content-Encoding (a redirected client must not unpack a .tar.gz)."""
        storage = self.started()
        for filename, expected in (
            ("demo_pkg-1.0-py3-none-any.whl", "application/zip"),
            ("demo_pkg-1.0.zip", "application/zip"),
            ("demo_pkg-1.0.tar.gz", "application/octet-stream"),
        ):
            file = self.store(storage, b"bytes", filename=filename)
            key = Layout("", True).key(file.name, file.filename)
            self.assertEqual(self.raw_type(storage, key), (expected, None))

    def test_conformance_basics_on_moto(self) -> None:
        """The basic cycle works on moto too: put, conflict, list, open, delete."""
        storage = self.started()
        file = self.store(storage, b"bytes", b"Name: demo-pkg\n")
        self.failureResultOf(
            storage.put(package_file(b"other"), io.BytesIO(b"other"), None, False), Conflict
        )
        self.assertEqual(self.listed(storage)[file.filename].to_record(), file.to_record())
        self.successResultOf(storage.delete(file))
        self.assertEqual(self.keys(storage), [])


class ThreadPoolTests(cases.ThreadPoolCases[S3Storage], S3Case, TestCase):
    """With a real thread pool (as in the server) every call answers through the reactor."""
