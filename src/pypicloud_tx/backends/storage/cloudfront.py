"""Package files in S3, downloaded through CloudFront (``pypi.storage = cloudfront``).

Everything is as :mod:`.s3` (same bucket, layout and options), except the URL downloads are
redirected to: ``<storage.cloud_front_domain>/<key>``, signed when a key pair is configured.
Signed URLs use a canned policy (the URL and an expiry time), signed with RSA-SHA1 (PKCS#1
v1.5) as CloudFront requires, and CloudFront's URL-safe base64 (``+ = /`` become ``- _ ~``).
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import attrs
from botocore.signers import CloudFrontSigner
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pypicloud_tx.backends.storage.s3 import S3Options, S3Storage
from pypicloud_tx.config.options import as_str, option
from pypicloud_tx.errors import ConfigError
from pypicloud_tx.runtime import Runtime


def as_domain(text: str) -> str:
    """A CloudFront domain as a URL prefix (``https://`` added when no scheme is given)."""
    value = text.strip().rstrip("/")
    if not value:
        raise ValueError("the CloudFront domain is empty")
    if "://" not in value:
        value = "https://" + value
    return value


@attrs.frozen(kw_only=True)
class CloudFrontOptions(S3Options):
    """The S3 options, plus pypicloud's CloudFront options."""

    cloud_front_domain: str = option(
        as_domain, doc="The distribution's domain, e.g. https://d111111abcdef8.cloudfront.net"
    )
    cloud_front_key_id: str | None = option(
        as_str, default=None, doc="Id of the CloudFront public key (key pair) that signs URLs."
    )
    cloud_front_key_file: str | None = option(
        as_str, default=None, doc="Path of the PEM RSA private key that signs URLs."
    )
    cloud_front_key_string: str | None = option(
        as_str, default=None, doc="The PEM RSA private key itself."
    )


def load_private_key(options: CloudFrontOptions, here: str = ".") -> rsa.RSAPrivateKey | None:
    """The signing key named by the options, or ``None`` for unsigned URLs.

    :raises ConfigError: naming the option at fault.
    """
    if options.cloud_front_key_string:
        option_name = "storage.cloud_front_key_string"
        text = options.cloud_front_key_string
        if "\n" not in text:
            text = text.replace("\\n", "\n")  # a key given in one line, as in an env variable
        data = text.encode("utf-8")
    elif options.cloud_front_key_file:
        option_name = "storage.cloud_front_key_file"
        path = os.path.join(here, os.path.expanduser(options.cloud_front_key_file))
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ConfigError(f"{option_name}: cannot read {path}: {e.strerror}") from None
    else:
        if options.cloud_front_key_id:
            raise ConfigError(
                "storage.cloud_front_key_id is set but no key: set storage.cloud_front_key_file "
                "or storage.cloud_front_key_string"
            )
        return None
    if not options.cloud_front_key_id:
        raise ConfigError(f"{option_name} is set but storage.cloud_front_key_id is not")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"{option_name}: not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{option_name}: CloudFront signs with RSA keys; this is another kind")
    return key


@attrs.define(kw_only=True)
class CloudFrontS3Storage(S3Storage):
    """An S3 storage whose downloads go through a CloudFront distribution."""

    Options = CloudFrontOptions

    domain: str
    key_id: str | None = None
    private_key: rsa.RSAPrivateKey | None = None
    seconds: Callable[[], float] = time.time

    @classmethod
    def from_config(  # type: ignore[override]
        cls, options: CloudFrontOptions, runtime: Runtime
    ) -> CloudFrontS3Storage:
        """An S3 storage (see :class:`S3Storage`) redirecting to ``storage.cloud_front_domain``."""
        arguments: dict[str, Any] = cls.arguments(options, runtime)
        return cls(
            **arguments,
            domain=options.cloud_front_domain,
            key_id=options.cloud_front_key_id,
            private_key=load_private_key(options, runtime.here),
        )

    def url(self, key: str) -> str:
        """The CloudFront URL of ``key``: signed (canned policy) when a key is configured."""
        url = f"{self.domain}/{quote(key, safe='/')}"
        if self.private_key is None or self.key_id is None:
            return url
        private_key = self.private_key

        def rsa_signer(message: bytes) -> bytes:
            return private_key.sign(message, padding.PKCS1v15(), hashes.SHA1())

        expires = _dt.datetime.fromtimestamp(int(self.seconds()) + self.expire_after, _dt.UTC)
        signer = CloudFrontSigner(self.key_id, rsa_signer)
        return str(signer.generate_presigned_url(url, date_less_than=expires))

    def _v_signed_url(self, key: str) -> str:
        return self.url(key)

    def _v_public_url(self, key: str) -> str:
        return self.url(key)
