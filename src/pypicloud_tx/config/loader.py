"""INI file (pypicloud's option names) -> :class:`~pypicloud_tx.config.model.Settings`.

The options live in ``[pypicloud]``, or in ``[app:main]`` of an existing pypicloud
``server.ini``.  ``%(here)s`` is the file's folder.  ``PPC_<NAMESPACE>_<OPTION>`` environment
variables override the file (``PPC_STORAGE_DIR`` sets ``storage.dir``,
``PPC_PYPI_DEFAULT_READ`` sets ``pypi.default_read``).
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.logger import Logger

from pypicloud_tx.config.model import AccessLists, BackendChoice, Settings
from pypicloud_tx.config.options import as_bool, as_int, as_list, as_size, as_str, parse_options
from pypicloud_tx.config.registry import resolve
from pypicloud_tx.domain.names import canonical, is_valid_name
from pypicloud_tx.errors import ConfigError

log = Logger()

SECTIONS = ("pypicloud", "app:main")
ENV_PREFIX = "PPC_"
#: Namespaces whose every option we check; anything else in the section is left alone
#: (``use``, ``pyramid.*`` in a pypicloud server.ini).
BACKEND_NAMESPACES = {"storage": "pypi.storage", "db": "pypi.db", "auth": "pypi.auth"}
DEFAULT_BACKENDS = {"pypi.storage": "file", "pypi.db": "sql", "pypi.auth": "config"}


def _non_negative(text: str) -> int:
    value = as_int(text)
    if value < 0:
        raise ValueError(f"{text!r} must not be negative")
    return value


def _url(text: str) -> str:
    value = text.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    return value


#: pypi.* options: option -> (Settings field, parser)
CORE: Mapping[str, tuple[str, Callable[[str], Any]]] = {
    "pypi.default_read": ("default_read", as_list),
    "pypi.default_write": ("default_write", as_list),
    "pypi.cache_update": ("cache_update", as_list),
    "pypi.allow_overwrite": ("allow_overwrite", as_bool),
    "pypi.allow_delete": ("allow_delete", as_bool),
    "pypi.realm": ("realm", as_str),
    "pypi.stream_files": ("stream_files", as_bool),
    "pypi.package_max_age": ("package_max_age", _non_negative),
    "pypi.download_url": ("download_url", _url),
    "pypi.max_upload_size": ("max_upload_size", as_size),
    "db.graceful_reload": ("graceful_reload", as_bool),
}
#: pypicloud options this version reads but does not act on yet; a warning says so.
NOT_YET = {
    "pypi.fallback",
    "pypi.fallback_url",
    "pypi.fallback_base_url",
    "pypi.always_show_upstream",
    "pypi.disallow_fallback",
    "pypi.fallback_timeout",
}
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
        interpolation=configparser.BasicInterpolation(), defaults={"here": here}, strict=False
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # names are case-sensitive
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"cannot read the configuration file {path}: {e.strerror}") from None
    except configparser.Error as e:
        raise ConfigError(f"{path}: not a valid INI file: {e}") from None
    section = next((s for s in SECTIONS if parser.has_section(s)), None)
    if section is None:
        raise ConfigError(f"{path}: no [pypicloud] (or pypicloud's [app:main]) section found")
    try:
        raw = {k: v for k, v in parser.items(section) if k != "here"}
    except configparser.InterpolationError as e:
        raise ConfigError(f"{path}: {e.message.splitlines()[0]}") from None
    raw.update(environment_overrides(environ))
    listen = _server_main(parser)
    return parse_settings(raw, here=here, listen=listen)


def environment_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """``PPC_PYPI_REALM=x`` -> ``{"pypi.realm": "x"}`` for our namespaces."""
    found = {}
    for variable, value in environ.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        namespace, _, rest = variable[len(ENV_PREFIX) :].lower().partition("_")
        if rest and namespace in ("pypi", "storage", "db", "auth", "session"):
            found[f"{namespace}.{rest}"] = value
    return found


def _server_main(parser: configparser.ConfigParser) -> str | None:
    """A Twisted endpoint from a pypicloud server.ini's ``[server:main]`` host and port."""
    if not parser.has_section("server:main") or not parser.has_option("server:main", "port"):
        return None
    port = parser.get("server:main", "port").strip()
    host = parser.get("server:main", "host", fallback="127.0.0.1").strip()
    return f"tcp:port={port}:interface={host}"


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
                raise ConfigError(f"{key}: {e}") from None
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
    access_lists = AccessLists(
        users=users, groups=groups, packages={k: dict(v) for k, v in packages.items()}
    )
    return Settings(
        here=here,
        storage=backends["storage"],
        cache=backends["db"],
        access=backends["auth"],
        access_lists=access_lists,
        listen=listen,
        **values,
    )


def _check_principal_name(key: str, name: str) -> None:
    if not name or any(c.isspace() for c in name):
        raise ConfigError(f"{key}: the name after the dot must be one word")


def _package_permission(key: str, rest: str, text: str) -> tuple[str, str, frozenset[str]]:
    """``package.<pkg>.user.<name> = rw`` -> (canonical pkg, principal, perms)."""
    package, kind, name = _split_package_key(key, rest)
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
    # Package names may contain dots: find the last ".user." or ".group.".
    for kind in ("user", "group"):
        marker = f".{kind}."
        if marker in rest:
            package, _, name = rest.rpartition(marker)
            if package and name and is_valid_name(package):
                return package, kind, name
    raise ConfigError(f"{key}: expected package.<package>.user.<name> or package.<package>.group.<name>")
