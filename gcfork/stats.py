"""The stats channel: GC statistics that a cluster's processes publish.

Each worker's daemon thread writes a small JSON record (:mod:`gcfork.records`,
whose names are re-exported here) every few seconds into a directory private
to the server; the template (the process that forks the workers) writes its
own record there too and reads them back, as ``gcfork report`` does.

The template opens the directory once (:meth:`StatsDir.create`) and every
process works through that descriptor (workers inherit it across the fork):
a directory swapped for a symlink later is never followed (see
:mod:`gcfork.files`). The directory belongs to the workers' user (the one the
server drops privileges to, if any), mode 0700. gcfork never changes the mode
or owner of a directory it did not create: a given ``stats_dir`` that is
shared or not the workers' gets a private subdirectory, removed at exit. Each
record is one file, mode 0600, named after the process's pid and start time
(pids get reused). Readers ignore, with a reason, any file that is a symlink,
not a regular file, owned by neither the directory's owner nor the reader,
over :data:`MAX_RECORD_BYTES`, or not a valid record of :data:`SCHEMA_VERSION`
(every field typed and bounded, floats finite).

The template advertises where its directory is: a 0600 file named after its
pid and start time in a per-user runtime directory (:func:`runtime_dirs`), so
``gcfork report --pid N`` finds the directory of master N without being told.
Nothing here runs on a request path; past gcfork, it imports the standard library.

.. versionadded:: 0.2
.. versionchanged:: 0.3
   Descriptor-relative directory, workers' owner, strict record schema.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from typing import NamedTuple

from gcfork import files
from gcfork.exceptions import StatsDirError
from gcfork.memory import process_start
from gcfork.records import (
    MAX_RECORD_BYTES,
    PUBLISH_INTERVAL,
    SCHEMA_VERSION,
    GCCollector,
    GenStats,
    Publisher,
    StatsRecord,
)

__all__ = [
    "MAX_RECORD_BYTES",
    "PUBLISH_INTERVAL",
    "SCHEMA_VERSION",
    "TRIGGER_NAME",
    "GCCollector",
    "GenStats",
    "Publisher",
    "ReadResult",
    "StatsDir",
    "StatsDirError",
    "StatsRecord",
    "advertise",
    "advertised",
    "parse_key",
    "runtime_dirs",
    "withdraw",
]

TRIGGER_NAME = ".explain"
"""The subdirectory of ``gcfork explain`` requests (:mod:`gcfork.trigger`);
hidden, so record readers skip it; made and removed with the directory."""

# -- the directory ---------------------------------------------------------------


def _key_name(pid: int, start: int) -> str:  # pids get reused: with the start, a name
    return f"{pid}-{start}.json"


def parse_key(name: str) -> tuple[int, int] | None:
    """``(pid, start)`` from a record's or an advertisement's file name,
    ``PID-START.json``; None for any other name (new in 0.3)."""
    stem, _, ext = name.partition(".")
    pid, dash, start = stem.partition("-")
    if ext != "json" or not dash or not pid.isdigit() or not start.isdigit():
        return None
    if len(pid) > 10 or len(start) > 20:  # not a pid or a tick count: skip, never crash
        return None
    return int(pid), int(start)


def _open_checked(path: str, dir_fd: int | None = None, name: str | None = None) -> int:
    """Open a directory without following a symlink; StatsDirError in words."""
    try:
        return files.open_dir(path if name is None else name, dir_fd)
    except OSError as exc:
        reason = {errno.ELOOP: "it is a symlink", errno.ENOTDIR: "it is not a directory",
                  errno.ENOENT: "it does not exist"}.get(exc.errno or 0, exc.strerror)
        raise StatsDirError(path, reason or str(exc)) from None


def _load(dir_fd: int, name: str, owners: frozenset[int]) -> StatsRecord:
    """Raises ValueError (why, in words) or FileNotFoundError."""
    return StatsRecord.loads(files.read_private(dir_fd, name, MAX_RECORD_BYTES, owners))


class ReadResult(NamedTuple):
    """Everything read from a stats directory (returned by :meth:`StatsDir.read`)."""

    records: dict[tuple[int, int], StatsRecord]  # by (pid, start)
    problems: dict[str, str]  # file name -> why it was ignored


class StatsDir:
    """A server's private stats directory, held open by descriptor.

    Args:
        path: the directory, for display and for readers that open it by
            name; use :meth:`create` (master) or :meth:`open` (readers).
        owned: gcfork created it for this master, which removes it at exit.
        fd: the open directory; None opens ``path`` at first use.

    .. versionchanged:: 0.3
       Every operation is relative to the descriptor; ``fd`` added.
    """

    __slots__ = ("_fd", "owned", "path")

    def __init__(self, path: str, owned: bool = False, fd: int | None = None) -> None:
        self.path = path
        self.owned = owned
        self._fd = fd

    def __repr__(self) -> str:
        return f"StatsDir({self.path!r})"

    def close(self) -> None:
        """Close the descriptor (readers; the master calls :meth:`destroy`)."""
        fd, self._fd = self._fd, -1
        if fd is not None and fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        # Readers (the sampler, `gcfork report`) open one per report.
        with contextlib.suppress(Exception):
            self.close()

    def _dir(self) -> int:
        if self._fd is None:
            self._fd = files.open_dir(self.path)
        elif self._fd < 0:
            raise FileNotFoundError(errno.ENOENT, "stats directory removed", self.path)
        return self._fd

    def owners(self) -> frozenset[int]:
        """The uids whose records are trusted: the directory's owner (the
        workers' user) and the caller's effective uid."""
        return frozenset((os.fstat(self._dir()).st_uid, os.geteuid()))

    @classmethod
    def create(cls, path: str | None, owner: tuple[int, int] | None = None) -> StatsDir:
        """Master: make or choose the directory and open it.

        ``None`` makes a fresh directory under the temporary directory. A
        ``path`` that does not exist is made mode 0700 (and kept at exit: a
        master re-executed by ``USR2`` uses it too); an existing directory
        of ``owner`` with no permission for others is used as it is; in any
        other directory (shared, world-writable, another user's) a fresh
        private subdirectory is made, and removed at exit. No mode or owner
        of an existing directory is changed.

        Args:
            path: the ``stats_dir`` setting.
            owner: ``(uid, gid)`` of the workers (the user the server's
                workers run as, when it drops privileges).

        Raises:
            StatsDirError: ``path`` is a symlink or not a directory, or no
                private directory could be made in it.

        .. versionchanged:: 0.3
           ``owner``; shared directories get a subdirectory instead of a chmod.
        """
        owner = owner or (os.geteuid(), os.getegid())
        if path is None:
            parent_path, name = tempfile.gettempdir(), ""
        else:
            parent_path, name = os.path.split(os.path.abspath(path))
        # The parent is followed (the user's choice); only the directory gcfork
        # works in is opened without following, and used by descriptor from then on.
        try:
            parent = os.open(parent_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise StatsDirError(parent_path, exc.strerror or str(exc)) from None
        try:
            if name:
                self = cls._given(parent, parent_path, name, owner)
            else:
                self = cls._fresh(parent, parent_path, owner)
        finally:
            os.close(parent)
        with contextlib.suppress(OSError):  # made now: the workers' user owns it
            os.close(files.make_dir(self._dir(), TRIGGER_NAME, owner))
        return self

    @classmethod
    def _given(cls, parent: int, parent_path: str, name: str,
               owner: tuple[int, int]) -> StatsDir:
        path = os.path.join(parent_path, name)
        try:
            return cls(path, fd=files.make_dir(parent, name, owner))
        except FileExistsError:
            pass
        except OSError as exc:
            raise StatsDirError(path, f"cannot create it: {exc.strerror or exc}") from None
        fd = _open_checked(path, parent, name)
        info = os.fstat(fd)
        if info.st_uid == owner[0] and not stat.S_IMODE(info.st_mode) & 0o077:
            return cls(path, fd=fd)
        try:
            return cls._fresh(fd, path, owner)
        finally:
            os.close(fd)

    @classmethod
    def _fresh(cls, parent: int, parent_path: str, owner: tuple[int, int]) -> StatsDir:
        for _ in range(100):
            name = f"gcfork-stats-{os.urandom(6).hex()}"
            try:
                fd = files.make_dir(parent, name, owner)
            except FileExistsError:
                continue
            except OSError as exc:
                raise StatsDirError(parent_path, "cannot create a private directory in it: "
                                    f"{exc.strerror or exc}") from None
            return cls(os.path.join(parent_path, name), owned=True, fd=fd)
        raise StatsDirError(parent_path, "no free name for a private directory in it")

    @classmethod
    def open(cls, path: str) -> StatsDir:
        """Reader: open the directory without changing it.

        Raises:
            StatsDirError: it is missing, a symlink, writable by others, or
                another user's (root reads any user's: a root master's
                workers run as another user).
        """
        self = cls(path, fd=_open_checked(path))  # closed when dropped, even on error
        info = os.fstat(self._dir())
        if info.st_uid != os.geteuid() and os.geteuid() != 0:
            raise StatsDirError(path, f"it belongs to uid {info.st_uid}, not to uid {os.geteuid()}")
        if stat.S_IMODE(info.st_mode) & 0o022:
            raise StatsDirError(path, f"its mode is {stat.S_IMODE(info.st_mode):04o}; "
                                "others could plant records")
        return self

    def subdir(self, name: str) -> int:
        """An open private subdirectory (``0700``, owned as records may be),
        made if missing; the caller closes it.

        Raises:
            StatsDirError: it is not a directory, or not private, or another
                user's: naming it.

        .. versionadded:: 0.3
        """
        path = os.path.join(self.path, name)
        try:
            parent = self._dir()
            info = os.fstat(parent)
            owner = (info.st_uid, info.st_gid) if os.geteuid() == 0 else None
            with contextlib.suppress(FileExistsError):
                os.close(files.make_dir(parent, name, owner))
        except OSError as exc:
            raise StatsDirError(path, exc.strerror or str(exc)) from None
        fd = _open_checked(path, parent, name)
        info = os.fstat(fd)
        if info.st_uid not in self.owners() or stat.S_IMODE(info.st_mode) & 0o077:
            os.close(fd)
            raise StatsDirError(path, f"it is not gcfork's (uid {info.st_uid}, mode "
                                f"{stat.S_IMODE(info.st_mode):04o})")
        return fd

    def publish(self, record: StatsRecord) -> None:
        """Write ``record`` atomically, replacing the process's previous one.

        Raises:
            OSError: the directory is gone or full.
            ValueError: the record holds a float that is not finite.
        """
        files.write_private(self._dir(), _key_name(record.pid, record.start), record.dumps())

    def read_one(self, pid: int, start: int) -> StatsRecord | None:
        """The record of one process, or None if it has none that is valid."""
        try:
            record = _load(self._dir(), _key_name(pid, start), self.owners())
        except (OSError, ValueError):
            return None
        return record if (record.pid, record.start) == (pid, start) else None

    def read(self) -> ReadResult:
        """Every valid record, and a reason for each file ignored."""
        records: dict[tuple[int, int], StatsRecord] = {}
        problems: dict[str, str] = {}
        try:
            fd = self._dir()
            names = sorted(os.listdir(fd))
            owners = self.owners()
        except OSError as exc:
            return ReadResult(records, {".": exc.strerror or str(exc)})
        for name in names:
            if name.startswith("."):
                continue  # a record being written, or the explain trigger
            key = parse_key(name)
            if key is None:
                problems[name] = "not a record name (PID-START.json)"
                continue
            try:
                record = _load(fd, name, owners)
            except FileNotFoundError:
                continue  # removed since listdir: its process exited
            except ValueError as exc:
                problems[name] = str(exc)
                continue
            if (record.pid, record.start) != key:
                problems[name] = f"names pid {record.pid} start {record.start} inside"
                continue
            records[key] = record
        return ReadResult(records, problems)

    def find(self, pid: int) -> StatsRecord | None:
        """The newest valid record of a process known by its pid alone (one
        that has exited, whose start time can no longer be read)."""
        found: list[StatsRecord] = []
        with contextlib.suppress(OSError):
            for name in os.listdir(self._dir()):
                key = parse_key(name)
                if key is not None and key[0] == pid:
                    record = self.read_one(*key)
                    if record is not None:
                        found.append(record)
        return max(found, key=lambda r: r.written, default=None)

    def remove(self, pid: int, start: int) -> None:
        """Delete one process's record, if any; never raises OSError."""
        with contextlib.suppress(OSError):
            os.unlink(_key_name(pid, start), dir_fd=self._dir())

    def prune(self) -> int:
        """Master: delete records of processes that no longer run.

        Returns:
            How many were deleted.
        """
        removed = 0
        with contextlib.suppress(OSError):
            for name in os.listdir(self._dir()):
                key = parse_key(name)
                if key is not None and process_start(key[0]) != key[1]:
                    self.remove(*key)
                    removed += 1
        return removed

    def destroy(self) -> None:
        """Master at exit: remove the directory if gcfork made it for this
        master (its contents through the descriptor, then the directory if
        its path still names it), and close it. A directory given by the
        ``stats_dir`` setting stays: another master (``USR2``) may use it."""
        if self.owned and self._fd is not None and self._fd >= 0:
            files.empty_dir(self._fd)
            _rmdir_if_same(self.path, self._fd)
        self.close()


