"""Buckets on the test S3 servers (SeaweedFS, moto_server): where they are, and removing them."""

from __future__ import annotations

import os
import uuid
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.realservices import require_service


def seaweed() -> dict[str, str]:
    """Connection options for the SeaweedFS S3 server (skips the test when it is absent)."""
    url = require_service("PPC_TEST_S3_URL", "SeaweedFS (an S3 server)")
    return {
        "endpoint_url": url,
        "aws_access_key_id": os.environ.get("PPC_TEST_S3_ACCESS_KEY", ""),
        "aws_secret_access_key": os.environ.get("PPC_TEST_S3_SECRET_KEY", ""),
        "region_name": "us-east-1",
        "addressing_style": "path",
    }


def moto() -> dict[str, str]:
    """Connection options for moto_server (any credentials)."""
    url = require_service("PPC_TEST_AWS_URL", "moto_server (S3)")
    return {
        "endpoint_url": url,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "region_name": "us-east-1",
        "addressing_style": "path",
    }


def raw_client(server: dict[str, str]) -> Any:
    """A plain boto3 client on ``server``, to look at buckets behind the storage's back."""
    return boto3.client(
        "s3",
        endpoint_url=server["endpoint_url"],
        aws_access_key_id=server["aws_access_key_id"],
        aws_secret_access_key=server["aws_secret_access_key"],
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def new_bucket_name() -> str:
    return "ppc-test-" + uuid.uuid4().hex[:16]


def remove_bucket(client: Any, bucket: str) -> None:
    """Abort pending uploads, delete every object, then the bucket (if it exists)."""
    try:
        for _ in range(100):
            uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            for upload in uploads:
                client.abort_multipart_upload(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
            objects = client.list_objects_v2(Bucket=bucket).get("Contents", [])
            for item in objects:
                client.delete_object(Bucket=bucket, Key=item["Key"])
            if not uploads and not objects:
                break
        client.delete_bucket(Bucket=bucket)
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("NoSuchBucket", "404"):
            raise
