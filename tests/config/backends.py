"""Backend classes the loader tests choose by dotted path (``pypi.storage = tests.config...``)."""

from __future__ import annotations

from typing import Any

import attrs

from pypicloud_tx.config.options import as_bool, option


class RecordingStorage:
    """A stand-in storage with one required and one optional option; never built for I/O."""

    @attrs.frozen
    class Options:
        root: str = option(doc="required")
        public: bool = option(as_bool, default=False, doc="optional")

    def __init__(self, options: Any) -> None:
        self.options = options

    @classmethod
    def from_config(cls, options: Any, runtime: Any) -> RecordingStorage:
        return cls(options)


class DottedOptionsAccess:
    """An access backend whose options have dots in their names, like pypicloud's LDAP ones."""

    @attrs.frozen
    class Options:
        ldap__url: str = option(default="ldap://localhost")
        ldap__base_dn: str = option(default="")

    @classmethod
    def from_config(cls, options: Any, runtime: Any) -> DottedOptionsAccess:
        return cls()


class NotABackend:
    """Has no ``Options``: choosing it must be refused."""


def not_a_class() -> None:
    """A function, not a backend class."""
