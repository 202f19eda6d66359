"""The seams between the services and the backends.

Every method returns a :class:`~twisted.internet.defer.Deferred`.  Methods are declared without
``self``, as zope.interface wants.  Backends translate vendor errors into
:mod:`pypicloud_tx.errors` types: an unreachable service fails with
:class:`~pypicloud_tx.errors.BackendUnavailable`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING

from zope.interface import Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from pypicloud_tx.domain.models import PackageFile, ProjectSummary, SessionRecord, Upload
    from pypicloud_tx.domain.tokens import ApiToken
    from pypicloud_tx.domain.upstream_pages import PageFetch, UpstreamFile

#: A report of long work (listing storage, rebuilding a cache): called with ``(done, total)``
#: as it proceeds.  It may be called on a worker thread, so it only records the numbers (the
#: command line draws them on the reactor).
Progress = Callable[[int, int], None]

#: A permission on a package.
READ = "read"
WRITE = "write"


class IStorage(Interface):
    """Where the distribution files (and their metadata records) live.  The source of truth."""

    def list(progress: Progress | None = None) -> Deferred[list[PackageFile]]:
        """Every stored file with its recorded metadata (for cache rebuilds).

        A file whose record is missing (a crash between writing the file and its record) is
        still listed, with metadata read back from the archive itself.  ``progress`` hears
        how many of the files found have been read so far.
        """

    def put(
        file: PackageFile, stream: IO[bytes], core_metadata: bytes | None, overwrite: bool
    ) -> Deferred[None]:
        """Store ``stream``'s bytes (read from the start) as ``file``.

        Atomic: a reader sees either no file or the whole file, never a partial one.  The
        decision whether the name is free is one atomic step: with ``overwrite`` false an
        existing file of the same name fails the Deferred with
        :class:`~pypicloud_tx.errors.Conflict` and leaves the stored bytes untouched.
        ``core_metadata`` (PEP 658) is stored beside the file when given.
        """

    def save_record(file: PackageFile) -> Deferred[None]:
        """Replace the recorded metadata of a stored file (yanking changes it)."""

    def open(file: PackageFile) -> Deferred[IO[bytes]]:
        """A readable binary stream of the file; fails with NotFound if it is not stored."""

    def open_metadata(file: PackageFile) -> Deferred[bytes]:
        """The PEP 658 core-metadata bytes of the file; NotFound if there are none."""

    def download_url(file: PackageFile) -> Deferred[str | None]:
        """A URL to redirect downloads to, or ``None`` when the server must stream the file."""

    def delete(file: PackageFile) -> Deferred[None]:
        """Remove the file, its record and its metadata; deleting a missing file is not an error."""

    def check_health() -> Deferred[tuple[bool, str]]:
        """``(True, "")`` when usable, else ``(False, what is wrong)``."""


class ICache(Interface):
    """Metadata of every stored file, for fast reads.  Derived data: rebuildable from storage."""

    def save(file: PackageFile) -> Deferred[None]:
        """Insert or replace the record of ``file`` (keyed by filename)."""

    def delete(file: PackageFile) -> Deferred[None]:
        """Forget ``file``; forgetting an unknown file is not an error."""

    def fetch(filename: str) -> Deferred[PackageFile | None]:
        """The record of one file by filename, or ``None``."""

    def all(name: str) -> Deferred[list[PackageFile]]:
        """Every file of the project with canonical name ``name``, in no particular order."""

    def distinct() -> Deferred[list[str]]:
        """The canonical names of every project, sorted."""

    def summary() -> Deferred[list[ProjectSummary]]:
        """One :class:`ProjectSummary` per project, sorted by name."""

    def search(
        criteria: Mapping[str, Sequence[str]], query_type: str
    ) -> Deferred[list[PackageFile]]:
        """Files whose ``name``/``summary`` contain the given terms (case-insensitive).

        ``criteria`` maps ``"name"`` and/or ``"summary"`` to lists of terms; ``query_type`` is
        ``"or"`` (any term of any field matches) or ``"and"`` (every field has a matching term).
        """

    def clear_all() -> Deferred[None]:
        """Forget everything."""

    def version_token() -> Deferred[object | None]:
        """A cheap value that changes whenever the contents may have changed, written by any
        process; ``None`` when the backend cannot tell cheaply.  Lets a process keep what it
        read in memory until the token changes (see ``backends/cache/memo.py``).
        """

    def reload_from_storage(
        files: Sequence[PackageFile], graceful: bool, progress: Progress | None = None
    ) -> Deferred[None]:
        """Make the cache hold exactly ``files`` (the output of ``IStorage.list``).

        With ``graceful`` the cache stays readable throughout: new files are added, changed
        ones replaced and vanished ones removed, never emptied first.  ``progress`` hears how
        many of the files to write (or remove) are done, after each batch.
        """

    def acquire_lock(name: str, seconds: float) -> Deferred[str | None]:
        """Take the lock ``name``, shared by every process on this cache, for at most
        ``seconds``: fires with a token to release it with, or ``None`` while another holder's
        lock has not expired.  (One process rebuilds an empty cache; the others wait.)"""

    def release_lock(name: str, token: str) -> Deferred[bool]:
        """Release the lock taken with ``token``; ``False`` when it had expired meanwhile
        (a lock taken since by someone else is left alone)."""

    def check_health() -> Deferred[tuple[bool, str]]:
        """``(True, "")`` when usable, else ``(False, what is wrong)``."""


class IAccessBackend(Interface):
    """Users, groups and package permissions.

    Permissions are sets of ``"read"`` and ``"write"``.  Group names ``everyone`` and
    ``authenticated`` are the two implicit groups.
    """

    def verify_user(username: str, password: str) -> Deferred[bool]:
        """Whether ``password`` is ``username``'s (hashing runs off the reactor thread)."""

    def groups(username: str | None) -> Deferred[list[str]]:
        """The groups ``username`` belongs to, or every group when ``username`` is ``None``."""

    def group_members(group: str) -> Deferred[list[str]]:
        """The members of ``group``."""

    def is_admin(username: str) -> Deferred[bool]:
        """Whether ``username`` is an admin."""

    def package_acls() -> Deferred[Mapping[str, Mapping[str, frozenset[str]]]]:
        """Every explicit package permission: ``{package: {principal: perms}}``.

        Principals are ``user:<name>``, ``group:<name>``, ``everyone`` and ``authenticated``;
        packages are canonical names.  Packages absent from the mapping use the defaults.
        """

    def user_permissions(package: str) -> Deferred[dict[str, frozenset[str]]]:
        """``{username: perms}`` granted explicitly on ``package``."""

    def group_permissions(package: str) -> Deferred[dict[str, frozenset[str]]]:
        """``{group: perms}`` granted explicitly on ``package``."""

    def user_data(username: str | None) -> Deferred[object]:
        """``{"username", "admin", "groups"}`` for one user, or a list of them for all users."""

    def check_health() -> Deferred[tuple[bool, str]]:
        """``(True, "")`` when usable, else ``(False, what is wrong)``."""

    def dump() -> Deferred[dict[str, object]]:
        """Everything, in pypicloud's export format (``users``, ``groups``, ``packages``, ...);
        mutable backends add ``pending_users`` and ``tokens`` (``ApiToken.to_dict`` records)."""


