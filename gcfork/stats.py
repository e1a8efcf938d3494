"""The stats channel: GC statistics that workers publish for their master.

Each worker counts its collections with a :data:`gc.callbacks` callback and a
daemon thread writes a small JSON record every few seconds into a directory
private to the server; the master writes its own record there too. The master
and ``gcfork report`` read the records back.

The directory is created mode 0700 by the master and refused when it is a
symlink or belongs to another user. Each record is one file, mode 0600, named
after the process's pid and start time (pids get reused), written to a
temporary name and renamed into place so a reader never sees half a record.
Readers open files with ``O_NOFOLLOW`` and ignore, with a reason, any that is
a symlink, not a regular file, owned by another user, over
:data:`MAX_RECORD_BYTES` or not a record of :data:`SCHEMA_VERSION`.

The master advertises where its directory is: a 0600 file named after its pid
and start time in a per-user runtime directory (see :func:`runtime_dirs`), so
``gcfork report --pid N`` finds the directory of master N without being told.

Nothing here runs on a request path; nothing here imports more than the
standard library, psutil and :mod:`gcfork.memory`.

.. versionadded:: 0.2
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import secrets
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import psutil

from gcfork.exceptions import StatsDirError
from gcfork.memory import process_start

__all__ = [
    "MAX_RECORD_BYTES",
    "PUBLISH_INTERVAL",
    "SCHEMA_VERSION",
    "GCCollector",
    "GenStats",
    "Publisher",
    "ReadResult",
    "StatsDir",
    "StatsDirError",
    "StatsRecord",
    "advertise",
    "advertised",
    "runtime_dirs",
    "withdraw",
]

SCHEMA_VERSION = 1
"""Version of the record format; a reader ignores records of another version."""

MAX_RECORD_BYTES = 16 * 1024
"""A record is a few hundred bytes; anything over this bound is not ours."""

PUBLISH_INTERVAL = 2.0
"""Seconds between two records of one worker."""

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class GenStats(NamedTuple):
    """What one generation's collections did in one process."""

    collections: int
    collected: int
    uncollectable: int
    pause_total: float  # seconds
    pause_max: float  # seconds


class StatsRecord(NamedTuple):
    """One process's published statistics (one file of the stats directory)."""

    role: str  # "worker" or "master"
    pid: int
    start: int  # memory.process_start(pid)
    started: float  # creation time, seconds since the epoch
    written: float  # seconds since the epoch
    requests: int | None  # requests served; None for the master
    gc_enabled: bool
    thresholds: tuple[int, ...]
    freeze_count: int
    generations: tuple[GenStats, ...]
    final: bool = False  # written by the process as it exits
    uss_at_exit: int | None = None  # bytes, measured by the process as it exits
    dirty_arbiter_pid: int | None = None  # master only: gunicorn's dirty arbiter

    @property
    def collections(self) -> int:
        """Collections of every generation."""
        return sum(g.collections for g in self.generations)

    @property
    def pause_max(self) -> float:
        """The longest pause of any generation, in seconds."""
        return max((g.pause_max for g in self.generations), default=0.0)

    def to_json(self) -> dict[str, Any]:
        """The record as written to its file, with the schema version."""
        return {
            "schema": SCHEMA_VERSION,
            "role": self.role,
            "pid": self.pid,
            "start": self.start,
            "started": self.started,
            "written": self.written,
            "requests": self.requests,
            "gc": {
                "enabled": self.gc_enabled,
                "thresholds": list(self.thresholds),
                "freeze_count": self.freeze_count,
                "generations": [g._asdict() for g in self.generations],
            },
            "final": self.final,
            "uss_at_exit": self.uss_at_exit,
            "dirty_arbiter_pid": self.dirty_arbiter_pid,
        }

    @classmethod
    def from_json(cls, obj: object) -> StatsRecord:
        """Parse a record read from a file.

        Raises:
            ValueError: not a record of this schema version, in words.
        """
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        if obj.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"schema {obj.get('schema')!r}, this gcfork reads {SCHEMA_VERSION}")
        try:
            gc_part = obj["gc"]
            gens = tuple(
                GenStats(_int(g["collections"]), _int(g["collected"]), _int(g["uncollectable"]),
                         _float(g["pause_total"]), _float(g["pause_max"]))
                for g in gc_part["generations"][:3]
            )
            return cls(
                role=str(obj["role"]),
                pid=_int(obj["pid"]),
                start=_int(obj["start"]),
                started=_float(obj["started"]),
                written=_float(obj["written"]),
                requests=None if obj["requests"] is None else _int(obj["requests"]),
                gc_enabled=bool(gc_part["enabled"]),
                thresholds=tuple(_int(t) for t in gc_part["thresholds"][:3]),
                freeze_count=_int(gc_part["freeze_count"]),
                generations=gens,
                final=bool(obj.get("final", False)),
                uss_at_exit=None if obj.get("uss_at_exit") is None else _int(obj["uss_at_exit"]),
                dirty_arbiter_pid=(None if obj.get("dirty_arbiter_pid") is None
                                   else _int(obj["dirty_arbiter_pid"])),
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"malformed record ({exc!r})") from None


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an int")
    return value


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


