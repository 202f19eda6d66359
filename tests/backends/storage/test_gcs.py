"""The GCS storage (``pypi.storage = gcs``) against fake-gcs-server.

fake-gcs-server (``PPC_TEST_GCS_URL``) speaks GCS's JSON API over plain HTTP without
authentication; the storage talks to it anonymously and signs download URLs with a throwaway
service-account key written by the test (the emulator serves signed URLs without checking the
signature).  Every storage gets a bucket of its own, made by ``start()`` and emptied and
removed afterwards.  The tests every object store passes are in :mod:`.objectstore_cases`;
this module supplies their GCS hooks and adds what only GCS has.

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
import time
import urllib.request
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from google.api_core import exceptions as api_exceptions
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pypicloud_tx.backends.storage._objects import (
    Layout,
    ObjectExists,
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
from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.errors import BackendUnavailable, ConfigError
from pypicloud_tx.interfaces import IStorage
from pypicloud_tx.runtime import Runtime
from tests.gcsbuckets import (
    KEY_EMAIL,
    fakegcs,
    new_bucket_name,
    raw_client,
    remove_bucket,
    throwaway_key,
    write_service_account_key,
)

from . import objectstore_cases as cases
from .conformance import IStorageConformance, package_file
from .objectstore_cases import KB, MB, socket_closed_port

#: Options that make a dead endpoint fail fast in tests.
FAST = {"connect_timeout": "2", "read_timeout": "10", "retry_deadline": "0"}
#: The smallest resumable chunk, so that resumable uploads stay small in tests.
SMALL_CHUNKS = {"resumable_threshold": "256KB", "resumable_chunksize": "256KB"}


def build(options: dict[str, str], runtime: Runtime | None = None) -> GoogleCloudStorage:
    """A GoogleCloudStorage from ``storage.*`` options, on ``runtime`` (else the synchronous
    one)."""
    return GoogleCloudStorage.from_config(
        parse_options(GCSOptions, "storage", options), runtime or Runtime.synchronous()
    )


class GCSCase(cases.ObjectStoreCase[GoogleCloudStorage], SynchronousTestCase):
    """Builds started storages on the emulator, each on a bucket of its own, removed
    afterwards, and looks behind their back with a plain anonymous client."""

    endpoint_option = "gcp_api_endpoint"
    part = 256 * KB
    part_options = SMALL_CHUNKS
    tarball_types = ("application/octet-stream",)
    pypicloud_summary = "A d\u00e9mo"  # GCS metadata is UTF-8: pypicloud stored it as is

    server: dict[str, str]

    def setUp(self) -> None:
        self.server = fakegcs()
        self.client = raw_client(self.server)
        self.key_file = write_service_account_key(self.mktemp())

    def unstarted(self, runtime: Runtime | None = None, /, **options: str) -> GoogleCloudStorage:
        """A storage on the emulator failing fast and signing with the test's key."""
        storage = build(
            {
                **self.server,
                **FAST,
                "gcp_service_account_json_filename": self.key_file,
                **options,
            },
            runtime,
        )
        self.addCleanup(storage.client.close)
        return storage

    def new_bucket(self) -> str:
        return new_bucket_name()

    def remove_bucket(self, bucket: str) -> None:
        remove_bucket(self.client, bucket)

    def keys(self, storage: GoogleCloudStorage) -> list[str]:
        return sorted(blob.name for blob in self.client.list_blobs(storage.bucket))

    def blob(self, storage: GoogleCloudStorage, key: str) -> Any:
        """The object ``key`` as the emulator describes it."""
        return self.client.bucket(storage.bucket).get_blob(key)

    def write_raw(
        self,
        storage: GoogleCloudStorage,
        key: str,
        data: bytes,
        metadata: dict[str, str] | None = None,
    ) -> None:
        blob = self.client.bucket(storage.bucket).blob(key)
        if metadata is not None:
            blob.metadata = metadata
        blob.upload_from_file(io.BytesIO(data))

    def delete_raw(self, storage: GoogleCloudStorage, key: str) -> None:
        self.client.bucket(storage.bucket).blob(key).delete()

    def raw_metadata(self, storage: GoogleCloudStorage, key: str) -> dict[str, str]:
        return dict(self.blob(storage, key).metadata or {})

    def raw_type(self, storage: GoogleCloudStorage, key: str) -> tuple[str, str | None]:
        blob = self.blob(storage, key)
        return blob.content_type, blob.content_encoding

    def raw_version(self, storage: GoogleCloudStorage, key: str) -> object:
        return self.blob(storage, key).generation

    def object_url(self, storage: GoogleCloudStorage, key: str) -> str:
        return f"{self.server['gcp_api_endpoint']}/{storage.bucket}/{key}"


class GCSConformanceTests(cases.DefaultLayoutConformance[GoogleCloudStorage], GCSCase):
    """GoogleCloudStorage on fake-gcs-server passes the IStorage conformance suite."""


class GCSPrefixConformanceTests(cases.PrefixLayoutConformance[GoogleCloudStorage], GCSCase):
    """GoogleCloudStorage passes the suite with a key prefix and without the hash folder."""


