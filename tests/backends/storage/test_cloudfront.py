"""The CloudFront storage (``pypi.storage = cloudfront``): S3 storage, CloudFront URLs.

Signed URLs are checked the way CloudFront checks them: the canned policy is rebuilt from the
URL and its expiry, and the signature verified with the public key.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.backends.storage._objects import Layout
from pypicloud_tx.backends.storage.cloudfront import CloudFrontOptions, CloudFrontS3Storage
from pypicloud_tx.config.options import parse_options
from pypicloud_tx.config.registry import resolve
from pypicloud_tx.errors import ConfigError
from pypicloud_tx.runtime import Runtime

from .conformance import package_file
from .test_s3 import FAST, S3Case

DOMAIN = "https://d111111abcdef8.cloudfront.net"
NOW = 1_700_000_000


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: Any) -> str:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def build(options: dict[str, str], here: str = ".") -> CloudFrontS3Storage:
    storage = CloudFrontS3Storage.from_config(
        parse_options(CloudFrontOptions, "storage", {"bucket": "b", **options}),
        Runtime.synchronous(here=here),
    )
    storage.seconds = lambda: NOW
    return storage


def cloudfront_b64decode(text: str) -> bytes:
    """CloudFront's URL-safe base64 (``- _ ~`` for ``+ = /``) back to bytes."""
    return base64.b64decode(text.replace("-", "+").replace("_", "=").replace("~", "/"))


