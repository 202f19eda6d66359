"""Buckets on the test GCS emulator (fake-gcs-server): where it is, a plain client to look
behind the storage's back, removing buckets, and a throwaway service-account key."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from tests.realservices import require_service

#: The account a throwaway key claims to be (the emulator checks no signature).
KEY_EMAIL = "ppc-tests@ppc-tests.iam.gserviceaccount.com"


def fakegcs() -> dict[str, str]:
    """Connection options for fake-gcs-server (skips the test when it is absent)."""
    return {"gcp_api_endpoint": require_service("PPC_TEST_GCS_URL", "fake-gcs-server (GCS)")}


def raw_client(server: dict[str, str]) -> Any:
    """A plain anonymous client of the emulator."""
    return storage.Client(
        project="ppc-tests",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": server["gcp_api_endpoint"]},
    )


def new_bucket_name() -> str:
    return "ppc-test-" + uuid.uuid4().hex[:16]


def remove_bucket(client: Any, bucket: str) -> None:
    """Delete every object, then the bucket (if it exists)."""
    try:
        for _ in range(100):
            blobs = list(client.list_blobs(bucket, max_results=1000, timeout=10))
            for blob in blobs:
                with contextlib.suppress(api_exceptions.NotFound):
                    blob.delete(timeout=10)
            if not blobs:
                break
        client.bucket(bucket).delete(timeout=10)
    except api_exceptions.NotFound:
        pass


_keys: list[rsa.RSAPrivateKey] = []


def throwaway_key() -> rsa.RSAPrivateKey:
    """An RSA key made for this test run (one per process: making one takes a while)."""
    if not _keys:
        _keys.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _keys[0]


def write_service_account_key(folder: str, project: str = "ppc-tests") -> str:
    """Write a service-account JSON key with :func:`throwaway_key` (signs URLs, grants
    nothing); its path."""
    pem = (
        throwaway_key()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode("ascii")
    )
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": KEY_EMAIL,
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "service-account.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(info, f)
    return path