class GCSResumableConformanceTests(IStorageConformance, GCSCase):
    """GoogleCloudStorage passes the suite when every non-empty file takes the resumable
    path (``storage.resumable_threshold = 0``; each file fits in one final chunk)."""

    def make_storage(self) -> IStorage:
        return self.started(resumable_threshold="0")


class ConfigurationTests(
    cases.ConfigurationCases[GoogleCloudStorage, GCSOptions], SynchronousTestCase
):
    """Building a GoogleCloudStorage from ``storage.*`` options (no network)."""

    options_type = GCSOptions
    storage_type = GoogleCloudStorage
    registry_names = (
        "gcs",
        "pypicloud.storage.GoogleCloudStorage",
        "pypicloud.storage.gcs.GoogleCloudStorage",
    )
    vendor_refusals = (
        ({"storage_class": "GLACIER"}, "storage.storage_class"),
        ({"resumable_chunksize": "300KB"}, "storage.resumable_chunksize"),
        ({"gcp_api_endpoint": "localhost:4443"}, "storage.gcp_api_endpoint"),
        ({"retry_deadline": "-1"}, "storage.retry_deadline"),
        # S3's option: pypicloud refused it for GCS too.
        ({"server_side_encryption": "AES256"}, "storage.server_side_encryption"),
    )

    def setUp(self) -> None:
        self.key_file = write_service_account_key(self.mktemp())
        for name in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST"):
            if name in os.environ:
                self.addCleanup(os.environ.__setitem__, name, os.environ.pop(name))

    def configured(self, **values: str) -> GoogleCloudStorage:
        """A storage on an (absent) emulator, signing with the test's key."""
        storage = GoogleCloudStorage.from_config(
            self.options(
                **{
                    "gcp_api_endpoint": "http://127.0.0.1:9",
                    "gcp_service_account_json_filename": self.key_file,
                    **values,
                }
            ),
            Runtime.synchronous(),
        )
        self.addCleanup(storage.client.close)
        return storage

    def test_pypicloud_options_accepted(self) -> None:
        """Every option pypicloud's GCS backend read is accepted and used: the key file, the
        project, the region, the ACL, the storage class and the IAM signer switch."""
        storage = self.configured(
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
        storage = self.configured()
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
        self.assertEqual(self.configured(expire_after="31536000").expire_after, MAX_V4_EXPIRY)

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
        emulated = self.configured(public_url="true", prefix="p/")
        self.assertEqual(
            self.successResultOf(emulated.download_url(file)), f"http://127.0.0.1:9/b/{key}"
        )


class LayoutTests(cases.LayoutCases[GoogleCloudStorage], GCSCase):
    """What lands in the bucket."""

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


class PypicloudBucketTests(cases.PypicloudBucketCases[GoogleCloudStorage], GCSCase):
    """A bucket written by pypicloud's GCS backend is served as it is."""

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


class DownloadTests(cases.DownloadCases[GoogleCloudStorage], GCSCase):
    """Signed URLs and streamed reads."""

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
        """With ``storage.public_url`` the URL fetches the object from the (public) bucket
        without credentials."""
        storage = self.started(public_url="true")
        file = self.store(storage, b"data")
        url = self.successResultOf(storage.download_url(file))
        assert url is not None
        with urllib.request.urlopen(url, timeout=10) as response:
            self.assertEqual(response.read(), b"data")


class UploadTests(cases.UploadCases[GoogleCloudStorage], GCSCase):
    """Resumable uploads, failures half-way and simultaneous uploads."""

    def test_large_upload_resumable(self) -> None:
        """A file larger than ``storage.resumable_chunksize`` goes up in chunks, reads back
        intact, has its metadata and Content-Type, and its sidecar matches its generation
        (the exact record is listed, not one read back, which would lose the summary's
        accents)."""
        storage = self.in_parts()
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

    def test_resumable_overwrite(self) -> None:
        """With overwrite a large file replaces the old one, bytes and record."""
        storage = self.in_parts()
        self.store(storage, b"1" * (600 * KB), summary="one")
        second = self.store(storage, b"2" * (700 * KB), overwrite=True, summary="two")
        self.assertEqual(self.listed(storage)[second.filename].to_record(), second.to_record())
        self.assertEqual(self.read(storage, second), b"2" * (700 * KB))

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


class LifecycleTests(cases.LifecycleCases[GoogleCloudStorage], GCSCase):
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

    def test_retries_end_within_deadline(self) -> None:
        """With retries on, a dead endpoint is retried for no longer than
        ``storage.retry_deadline`` (plus a margin), then reported as BackendUnavailable.
        (No lower bound: the library's backoff is jittered and may give up early.)"""
        with socket_closed_port() as port:
            storage = self.unstarted(
                retry_deadline="2", gcp_api_endpoint=f"http://127.0.0.1:{port}", bucket="b"
            )
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


class ThreadPoolTests(cases.ThreadPoolCases[GoogleCloudStorage], GCSCase, TestCase):
    """With a real thread pool (as in the server) every call answers through the reactor."""
