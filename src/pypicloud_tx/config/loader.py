"""INI file (pypicloud's option names) -> :class:`~pypicloud_tx.config.model.Settings`.

The options live in ``[pypicloud]``, or in ``[app:main]`` of an existing pypicloud
``server.ini`` (or the ``[app:*]`` section whose ``use`` names pypicloud).  ``%(here)s`` is
the file's folder, also in environment values.  ``PPC_<NAMESPACE>_<OPTION>`` environment
variables override the file (``PPC_STORAGE_DIR`` sets ``storage.dir``,
``PPC_PYPI_DEFAULT_READ`` sets ``pypi.default_read``, ``PPC_AUTH_LDAP_URL`` sets
``auth.ldap.url``).

Options outside our namespaces (``use``, ``pyramid.*``, ``retry.*``, ...) are accepted silently:
a pypicloud ``server.ini`` carries many.  Of Beaker's ``session.*`` options the ones the web
interface uses are read (``session.encrypt_key``, ``session.validate_key``, ``session.secure``,
``session.timeout``) plus ours (``session.max_age``, ``session.url``); the rest are ignored.
Every error is a :class:`ConfigError` whose message is one line naming the option.
"""

from __future__ import annotations

import configparser
import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from twisted.logger import Logger

from pypicloud_tx.config.model import AccessLists, BackendChoice, Settings
from pypicloud_tx.config.options import (
    as_bool,
    as_int,
    as_list,
    as_positive_size,
    one_line,
    parse_options,
)
from pypicloud_tx.config.registry import resolve
from pypicloud_tx.domain.names import canonical, is_valid_name
from pypicloud_tx.errors import ConfigError

log = Logger()

SECTIONS = ("pypicloud", "app:main")
ENV_PREFIX = "PPC_"
ENV_NAMESPACES = ("pypi", "storage", "db", "auth", "session")
#: Namespaces whose every option we check; anything else in the section is left alone
#: (``use``, ``pyramid.*`` in a pypicloud server.ini).
BACKEND_NAMESPACES = {"storage": "pypi.storage", "db": "pypi.db", "auth": "pypi.auth"}
DEFAULT_BACKENDS = {"pypi.storage": "file", "pypi.db": "sql", "pypi.auth": "config"}


def _non_negative(text: str) -> int:
    value = as_int(text)
    if value < 0:
        raise ValueError(f"{text!r} must not be negative")
    return value


def _realm(text: str) -> str:
    value = text.strip()
    if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{text!r} must be one line of printable text")
    return value


def _positive(text: str) -> int:
    value = as_int(text)
    if value <= 0:
        raise ValueError(f"{text.strip()!r} must be more than zero")
    return value


