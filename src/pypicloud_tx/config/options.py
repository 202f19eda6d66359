"""Declaring options and turning their INI text into typed values.

A backend declares its options as a frozen attrs class whose fields are made with
:func:`option`; :func:`parse_options` fills it from the options of its namespace (``db.*``,
``storage.*``, ``auth.*``), refusing unknown and missing ones with a message naming the option.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

from pypicloud_tx.errors import ConfigError

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def as_str(text: str) -> str:
    return text.strip()


def as_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def as_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def as_list(text: str) -> tuple[str, ...]:
    """Whitespace- or comma-separated words (one per line is fine too)."""
    return tuple(w for w in re.split(r"[\s,]+", text.strip()) if w)


def as_size(text: str) -> int:
    """Bytes, or a number with a KB/MB/GB/TB suffix (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (use bytes, or e.g. 500MB, 1GB)")
    unit = (match.group(2) or "").lower()[:1]
    return int(match.group(1)) * _UNITS[unit]


def as_positive_size(text: str) -> int:
    """:func:`as_size`, refusing zero."""
    value = as_size(text)
    if value <= 0:
        raise ValueError(f"{text.strip()!r} must be more than zero")
    return value


def option(
    parse: Callable[[str], Any] = as_str, default: Any = attrs.NOTHING, doc: str = ""
) -> Any:
    """An attrs field for a configuration option parsed by ``parse``; no default = required."""
    return attrs.field(default=default, metadata={"parse": parse, "doc": doc})


C = TypeVar("C")


def parse_options(cls: type[C], namespace: str, raw: Mapping[str, str]) -> C:
    """Build ``cls`` from ``raw`` (the options of ``namespace`` with the prefix removed).

    :raises ConfigError: naming the first unknown, missing or malformed option.
    """
    fields = {f.name.replace("__", "."): f for f in attrs.fields(cls)}  # type: ignore[arg-type]
    # PPC_AUTH_LDAP_URL arrives as "ldap_url": environment variables cannot say where dots were.
    underscored = {k.replace(".", "_"): k for k in fields}
    given: dict[str, str] = {}
    for key in sorted(raw):
        name = key if key in fields else underscored.get(key)
        if name is None:
            known = ", ".join(f"{namespace}.{k}" for k in sorted(fields)) or "none"
            raise ConfigError(f"{namespace}.{key}: unknown option (known options here: {known})")
        if name not in given or key == name:
            given[name] = raw[key]
    values: dict[str, Any] = {}
    for key, field in fields.items():
        if key in given:
            try:
                values[field.name] = field.metadata.get("parse", as_str)(given[key])
            except ValueError as e:
                raise ConfigError(f"{namespace}.{key}: {one_line(str(e))}") from None
        elif field.default is attrs.NOTHING:
            raise ConfigError(f"{namespace}.{key}: required option is missing")
    return cls(**values)


def one_line(text: str) -> str:
    """``text`` with its line breaks folded, for an error message that must stay one line."""
    return " ".join(text.split()) if "\n" in text or "\r" in text else text