# -- counting collections -------------------------------------------------------


class GCCollector:
    """Counts the calling process's collections through :data:`gc.callbacks`.

    The callback does a few additions per collection and nothing else. A
    forked child inherits the installed collector with the parent's counts:
    it calls :meth:`reset` first.
    """

    __slots__ = ("_gens", "_ident", "_t0")

    def __init__(self) -> None:
        self._gens: list[list[float]] = [[0, 0, 0, 0.0, 0.0] for _ in range(3)]
        self._t0 = 0.0
        self._ident: tuple[int, int, float] = (0, 0, 0.0)  # pid, start, started

    def install(self) -> None:
        """Start counting in this process; idempotent."""
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        """Stop counting."""
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)

    def reset(self) -> None:
        """Forget every count (in a child right after the fork)."""
        self._gens = [[0, 0, 0, 0.0, 0.0] for _ in range(3)]

    def _callback(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        pause = time.perf_counter() - self._t0
        gen = self._gens[min(max(info.get("generation", 0), 0), 2)]
        gen[0] += 1
        gen[1] += info.get("collected", 0)
        gen[2] += info.get("uncollectable", 0)
        gen[3] += pause
        if pause > gen[4]:
            gen[4] = pause

    def snapshot(self) -> tuple[GenStats, ...]:
        """The counts now, one entry per generation."""
        # tuple() copies each generation at once: the callback may run meanwhile.
        return tuple(GenStats(int(c), int(n), int(u), t, m)
                     for c, n, u, t, m in (tuple(g) for g in self._gens))

    def _identity(self) -> tuple[int, int, float]:
        # Read once per process; a forked child has a new pid, so reads its own.
        pid = os.getpid()
        if self._ident[0] != pid:
            self._ident = (pid, process_start(pid) or 0, psutil.Process(pid).create_time())
        return self._ident

    def record(self, role: str, requests: int | None, **extra: Any) -> StatsRecord:
        """A record of the calling process's GC state and counts now.

        Args:
            role: ``worker`` or ``master``.
            requests: requests served so far; None for a master.
            **extra: ``final``, ``uss_at_exit``, ``dirty_arbiter_pid``.
        """
        pid, start, started = self._identity()
        return StatsRecord(
            role=role, pid=pid, start=start, started=started, written=time.time(),
            requests=requests, gc_enabled=gc.isenabled(), thresholds=gc.get_threshold(),
            freeze_count=gc.get_freeze_count(), generations=self.snapshot(), **extra,
        )


# -- files ----------------------------------------------------------------------


def _check_dir(path: str, fix_mode: bool) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise StatsDirError(path, "it does not exist") from None
    except OSError as exc:
        raise StatsDirError(path, exc.strerror or str(exc)) from None
    if stat.S_ISLNK(st.st_mode):
        raise StatsDirError(path, "it is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        raise StatsDirError(path, "it is not a directory")
    if st.st_uid != os.geteuid():
        raise StatsDirError(path, f"it belongs to uid {st.st_uid}, not to uid {os.geteuid()}")
    if stat.S_IMODE(st.st_mode) & 0o077:
        if not fix_mode:
            raise StatsDirError(
                path, f"its mode is {stat.S_IMODE(st.st_mode):04o}; others could plant records"
            )
        os.chmod(path, 0o700)


def _make_private_dir(path: str) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    _check_dir(path, fix_mode=True)


def _read_small_file(path: str) -> bytes:
    """The bytes of a regular file of ours under the size bound.

    Raises:
        ValueError: why the file is ignored, in words.
        FileNotFoundError: it disappeared.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError("a symlink, not followed") from None
        if exc.errno == errno.ENOENT:
            raise
        raise ValueError(exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_uid != os.geteuid():
            raise ValueError(f"owned by uid {st.st_uid}, not by uid {os.geteuid()}")
        if st.st_size > MAX_RECORD_BYTES:
            raise ValueError(f"{st.st_size} bytes, over the {MAX_RECORD_BYTES}-byte bound")
        data = os.read(fd, MAX_RECORD_BYTES + 1)
        if len(data) > MAX_RECORD_BYTES:
            raise ValueError(f"over the {MAX_RECORD_BYTES}-byte bound")
        return data
    finally:
        os.close(fd)


def _write_atomically(directory: str, name: str, data: bytes) -> None:
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"record of {len(data)} bytes is over {MAX_RECORD_BYTES}")
    # A fresh random name with O_EXCL: nothing planted there can be followed,
    # and rename() replaces a symlink at the final name instead of following it.
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, os.path.join(directory, name))
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _key_name(pid: int, start: int) -> str:
    return f"{pid}-{start}.json"


def _parse_key(name: str) -> tuple[int, int] | None:
    stem, _, ext = name.partition(".")
    pid, dash, start = stem.partition("-")
    if ext != "json" or not dash or not pid.isdigit() or not start.isdigit():
        return None
    return int(pid), int(start)


class ReadResult(NamedTuple):
    """Everything read from a stats directory (returned by :meth:`StatsDir.read`)."""

    records: dict[tuple[int, int], StatsRecord]  # by (pid, start)
    problems: dict[str, str]  # file name -> why it was ignored


class StatsDir:
    """A server's private stats directory.

    Args:
        path: the directory; use :meth:`create` (master) or :meth:`open`
            (readers), which check it.
        owned: the master created it and removes it at exit.
    """

    __slots__ = ("owned", "path")

    def __init__(self, path: str, owned: bool = False) -> None:
        self.path = path
        self.owned = owned

    def __repr__(self) -> str:
        return f"StatsDir({self.path!r})"

    @classmethod
    def create(cls, path: str | None) -> StatsDir:
        """Master: make the directory (mode 0700), or a fresh one when None.

        Raises:
            StatsDirError: ``path`` is a symlink, not a directory or another
                user's.
        """
        if path is None:
            return cls(tempfile.mkdtemp(prefix="gcfork-stats-"), owned=True)
        _make_private_dir(path)
        return cls(path)

    @classmethod
    def open(cls, path: str) -> StatsDir:
        """Reader: check the directory without changing it.

        Raises:
            StatsDirError: it is missing, a symlink, another user's or
                writable by others.
        """
        _check_dir(path, fix_mode=False)
        return cls(path)

    def publish(self, record: StatsRecord) -> None:
        """Write ``record`` atomically, replacing the process's previous one.

        Raises:
            OSError: the directory is gone or full.
        """
        data = json.dumps(record.to_json(), separators=(",", ":")).encode()
        _write_atomically(self.path, _key_name(record.pid, record.start), data)

    def read_one(self, pid: int, start: int) -> StatsRecord | None:
        """The record of one process, or None if it has none that is valid."""
        try:
            record = StatsRecord.from_json(
                json.loads(_read_small_file(os.path.join(self.path, _key_name(pid, start))))
            )
        except (OSError, ValueError):
            return None
        return record if (record.pid, record.start) == (pid, start) else None

    def read(self) -> ReadResult:
        """Every valid record, and a reason for each file ignored."""
        records: dict[tuple[int, int], StatsRecord] = {}
        problems: dict[str, str] = {}
        try:
            names = sorted(os.listdir(self.path))
        except OSError as exc:
            return ReadResult(records, {".": exc.strerror or str(exc)})
        for name in names:
            if name.startswith("."):
                continue  # a record being written
            key = _parse_key(name)
            if key is None:
                problems[name] = "not a record name (PID-START.json)"
                continue
            try:
                record = StatsRecord.from_json(
                    json.loads(_read_small_file(os.path.join(self.path, name)))
                )
            except FileNotFoundError:
                continue  # removed since listdir: its process exited
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                problems[name] = (f"not valid JSON ({exc.msg})"
                                  if isinstance(exc, json.JSONDecodeError) else str(exc))
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
            for name in os.listdir(self.path):
                key = _parse_key(name)
                if key is not None and key[0] == pid:
                    record = self.read_one(*key)
                    if record is not None:
                        found.append(record)
        return max(found, key=lambda r: r.written, default=None)

    def remove(self, pid: int, start: int) -> None:
        """Delete one process's record, if any."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.path, _key_name(pid, start)))

    def prune(self) -> int:
        """Master: delete records of processes that no longer run.

        Returns:
            How many were deleted.
        """
        removed = 0
        with contextlib.suppress(OSError):
            for name in os.listdir(self.path):
                key = _parse_key(name)
                if key is not None and process_start(key[0]) != key[1]:
                    self.remove(*key)
                    removed += 1
        return removed

    def destroy(self) -> None:
        """Master at exit: remove the directory if it made it. A directory given
        by the ``stats_dir`` setting stays: another master (``USR2``) may use it."""
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


# -- where a master's directory is advertised ------------------------------------


def runtime_dirs() -> list[str]:
    """The per-user directories where masters advertise their stats directory.

    A master writes into the first it can use; readers look in all of them,
    since a shell and a service of the same user may not share
    ``$XDG_RUNTIME_DIR`` or ``$TMPDIR``:

    1. ``$XDG_RUNTIME_DIR/gcfork``;
    2. ``/run/user/UID/gcfork``, the usual value of the above;
    3. ``TMPDIR/gcfork-UID`` and ``/tmp/gcfork-UID``, made 0700.
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
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            reasons.append(f"{parent} does not exist")
            continue
        try:
            _make_private_dir(path)
            _write_atomically(path, _key_name(pid, start), data)
        except (OSError, StatsDirError) as exc:
            reasons.append(str(exc))
            continue
        return os.path.join(path, _key_name(pid, start))
    raise StatsDirError(runtime_dirs()[0], "; ".join(reasons))


def advertised(pid: int, start: int) -> str | None:
    """The stats directory master ``pid`` (started at ``start``) advertised,
    or None. Files that are not safe to trust are ignored."""
    for path in runtime_dirs():
        try:
            _check_dir(path, fix_mode=False)
            obj = json.loads(_read_small_file(os.path.join(path, _key_name(pid, start))))
        except (OSError, ValueError, StatsDirError):
            continue
        if (isinstance(obj, dict) and obj.get("schema") == SCHEMA_VERSION
                and obj.get("pid") == pid and obj.get("start") == start
                and isinstance(obj.get("stats_dir"), str)):
            return str(obj["stats_dir"])
    return None


def withdraw(pid: int, start: int) -> None:
    """Master at exit: remove its advertisement."""
    for path in runtime_dirs():
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(path, _key_name(pid, start)))


# -- the publishing thread ------------------------------------------------------


class Publisher:
    """A daemon thread that publishes a record every ``interval`` seconds.

    Args:
        stats_dir: where to publish.
        build: makes the record; called in the thread, never on a request path.
        interval: seconds between two records.
        on_error: told once, in words, if publishing fails; the thread carries on.
    """

    __slots__ = ("_build", "_dir", "_error_told", "_interval", "_on_error", "_stop", "_thread")

    def __init__(
        self,
        stats_dir: StatsDir,
        build: Callable[[], StatsRecord],
        interval: float = PUBLISH_INTERVAL,
        on_error: Callable[[str], object] | None = None,
    ) -> None:
        self._dir = stats_dir
        self._build = build
        self._interval = interval
        self._on_error = on_error
        self._error_told = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Publish now, then every ``interval`` seconds, from a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="gcfork-publisher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.publish()
            if self._stop.wait(self._interval):
                return

    def publish(self, record: StatsRecord | None = None) -> None:
        """Publish ``record`` (a fresh one when None) now; never raises."""
        try:
            self._dir.publish(record or self._build())
        except Exception as exc:  # the process must not die of its statistics
            if not self._error_told and self._on_error is not None:
                self._error_told = True
                self._on_error(f"cannot publish GC statistics to {self._dir.path}: {exc!r}")

    def stop(self) -> None:
        """Stop the thread (it is a daemon: exiting without this is fine)."""
        self._stop.set()
