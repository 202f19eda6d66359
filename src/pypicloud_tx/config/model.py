"""The typed, frozen settings tree that the rest of the program reads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

ONE_GB = 1024**3
#: ``auth.token_expire``'s default (pypicloud's): one week, in seconds.
ONE_WEEK = 7 * 24 * 60 * 60
#: The default upstream index.
PYPI = "https://pypi.org"
PYPI_SIMPLE = PYPI + "/simple"
#: ``session.timeout``'s default: one day, in seconds.
ONE_DAY = 24 * 60 * 60


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
    #: ``pypi.fallback``: ``none``, ``redirect`` or ``cache`` (``docs/fallback.md``).
    fallback: str = "none"
    #: ``pypi.fallback_url`` (deprecated): the upstream simple index.
    fallback_url: str | None = attrs.field(default=None, repr=False)
    #: ``pypi.fallback_base_url``: upstream's root (``<it>/simple``, ``<it>/pypi``).
    fallback_base_url: str | None = attrs.field(default=None, repr=False)
    #: ``pypi.always_show_upstream``: merge upstream's files into private projects' pages.
    always_show_upstream: bool = False
    #: ``pypi.disallow_fallback``: canonical names never looked up upstream.
    disallow_fallback: tuple[str, ...] = ()
    #: ``pypi.fallback_timeout``: seconds for one upstream exchange.
    fallback_timeout: float = 10.0
    #: ``pypi.fallback_cache_seconds``: seconds an upstream page is used before revalidating.
    fallback_cache_seconds: float = 60.0
    #: ``pypi.fallback_max_stale``: seconds a page is still used while upstream fails.
    fallback_max_stale: float = 24 * 3600.0
    #: ``pypi.fallback_max_connections``: upstream exchanges at once.
    fallback_max_connections: int = 10
    #: ``session.validate_key`` / ``session.encrypt_key``: the secret that signs browser session
    #: cookies (``None`` for both: a key is generated at start-up, with a warning).
    session_validate_key: str | None = attrs.field(default=None, repr=False)
    session_encrypt_key: str | None = attrs.field(default=None, repr=False)
    #: ``session.secure``: send the session cookie over HTTPS only.
    session_secure: bool = False
    #: ``session.timeout``: seconds a browser session lasts without being used.
    session_timeout: int = ONE_DAY
    #: ``session.max_age``: seconds a browser session lasts at most, however much it is used.
    session_max_age: int = ONE_WEEK
    #: ``session.url``: the database of browser sessions (default: the access or cache database
    #: when it is SQL, else this process's memory).  May hold a password: never in a repr.
    session_url: str | None = attrs.field(default=None, repr=False)
    #: ``pypi.trusted_proxies``: the reverse proxies (networks, or ``unix`` for peers on a Unix
    #: socket) whose ``X-Forwarded-*`` headers are believed (``web/proxy.py``); none by default.
    trusted_proxies: tuple[str, ...] = ()
    #: ``pypi.proxy_headers``: ``x-forwarded`` (``X-Forwarded-*``) or ``forwarded`` (RFC 7239):
    #: the headers a trusted proxy's facts are read from.
    proxy_headers: str = "x-forwarded"
    #: ``pypi.shutdown_grace``: seconds requests in progress get to finish after SIGTERM.
    shutdown_grace: float = 20.0
    #: ``pypi.metrics``: serve Prometheus metrics at ``/metrics`` (``docs/observability.md``).
    metrics: bool = True
    #: ``pypi.metrics_allow``: the client networks (or ``unix``) that may read ``/metrics``.
    metrics_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128", "unix")

    @property
    def fallback_simple_url(self) -> str:
        """The upstream simple index (may carry credentials: never log it)."""
        if self.fallback_base_url:
            return self.fallback_base_url + "/simple"
        return self.fallback_url or PYPI_SIMPLE

    @property
    def fallback_root_url(self) -> str | None:
        """Upstream's root, for ``/pypi/<name>/json`` redirects; None when not known."""
        if self.fallback_base_url:
            return self.fallback_base_url
        if self.fallback_url is None:
            return PYPI
        if self.fallback_url.endswith("/simple"):
            return self.fallback_url[: -len("/simple")]
        return None
