"""The GCS storage (``pypi.storage = gcs``) against fake-gcs-server.

fake-gcs-server (``PPC_TEST_GCS_URL``) speaks GCS's JSON API over plain HTTP without
authentication; the storage talks to it anonymously and signs download URLs with a throwaway
service-account key written by the test (the emulator serves signed URLs without checking the
signature).  Every storage gets a bucket of its own, made by ``start()`` and emptied and
removed afterwards.

What the emulator cannot show: bucket locations (it puts every bucket in its own), the
storage class of resumable uploads, and conditional creates of resumable uploads (it ignores
``ifGenerationMatch`` there: the storage's look-first check refuses a sequential duplicate,
real GCS refuses a simultaneous one when the upload is finalised).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import time
import urllib.request
import zipfile
from typing import IO, Any, cast
from urllib.parse import parse_qs, urlsplit

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from google.api_core import exceptions as api_exceptions
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pypicloud_tx.backends._threads import ThreadPoolService
from pypicloud_tx.backends.storage._objects import (
    Layout,
    ObjectExists,
    ObjectReader,
    UploadReader,
    content_type,
    encode_metadata,
)
from pypicloud_tx.backends.storage.gcs import (
    EMULATOR_PROJECT,
    MAX_V4_EXPIRY,
    GCSOptions,
    GoogleCloudStorage,
)
from pypicloud_tx.config.options import parse_options
from pypicloud_tx.config.registry import resolve
from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.errors import BackendUnavailable, ConfigError, Conflict, InvalidUpload, NotFound
from pypicloud_tx.interfaces import IStorage
from pypicloud_tx.runtime import Runtime
from pypicloud_tx.web.download import FileBody
from tests.gcsbuckets import (
    KEY_EMAIL,
    fakegcs,
    new_bucket_name,
    raw_client,
    remove_bucket,
    throwaway_key,
    write_service_account_key,
)

from .conformance import IStorageConformance, package_file

KB = 1024
MB = 1024 * KB
#: Options that make a dead endpoint fail fast in tests.
FAST = {"connect_timeout": "2", "read_timeout": "10", "retry_deadline": "0"}
#: The smallest resumable chunk, so that resumable uploads stay small in tests.
SMALL_CHUNKS = {"resumable_threshold": "256KB", "resumable_chunksize": "256KB"}


def build(options: dict[str, str], here: str = ".") -> GoogleCloudStorage:
    """A GoogleCloudStorage from ``storage.*`` options, on the synchronous runtime."""
    return GoogleCloudStorage.from_config(
        parse_options(GCSOptions, "storage", options), Runtime.synchronous(here=here)
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


class GCSCase(SynchronousTestCase):
    """Builds started storages, each on a bucket of its own, removed afterwards."""

    server: dict[str, str]

    def setUp(self) -> None:
        self.server = fakegcs()
        self.client = raw_client(self.server)
        self.key_file = write_service_account_key(self.mktemp())

    def started(self, **options: str) -> GoogleCloudStorage:
        """A started storage on a new bucket; ``options`` add to or override the defaults
        (the emulator, fast failures, a signing key)."""
        bucket = options.pop("bucket", None) or new_bucket_name()
        storage = build(
            {
                **self.server,
                **FAST,
                "gcp_service_account_json_filename": self.key_file,
                "bucket": bucket,
                **options,
            }
        )
        self.addCleanup(remove_bucket, self.client, bucket)
        self.successResultOf(storage.start())
        self.addCleanup(lambda: self.successResultOf(storage.stop()))
        return storage

    def keys(self, storage: GoogleCloudStorage) -> list[str]:
        """Every key in the storage's bucket, sorted."""
        return sorted(blob.name for blob in self.client.list_blobs(storage.bucket))

    def blob(self, storage: GoogleCloudStorage, key: str) -> Any:
        """The object ``key`` as the emulator describes it."""
        return self.client.bucket(storage.bucket).get_blob(key)

    def store(
        self,
        storage: GoogleCloudStorage,
        data: bytes,
        core: bytes | None = None,
        overwrite: bool = False,
        **fields: Any,
    ) -> PackageFile:
        file = package_file(data, **fields)
        self.successResultOf(storage.put(file, io.BytesIO(data), core, overwrite))
        return file

    def listed(self, storage: GoogleCloudStorage) -> dict[str, PackageFile]:
        return {f.filename: f for f in self.successResultOf(storage.list())}

    def read(self, storage: GoogleCloudStorage, file: PackageFile) -> bytes:
        stream = self.successResultOf(storage.open(file))
        try:
            return cast(bytes, stream.read())
        finally:
            stream.close()

    def pypicloud_upload(
        self,
        storage: GoogleCloudStorage,
        data: bytes,
        filename: str,
        prefix: str,
        hashed: bool,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Store ``data`` as pypicloud's GoogleCloudStorage.upload() did: its key, its
        metadata (``name``, ``version`` and ``Package.get_metadata()``), no Content-Type."""
        key = Layout(prefix, hashed).key("demo-pkg", filename)
        blob = self.client.bucket(storage.bucket).blob(key)
        blob.metadata = (
            metadata
            if metadata is not None
            else {
                "name": "demo-pkg",
                "version": "1.0",
                "summary": "A d\u00e9mo",  # GCS metadata is UTF-8: pypicloud stored it as is
                "requires_python": ">=3.9",
                "hash_sha256": hashlib.sha256(data).hexdigest(),
                "hash_md5": hashlib.md5(data).hexdigest(),
                "uploader": "carol",
            }
        )
        blob.upload_from_file(io.BytesIO(data))
        return key


class GCSConformanceTests(IStorageConformance, GCSCase):
    """GoogleCloudStorage on fake-gcs-server passes the IStorage conformance suite."""

    def make_storage(self) -> IStorage:
        return self.started()


class GCSPrefixConformanceTests(IStorageConformance, GCSCase):
    """GoogleCloudStorage passes the suite with a key prefix and without the hash folder."""

    def make_storage(self) -> IStorage:
        return self.started(prefix="some/packages/", prepend_hash="false")


class GCSResumableConformanceTests(IStorageConformance, GCSCase):
    """GoogleCloudStorage passes the suite when every non-empty file takes the resumable
    path (``storage.resumable_threshold = 0``; each file fits in one final chunk)."""

    def make_storage(self) -> IStorage:
        return self.started(resumable_threshold="0")


class ConfigurationTests(SynchronousTestCase):
    """Building a GoogleCloudStorage from ``storage.*`` options (no network)."""

    def setUp(self) -> None:
        self.key_file = write_service_account_key(self.mktemp())
        for name in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST"):
            if name in os.environ:
                self.addCleanup(os.environ.__setitem__, name, os.environ.pop(name))

    def options(self, **values: str) -> GCSOptions:
        return parse_options(GCSOptions, "storage", {"bucket": "b", **values})

    def emulated(self, **values: str) -> GoogleCloudStorage:
        """A storage on an (absent) emulator, signing with the test's key."""
        storage = GoogleCloudStorage.from_config(
            self.options(
                gcp_api_endpoint="http://127.0.0.1:9",
                gcp_service_account_json_filename=self.key_file,
                **values,
            ),
            Runtime.synchronous(),
        )
        self.addCleanup(storage.client.close)
        return storage

    def test_bucket_required(self) -> None:
        """Without ``storage.bucket`` the configuration is refused, naming the option."""
        e = self.assertRaises(ConfigError, parse_options, GCSOptions, "storage", {})
        self.assertIn("storage.bucket", e.message)

    def test_pypicloud_defaults(self) -> None:
        """Defaults are pypicloud's: hash folder on, no prefix, URLs valid a day, downloads
        redirected to signed URLs, the bucket's own ACL and storage class."""
        options = self.options()
        self.assertEqual(
            (
                options.prepend_hash,
                options.prefix,
                options.expire_after,
                options.redirect_urls,
                options.object_acl,
                options.storage_class,
                options.public_url,
            ),
            (True, "", 86400, True, None, None, False),
        )

    def test_registry_names(self) -> None:
        """``pypi.storage = gcs`` and pypicloud's class paths choose GoogleCloudStorage."""
        for value in (
            "gcs",
            "pypicloud.storage.GoogleCloudStorage",
            "pypicloud.storage.gcs.GoogleCloudStorage",
        ):
            self.assertIs(resolve("pypi.storage", value)[1], GoogleCloudStorage)

    def test_pypicloud_options_accepted(self) -> None:
        """Every option pypicloud's GCS backend read is accepted and used: the key file, the
        project, the region, the ACL, the storage class and the IAM signer switch."""
        storage = self.emulated(
            gcp_project_id="my-project",
            region_name="europe-west1",
            object_acl="publicRead",
            storage_class="nearline",
            gcp_use_iam_signer="true",
            prefix="p/",
            prepend_hash="false",
            expire_after="600",
        )
        self.assertEqual(
            (
                storage.credentials.project,
                storage.region_name,
                storage.predefined_acl,
                storage.storage_class,
                storage.layout,
                storage.expire_after,
                storage.credentials.signer.service_account_email,
            ),
            (
                "my-project",
                "europe-west1",
                "publicRead",
                "NEARLINE",
                Layout("p/", False),
                600,
                KEY_EMAIL,
            ),
        )

    def test_s3_acl_spelling(self) -> None:
        """An S3-style canned ACL name (as a config moved from S3 may hold) is read as the
        GCS predefined ACL of the same meaning."""
        for given, expected in (
            ("public-read", "publicRead"),
            ("bucket-owner-full-control", "bucketOwnerFullControl"),
            ("authenticated-read", "authenticatedRead"),
            ("PRIVATE", "private"),
        ):
            self.assertEqual(self.options(object_acl=given).object_acl, expected)

    def test_refused_values(self) -> None:
        """Wrong values stop start-up with a message naming the option; so do S3's
        ``server_side_encryption`` (pypicloud refused it for GCS too) and a missing key."""
        for values, named in (
            ({"object_acl": "everyone-may-write"}, "storage.object_acl"),
            ({"storage_class": "GLACIER"}, "storage.storage_class"),
            ({"resumable_chunksize": "300KB"}, "storage.resumable_chunksize"),
            ({"gcp_api_endpoint": "localhost:4443"}, "storage.gcp_api_endpoint"),
            ({"expire_after": "0"}, "storage.expire_after"),
            ({"retry_deadline": "-1"}, "storage.retry_deadline"),
            ({"prefix": "/abs"}, "storage.prefix"),
            ({"server_side_encryption": "AES256"}, "storage.server_side_encryption"),
        ):
            e = self.assertRaises(
                ConfigError, parse_options, GCSOptions, "storage", {"bucket": "b", **values}
            )
            self.assertIn(named, e.message)

    def test_key_file_problems(self) -> None:
        """A missing, malformed or non-service-account key file is refused at start-up,
        naming the option and the path, never showing the file's content."""
        folder = self.mktemp()
        os.makedirs(folder)
        broken = os.path.join(folder, "broken.json")
        with open(broken, "w") as f:
            f.write("{not json SECRET")
        user = os.path.join(folder, "user.json")
        with open(user, "w") as f:
            f.write('{"type": "authorized_user", "refresh_token": "SECRET"}')
        incomplete = os.path.join(folder, "incomplete.json")
        with open(incomplete, "w") as f:
            f.write('{"type": "service_account", "private_key": "SECRET"}')
        for path in (os.path.join(folder, "absent.json"), broken, user, incomplete):
            e = self.assertRaises(
                ConfigError,
                GoogleCloudStorage.from_config,
                self.options(gcp_service_account_json_filename=path),
                Runtime.synchronous(),
            )
            self.assertIn("storage.gcp_service_account_json_filename", e.message)
            self.assertIn(path, e.message)
            self.assertNotIn("SECRET", e.message)

    def test_key_file_relative_to_config(self) -> None:
        """A relative key path is read from the config file's folder."""
        folder = os.path.dirname(self.key_file)
        storage = GoogleCloudStorage.from_config(
            self.options(
                gcp_api_endpoint="http://127.0.0.1:9",
                gcp_service_account_json_filename="service-account.json",
            ),
            Runtime.synchronous(here=folder),
        )
        self.addCleanup(storage.client.close)
        self.assertEqual(storage.credentials.signer.service_account_email, KEY_EMAIL)

    def test_google_application_credentials(self) -> None:
        """Without the option, ``GOOGLE_APPLICATION_CREDENTIALS`` names the key (pypicloud's
        other way)."""
        os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = self.key_file
        self.addCleanup(os.environ.pop, "GOOGLE_APPLICATION_CREDENTIALS")
        storage = GoogleCloudStorage.from_config(
            self.options(gcp_api_endpoint="http://127.0.0.1:9"), Runtime.synchronous()
        )
        self.addCleanup(storage.client.close)
        self.assertEqual(storage.credentials.signer.service_account_email, KEY_EMAIL)

    def test_no_credentials(self) -> None:
        """Without a key, GOOGLE_APPLICATION_CREDENTIALS or application default credentials
        (and not on an emulator) start-up is refused, naming the ways to give credentials."""
        os.environ["CLOUDSDK_CONFIG"] = self.mktemp()  # no gcloud login either
        self.addCleanup(os.environ.pop, "CLOUDSDK_CONFIG")
        e = self.assertRaises(
            ConfigError, GoogleCloudStorage.from_config, self.options(), Runtime.synchronous()
        )
        self.assertIn("storage.gcp_service_account_json_filename", e.message)
        self.assertIn("GOOGLE_APPLICATION_CREDENTIALS", e.message)

    def test_emulator_is_anonymous(self) -> None:
        """An ``http://`` endpoint gets no credentials (a token is never sent in clear text)
        but the key still signs URLs, and a missing bucket is created in a placeholder
        project unless ``storage.gcp_project_id`` says otherwise."""
        storage = self.emulated()
        self.assertEqual(
            (
                type(storage.credentials.credentials).__name__,
                storage.credentials.project,
                storage.endpoint,
            ),
            ("AnonymousCredentials", "ppc-tests", "http://127.0.0.1:9"),
        )
        os.environ["STORAGE_EMULATOR_HOST"] = "http://127.0.0.1:8"
        self.addCleanup(os.environ.pop, "STORAGE_EMULATOR_HOST")
        plain = GoogleCloudStorage.from_config(
            self.options(redirect_urls="false"), Runtime.synchronous()
        )
        self.addCleanup(plain.client.close)
        self.assertEqual(
            (plain.endpoint, plain.credentials.project, plain.credentials.signer),
            ("http://127.0.0.1:8", EMULATOR_PROJECT, None),
        )

    def test_unsigned_emulator_needs_key_to_redirect(self) -> None:
        """Anonymous access cannot sign URLs: redirecting without a key is refused at start-up
        with the two ways out; streaming or public URLs need no key."""
        options = self.options(gcp_api_endpoint="http://127.0.0.1:9")
        e = self.assertRaises(
            ConfigError, GoogleCloudStorage.from_config, options, Runtime.synchronous()
        )
        self.assertIn("storage.gcp_service_account_json_filename", e.message)
        self.assertIn("storage.redirect_urls", e.message)
        for values in ({"redirect_urls": "false"}, {"public_url": "true"}):
            storage = GoogleCloudStorage.from_config(
                self.options(gcp_api_endpoint="http://127.0.0.1:9", **values),
                Runtime.synchronous(),
            )
            storage.client.close()

    def test_long_expiry_capped(self) -> None:
        """``storage.expire_after`` beyond GCS's 7-day limit for signed URLs is capped (the
        manual invited long values; GCS would refuse to sign them)."""
        self.assertEqual(self.emulated(expire_after="31536000").expire_after, MAX_V4_EXPIRY)

    def test_public_urls(self) -> None:
        """With ``storage.public_url`` downloads go to the object's public URL
        (storage.googleapis.com, or the emulator), the key quoted."""
        file = package_file(b"x", filename="demo_pkg-1.0+local-py3-none-any.whl")
        key = Layout("p/", True).key("demo-pkg", file.filename).replace("+", "%2B")
        google = GoogleCloudStorage.from_config(
            self.options(
                public_url="true", prefix="p/", gcp_service_account_json_filename=self.key_file
            ),
            Runtime.synchronous(),
        )
        self.addCleanup(google.client.close)
        self.assertEqual(
            self.successResultOf(google.download_url(file)),
            f"https://storage.googleapis.com/b/{key}",
        )
        emulated = self.emulated(public_url="true", prefix="p/")
        self.assertEqual(
            self.successResultOf(emulated.download_url(file)), f"http://127.0.0.1:9/b/{key}"
        )

    def test_redirect_urls_off_streams(self) -> None:
        """With ``storage.redirect_urls = false`` download_url() is None: the server streams."""
        storage = self.emulated(redirect_urls="false")
        self.assertIsNone(self.successResultOf(storage.download_url(package_file(b"x"))))


class LayoutTests(GCSCase):
    """What lands in the bucket."""

    def test_objects_written(self) -> None:
        """put() writes the file, a JSON sidecar and the core metadata under pypicloud's key,
        with pypicloud-compatible metadata and a Content-Type that is never gzip."""
        storage = self.started(prefix="pkgs/")
        file = self.store(storage, b"wheel", b"Name: demo-pkg\n", summary="s", uploader="bob")
        key = Layout("pkgs/", True).key("demo-pkg", file.filename)
        self.assertEqual(self.keys(storage), [key, key + ".meta", key + ".metadata"])
        blob = self.blob(storage, key)
        self.assertEqual(
            {k: blob.metadata.get(k) for k in ("name", "version", "summary", "uploader")},
            {"name": "demo-pkg", "version": "1.0", "summary": "s", "uploader": "bob"},
        )
        self.assertEqual(blob.metadata["hash-sha256"], file.sha256)
        self.assertEqual((blob.content_type, blob.content_encoding), ("application/zip", None))
        self.assertEqual(self.blob(storage, key + ".meta").content_type, "application/json")
        tarball = self.store(storage, b"sdist", filename="demo_pkg-2.0.tar.gz")
        blob = self.blob(storage, Layout("pkgs/", True).key("demo-pkg", tarball.filename))
        self.assertEqual(
            (blob.content_type, blob.content_encoding), ("application/octet-stream", None)
        )

    def test_delete_removes_every_object(self) -> None:
        """delete() leaves nothing of the file in the bucket."""
        storage = self.started()
        file = self.store(storage, b"data", b"Name: demo-pkg\n")
        self.successResultOf(storage.delete(file))
        self.assertEqual(self.keys(storage), [])

    def test_sidecar_without_object_not_listed(self) -> None:
        """A sidecar whose object is gone (an interrupted delete) is never listed."""
        storage = self.started()
        file = self.store(storage, b"data")
        key = Layout("", True).key(file.name, file.filename)
        self.client.bucket(storage.bucket).blob(key).delete()
        self.assertEqual(self.listed(storage), {})

    def test_stale_sidecar_ignored(self) -> None:
        """When the object was replaced (a new generation) but its sidecar was not (a crash
        between the two), list() reports the object's real digests and size."""
        storage = self.started()
        file = self.store(storage, b"old bytes", summary="old")
        key = Layout("", True).key(file.name, file.filename)
        blob = self.client.bucket(storage.bucket).blob(key)
        blob.metadata = {"name": "demo-pkg", "version": "1.0", "summary": "new"}
        blob.upload_from_string(b"new bytes!")
        listed = self.listed(storage)[file.filename]
        self.assertEqual(
            (listed.sha256, listed.size, listed.summary),
            (hashlib.sha256(b"new bytes!").hexdigest(), 10, "new"),
        )

    def test_foreign_keys_ignored(self) -> None:
        """Objects that are not where a package file goes (other data in the bucket, another
        prefix, a key without the hash folder) are not listed."""
        storage = self.started(prefix="pkgs/")
        kept = self.store(storage, b"kept")
        for key in (
            "readme.txt",
            "pkgs/notes.txt",
            "pkgs/demo-pkg/demo_pkg-1.0-py3-none-any.whl",
            "pkgs/ffff/demo-pkg/demo_pkg-3.0.tar.gz",
            "other/1234/demo-pkg/demo_pkg-1.0.tar.gz",
        ):
            self.client.bucket(storage.bucket).blob(key).upload_from_string(b"junk")
        self.assertEqual(list(self.listed(storage)), [kept.filename])

    def test_save_record_keeps_the_object(self) -> None:
        """save_record() rewrites only the sidecar: the object's generation stays."""
        storage = self.started()
        file = self.store(storage, b"data")
        key = Layout("", True).key(file.name, file.filename)
        before = self.blob(storage, key).generation
        self.successResultOf(storage.save_record(attrs.evolve(file, yanked="bad")))
        self.assertEqual(self.blob(storage, key).generation, before)
        self.assertEqual(self.listed(storage)[file.filename].yanked, "bad")

    def test_object_acl_and_storage_class(self) -> None:
        """``storage.object_acl`` sets the predefined ACL of the file and its sidecars, and
        ``storage.storage_class`` the class of the file."""
        storage = self.started(object_acl="public-read", storage_class="NEARLINE")
        file = self.store(storage, b"public", b"Name: demo-pkg\n")
        key = Layout("", True).key(file.name, file.filename)
        for name in (key, key + ".meta", key + ".metadata"):
            blob = self.blob(storage, name)
            blob.acl.reload()
            self.assertIn(("allUsers", "READER"), [(e["entity"], e["role"]) for e in blob.acl])
        self.assertEqual(self.blob(storage, key).storage_class, "NEARLINE")


class PypicloudBucketTests(GCSCase):
    """A bucket written by pypicloud's GCS backend is served as it is."""

    def check_served(self, storage: GoogleCloudStorage, prefix: str, hashed: bool) -> None:
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
        self.assertEqual(self.read(storage, file), wheel)
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

    def test_metadata_when_archive_unreadable(self) -> None:
        """When the archive cannot be read, pypicloud's metadata (UTF-8 in GCS) gives the
        summary, Requires-Python and uploader; the digests come from the bytes."""
        storage = self.started()
        filename = "demo_pkg-1.0.tar.gz"
        self.pypicloud_upload(storage, b"not really a tarball", filename, "", True)
        file = self.listed(storage)[filename]
        self.assertEqual(
            (file.summary, file.requires_python, file.uploader, file.sha256),
            ("A d\u00e9mo", ">=3.9", "carol", hashlib.sha256(b"not really a tarball").hexdigest()),
        )

    def test_old_object_without_metadata(self) -> None:
        """An object without any metadata (pypicloud skipped those; we list them) is listed
        with the name and version of its filename and digests computed from its bytes."""
        storage = self.started()
        filename = "demo_pkg-2.0rc1.tar.gz"
        self.pypicloud_upload(storage, b"not really a tarball", filename, "", True, metadata={})
        file = self.listed(storage)[filename]
        self.assertEqual(
            (file.name, file.version, file.sha256, file.summary, file.metadata_sha256),
            ("demo-pkg", "2.0rc1", hashlib.sha256(b"not really a tarball").hexdigest(), "", None),
        )


class DownloadTests(GCSCase):
    """Signed URLs and streamed reads."""

    def test_redirect_url_downloads(self) -> None:
        """download_url() gives a V4 signed URL of the object that anyone can fetch without
        credentials, returning exactly the stored bytes."""
        storage = self.started()
        data = os.urandom(300_000)
        file = self.store(storage, data)
        url = self.successResultOf(storage.download_url(file))
        assert url is not None
        key = Layout("", True).key(file.name, file.filename)
        self.assertEqual(
            url.split("?")[0], f"{self.server['gcp_api_endpoint']}/{storage.bucket}/{key}"
        )
        request = urllib.request.Request(url)
        self.assertFalse(request.has_header("Authorization"))
        with urllib.request.urlopen(request, timeout=10) as response:
            self.assertEqual(response.read(), data)

    def test_signed_url_form(self) -> None:
        """The URL is a V4 signed URL (RSA-SHA256, the key's account as credential) living
        ``storage.expire_after`` seconds, and its signature verifies with the key's public
        half over GCS's canonical request: what real GCS checks (the emulator does not)."""
        storage = self.started(expire_after="120")
        file = self.store(storage, b"data", filename="demo_pkg-1.0+local-py3-none-any.whl")
        url = self.successResultOf(storage.download_url(file))
        assert url is not None
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.assertEqual(
            (
                query["X-Goog-Algorithm"],
                query["X-Goog-Expires"],
                query["X-Goog-Credential"].split("/")[0],
                query["X-Goog-SignedHeaders"],
            ),
            ("GOOG4-RSA-SHA256", "120", KEY_EMAIL, "host"),
        )
        unsigned = "&".join(
            item for item in parts.query.split("&") if not item.startswith("X-Goog-Signature=")
        )
        canonical_request = "\n".join(
            [
                "GET",
                parts.path,
                unsigned,
                f"host:{parts.netloc}\n",
                "host",
                "UNSIGNED-PAYLOAD",
            ]
        )
        string_to_sign = "\n".join(
            [
                "GOOG4-RSA-SHA256",
                query["X-Goog-Date"],
                query["X-Goog-Credential"].split("/", 1)[1],
                hashlib.sha256(canonical_request.encode()).hexdigest(),
            ]
        )
        self.assertIn("%2B", parts.path)  # "+" quoted, or GCS would read a space
        throwaway_key().public_key().verify(
            bytes.fromhex(query["X-Goog-Signature"]),
            string_to_sign.encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )

    def test_public_url_with_emulator(self) -> None:
        """With ``storage.public_url`` the URL is ``<endpoint>/<bucket>/<key>`` and fetches
        the object from the (public) bucket."""
        storage = self.started(public_url="true")
        file = self.store(storage, b"data")
        key = Layout("", True).key(file.name, file.filename)
        url = self.successResultOf(storage.download_url(file))
        self.assertEqual(url, f"{self.server['gcp_api_endpoint']}/{storage.bucket}/{key}")
        assert url is not None
        with urllib.request.urlopen(url, timeout=10) as response:
            self.assertEqual(response.read(), b"data")

    def test_open_streams(self) -> None:
        """open() returns a stream that reads the object piece by piece (not a copy of it in
        memory) and knows the object's size."""
        storage = self.started()
        data = os.urandom(3 * MB + 17)
        file = self.store(storage, data)
        stream = self.successResultOf(storage.open(file))
        self.addCleanup(stream.close)
        self.assertIsInstance(stream, ObjectReader)
        self.assertEqual(cast(ObjectReader, stream).size, len(data))
        chunks = []
        while chunk := stream.read(64 * KB):
            self.assertLessEqual(len(chunk), 64 * KB)
            chunks.append(chunk)
        self.assertEqual(b"".join(chunks), data)

    def test_seek_reads_a_range(self) -> None:
        """Seeking, from the start, the current position or the end, then reading gives the
        bytes at that position (a new ranged GET each time)."""
        storage = self.started()
        data = bytes(range(256)) * 4096
        file = self.store(storage, data)
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
        """The web layer's FileBody answers a Range request on a streamed GCS object with 206
        and exactly the requested bytes."""
        storage = self.started()
        data = os.urandom(2 * MB)
        file = self.store(storage, data)
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
        file = self.store(storage, b"a" * 100_000)
        stream = self.successResultOf(storage.open(file))
        self.addCleanup(stream.close)
        self.assertEqual(stream.read(10), b"a" * 10)
        self.store(storage, b"b" * 100_000, overwrite=True)
        stream.seek(50_000)
        self.assertRaises(OSError, stream.read, 10)

    def test_open_missing(self) -> None:
        """open() and open_metadata() of a file that is not in the bucket are NotFound."""
        storage = self.started()
        self.failureResultOf(storage.open(package_file(b"nothing")), NotFound)
        self.failureResultOf(storage.open_metadata(package_file(b"nothing")), NotFound)


class UploadTests(GCSCase):
    """Resumable uploads, failures half-way and simultaneous uploads."""

    def test_large_upload_resumable(self) -> None:
        """A file larger than ``storage.resumable_chunksize`` goes up in chunks, reads back
        intact, has its metadata and Content-Type, and its sidecar matches its generation
        (the exact record is listed, not one read back, which would lose the summary's
        accents)."""
        storage = self.started(**SMALL_CHUNKS)
        data = os.urandom(1 * MB + 100)
        file = self.store(storage, data, summary="Gro\u00df", filename="demo_pkg-1.0.tar.gz")
        key = Layout("", True).key(file.name, file.filename)
        blob = self.blob(storage, key)
        self.assertEqual(
            (blob.size, blob.md5_hash, blob.metadata["hash-sha256"], blob.content_type),
            (
                len(data),
                base64.b64encode(hashlib.md5(data).digest()).decode(),
                file.sha256,
                "application/octet-stream",
            ),
        )
        self.assertEqual(self.read(storage, file), data)
        self.assertEqual(self.listed(storage)[file.filename].to_record(), file.to_record())

    def test_failure_half_way_leaves_nothing(self) -> None:
        """A resumable upload whose stream fails after the first chunk leaves no object and no
        sidecar; the same file can be uploaded afterwards."""
        storage = self.started(**SMALL_CHUNKS)
        file = package_file(b"z" * MB)
        failure = self.failureResultOf(
            storage.put(file, cast(IO[bytes], FailingAfter(300 * KB)), b"Name: x\n", False),
            RuntimeError,
        )
        self.assertIn("client went away", str(failure.value))
        self.assertEqual((self.listed(storage), self.keys(storage)), ({}, []))
        self.successResultOf(storage.put(file, io.BytesIO(b"z" * MB), None, False))
        self.assertEqual(list(self.listed(storage)), [file.filename])

    def test_resumable_size_mismatch(self) -> None:
        """A resumable upload shorter or longer than announced fails with InvalidUpload and
        leaves nothing behind (the longer one is caught before its last chunk is sent)."""
        storage = self.started(**SMALL_CHUNKS)
        file = package_file(b"q" * (600 * KB))
        for data in (b"q" * (600 * KB - 1), b"q" * (600 * KB + 1)):
            self.failureResultOf(storage.put(file, io.BytesIO(data), None, False), InvalidUpload)
        self.assertEqual(self.keys(storage), [])

    def test_resumable_duplicate_conflicts(self) -> None:
        """A large duplicate fails with Conflict and leaves the first bytes."""
        storage = self.started(**SMALL_CHUNKS)
        first = self.store(storage, b"1" * (600 * KB))
        second = package_file(b"2" * (600 * KB))
        self.failureResultOf(
            storage.put(second, io.BytesIO(b"2" * (600 * KB)), None, False), Conflict
        )
        self.assertEqual(self.read(storage, first)[:3], b"111")

    def test_resumable_overwrite(self) -> None:
        """With overwrite a large file replaces the old one, bytes and record."""
        storage = self.started(**SMALL_CHUNKS)
        self.store(storage, b"1" * (600 * KB), summary="one")
        second = self.store(storage, b"2" * (700 * KB), overwrite=True, summary="two")
        self.assertEqual(self.listed(storage)[second.filename].to_record(), second.to_record())
        self.assertEqual(self.read(storage, second), b"2" * (700 * KB))

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
        self.assertEqual(
            (self.read(storage, listed), listed.summary),
            (bytes([65 + winner]) * 1000, str(winner)),
        )

    def test_retried_create_is_ours(self) -> None:
        """A create-if-absent refused because the object exists with our bytes and our upload
        time (a retry whose first attempt succeeded) counts as done; with another upload time
        it is a conflict."""
        storage = self.started()
        file = package_file(b"once")
        key = storage.layout.key(file.name, file.filename)

        def create(record: PackageFile) -> str:
            return storage._call(
                storage._v_upload,
                key,
                UploadReader(io.BytesIO(b"once"), record),
                encode_metadata(record),
                content_type(file.filename),
                True,
            )

        generation = create(file)
        self.assertEqual(create(file), generation)
        later = attrs.evolve(file, upload_time=file.upload_time.replace(year=2030))
        self.assertRaises(ObjectExists, create, later)


class LifecycleTests(GCSCase):
    """Start-up, health and unreachable servers."""

    def test_bucket_created(self) -> None:
        """start() creates a missing bucket (in ``storage.region_name``: the emulator ignores
        it); starting again (as another process) is fine."""
        bucket = new_bucket_name()
        storage = self.started(bucket=bucket, region_name="europe-west1")
        self.assertEqual(self.client.get_bucket(bucket).name, bucket)
        again = build(
            {**self.server, "bucket": bucket, "redirect_urls": "false", "region_name": "eu"}
        )
        self.successResultOf(again.start())
        self.successResultOf(again.stop())
        self.assertEqual(self.successResultOf(storage.check_health()), (True, ""))

    def test_missing_bucket_unhealthy(self) -> None:
        """A storage on a bucket that does not exist (never started) reports it by name, and
        list() fails with BackendUnavailable saying so."""
        storage = build({**self.server, **FAST, "bucket": new_bucket_name()} | NO_REDIRECT)
        self.addCleanup(storage.client.close)
        healthy, message = self.successResultOf(storage.check_health())
        self.assertFalse(healthy)
        self.assertIn("storage.bucket", message)
        failure = self.failureResultOf(storage.list(), BackendUnavailable)
        self.assertIn("does not exist", failure.value.message)

    def test_unreachable_endpoint(self) -> None:
        """A dead endpoint fails start(), list(), put() and open() quickly with
        BackendUnavailable naming storage.gcp_api_endpoint, and check_health() reports it."""
        with socket_closed_port() as port:
            storage = build(
                {**FAST, "gcp_api_endpoint": f"http://127.0.0.1:{port}", "bucket": "b"}
                | NO_REDIRECT
            )
            self.addCleanup(storage.client.close)
            began = time.monotonic()
            for d in (
                storage.start(),
                storage.list(),
                storage.put(package_file(b"x"), io.BytesIO(b"x"), None, False),
                storage.open(package_file(b"x")),
            ):
                failure = self.failureResultOf(d, BackendUnavailable)
                self.assertIn("storage.gcp_api_endpoint", failure.value.message)
            healthy, message = self.successResultOf(storage.check_health())
            self.assertEqual((healthy, "storage.gcp_api_endpoint" in message), (False, True))
            self.assertLess(time.monotonic() - began, 10)

    def test_retries_end_within_deadline(self) -> None:
        """With retries on, a dead endpoint is retried for no longer than
        ``storage.retry_deadline`` (plus a margin), then reported as BackendUnavailable.
        (No lower bound: the library's backoff is jittered and may give up early.)"""
        with socket_closed_port() as port:
            storage = build(
                {
                    **FAST,
                    "retry_deadline": "2",
                    "gcp_api_endpoint": f"http://127.0.0.1:{port}",
                    "bucket": "b",
                }
                | NO_REDIRECT
            )
            self.addCleanup(storage.client.close)
            began = time.monotonic()
            failure = self.failureResultOf(storage.list(), BackendUnavailable)
            took = time.monotonic() - began
        self.assertIn("storage.gcp_api_endpoint", failure.value.message)
        self.assertLess(took, 8)

    def test_server_errors_translated(self) -> None:
        """An error answer GCS gives for a malformed request becomes BackendUnavailable with
        the status and reason, not a library exception."""
        storage = self.started()
        e = storage._api_error(
            api_exceptions.BadRequest("POST http://x/upload: Invalid argument: the reason")
        )
        self.assertIsInstance(e, BackendUnavailable)
        self.assertEqual(
            cast(BackendUnavailable, e).message,
            f"GCS answered 400 for the bucket {storage.bucket!r}: Invalid argument: the reason",
        )


NO_REDIRECT = {"redirect_urls": "false"}


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


class ThreadPoolTests(TestCase):
    """With a real thread pool (as in the server) every call answers through the reactor."""

    def test_cycle_on_threads(self) -> Deferred[None]:
        """start, put (small and resumable), list, open, download_url, delete and health work
        off the reactor."""
        from twisted.internet import reactor

        server = fakegcs()
        client = raw_client(server)
        bucket = new_bucket_name()
        pool = ThreadPoolService(reactor, "storage", 4)  # type: ignore[arg-type]
        pool.startService()
        self.addCleanup(pool.stopService)
        self.addCleanup(remove_bucket, client, bucket)
        runtime = Runtime(reactor=reactor, threads=lambda name, size: pool.run)
        options = {
            **server,
            **FAST,
            **SMALL_CHUNKS,
            "bucket": bucket,
            "gcp_service_account_json_filename": write_service_account_key(self.mktemp()),
        }
        storage = GoogleCloudStorage.from_config(
            parse_options(GCSOptions, "storage", options), runtime
        )
        small = package_file(b"threaded")
        large_data = os.urandom(600 * KB)
        large = package_file(large_data, filename="demo_pkg-1.0.tar.gz")

        async def cycle() -> None:
            await storage.start()
            await storage.put(small, io.BytesIO(b"threaded"), b"Name: demo-pkg\n", False)
            await storage.put(large, io.BytesIO(large_data), None, False)
            self.assertEqual(sorted(await storage.list(), key=lambda f: f.filename), [small, large])
            stream = await storage.open(large)
            self.assertEqual(stream.read(), large_data)
            stream.close()
            url = await storage.download_url(small)
            assert url is not None
            self.assertEqual(
                urlsplit(url).path, f"/{bucket}/" + storage.layout.key(small.name, small.filename)
            )
            self.assertEqual(await storage.check_health(), (True, ""))
            await storage.delete(small)
            await storage.delete(large)
            self.assertEqual(await storage.list(), [])
            await storage.stop()

        return Deferred.fromCoroutine(cycle())
