"""The data that crosses layers."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

import attrs

HOSTED = "hosted"
UPSTREAM = "upstream"


def _utc(value: _dt.datetime) -> _dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=_dt.UTC)
    return value.astimezone(_dt.UTC)


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


@attrs.frozen
class PackageFile:
    """One distribution file (wheel or sdist) and what we know about it.

    ``name`` is the canonical (PEP 503 normalised) project name; ``display_name`` is the name
    as uploaded.  ``yanked`` is ``None`` when the file is not yanked, else the reason (which may
    be the empty string).  ``metadata`` holds the remaining submitted core metadata
    (``requires_dist``, ``classifiers``, ``description``, ...), JSON-serialisable.
    """

    name: str
    version: str
    filename: str
    size: int
    sha256: str
    upload_time: _dt.datetime = attrs.field(converter=_utc)
    display_name: str = ""
    md5: str | None = None
    blake2b_256: str | None = None
    summary: str = ""
    requires_python: str | None = None
    metadata_sha256: str | None = None
    yanked: str | None = None
    uploader: str | None = None
    origin: str = HOSTED
    metadata: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping, eq=False)

    @property
    def packagetype(self) -> str:
        """``bdist_wheel`` or ``sdist``, as PyPI's JSON API names them."""
        return "bdist_wheel" if self.filename.endswith(".whl") else "sdist"

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (for sidecars and caches)."""
        record = attrs.asdict(self)
        record["upload_time"] = self.upload_time.isoformat()
        record["metadata"] = dict(self.metadata)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PackageFile:
        """The inverse of :meth:`to_record`; unknown keys are ignored."""
        known = {f.name for f in attrs.fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        when = values.get("upload_time")
        if isinstance(when, str):
            values["upload_time"] = _dt.datetime.fromisoformat(when)
        elif isinstance(when, (int, float)):
            values["upload_time"] = _dt.datetime.fromtimestamp(when, _dt.UTC)
        return cls(**values)


@attrs.frozen
class ProjectSummary:
    """One project as ``/api/package/?verbose=true`` lists it."""

    name: str
    stable: str | None
    unstable: str
    last_modified: _dt.datetime
    summary: str = ""


@attrs.frozen
class Scope:
    """What an API token may do: ``permissions`` (``read``/``write``) on ``packages``
    (canonical names; empty means every package its owner can reach)."""

    packages: frozenset[str] = frozenset()
    permissions: frozenset[str] = frozenset()

    def limit(self, package: str, granted: frozenset[str]) -> frozenset[str]:
        """The part of ``granted`` (the owner's permissions on ``package``) this scope keeps."""
        if self.packages and package not in self.packages:
            return frozenset()
        return granted & self.permissions


@attrs.frozen
class Identity:
    """Who is asking.  ``username`` is ``None`` for anonymous callers.

    ``scope`` is set when the caller authenticated with an API token: it narrows what the
    owner may do, and such a caller can never manage users, tokens or the server.
    """

    username: str | None = None
    groups: frozenset[str] = frozenset()
    is_admin: bool = False
    scope: Scope | None = None

    @property
    def authenticated(self) -> bool:
        return self.username is not None


ANONYMOUS = Identity()


@attrs.frozen
class Upload:
    """An uploaded distribution, spooled to disk, with the form fields that came with it.

    ``fields`` keeps repeated fields (``classifiers``, ``requires_dist``) in order.  The digests
    are of the bytes in ``stream``, computed while spooling.
    """

    filename: str
    stream: Any
    size: int
    sha256: str
    md5: str
    blake2b_256: str
    fields: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)

    def first(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else default


@attrs.frozen
class SessionRecord:
    """One live session: its store key (SHA-256 of the id), its user, and its deadlines in
    seconds since the epoch (``expires``: idle deadline, moved on use; ``ends``: absolute)."""

    key: str
    username: str
    created: int
    expires: int
    ends: int

    def alive(self, now: float) -> bool:
        return now < self.expires and now < self.ends
