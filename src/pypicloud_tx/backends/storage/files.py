"""Package files in a local folder (``pypi.storage = file``, the default).

The layout is pypicloud's, so an existing pypicloud package folder keeps working::

    <dir>/<project>/<version>/<filename>            the distribution file
    <dir>/<project>/<version>/<filename>.meta       JSON record (PackageFile.to_record())
    <dir>/<project>/<version>/<filename>.metadata   PEP 658 core metadata, when known

We create project folders under the canonical name.  Folders written by pypicloud carry the
project name as uploaded (``My_Package``); they are found and used as they are.  pypicloud's
``.meta`` held only a few keys (``summary``, ``hash_sha256``, ...); what is missing is read back
from the file.  Work in progress lives in files named ``.tmp-*`` beside their destination.

A file's location is authoritative for its project, version and filename: :meth:`list` reports
what :meth:`open` can find, whatever the sidecar says.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as _dt
import errno
import fcntl
import functools
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from pypicloud_tx.backends._threads import RunBlocking
from pypicloud_tx.config.options import option
from pypicloud_tx.domain.dists import inspect_distribution
from pypicloud_tx.domain.models import PackageFile
from pypicloud_tx.domain.names import (
    canonical,
    check_filename_characters,
    is_canonical,
    is_valid_name,
    versions_equal,
)
from pypicloud_tx.errors import BackendUnavailable, Conflict, InvalidUpload, NotFound, PPCError
from pypicloud_tx.interfaces import IStorage, Progress
from pypicloud_tx.runtime import Runtime

log = Logger()

T = TypeVar("T")

META_SUFFIX = ".meta"
CORE_METADATA_SUFFIX = ".metadata"
TEMP_PREFIX = ".tmp-"
#: Temp files older than this (seconds) are leftovers of a crash; :meth:`start` removes them.
STALE_TEMP_AGE = 3600.0
POOL_NAME = "storage"
POOL_SIZE = 8
_CHUNK = 1024 * 1024
_MAX_SEGMENT = 255
#: Keys of pypicloud's ``.meta`` sidecars that we store under another name.
_PYPICLOUD_KEYS = {"hash_sha256": "sha256", "hash_md5": "md5"}
_FIELDS = frozenset(f.name for f in attrs.fields(PackageFile))


def _disk_errors(f: Callable[..., T]) -> Callable[..., T]:
    """Turn unexpected ``OSError`` from the disk into :class:`BackendUnavailable`."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return f(*args, **kwargs)
        except PPCError:
            raise
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise InvalidUpload("The filename is too long for the package folder.") from e
            raise BackendUnavailable(f"The package folder cannot be used: {e}") from e

    return wrapper


def _check_segment(what: str, value: str) -> None:
    """Refuse ``value`` unless it is one harmless path segment."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > _MAX_SEGMENT
        or value.startswith(".")
        or "/" in value
        or "\\" in value
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        raise InvalidUpload(
            f"Invalid {what} {value!r}: it cannot be used as a file or folder name."
        )


def _check_location(name: str, version: str, filename: str) -> None:
    """Refuse a name, version or filename that could leave its folder."""
    if not isinstance(name, str) or not (is_valid_name(name) and is_canonical(name)):
        raise InvalidUpload(f"Invalid project name {name!r}: expected a normalised name.")
    _check_segment("version", version)
    check_filename_characters(filename)
    _check_segment("filename", filename)
    if filename.endswith((META_SUFFIX, CORE_METADATA_SUFFIX)):
        raise InvalidUpload(f"Invalid filename {filename!r}: not a distribution file.")


def _subdirs(path: str) -> Iterator[os.DirEntry[str]]:
    with os.scandir(path) as entries:
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_dir():
                yield entry


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextmanager
def _locked(folder: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (shared with other processes on this host)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _link(temp: str, final: str, file: PackageFile) -> None:
    """Give ``temp`` the name ``final`` unless that name is taken: the duplicate decision."""
    try:
        os.link(temp, final)
    except FileExistsError:
        raise Conflict(f"{file.filename} already exists; upload a new version instead.") from None
    except OSError as e:
        if e.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise BackendUnavailable(
                "The package folder must be on a file system with hard links."
            ) from e
        raise


def _remove_empty(version_dir: str) -> None:
    """Remove a version folder and its project folder if they are empty."""
    for folder in (version_dir, os.path.dirname(version_dir)):
        try:
            os.rmdir(folder)
        except OSError:
            return  # not empty, or gone: a concurrent put retries its makedirs


def _hashes(path: str) -> dict[str, str]:
    """The sha256, md5 and blake2b-256 of a file, in hex."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    blake = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
            blake.update(chunk)
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest(), "blake2b_256": blake.hexdigest()}