def _rmdir_if_same(path: str, fd: int) -> None:
    parent_path, name = os.path.split(path)
    try:
        parent = os.open(parent_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        now, held = os.stat(name, dir_fd=parent, follow_symlinks=False), os.fstat(fd)
        if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            os.rmdir(name, dir_fd=parent)
    except OSError:
        pass  # gone, swapped, or not empty: whatever is there now is not ours to remove
    finally:
        os.close(parent)


# -- where a master's directory is advertised ------------------------------------


def runtime_dirs() -> list[str]:
    """The per-user directories where masters advertise their stats directory.

    A master writes into the first it can use; readers look in all of them,
    since a shell and a service of the same user may not share
    ``$XDG_RUNTIME_DIR`` or ``$TMPDIR``:

    ``$XDG_RUNTIME_DIR/gcfork``, ``/run/user/UID/gcfork`` (its usual value),
    ``TMPDIR/gcfork-UID`` and ``/tmp/gcfork-UID``, made 0700.
    """
    uid = os.geteuid()
    found: list[str] = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    candidates = [os.path.join(xdg, "gcfork")] if xdg and os.path.isabs(xdg) else []
    candidates += [f"/run/user/{uid}/gcfork",
                   os.path.join(tempfile.gettempdir(), f"gcfork-{uid}"),
                   f"/tmp/gcfork-{uid}"]
    for path in candidates:
        if path not in found:
            found.append(path)
    return found


def _runtime_dir(path: str, make: bool) -> int:
    """Open one of :func:`runtime_dirs`, made 0700 if ``make``: it must be the
    caller's and private (never chmod-ed: gcfork may not have made it)."""
    if make:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    fd = _open_checked(path)
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        os.close(fd)
        raise StatsDirError(path, f"it is not private to uid {os.geteuid()} (uid "
                            f"{info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o})")
    return fd


def advertise(pid: int, start: int, stats_dir: str) -> str:
    """Master: say where the stats directory of master ``pid`` is.

    Returns:
        The file written.

    Raises:
        StatsDirError: no runtime directory could be used.
    """
    data = json.dumps({"schema": SCHEMA_VERSION, "pid": pid, "start": start,
                       "stats_dir": stats_dir}).encode()
    reasons = []
    for path in runtime_dirs():
        if not os.path.isdir(os.path.dirname(path)):
            reasons.append(f"{os.path.dirname(path)} does not exist")
            continue
        try:
            fd = _runtime_dir(path, make=True)
        except (OSError, StatsDirError) as exc:
            reasons.append(str(exc))
            continue
        try:
            files.write_private(fd, _key_name(pid, start), data)
        except OSError as exc:
            reasons.append(f"{path}: {exc.strerror or exc}")
            continue
        finally:
            os.close(fd)
        return os.path.join(path, _key_name(pid, start))
    raise StatsDirError(runtime_dirs()[0], "; ".join(reasons))


def advertised(pid: int, start: int) -> str | None:
    """The stats directory master ``pid`` (started at ``start``) advertised,
    or None. Files that are not safe to trust are ignored."""
    for path in runtime_dirs():
        try:
            fd = _runtime_dir(path, make=False)
        except (OSError, StatsDirError):
            continue
        try:
            obj = files.loads_strict(files.read_private(
                fd, _key_name(pid, start), MAX_RECORD_BYTES, {os.geteuid()}))
        except (OSError, ValueError):
            continue
        finally:
            os.close(fd)
        if (isinstance(obj, dict) and obj.get("schema") == SCHEMA_VERSION
                and obj.get("pid") == pid and obj.get("start") == start
                and isinstance(obj.get("stats_dir"), str) and "\0" not in obj["stats_dir"]):
            return str(obj["stats_dir"])
    return None


def withdraw(pid: int, start: int) -> None:
    """Master at exit: remove its advertisement."""
    for path in runtime_dirs():
        try:
            fd = _runtime_dir(path, make=False)
        except (OSError, StatsDirError):
            continue
        with contextlib.suppress(OSError):
            os.unlink(_key_name(pid, start), dir_fd=fd)
        os.close(fd)
