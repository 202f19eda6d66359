"""What the boto3 backends (the S3 storage, the Secrets Manager access backend) share: the
options that name AWS credentials, how a client is made from them, and reading botocore's
error answers.

Each backend keeps its own namespace (``storage.``, ``auth.``), which the messages here name,
and its own translation of the errors a client raises while it is used.
"""

from __future__ import annotations

from typing import Any

import attrs
import boto3
from botocore.exceptions import ClientError, ProfileNotFound

from pypicloud_tx.config.options import as_str, one_line, option
from pypicloud_tx.errors import ConfigError


# Not slotted: two slotted bases cannot be mixed into one class.
@attrs.frozen(kw_only=True, slots=False)
class AWSCredentialOptions:
    """The options naming AWS credentials (boto3 ``Session`` arguments); none of them set
    means boto3's own credential chain (environment, shared files, instance role).

    Mixed into a backend's options before its other base (``class X(AWSCredentialOptions,
    Base)``), so that these options come after the base's in the configuration reference.
    """

    aws_access_key_id: str | None = option(as_str, default=None, doc="AWS access key id.")
    aws_secret_access_key: str | None = option(as_str, default=None, doc="AWS secret key.")
    aws_session_token: str | None = option(
        as_str, default=None, doc="Session token of temporary credentials."
    )
    profile_name: str | None = option(
        as_str, default=None, doc="Profile of the shared AWS credentials file."
    )


def check_key_pair(options: AWSCredentialOptions, namespace: str) -> None:
    """Refuse half an access key (an id without its secret, or the reverse).

    :raises ConfigError: naming both options of ``namespace``.
    """
    if (options.aws_access_key_id is None) != (options.aws_secret_access_key is None):
        raise ConfigError(
            f"{namespace}.aws_access_key_id and {namespace}.aws_secret_access_key must be given "
            "together"
        )


def session_client(
    service: str,
    namespace: str,
    options: AWSCredentialOptions,
    region_name: str | None,
    **arguments: Any,
) -> Any:
    """A boto3 client of ``service`` with the credentials of ``options`` (refuse half a key
    pair with :func:`check_key_pair` first); ``arguments`` go to ``Session.client``.

    :raises ConfigError: for an unknown profile or a malformed endpoint URL, naming the option
        of ``namespace``.  Other botocore errors (no region, ...) are the caller's to name.
    """
    try:
        session = boto3.session.Session(
            aws_access_key_id=options.aws_access_key_id,
            aws_secret_access_key=options.aws_secret_access_key,
            aws_session_token=options.aws_session_token,
            region_name=region_name,
            profile_name=options.profile_name,
        )
        return session.client(service, **arguments)
    except ProfileNotFound:
        raise ConfigError(
            f"{namespace}.profile_name: there is no AWS profile named {options.profile_name!r}"
        ) from None
    except ValueError as e:  # botocore refuses a malformed endpoint URL with a ValueError
        raise ConfigError(f"{namespace}.endpoint_url: {one_line(str(e))}") from None


def error_code(error: ClientError) -> str:
    """The code of an AWS error answer (``NoSuchKey``, ``AccessDenied``...), or ``""``."""
    return str(error.response.get("Error", {}).get("Code", ""))


def error_message(error: ClientError) -> str:
    """The message of an AWS error answer, or ``""``."""
    return str(error.response.get("Error", {}).get("Message", ""))
