"""What every cache backend computes the same way, whatever holds its records.

The rules live here once: how a project's summary is chosen (PEP 440, not text order), what a
search term matches, and what a graceful reload must change.  Nothing here does I/O.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from pypicloud_tx.domain.models import PackageFile, ProjectSummary
from pypicloud_tx.domain.names import is_prerelease, sort_key

__all__ = [
    "SummaryRow",
    "Tally",
    "batches",
    "latest_per_filename",
    "matches",
    "plan_reload",
    "record_json",
    "search_terms",
    "summarize",
]

#: The fields ``search()`` may be asked about.
SEARCH_FIELDS = ("name", "summary")
QUERY_TYPES = ("or", "and")

_SEPARATORS = re.compile(r"[-_.]+")
T = TypeVar("T")


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Tally:
    """Work done out of ``total``, told to a progress report
    (:data:`~pypicloud_tx.interfaces.Progress`, or ``None`` for nobody)."""

    def __init__(self, progress: Callable[[int, int], None] | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.done = 0

    def add(self, count: int) -> None:
        self.done = min(self.total, self.done + count)
        if self.progress is not None:
            self.progress(self.done, self.total)


class SummaryRow(NamedTuple):
    """What :func:`summarize` needs to know about one file."""

    name: str
    version: str
    upload_time: _dt.datetime
    summary: str


def _version_order(version: str) -> tuple[Any, str]:
    # The text breaks ties between spellings of one version ("1.0" and "1.0.0"), so the answer
    # does not depend on the order rows come back in.
    return (sort_key(version), version)


def summarize(rows: Iterable[SummaryRow]) -> list[ProjectSummary]:
    """One :class:`ProjectSummary` per project, sorted by name.

    ``stable`` is the newest version that is not a pre-release (``None`` when every version is
    one), ``unstable`` the newest of all; both by PEP 440.  ``last_modified`` and ``summary``
    come from the most recently uploaded file.
    """
    by_name: dict[str, list[SummaryRow]] = {}
    for row in rows:
        by_name.setdefault(row.name, []).append(row)
    result = []
    for name in sorted(by_name):
        files = by_name[name]
        versions = sorted({f.version for f in files}, key=_version_order)
        stable = [v for v in versions if not is_prerelease(v)]
        newest = max(files, key=lambda f: (f.upload_time, _version_order(f.version)))
        result.append(
            ProjectSummary(
                name=name,
                stable=stable[-1] if stable else None,
                unstable=versions[-1],
                last_modified=newest.upload_time,
                summary=newest.summary,
            )
        )
    return result


def search_terms(criteria: Mapping[str, Sequence[str]], query_type: str) -> dict[str, list[str]]:
    """The non-empty, case-folded terms of each searchable field.

    Name terms are also normalised the way canonical names are (``Foo_Bar`` finds
    ``foo-bar``).  Fields other than ``name`` and ``summary`` are ignored.

    :raises ValueError: if ``query_type`` is neither ``"or"`` nor ``"and"``.
    """
    if query_type not in QUERY_TYPES:
        raise ValueError(f"query_type must be 'or' or 'and', not {query_type!r}")
    terms: dict[str, list[str]] = {}
    for field in SEARCH_FIELDS:
        words = [t.casefold() for t in criteria.get(field, ()) if t and t.strip()]
        if field == "name":
            words = [_SEPARATORS.sub("-", w) for w in words]
        if words:
            terms[field] = words
    return terms


def matches(name: str, summary: str, terms: Mapping[str, Sequence[str]], query_type: str) -> bool:
    """Whether a file with ``name`` and ``summary`` answers a search.

    ``terms`` comes from :func:`search_terms`.  With ``"or"`` one term of any field must occur
    in it; with ``"and"`` every field must contain one of its terms.  No terms match nothing.
    """
    if not terms:
        return False
    values = {"name": name.casefold(), "summary": summary.casefold()}
    hits = (any(t in values[field] for t in words) for field, words in terms.items())
    return all(hits) if query_type == "and" else any(hits)


def record_json(file: PackageFile) -> str:
    """``file.to_record()`` as JSON text: UTF-8 kept readable, keys sorted so equal records
    serialise equally."""
    return json.dumps(file.to_record(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def latest_per_filename(files: Iterable[PackageFile]) -> dict[str, PackageFile]:
    """``files`` keyed by filename; a filename listed twice keeps its last entry."""
    return {f.filename: f for f in files}


def plan_reload(
    current: Mapping[str, str], files: Iterable[PackageFile]
) -> tuple[list[PackageFile], list[str]]:
    """What a graceful reload must write and remove.

    :param current: the cache's records now, as ``{filename: record JSON}``.
    :param files: what the cache must hold afterwards.
    :returns: ``(files to insert or replace, filenames to delete)``; files whose stored record
        already equals their record are left alone.
    """
    wanted = latest_per_filename(files)
    write = []
    for filename, file in wanted.items():
        stored = current.get(filename)
        if stored is None or _parsed(stored) != json.loads(record_json(file)):
            write.append(file)
    remove = [filename for filename in current if filename not in wanted]
    return write, remove


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None  # a damaged record differs from every real one, so it gets rewritten