class IMutableAccessBackend(IAccessBackend):
    """An access backend whose users, groups and permissions can be changed while it runs.

    Users are either *active* (they can log in and are listed by ``user_data``) or *pending*
    (registered, waiting for an admin's approval: they cannot log in and are listed only by
    ``pending_users``).  Permissions are ``"read"`` or ``"write"``; package names may be given
    in any spelling and are stored canonical.  Unknown users and groups fail the Deferred with
    :class:`~pypicloud_tx.errors.NotFound`; creating what exists fails with
    :class:`~pypicloud_tx.errors.Conflict`.
    """

    def create_user(
        username: str, password: str, admin: bool = False, pending: bool = False
    ) -> Deferred[None]:
        """Add a user with ``password`` (hashed off the reactor thread).

        :raises Conflict: if a user (active or pending) of that name exists.
        """

    def approve_user(username: str) -> Deferred[None]:
        """Make a pending user active.  :raises NotFound: if no such user is pending."""

    def pending_users() -> Deferred[list[str]]:
        """The names of the users waiting for approval, sorted."""

    def set_password(username: str, password: str) -> Deferred[None]:
        """Replace a user's password (hashed off the reactor thread).  :raises NotFound:"""

    def delete_user(username: str) -> Deferred[None]:
        """Remove a user (active or pending) with their group memberships, package permissions
        and API tokens.  :raises NotFound: if there is no such user."""

    def set_admin(username: str, admin: bool) -> Deferred[None]:
        """Grant or revoke a user's stored admin flag.  :raises NotFound:"""

    def create_group(group: str) -> Deferred[None]:
        """Add an empty group.  :raises Conflict: if it exists, or is ``everyone`` or
        ``authenticated``."""

    def delete_group(group: str) -> Deferred[None]:
        """Remove a group with its memberships and package permissions.  :raises NotFound:"""

    def edit_user_group(username: str, group: str, add: bool) -> Deferred[None]:
        """Add ``username`` to ``group`` (``add``) or remove them; doing what is already done is
        not an error.  :raises NotFound: for an unknown user or group."""

    def edit_user_permission(package: str, username: str, perm: str, add: bool) -> Deferred[None]:
        """Grant (``add``) or revoke ``perm`` on ``package`` for a user.

        :raises NotFound: for an unknown user.
        :raises ValueError: if ``perm`` is neither ``"read"`` nor ``"write"``.
        """

    def edit_group_permission(package: str, group: str, perm: str, add: bool) -> Deferred[None]:
        """Grant (``add``) or revoke ``perm`` on ``package`` for a group, ``everyone`` or
        ``authenticated``.

        :raises NotFound: for an unknown group.
        :raises ValueError: if ``perm`` is neither ``"read"`` nor ``"write"``.
        """

    def allow_register() -> Deferred[bool]:
        """Whether anyone may register (as a pending user)."""

    def set_allow_register(allow: bool) -> Deferred[None]:
        """Open or close registration."""

    def save_token(token: ApiToken) -> Deferred[None]:
        """Store an API token record (its secret is already hashed).

        :raises NotFound: if its user does not exist (or is pending).
        :raises Conflict: if a token with that id exists.
        """

    def find_token(token_id: str) -> Deferred[ApiToken | None]:
        """The token with that id, or ``None``."""

    def tokens(username: str | None) -> Deferred[list[ApiToken]]:
        """The tokens of one user (or of everyone for ``None``), oldest first."""

    def delete_token(token_id: str) -> Deferred[None]:
        """Revoke a token.  :raises NotFound: if there is no such token."""

    def load(data: Mapping[str, object]) -> Deferred[None]:
        """Add what ``data`` (pypicloud's export format, as ``IAccessBackend.dump`` writes it,
        optionally with ``pending_users`` and ``tokens``) holds and this backend lacks.

        Never clobbers: existing users keep their password hashes and flags.  Groups gain the
        listed members, permissions are granted, ``allow_register`` is set when present, tokens
        whose id is unknown are added (``ApiToken.to_dict`` records, for users that exist).
        Loading the same data twice changes nothing the second time.
        """


