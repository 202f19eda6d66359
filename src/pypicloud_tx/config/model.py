"""The typed, frozen settings tree that the rest of the program reads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

ONE_GB = 1024**3
#: ``auth.token_expire``'s default (pypicloud's): one week, in seconds.
ONE_WEEK = 7 * 24 * 60 * 60


@attrs.frozen
class BackendChoice:
    """One configured backend: the name it was chosen by, its class, and its parsed options."""

    name: str
    cls: type[Any]
    options: Any


@attrs.frozen
class AccessLists:
    """Users, groups and package permissions written in the config file itself.

    ``packages`` maps a canonical package name to ``{principal: frozenset of perms}`` with
    principals ``user:<name>``, ``group:<name>``, ``everyone`` and ``authenticated``.
    """

    users: Mapping[str, str] = attrs.field(factory=dict)
    groups: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    packages: Mapping[str, Mapping[str, frozenset[str]]] = attrs.field(factory=dict)


@attrs.frozen
class Settings:
    """Everything the configuration file says, parsed and checked once at start-up."""

    here: str
    storage: BackendChoice
    cache: BackendChoice
    access: BackendChoice
    access_lists: AccessLists = attrs.field(factory=AccessLists)
    graceful_reload: bool = False
    default_read: tuple[str, ...] = ("authenticated",)
    default_write: tuple[str, ...] = ()
    cache_update: tuple[str, ...] = ("authenticated",)
    allow_overwrite: bool = False
    allow_delete: bool = True
    realm: str = "pypi"
    stream_files: bool = False
    package_max_age: int = 0
    download_url: str | None = None
    max_upload_size: int = ONE_GB
    listen: str | None = None
    #: ``auth.signing_key``: signs sign-up tokens (``None``: no tokens).  Never in a repr.
    signing_key: str | None = attrs.field(default=None, repr=False)
    #: ``auth.token_expire``: seconds a sign-up token stays valid.
    token_expire: int = ONE_WEEK
