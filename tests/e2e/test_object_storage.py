"""twine → server → object storage → pip, with real clients, a real ``twist pypicloud`` and a
real S3 API server (SeaweedFS) on 127.0.0.1, in redirect and in stream mode."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tests.distfactory import make_sdist, make_wheel
from tests.e2e.server import IndexProcess, ServerCase
from tests.realservices import require_service
from tests.s3buckets import raw_client, remove_bucket, seaweed

if TYPE_CHECKING:
    _Base = ServerCase
else:
    _Base = object


class ObjectStorageRoundTrip(_Base):
    """Upload with twine, install with pip and uv, download byte for byte; a mixin."""

    def storage_options(self) -> Mapping[str, str | None]:
        raise NotImplementedError

    def start(self, **extra: str) -> IndexProcess:
        return self.start_server({**self.storage_options(), **extra})

    def twine_upload(self, server: IndexProcess, *dists: tuple[str, bytes]) -> None:
        self.run_ok(
            server,
            [
                "twine",
                "upload",
                "--non-interactive",
                "--disable-progress-bar",
                "--repository-url",
                server.index_url,
                "-u",
                "alice",
                "-p",
                "alicepw",
                *(self.write_dist(server, d) for d in dists),
            ],
        )

    def round_trip(self, server: IndexProcess, name: str) -> str:
        """Upload a wheel and an sdist, download both with pip; the server's access log."""
        wheel = make_wheel(name, "1.0", summary="object storage")
        sdist = make_sdist(name, "1.0", summary="object storage")
        self.twine_upload(server, wheel, sdist)
        _, got = self.pip_download(server, f"{name}==1.0", "--only-binary", ":all:")
        self.assertEqual(got, {wheel[0]: wheel[1]})
        _, got = self.pip_download(
            server, f"{name}==1.0", "--no-binary", ":all:", "--no-build-isolation"
        )
        self.assertEqual(got, {sdist[0]: sdist[1]})
        self.run_ok(
            server,
            [
                "uv",
                "pip",
                "install",
                "--no-cache",
                "--no-deps",
                "--index-url",
                server.index_url,
                "--target",
                f"{server.folder}/uv-target",
                f"{name}==1.0",
            ],
        )
        return server.log_text()

    def test_redirect_mode(self) -> None:
        """By default downloads answer 302 to a signed URL of the bucket; pip and uv follow it
        and get the uploaded bytes, and the index pages list the server's own URLs."""
        server = self.start()
        name = "e2e-obj-redirect"
        log = self.round_trip(server, name)
        self.assertRegex(log, rf'"GET /api/package/{name}/[^ ]+\.whl HTTP/1\.1" 302')
        page = server.get(f"/simple/{name}/").text
        self.assertIn(f"/api/package/{name}/", page)
        for signature in ("X-Amz-Signature", "X-Goog-Signature", "Signature="):
            self.assertNotIn(signature, page)

    def test_stream_mode(self) -> None:
        """With pypi.stream_files the server streams the object itself (200, no redirect)."""
        server = self.start(**{"pypi.stream_files": "true"})
        name = "e2e-obj-stream"
        log = self.round_trip(server, name)
        self.assertRegex(log, rf'"GET /api/package/{name}/[^ ]+\.whl HTTP/1\.1" 200')
        self.assertNotRegex(log, rf'"GET /api/package/{name}/[^ ]+ HTTP/1\.1" 302')


class S3RoundTripTests(ObjectStorageRoundTrip, ServerCase):
    """With ``pypi.storage = s3`` on SeaweedFS."""

    def storage_options(self) -> Mapping[str, str | None]:
        if not hasattr(self, "_bucket"):
            self._bucket = f"e2e-{secrets.token_hex(6)}"
            server = seaweed()
            self.addCleanup(remove_bucket, raw_client(server), self._bucket)
        return {
            "pypi.storage": "s3",
            "storage.dir": None,
            "storage.bucket": self._bucket,
            "storage.region_name": "us-east-1",
            "storage.endpoint_url": require_service("PPC_TEST_S3_URL", "an S3 server"),
            "storage.aws_access_key_id": require_service("PPC_TEST_S3_ACCESS_KEY", "S3 keys"),
            "storage.aws_secret_access_key": require_service("PPC_TEST_S3_SECRET_KEY", "S3 keys"),
            "storage.addressing_style": "path",
        }


class GCSRoundTripTests(ObjectStorageRoundTrip, ServerCase):
    """With ``pypi.storage = gcs`` on fake-gcs-server: anonymous requests, download URLs
    signed with a throwaway service-account key (the emulator serves them unchecked)."""

    def storage_options(self) -> Mapping[str, str | None]:
        from tests.gcsbuckets import fakegcs, raw_client, write_service_account_key
        from tests.gcsbuckets import remove_bucket as remove_gcs_bucket

        if not hasattr(self, "_bucket"):
            self._bucket = f"e2e-{secrets.token_hex(6)}"
            server = fakegcs()
            self.addCleanup(remove_gcs_bucket, raw_client(server), self._bucket)
            self._key_file = write_service_account_key(self.make_folder())
        return {
            "pypi.storage": "gcs",
            "storage.dir": None,
            "storage.bucket": self._bucket,
            "storage.gcp_api_endpoint": fakegcs()["gcp_api_endpoint"],
            "storage.gcp_service_account_json_filename": self._key_file,
        }