class ISessionStore(Interface):
    """Where session records live; every process of a deployment must see the same ones."""

    def add(record: SessionRecord) -> Deferred[None]:
        """Store a new record (and drop records that have ended by ``record.created``)."""

    def get(key: str) -> Deferred[SessionRecord | None]:
        """The record stored under ``key``, or ``None`` (ended records may still be returned:
        the caller checks :meth:`SessionRecord.alive`)."""

    def touch(key: str, expires: int) -> Deferred[None]:
        """Move the idle deadline of ``key`` (no error if it is gone)."""

    def remove(key: str) -> Deferred[None]:
        """Delete the record of ``key`` (no error if it is gone)."""

    def remove_user(username: str, keep: str | None) -> Deferred[int]:
        """Delete every record of ``username`` except ``keep``; fires with how many."""


class IUpstream(Interface):
    """An upstream index that project pages and files are read from."""

    def project(name: str, etag: str | None) -> Deferred[PageFetch]:
        """The project page of canonical ``name``, revalidated with ``etag`` when given.

        :raises NotFound: upstream has no such project.
        :raises UpstreamError: for any other failure (:class:`UpstreamTimeout` for a timeout).
        """

    def download(file: UpstreamFile, max_size: int) -> Deferred[Upload]:
        """The bytes of ``file`` in a temporary file (the caller closes ``stream``), with their
        digests, after checking them against every hash the page gave.

        :raises UpstreamError: unreachable, an error status, larger than ``max_size``,
            a partial body, no hash to check against, or a hash that differs.
        """

    def core_metadata(file: UpstreamFile) -> Deferred[bytes]:
        """The PEP 658 metadata file of ``file``, checked against the page's hash of it.

        :raises NotFound: upstream has none.
        :raises UpstreamError: as :meth:`download`.
        """

    def stop() -> Deferred[None]:
        """Close the kept-alive connections."""
