"""Choosing a backend class by short name, pypicloud dotted path, or any dotted path."""

from __future__ import annotations

import importlib
from typing import Any

from pypicloud_tx.errors import ConfigError

_STORAGE = {
    "file": "pypicloud_tx.backends.storage.files:FileStorage",
    "memory": "pypicloud_tx.backends.storage.memory:MemoryStorage",
    "s3": "pypicloud_tx.backends.storage.s3:S3Storage",
    "cloudfront": "pypicloud_tx.backends.storage.cloudfront:CloudFrontS3Storage",
    "gcs": "pypicloud_tx.backends.storage.gcs:GoogleCloudStorage",
}
_CACHE = {
    "sql": "pypicloud_tx.backends.cache.sql:SQLCache",
    "memory": "pypicloud_tx.backends.cache.memory:MemoryCache",
    "redis": "pypicloud_tx.backends.cache.redis:RedisCache",
    "dynamo": "pypicloud_tx.backends.cache.dynamo:DynamoCache",
}
_ACCESS = {
    "config": "pypicloud_tx.backends.access.config:ConfigAccessBackend",
    "sql": "pypicloud_tx.backends.access.sql:SQLAccessBackend",
    "memory": "pypicloud_tx.backends.access.memory:MemoryAccessBackend",
    "ldap": "pypicloud_tx.backends.access.ldap:LDAPAccessBackend",
    "aws_secrets_manager": (
        "pypicloud_tx.backends.access.aws_secrets_manager:AWSSecretsManagerAccessBackend"
    ),
    "remote": "pypicloud_tx.backends.access.remote:RemoteAccessBackend",
}
#: pypicloud's own class paths, so an existing server.ini keeps working.
_PYPICLOUD = {
    "pypicloud.storage.FileStorage": "file",
    "pypicloud.storage.files.FileStorage": "file",
    "pypicloud.storage.S3Storage": "s3",
    "pypicloud.storage.s3.S3Storage": "s3",
    "pypicloud.storage.CloudFrontS3Storage": "cloudfront",
    "pypicloud.storage.s3.CloudFrontS3Storage": "cloudfront",
    "pypicloud.storage.GoogleCloudStorage": "gcs",
    "pypicloud.storage.gcs.GoogleCloudStorage": "gcs",
    "pypicloud.cache.RedisCache": "redis",
    "pypicloud.cache.redis_cache.RedisCache": "redis",
    "pypicloud.cache.DynamoCache": "dynamo",
    "pypicloud.cache.dynamo.DynamoCache": "dynamo",
    "pypicloud.cache.SQLCache": "sql",
    "pypicloud.cache.sql.SQLCache": "sql",
    "pypicloud.access.ConfigAccessBackend": "config",
    "pypicloud.access.config.ConfigAccessBackend": "config",
    "pypicloud.access.SQLAccessBackend": "sql",
    "pypicloud.access.sql.SQLAccessBackend": "sql",
    "pypicloud.access.LDAPAccessBackend": "ldap",
    "pypicloud.access.ldap_.LDAPAccessBackend": "ldap",
    "pypicloud.access.AWSSecretsManagerAccessBackend": "aws_secrets_manager",
    "pypicloud.access.aws_secrets_manager.AWSSecretsManagerAccessBackend": "aws_secrets_manager",
    "pypicloud.access.RemoteAccessBackend": "remote",
    "pypicloud.access.remote.RemoteAccessBackend": "remote",
}

KINDS = {"pypi.storage": _STORAGE, "pypi.db": _CACHE, "pypi.auth": _ACCESS}
#: The package of pypicloud's classes of each kind: its paths only name backends of that kind.
_PYPICLOUD_PACKAGES = {
    "pypi.storage": "pypicloud.storage.",
    "pypi.db": "pypicloud.cache.",
    "pypi.auth": "pypicloud.access.",
}


def resolve(option: str, value: str) -> tuple[str, type[Any]]:
    """The canonical choice name and the class chosen by ``option = value``.

    :raises ConfigError: when the name is unknown or the class cannot be imported.
    """
    table = KINDS[option]
    choice = value
    if value in _PYPICLOUD:
        if not value.startswith(_PYPICLOUD_PACKAGES[option]):
            raise ConfigError(f"{option}: {value!r} is not a pypicloud class for {option}")
        choice = _PYPICLOUD[value]
    target = table.get(choice)
    if target is None:
        if "." not in choice and ":" not in choice:
            names = ", ".join(sorted(table))
            raise ConfigError(
                f"{option}: unknown backend {value!r} (choose one of {names}, "
                "or give a dotted path to a class)"
            )
        target = choice
    module_name, _, attr = target.partition(":") if ":" in target else target.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{option}: {value!r} is not a dotted path to a class (module.Class)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(f"{option}: cannot load {value!r}: no module named {e.name!r}") from None
    except Exception as e:  # a module that fails to import must still give one clear line
        reason = (str(e).splitlines() or [""])[0]
        raise ConfigError(
            f"{option}: cannot load {value!r}: importing {module_name} failed with "
            f"{type(e).__name__}: {reason}"
        ) from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"{option}: cannot load {value!r}: {module_name} has no {attr!r}")
    if not isinstance(cls, type):
        raise ConfigError(f"{option}: {value!r} is not a class")
    for needed in ("Options", "from_config"):
        if not hasattr(cls, needed):
            raise ConfigError(f"{option}: {value!r} is not a backend class (it has no {needed})")
    return choice, cls
