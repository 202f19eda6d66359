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


def option(parse: Callable[[str], Any] = as_str, default: Any = attrs.NOTHING, doc: str = "") -> Any:
    """An attrs field for a configuration option parsed by ``parse``; no default = required."""
    return attrs.field(default=default, metadata={"parse": parse, "doc": doc})


C = TypeVar("C")


def parse_options(cls: type[C], namespace: str, raw: Mapping[str, str]) -> C:
    """Build ``cls`` from ``raw`` (the options of ``namespace`` with the prefix removed).

    :raises ConfigError: naming the first unknown, missing or malformed option.
    """
    fields = {f.name.replace("__", "."): f for f in attrs.fields(cls)}  # type: ignore[arg-type]
    for key in sorted(raw):
        if key not in fields:
            known = ", ".join(f"{namespace}.{k}" for k in sorted(fields)) or "none"
            raise ConfigError(f"{namespace}.{key}: unknown option (known options here: {known})")
    values: dict[str, Any] = {}
    for key, field in fields.items():
        if key in raw:
            try:
                values[field.name] = field.metadata.get("parse", as_str)(raw[key])
            except ValueError as e:
                raise ConfigError(f"{namespace}.{key}: {e}") from None
        elif field.default is attrs.NOTHING:
            raise ConfigError(f"{namespace}.{key}: required option is missing")
    return cls(**values)