def _signing_key(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError(
            "must not be empty (generate one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return value


def _secret(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty (leave the option out instead)")
    return value


def _url(text: str) -> str:
    value = text.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    return value


def _upstream_url(text: str) -> str:
    """An upstream URL; it may carry ``user:password@``, so the value is never echoed."""
    value = text.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return value


FALLBACK_MODES = ("redirect", "cache", "none", "mirror")


def _fallback_mode(text: str) -> str:
    value = text.strip().lower()
    if value not in FALLBACK_MODES:
        raise ValueError(f"{text.strip()!r} is not one of redirect, cache, none")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text.strip()!r} must be a number of seconds above zero")
    return value


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text.strip()!r} must be 0 or a number of seconds")
    return value


def _project_names(text: str) -> tuple[str, ...]:
    names = as_list(text)
    for name in names:
        if not is_valid_name(name):
            raise ValueError(f"{name!r} is not a valid project name")
    return tuple(sorted({canonical(n) for n in names}))


def _trusted_proxies(text: str) -> tuple[str, ...]:
    """Addresses and networks (``10.0.0.0/8``, ``::1``) or ``unix``, normalised."""
    found = []
    for word in as_list(text):
        if word.lower() == "unix":
            found.append("unix")
            continue
        try:
            found.append(str(ipaddress.ip_network(word, strict=False)))
        except ValueError:
            raise ValueError(
                f"{word!r} is not an IP address, a network (10.0.0.0/8) or unix"
            ) from None
    return tuple(dict.fromkeys(found))


def _proxy_headers(text: str) -> str:
    value = text.strip().lower()
    if value not in ("x-forwarded", "forwarded"):
        raise ValueError(
            f"{text.strip()!r} is not x-forwarded (X-Forwarded-* headers) or forwarded "
            "(the Forwarded header of RFC 7239)"
        )
    return value


#: pypi.* options: option -> (Settings field, parser)
CORE: Mapping[str, tuple[str, Callable[[str], Any]]] = {
    "pypi.default_read": ("default_read", as_list),
    "pypi.default_write": ("default_write", as_list),
    "pypi.cache_update": ("cache_update", as_list),
    "pypi.allow_overwrite": ("allow_overwrite", as_bool),
    "pypi.allow_delete": ("allow_delete", as_bool),
    "pypi.realm": ("realm", _realm),
    "pypi.stream_files": ("stream_files", as_bool),
    "pypi.package_max_age": ("package_max_age", _non_negative),
    "pypi.download_url": ("download_url", _url),
    "pypi.max_upload_size": ("max_upload_size", as_positive_size),
    "db.graceful_reload": ("graceful_reload", as_bool),
    # Sign-up tokens work the same for every mutable access backend, so these two are general
    # settings: a backend's own Options never see them (and so never refuse them).
    "auth.signing_key": ("signing_key", _signing_key),
    "auth.token_expire": ("token_expire", _positive),
    # The upstream fallback (docs/fallback.md).
    "pypi.fallback": ("fallback", _fallback_mode),
    "pypi.fallback_url": ("fallback_url", _upstream_url),
    "pypi.fallback_base_url": ("fallback_base_url", _upstream_url),
    "pypi.always_show_upstream": ("always_show_upstream", as_bool),
    "pypi.disallow_fallback": ("disallow_fallback", _project_names),
    "pypi.fallback_timeout": ("fallback_timeout", _seconds),
    "pypi.fallback_cache_seconds": ("fallback_cache_seconds", _non_negative_seconds),
    "pypi.fallback_max_stale": ("fallback_max_stale", _non_negative_seconds),
    "pypi.fallback_max_connections": ("fallback_max_connections", _positive),
    # Deprecated by pypicloud: true means redirect, false none (when pypi.fallback is unset).
    "pypi.use_fallback": ("use_fallback", as_bool),
    # The browser session (Beaker's option names where pypicloud had them; docs/web-ui.md).
    "session.encrypt_key": ("session_encrypt_key", _secret),
    "session.validate_key": ("session_validate_key", _secret),
    "session.secure": ("session_secure", as_bool),
    "session.timeout": ("session_timeout", _positive),
    "session.max_age": ("session_max_age", _positive),
    "session.url": ("session_url", _secret),
    # Deployment (docs/deployment.md): proxies whose X-Forwarded-* headers count, and shutdown.
    "pypi.trusted_proxies": ("trusted_proxies", _trusted_proxies),
    "pypi.proxy_headers": ("proxy_headers", _proxy_headers),
    "pypi.shutdown_grace": ("shutdown_grace", _non_negative_seconds),
    # Observability (docs/observability.md); metrics_allow takes trusted_proxies' words.
    "pypi.metrics": ("metrics", as_bool),
    "pypi.metrics_allow": ("metrics_allow", _trusted_proxies),
}
#: pypicloud options this version reads but does not act on yet; a warning says so.
NOT_YET: frozenset[str] = frozenset()
#: pypicloud options that have no effect here because the behaviour is always on.
ALWAYS_ON = {"pypi.calculate_package_hashes", "pypi.use_json_scripts"}
PERMS = {"r": frozenset({"read"}), "rw": frozenset({"read", "write"})}


def load_settings(path: str, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and check the configuration file at ``path``.

    :raises ConfigError: with one line naming the option and what is wrong.
    """
    environ = os.environ if environ is None else environ
    path = os.path.abspath(path)
    here = os.path.dirname(path)
    parser = configparser.ConfigParser(
        interpolation=configparser.BasicInterpolation(),
        defaults={"here": here.replace("%", "%%")},
        strict=False,
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # names are case-sensitive
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"cannot read the configuration file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except configparser.Error as e:
        raise ConfigError(f"{path}: not a valid INI file: {one_line(e.message)}") from None
    section = _find_section(parser)
    if section is None:
        raise ConfigError(f"{path}: no [pypicloud] (or pypicloud's [app:main]) section found")
    raw = {k: _get(parser, section, k) for k in parser.options(section) if k != "here"}
    for key, value in environment_overrides(environ).items():
        value = value.replace("%(here)s", here)
        # PPC_AUTH_LDAP_URL must replace auth.ldap.url when the file sets it.
        flat = key.replace(".", "_")
        raw[next((k for k in raw if k.replace(".", "_") == flat), key)] = value
    return parse_settings(raw, here=here, listen=_server_main(parser))


def _find_section(parser: configparser.ConfigParser) -> str | None:
    """``[pypicloud]``, else ``[app:main]``, else an ``[app:*]`` that uses pypicloud."""
    for section in SECTIONS:
        if parser.has_section(section):
            return section
    for section in parser.sections():
        if section.startswith("app:") and "pypicloud" in parser.get(
            section, "use", raw=True, fallback=""
        ):
            return section
    return None


def _get(parser: configparser.ConfigParser, section: str, option: str) -> str:
    try:
        return parser.get(section, option)
    except configparser.InterpolationError as e:
        # "%(name)s" that names nothing, or a lone "%": say which option, on one line.
        raise ConfigError(
            f"{option}: {one_line(e.message.splitlines()[0])} (write a literal % as %%)"
        ) from None


def environment_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """``PPC_PYPI_REALM=x`` -> ``{"pypi.realm": "x"}`` for our namespaces (and ``session``)."""
    found = {}
    for variable, value in environ.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        namespace, _, rest = variable[len(ENV_PREFIX) :].lower().partition("_")
        if rest and namespace in ENV_NAMESPACES:
            found[f"{namespace}.{rest}"] = value
    return found


def _server_main(parser: configparser.ConfigParser) -> str | None:
    """A Twisted endpoint from a pypicloud server.ini's ``[server:main]``.

    waitress and paste take ``host`` and ``port``; waitress also ``listen = host:port``
    (the first address is used).  ``*`` and ``0.0.0.0`` listen on every IPv4 interface,
    ``::`` on every interface.
    """
    section = "server:main"
    if not parser.has_section(section):
        return None
    if parser.has_option(section, "port"):
        port = _get(parser, section, "port").strip()
        host = _get(parser, section, "host").strip() if parser.has_option(section, "host") else ""
    elif parser.has_option(section, "listen"):
        first = (_get(parser, section, "listen").split() or [""])[0]
        host, _, port = first.rpartition(":")
    else:
        return None
    try:
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise ConfigError(f"[server:main] port: {port!r} is not a port number") from None
    host = host.strip("[]")
    if host in ("", "*"):
        host = "0.0.0.0" if host == "*" else "127.0.0.1"
    interface = host.replace(":", "\\:")  # endpoint strings escape colons (IPv6)
    kind = "tcp6" if ":" in host else "tcp"
    return f"{kind}:port={number}:interface={interface}"


def parse_settings(raw: Mapping[str, str], here: str = ".", listen: str | None = None) -> Settings:
    """Build :class:`Settings` from flat ``option -> text`` pairs (already interpolated)."""
    values: dict[str, Any] = {}
    namespaces: dict[str, dict[str, str]] = {ns: {} for ns in BACKEND_NAMESPACES}
    users: dict[str, str] = {}
    groups: dict[str, tuple[str, ...]] = {}
    packages: dict[str, dict[str, frozenset[str]]] = {}
    for key, text in raw.items():
        namespace, _, rest = key.partition(".")
        if key in CORE:
            field, parse = CORE[key]
            try:
                values[field] = parse(text)
            except ValueError as e:
                raise ConfigError(f"{key}: {one_line(str(e))}") from None
        elif key in DEFAULT_BACKENDS:
            continue
        elif key in NOT_YET:
            log.warn("{option} is not supported by this version yet and is ignored", option=key)
        elif key in ALWAYS_ON:
            continue
        elif namespace == "pypi":
            raise ConfigError(f"{key}: unknown option (see docs/configuration.md for pypi.*)")
        elif namespace in namespaces:
            if not rest:
                raise ConfigError(f"{key}: option name is incomplete")
            namespaces[namespace][rest] = text
        elif namespace == "user":
            _check_principal_name(key, rest)
            users[rest] = text.strip()
        elif namespace == "group":
            _check_principal_name(key, rest)
            groups[rest] = as_list(text)
        elif namespace == "package":
            package, principal, perms = _package_permission(key, rest, text)
            packages.setdefault(package, {})[principal] = perms
    backends = {}
    for namespace, option in BACKEND_NAMESPACES.items():
        choice, cls = resolve(option, raw.get(option, DEFAULT_BACKENDS[option]).strip())
        options = parse_options(cls.Options, namespace, namespaces[namespace])
        backends[namespace] = BackendChoice(choice, cls, options)
    _resolve_fallback(values)
    _warn_unknown_groups(packages, groups)
    access_lists = AccessLists(
        users=users, groups=groups, packages={k: dict(v) for k, v in packages.items()}
    )
    settings = Settings(
        here=here,
        storage=backends["storage"],
        cache=backends["db"],
        access=backends["auth"],
        access_lists=access_lists,
        listen=listen,
        **values,
    )
    # A backend may check the rest of the settings it reads (the config access backend
    # refuses user.* lines whose hash it could never verify).
    for backend in backends.values():
        check = getattr(backend.cls, "check_settings", None)
        if check is not None:
            check(settings)
    return settings


def _resolve_fallback(values: dict[str, Any]) -> None:
    """Apply pypicloud's deprecated fallback spellings to ``values`` (in place)."""
    use_fallback = values.pop("use_fallback", None)
    if use_fallback is not None:
        log.warn("pypi.use_fallback is deprecated; use pypi.fallback = redirect or none")
        values.setdefault("fallback", "redirect" if use_fallback else "none")
    if values.get("fallback") == "mirror":
        log.warn(
            "pypi.fallback = mirror is deprecated; use pypi.fallback = cache and "
            "pypi.always_show_upstream = true"
        )
        values["fallback"] = "cache"
        values.setdefault("always_show_upstream", True)
    if "fallback_url" in values and "fallback_base_url" not in values:
        log.warn("pypi.fallback_url is deprecated; use pypi.fallback_base_url")


def _warn_unknown_groups(
    packages: Mapping[str, Mapping[str, frozenset[str]]], groups: Mapping[str, tuple[str, ...]]
) -> None:
    for package, acl in sorted(packages.items()):
        for principal in sorted(acl):
            kind, _, name = principal.partition(":")
            if kind == "group" and name not in groups:
                log.warn(
                    "package.{package}.group.{group} names a group without a group.{group} line",
                    package=package,
                    group=name,
                )


def _check_principal_name(key: str, name: str) -> None:
    if not name or any(c.isspace() or ord(c) < 32 for c in name):
        raise ConfigError(f"{key}: the name after the dot must be one word")


def _package_permission(key: str, rest: str, text: str) -> tuple[str, str, frozenset[str]]:
    """``package.<pkg>.user.<name> = rw`` -> (canonical pkg, principal, perms)."""
    package, kind, name = _split_package_key(key, rest)
    _check_principal_name(key, name)
    perms = PERMS.get(text.strip().lower())
    if perms is None:
        raise ConfigError(f"{key}: {text.strip()!r} is not a permission (use r or rw)")
    if kind == "user":
        principal = f"user:{name}"
    elif name in ("everyone", "authenticated"):
        principal = name
    else:
        principal = f"group:{name}"
    return canonical(package), principal, perms


def _split_package_key(key: str, rest: str) -> tuple[str, str, str]:
    """Split ``<pkg>.user.<name>`` / ``<pkg>.group.<name>``; package names may hold dots.

    The rightmost ``.user.`` or ``.group.`` is the separator, so ``some.user.tool.group.dev``
    is group ``dev`` on package ``some.user.tool``.
    """
    found = max((rest.rfind(f".{kind}."), kind) for kind in ("user", "group"))
    at, kind = found
    if at > 0:
        package, name = rest[:at], rest[at + len(kind) + 2 :]
        if name and is_valid_name(package):
            return package, kind, name
    raise ConfigError(
        f"{key}: expected package.<package>.user.<name> or package.<package>.group.<name>"
    )