class SignedURLTests(SynchronousTestCase):
    """URLs of the CloudFront storage (no network: signing is local)."""

    def check_signed(self, url: str, key: rsa.RSAPrivateKey, key_id: str, expires: int) -> str:
        """Verify ``url`` as CloudFront would; return the URL without its query."""
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.assertEqual(set(query), {"Expires", "Signature", "Key-Pair-Id"})
        self.assertEqual((query["Key-Pair-Id"], int(query["Expires"])), (key_id, expires))
        resource = f"{parts.scheme}://{parts.netloc}{parts.path}"
        policy = json.dumps(
            {
                "Statement": [
                    {
                        "Resource": resource,
                        "Condition": {"DateLessThan": {"AWS:EpochTime": expires}},
                    }
                ]
            },
            separators=(",", ":"),
        ).encode()
        signature = cloudfront_b64decode(query["Signature"])
        try:
            key.public_key().verify(signature, policy, padding.PKCS1v15(), hashes.SHA1())
        except InvalidSignature:
            self.fail("the CloudFront signature does not verify with the public key")
        return resource

    def test_signed_with_key_string(self) -> None:
        """With a key id and a PEM key string, download URLs point at the distribution, carry
        a canned policy expiring ``storage.expire_after`` seconds from now, and are signed with
        RSA-SHA1 in CloudFront's URL-safe base64."""
        key = rsa_key()
        storage = build(
            {
                "cloud_front_domain": DOMAIN,
                "cloud_front_key_id": "K2JCJMDEHXQW5F",
                "cloud_front_key_string": pem(key),
                "expire_after": "600",
                "prefix": "pkgs/",
            }
        )
        file = package_file(b"x", filename="demo_pkg-1.0+local-py3-none-any.whl")
        url = self.successResultOf(storage.download_url(file))
        assert url is not None
        resource = self.check_signed(url, key, "K2JCJMDEHXQW5F", NOW + 600)
        path = Layout("pkgs/", True).key("demo-pkg", file.filename).replace("+", "%2B")
        self.assertEqual(resource, f"{DOMAIN}/{path}")

    def test_signed_with_key_file(self) -> None:
        """``storage.cloud_front_key_file`` (relative to the config folder) works the same."""
        key = rsa_key()
        folder = self.mktemp()
        os.makedirs(folder)
        with open(os.path.join(folder, "cf.pem"), "w") as f:
            f.write(pem(key))
        storage = build(
            {
                "cloud_front_domain": "d111111abcdef8.cloudfront.net/",
                "cloud_front_key_id": "KID",
                "cloud_front_key_file": "cf.pem",
            },
            here=folder,
        )
        url = self.successResultOf(storage.download_url(package_file(b"x")))
        assert url is not None
        resource = self.check_signed(url, key, "KID", NOW + 86400)
        self.assertTrue(resource.startswith(DOMAIN + "/"))

    def test_key_string_on_one_line(self) -> None:
        """A key given on one line with ``\\n`` escapes (as in an environment variable) loads."""
        key = rsa_key()
        storage = build(
            {
                "cloud_front_domain": DOMAIN,
                "cloud_front_key_id": "KID",
                "cloud_front_key_string": pem(key).replace("\n", "\\n"),
            }
        )
        url = self.successResultOf(storage.download_url(package_file(b"x")))
        assert url is not None
        self.check_signed(url, key, "KID", NOW + 86400)

    def test_unsigned_without_key(self) -> None:
        """Without a key pair, URLs are the plain CloudFront URL of the key (also with
        ``storage.public_url``, which CloudFront ignores)."""
        for extra in ({}, {"public_url": "true"}):
            storage = build({"cloud_front_domain": DOMAIN, "prepend_hash": "false", **extra})
            self.assertEqual(
                self.successResultOf(storage.download_url(package_file(b"x"))),
                f"{DOMAIN}/demo-pkg/demo_pkg-1.0-py3-none-any.whl",
            )

    def test_streams_when_redirects_off(self) -> None:
        """With ``storage.redirect_urls = false`` there is no URL: the server streams."""
        storage = build({"cloud_front_domain": DOMAIN, "redirect_urls": "false"})
        self.assertIsNone(self.successResultOf(storage.download_url(package_file(b"x"))))

    def test_configuration_errors(self) -> None:
        """Half a key pair, an unreadable file or a key that is not RSA stop start-up with a
        message naming the option."""
        ec_key = ec.generate_private_key(ec.SECP256R1())
        for values, named in (
            ({"cloud_front_key_id": "KID"}, "storage.cloud_front_key_file"),
            ({"cloud_front_key_string": pem(rsa_key())}, "storage.cloud_front_key_id"),
            (
                {"cloud_front_key_id": "KID", "cloud_front_key_file": "/nonexistent/cf.pem"},
                "storage.cloud_front_key_file",
            ),
            (
                {"cloud_front_key_id": "KID", "cloud_front_key_string": "not a key"},
                "storage.cloud_front_key_string",
            ),
            (
                {"cloud_front_key_id": "KID", "cloud_front_key_string": pem(ec_key)},
                "storage.cloud_front_key_string",
            ),
        ):
            e = self.assertRaises(ConfigError, build, {"cloud_front_domain": DOMAIN, **values})
            self.assertIn(named, e.message)
        e = self.assertRaises(
            ConfigError, parse_options, CloudFrontOptions, "storage", {"bucket": "b"}
        )
        self.assertIn("storage.cloud_front_domain", e.message)

    def test_registry_names(self) -> None:
        """``pypi.storage = cloudfront`` and pypicloud's class paths choose this storage."""
        for value in (
            "cloudfront",
            "pypicloud.storage.CloudFrontS3Storage",
            "pypicloud.storage.s3.CloudFrontS3Storage",
        ):
            self.assertIs(resolve("pypi.storage", value)[1], CloudFrontS3Storage)


class CloudFrontOnS3Tests(S3Case):
    """The CloudFront storage keeps its files in S3 like the S3 storage (SeaweedFS)."""

    def unstarted(self, runtime: Runtime | None = None, /, **options: str) -> CloudFrontS3Storage:
        values = {**self.server, **FAST, "cloud_front_domain": DOMAIN, **options}
        return CloudFrontS3Storage.from_config(
            parse_options(CloudFrontOptions, "storage", values), runtime or Runtime.synchronous()
        )

    def test_store_and_read(self) -> None:
        """put(), list(), open() and delete() go to the bucket; only the URL is CloudFront's."""
        storage = self.started()
        file = self.store(storage, b"through cloudfront")
        self.assertEqual(self.successResultOf(storage.list()), [file])
        self.assertEqual(self.read(storage, file), b"through cloudfront")
        key = Layout("", True).key(file.name, file.filename)
        self.assertEqual(self.successResultOf(storage.download_url(file)), f"{DOMAIN}/{key}")
        self.successResultOf(storage.delete(file))
        self.assertEqual(self.keys(storage), [])
