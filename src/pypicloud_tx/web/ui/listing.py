"""Pure functions behind the pages: searching, sorting and paging projects, and a project's
versions as a person reads them."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

import attrs

from pypicloud_tx.domain.models import PackageFile, ProjectSummary
from pypicloud_tx.domain.names import is_prerelease, sort_key

PAGE_SIZE = 50
SORTS = ("name", "updated")
#: Longest search text taken into account.
MAX_QUERY = 200


@attrs.frozen
class ProjectPage:
    """One page of the project list."""

    projects: Sequence[ProjectSummary]
    total: int
    page: int
    pages: int
    query: str
    sort: str


def terms(query: str) -> list[str]:
    return query[:MAX_QUERY].casefold().split()


def matches(project: ProjectSummary, words: Sequence[str]) -> bool:
    """Whether every word appears in the project's name or summary (ignoring case; ``-``,
    ``_`` and ``.`` in a word match each other, as names are compared)."""
    name = project.name
    summary = project.summary.casefold()
    for word in words:
        normalised = word.replace("_", "-").replace(".", "-")
        if normalised not in name and word not in summary:
            return False
    return True


def project_page(
    summaries: Sequence[ProjectSummary], query: str, sort: str, page: int
) -> ProjectPage:
    """Search, sort (``name`` or ``updated``, newest first) and cut one page of
    :data:`PAGE_SIZE` projects; a page past the end shows the last one."""
    words = terms(query)
    found = [s for s in summaries if matches(s, words)] if words else list(summaries)
    if sort == "updated":
        found.sort(key=lambda s: (-s.last_modified.timestamp(), s.name))
    else:
        sort = "name"
        found.sort(key=lambda s: s.name)
    pages = max(1, math.ceil(len(found) / PAGE_SIZE))
    page = min(max(1, page), pages)
    start = (page - 1) * PAGE_SIZE
    return ProjectPage(found[start : start + PAGE_SIZE], len(found), page, pages, query, sort)


@attrs.frozen
class Release:
    """One version of a project: its files and what to mark it with."""

    version: str
    files: Sequence[PackageFile]
    prerelease: bool
    #: Every file of the version is yanked.
    yanked: bool
    uploaded: dt.datetime

    @property
    def newest(self) -> PackageFile:
        return max(self.files, key=lambda f: f.upload_time)


def releases(files: Sequence[PackageFile]) -> list[Release]:
    """The project's versions, newest first (by version, not by upload time)."""
    by_version: dict[str, list[PackageFile]] = {}
    for f in files:
        by_version.setdefault(f.version, []).append(f)
    found = [
        Release(
            version=version,
            files=sorted(group, key=lambda f: (f.packagetype != "bdist_wheel", f.filename)),
            prerelease=is_prerelease(version),
            yanked=all(f.yanked is not None for f in group),
            uploaded=max(f.upload_time for f in group),
        )
        for version, group in by_version.items()
    ]
    found.sort(key=lambda r: sort_key(r.version), reverse=True)
    return found


def current_release(found: Sequence[Release]) -> Release:
    """The version a project page shows first: the newest stable one not yanked, else the
    newest not yanked, else the newest (what ``pip install`` would pick, roughly)."""
    for candidates in (
        [r for r in found if not r.prerelease and not r.yanked],
        [r for r in found if not r.yanked],
        list(found),
    ):
        if candidates:
            return candidates[0]
    raise ValueError("a project without files")