def _copy(stream: IO[bytes], out: IO[bytes], file: PackageFile) -> None:
    """Copy ``stream`` from its start into ``out``; refuse more or fewer than ``file.size``
    bytes."""
    if getattr(stream, "seekable", lambda: False)():
        stream.seek(0)
    size = 0
    while chunk := stream.read(_CHUNK):
        size += len(chunk)
        if size > file.size:
            break
        out.write(chunk)
    if size != file.size:
        raise InvalidUpload(
            f"{file.filename}: received {'more than ' if size > file.size else ''}{size} bytes "
            f"but the upload said {file.size}."
        )


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")


@implementer(IStorage)
@attrs.define
class FileStorage:
    """An :class:`IStorage` in a local folder, laid out as pypicloud's FileStorage."""

    @attrs.frozen
    class Options:
        """``storage.*`` options of the file storage."""

        dir: str = option(doc="The folder where package files are stored.")

    directory: str
    _run: RunBlocking

    @classmethod
    def from_config(cls, options: FileStorage.Options, runtime: Runtime) -> FileStorage:
        """A storage in ``storage.dir``; a relative folder is relative to the config file's."""
        directory = os.path.abspath(os.path.join(runtime.here, os.path.expanduser(options.dir)))
        return cls(directory, runtime.threads(POOL_NAME, POOL_SIZE))

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Create the folder if needed and remove temp files left by a crash."""
        return self._run(self._start)

    @_disk_errors
    def _start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        cutoff = time.time() - STALE_TEMP_AGE
        for root, _dirs, names in os.walk(self.directory):
            for name in names:
                if not name.startswith(TEMP_PREFIX):
                    continue
                path = os.path.join(root, name)
                try:
                    if os.lstat(path).st_mtime < cutoff:
                        os.unlink(path)
                        log.info("removed the leftover temp file {path}", path=path)
                except FileNotFoundError:
                    pass

    # -- paths ----------------------------------------------------------------------------

    def _check_inside(self, path: str) -> None:
        root = os.path.realpath(self.directory)
        if not os.path.realpath(path).startswith(root + os.sep):
            raise InvalidUpload(
                f"{os.path.basename(path)!r} would be stored outside the package folder."
            )

    def _project_dir(self, name: str) -> str:
        """The folder of project ``name``: the canonical one, or a pypicloud-era one."""
        path = os.path.join(self.directory, name)
        if os.path.isdir(path):
            return path
        try:
            for entry in _subdirs(self.directory):
                if canonical(entry.name) == name:
                    return entry.path
        except FileNotFoundError:
            pass
        return path

    def _version_dir(self, project_dir: str, version: str) -> str:
        path = os.path.join(project_dir, version)
        if os.path.isdir(path):
            return path
        try:
            for entry in _subdirs(project_dir):
                if versions_equal(entry.name, version):
                    return entry.path
        except FileNotFoundError:
            pass
        return path

    def _locate(self, file: PackageFile) -> tuple[str, str]:
        """``(version folder, file path)`` for ``file``; raises InvalidUpload for unsafe names."""
        _check_location(file.name, file.version, file.filename)
        version_dir = self._version_dir(self._project_dir(file.name), file.version)
        path = os.path.join(version_dir, file.filename)
        self._check_inside(path)
        return version_dir, path

    def _new_temp(self, directory: str, temps: list[str]) -> IO[bytes]:
        """A new, empty temp file in ``directory`` (created if needed), remembered in ``temps``."""
        for attempt in range(3):
            if not os.path.isdir(self.directory):
                # An unmounted disk or a moved folder: never write into a fresh empty one,
                # or the cache would list files the real folder does not hold.
                raise BackendUnavailable(f"The package folder {self.directory} does not exist.")
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, TEMP_PREFIX + secrets.token_hex(8))
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except (FileNotFoundError, FileExistsError):
                # A concurrent delete removed the empty folder, or a (very) unlucky name.
                if attempt == 2:
                    raise
                continue
            temps.append(path)
            return os.fdopen(fd, "wb")
        raise AssertionError("unreachable")

    def _write_temp(self, directory: str, temps: list[str], data: bytes) -> str:
        with self._new_temp(directory, temps) as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return temps[-1]

    # -- IStorage -------------------------------------------------------------------------

    def list(self, progress: Progress | None = None) -> Deferred[list[PackageFile]]:
        return self._run(self._list, progress)

    @_disk_errors
    def _list(self, progress: Progress | None) -> builtins.list[PackageFile]:
        if not os.path.isdir(self.directory):
            # Not an empty list: a rebuild from it would empty the cache.
            raise BackendUnavailable(f"The package folder {self.directory} does not exist.")
        found = list(self._walk())
        files = []
        for done, (project, version, folder, filename) in enumerate(found, 1):
            try:
                entry = self._read_entry(project, version, folder, filename)
            except FileNotFoundError:
                entry = None  # deleted while we looked
            if entry is not None:
                files.append(entry)
            if progress is not None:
                progress(done, len(found))
        return files

    def _walk(self) -> Iterator[tuple[str, str, str, str]]:
        """``(project, version, folder, filename)`` of every stored file (not records)."""
        for project in _subdirs(self.directory):
            try:
                versions = list(_subdirs(project.path))
            except FileNotFoundError:
                continue
            for version in versions:
                try:
                    with os.scandir(version.path) as entries:
                        names = [e.name for e in entries if e.is_file()]
                except FileNotFoundError:
                    continue
                for filename in names:
                    if not filename.startswith(".") and not filename.endswith(
                        (META_SUFFIX, CORE_METADATA_SUFFIX)
                    ):
                        yield project.name, version.name, version.path, filename

    def _read_entry(
        self, project: str, version: str, folder: str, filename: str
    ) -> PackageFile | None:
        """The record of one stored file: its sidecar, completed from the file itself."""
        path = os.path.join(folder, filename)
        try:
            _check_location(canonical(project), version, filename)
            self._check_inside(path)
        except InvalidUpload as e:
            log.warn("ignoring {path}: {why}", path=path, why=e.message)
            return None
        sidecar = self._read_sidecar(path + META_SUFFIX)
        try:
            record = self._record(project, version, path, filename, sidecar)
        except (TypeError, ValueError, AttributeError):
            log.warn("ignoring the malformed record {path}.meta", path=path)
            sidecar = {}
            record = self._record(project, version, path, filename, sidecar)
        if "sha256" not in sidecar:
            # No record of ours (a crash before it was written, or a pypicloud folder):
            # complete it from the archive and keep it, so the next rebuild is quick.
            record = self._complete_from_archive(path, record)
            try:
                self._save_record(record)
            except (OSError, PPCError) as e:
                log.warn("cannot save the record of {path}: {why}", path=path, why=e)
        return record

    def _complete_from_archive(self, path: str, record: PackageFile) -> PackageFile:
        """``record`` with summary, requires-python, metadata and the PEP 658 file read from
        the distribution itself."""
        try:
            with open(path, "rb") as f:
                info = inspect_distribution(f, record.filename)
        except InvalidUpload as e:
            log.warn("cannot read the metadata of {path}: {why}", path=path, why=e.message)
            return record
        changes: dict[str, Any] = {
            "summary": record.summary or info.summary,
            "requires_python": record.requires_python or info.requires_python,
            "metadata": {**info.fields, **record.metadata},
        }
        if info.core_metadata is not None and record.metadata_sha256 is None:
            folder = os.path.dirname(path)
            temps: list[str] = []
            try:
                temp = self._write_temp(folder, temps, info.core_metadata)
                os.replace(temp, path + CORE_METADATA_SUFFIX)
                changes["metadata_sha256"] = hashlib.sha256(info.core_metadata).hexdigest()
            except OSError as e:
                log.warn("cannot write {path}.metadata: {why}", path=path, why=e)
            finally:
                for temp in temps:
                    _remove(temp)
        return attrs.evolve(record, **changes)

    def _read_sidecar(self, path: str) -> dict[str, Any]:
        try:
            with open(path, "rb") as f:
                value = json.loads(f.read())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warn("ignoring the unreadable record {path}", path=path)
            return {}
        if not isinstance(value, dict):
            log.warn("ignoring the unreadable record {path}", path=path)
            return {}
        return value

    def _record(
        self, project: str, version: str, path: str, filename: str, sidecar: dict[str, Any]
    ) -> PackageFile:
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in sidecar.items():
            if key in _FIELDS:
                values[key] = value
            elif key in _PYPICLOUD_KEYS:
                values.setdefault(_PYPICLOUD_KEYS[key], value)
            else:
                extra[key] = value
        stat = os.stat(path)
        values.update(
            name=canonical(project), version=version, filename=filename, size=stat.st_size
        )
        if not values.get("display_name"):
            values["display_name"] = project
        if not values.get("sha256"):
            for key, digest in _hashes(path).items():
                if not values.get(key):
                    values[key] = digest
        if not values.get("upload_time"):
            values["upload_time"] = _dt.datetime.fromtimestamp(stat.st_mtime, _dt.UTC)
        if "metadata_sha256" not in values:
            try:
                with open(path + CORE_METADATA_SUFFIX, "rb") as f:
                    values["metadata_sha256"] = hashlib.sha256(f.read()).hexdigest()
            except FileNotFoundError:
                pass
        if values.get("summary") is None:
            values["summary"] = ""
        if extra:
            values["metadata"] = {**extra, **(values.get("metadata") or {})}
        return PackageFile.from_record(values)

    def put(
        self, file: PackageFile, stream: IO[bytes], core_metadata: bytes | None, overwrite: bool
    ) -> Deferred[None]:
        return self._run(self._put, file, stream, core_metadata, overwrite)

    @_disk_errors
    def _put(
        self, file: PackageFile, stream: IO[bytes], core_metadata: bytes | None, overwrite: bool
    ) -> None:
        version_dir, final = self._locate(file)
        record = _encode(file.to_record())
        temps: list[str] = []
        try:
            with self._new_temp(version_dir, temps) as out:
                data_temp = temps[-1]
                _copy(stream, out, file)
                out.flush()
                os.fsync(out.fileno())
            meta_temp = self._write_temp(version_dir, temps, record)
            core_temp = (
                self._write_temp(version_dir, temps, core_metadata)
                if core_metadata is not None
                else None
            )
            # The lock keeps a file and its sidecars from different writers apart; it is not
            # what decides duplicates (link() is), so it is held only for the renames.
            with _locked(version_dir):
                if overwrite:
                    # Drop the old sidecars first: a crash then leaves old or new bytes
                    # without a record (read back from the file), never a record that lies.
                    _remove(final + META_SUFFIX)
                    _remove(final + CORE_METADATA_SUFFIX)
                    os.replace(data_temp, final)
                else:
                    _link(data_temp, final, file)
                # From here on the file is visible and complete; its sidecars follow.
                if core_temp is not None:
                    os.replace(core_temp, final + CORE_METADATA_SUFFIX)
                else:
                    _remove(final + CORE_METADATA_SUFFIX)  # a stale one describes other bytes
                os.replace(meta_temp, final + META_SUFFIX)
            _fsync_dir(version_dir)
            _fsync_dir(os.path.dirname(version_dir))
        except BaseException:
            for temp in temps:
                _remove(temp)
            _remove_empty(version_dir)
            raise
        finally:
            for temp in temps:
                _remove(temp)
        log.info("stored {filename}", filename=file.filename)

    def save_record(self, file: PackageFile) -> Deferred[None]:
        return self._run(self._save_record, file)

    @_disk_errors
    def _save_record(self, file: PackageFile) -> None:
        version_dir, final = self._locate(file)
        if not os.path.isfile(final):
            raise NotFound(f"{file.filename} is not stored.")
        temps: list[str] = []
        try:
            meta_temp = self._write_temp(version_dir, temps, _encode(file.to_record()))
            with _locked(version_dir):
                if not os.path.isfile(final):
                    raise NotFound(f"{file.filename} is not stored.")
                os.replace(meta_temp, final + META_SUFFIX)
            _fsync_dir(version_dir)
        finally:
            for temp in temps:
                _remove(temp)

    def open(self, file: PackageFile) -> Deferred[IO[bytes]]:
        return self._run(self._open, file, "")

    def open_metadata(self, file: PackageFile) -> Deferred[bytes]:
        return self._run(self._read_metadata, file)

    @_disk_errors
    def _open(self, file: PackageFile, suffix: str) -> IO[bytes]:
        try:
            _version_dir, path = self._locate(file)
            return open(path + suffix, "rb")
        except (InvalidUpload, FileNotFoundError, IsADirectoryError):
            what = "core metadata of " if suffix else ""
            raise NotFound(f"The {what}{file.filename} is not stored.") from None

    @_disk_errors
    def _read_metadata(self, file: PackageFile) -> bytes:
        with self._open(file, CORE_METADATA_SUFFIX) as f:
            return f.read()

    def download_url(self, file: PackageFile) -> Deferred[str | None]:
        return succeed(None)

    def delete(self, file: PackageFile) -> Deferred[None]:
        return self._run(self._delete, file)

    @_disk_errors
    def _delete(self, file: PackageFile) -> None:
        try:
            version_dir, path = self._locate(file)
        except InvalidUpload:
            return  # such a file cannot have been stored
        try:
            lock = _locked(version_dir)
            with lock:
                # Sidecars first: a crash half-way leaves a complete file read back from
                # itself, never a record that a later upload of this name would inherit.
                for suffix in (META_SUFFIX, CORE_METADATA_SUFFIX, ""):
                    _remove(path + suffix)
        except FileNotFoundError:
            return  # no such version folder: nothing stored
        _remove_empty(version_dir)
        log.info("deleted {filename}", filename=file.filename)

    def check_health(self) -> Deferred[tuple[bool, str]]:
        return self._run(self._check_health)

    def _check_health(self) -> tuple[bool, str]:
        if not os.path.isdir(self.directory):
            return False, f"The package folder {self.directory} does not exist."
        path = os.path.join(self.directory, TEMP_PREFIX + "health-" + secrets.token_hex(8))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
            os.unlink(path)
        except OSError as e:
            return False, f"The package folder {self.directory} is not writable: {e.strerror}."
        return True, ""
