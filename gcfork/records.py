"""GC statistics records: what one process publishes, and how it is counted.

A record (:class:`StatsRecord`) is one small JSON file of the stats directory
(:mod:`gcfork.stats`). Every field is checked when read back: a record
written by the same user, by mistake or not, must not crash a reader (the
template's adapter, ``gcfork report``), so its JSON is parsed strictly (no
``NaN``, no deep nesting) and every field is typed and bounded.
:class:`GCCollector` counts the calling process's collections and makes its
record, with the role its adapter gives; :class:`Publisher` is the daemon
thread that writes it (in each process, started by the adapter). Standard
library only (the platform through :mod:`gcfork.procfs`).

.. versionadded:: 0.3
   Split from :mod:`gcfork.stats`, which re-exports every name.
"""

from __future__ import annotations

import _thread
import contextlib
import gc
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from gcfork import actions, files, procfs
from gcfork.memory import process_start
from gcfork.pauses import PAUSE_BUCKETS, bucket_of, pause_counts, pause_quantile

if TYPE_CHECKING:
    from gcfork.stats import StatsDir

__all__ = [
    "MAX_PATHS",
    "MAX_PATH_CHARS",
    "MAX_RECORD_BYTES",
    "PUBLISH_INTERVAL",
    "SCHEMA_VERSION",
    "ByPath",
    "GCCollector",
    "GenStats",
    "PathGrowth",
    "Publisher",
    "StatsRecord",
]

SCHEMA_VERSION = 1
"""Version of the record format; a reader ignores records of another version."""

MAX_RECORD_BYTES = 16 * 1024
"""A record is a few hundred bytes; anything over this bound is not ours."""

PUBLISH_INTERVAL = 2.0
"""Seconds between two records of one worker."""

# A role is the adapter's word for the process (e.g. master, worker): a short
# lowercase token, nothing more, so that no record can inject text into a report.
_ROLE = re.compile(r"[a-z][a-z0-9-]{0,31}")

_PID_MAX = 1 << 22  # the kernel's PID_MAX_LIMIT
_COUNT_MAX = (1 << 63) - 1
_GROWTH_MAX = 1 << 62  # bytes, either way: beyond any machine

MAX_PATHS = 32
"""Paths one record holds at most, besides ``(other)`` (:mod:`gcfork.attribution`)."""

MAX_PATH_CHARS = 120
"""A path's length at most, once normalised (:func:`gcfork.attribution.normalise_path`)."""

# A normalised path: printable ASCII without spaces (anything else is
# percent-encoded before it is kept), so that no record can inject text into a table.
_PATH = re.compile(rf"[\x21-\x7e]{{1,{MAX_PATH_CHARS}}}")


class GenStats(NamedTuple):
    """What one generation's collections did in one process."""

    collections: int
    collected: int
    uncollectable: int
    pause_total: float  # seconds
    pause_max: float  # seconds


class PathGrowth(NamedTuple):
    """What the sampled requests of one path did to a worker's private memory."""

    path: str  # normalised (gcfork.attribution.normalise_path), or "(other)"
    samples: int  # sampled requests counted (>= 1)
    total: int  # bytes: the sum of USS after - before; < 0 when memory was given back
    max: int  # bytes: the largest difference of one sample

    @property
    def mean(self) -> float:
        """Bytes of private memory per sampled request, on average."""
        return self.total / self.samples


class ByPath(NamedTuple):
    """A worker's per-path attribution, published with its record.

    .. versionadded:: 0.4
    """

    every: int  # attribute_every in force; 0 once switched off after a failure
    sampled: int  # samples counted in ``paths``
    overlapped: int  # samples dropped: another request of the worker ran meanwhile
    paths: tuple[PathGrowth, ...]  # the biggest total growth first

    def to_json(self) -> dict[str, Any]:
        return {"every": self.every, "sampled": self.sampled, "overlapped": self.overlapped,
                "paths": [p._asdict() for p in self.paths]}

    @classmethod
    def from_json(cls, obj: object) -> ByPath:
        """Parse the ``by_path`` part of a record; every field typed and bounded.

        Raises:
            ValueError: why it is not valid, in words; KeyError for a missing field.
        """
        top = _dict(obj, "by_path")
        entries = top["paths"]
        if not isinstance(entries, list) or len(entries) > MAX_PATHS + 1:
            raise ValueError(f"by_path.paths is not a list of at most {MAX_PATHS + 1} entries")
        paths = []
        for entry in (_dict(e, "by_path entry") for e in entries):
            path = entry["path"]
            if not isinstance(path, str) or not _PATH.fullmatch(path):
                raise ValueError(f"path {path!r:.40} is not 1 to {MAX_PATH_CHARS} printable "
                                 "ASCII characters")
            paths.append(PathGrowth(path, _int(entry["samples"], "samples", 1),
                                    _int(entry["total"], "total", -_GROWTH_MAX, _GROWTH_MAX),
                                    _int(entry["max"], "max", -_GROWTH_MAX, _GROWTH_MAX)))
        return cls(_int(top["every"], "every"), _int(top["sampled"], "sampled"),
                   _int(top["overlapped"], "overlapped"), tuple(paths))


class StatsRecord(NamedTuple):
    """One process's published statistics (one file of the stats directory)."""

    role: str  # given by the adapter: a lowercase token, e.g. "worker"
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
    # Collections of every generation by pause, one count per PAUSE_BUCKETS
    # bucket and one for longer; empty from a writer that kept none.
    pauses: tuple[int, ...] = ()
    # The most CPU time (the collecting thread's) one collection took: beside
    # the pauses, which are wall time, it tells the collector's work from the
    # time the process waited for a CPU while collecting.
    pause_cpu_max: float = 0.0  # seconds
    by_path: ByPath | None = None  # a worker's per-path attribution; None when off

    @property
    def collections(self) -> int:
        """Collections of every generation."""
        return sum(g.collections for g in self.generations)

    def pause_quantile(self, q: float) -> float | None:
        """See :func:`pause_quantile`."""
        return pause_quantile(self.pauses, q, self.pause_max)

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
                "pauses": list(self.pauses),
                "pause_cpu_max": self.pause_cpu_max,
            },
            "final": self.final,
            "uss_at_exit": self.uss_at_exit,
            "by_path": None if self.by_path is None else self.by_path.to_json(),
        }

    def dumps(self) -> bytes:
        """The file's bytes.

        Raises:
            ValueError: a float is not finite, or the record is over
                :data:`MAX_RECORD_BYTES`; nothing a reader would refuse is written.

        .. versionadded:: 0.3
        """
        data = json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False).encode()
        if len(data) > MAX_RECORD_BYTES:
            raise ValueError(f"record of {len(data)} bytes is over {MAX_RECORD_BYTES}")
        return data

    @classmethod
    def loads(cls, data: bytes) -> StatsRecord:
        """Parse a record file's bytes (strict JSON, then :meth:`from_json`).

        Raises:
            ValueError: why it is not a valid record, in words.

        .. versionadded:: 0.3
        """
        try:
            return cls.from_json(files.loads_strict(data))
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg})") from None

    @classmethod
    def from_json(cls, obj: object) -> StatsRecord:
        """Parse a record read from a file; every field is checked for type
        and range (pids in the kernel's range, counts >= 0, floats finite).

        Raises:
            ValueError: not a valid record of this schema version, in words.

        .. versionchanged:: 0.4
           ``by_path`` (absent or null in older records).
        .. versionchanged:: 0.3
           Strict types and bounds; any role the adapter gives (a lowercase
           token); ``dirty_arbiter_pid`` is gone.
        """
        top = _dict(obj, "record")
        schema = top.get("schema")
        if isinstance(schema, bool) or schema != SCHEMA_VERSION:
            raise ValueError(f"schema {schema!r:.40}, this gcfork reads {SCHEMA_VERSION}")
        try:
            role = top["role"]
            if not isinstance(role, str) or not _ROLE.fullmatch(role):
                raise ValueError(f"role {role!r:.40} is not a lowercase word of 1 to 32 "
                                 "letters, digits and hyphens")
            gc_part = _dict(top["gc"], "gc")
            gens = tuple(
                GenStats(_int(g["collections"], "collections"), _int(g["collected"], "collected"),
                         _int(g["uncollectable"], "uncollectable"),
                         _float(g["pause_total"], "pause_total"),
                         _float(g["pause_max"], "pause_max"))
                for g in (_dict(g, "generation")
                          for g in _list(gc_part["generations"], "generations"))
            )
            return cls(
                role=str(role),
                pid=_int(top["pid"], "pid", 1, _PID_MAX),
                start=_int(top["start"], "start"),
                started=_float(top["started"], "started"),
                written=_float(top["written"], "written"),
                requests=_opt_int(top["requests"], "requests"),
                gc_enabled=_bool(gc_part["enabled"], "gc.enabled"),
                thresholds=tuple(_int(t, "threshold")
                                 for t in _list(gc_part["thresholds"], "thresholds")),
                freeze_count=_int(gc_part["freeze_count"], "freeze_count"),
                generations=gens,
                final=_bool(top.get("final", False), "final"),
                uss_at_exit=_opt_int(top.get("uss_at_exit"), "uss_at_exit"),
                pauses=pause_counts(gc_part.get("pauses", [])),
                pause_cpu_max=_float(gc_part.get("pause_cpu_max", 0.0), "pause_cpu_max"),
                by_path=(None if top.get("by_path") is None
                         else ByPath.from_json(top["by_path"])),
            )
        except KeyError as exc:
            raise ValueError(f"malformed record (no {exc})") from None


def _dict(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} is not a JSON object")
    return value


def _list(value: object, name: str) -> list[Any]:
    # One entry per generation: CPython has 3 (2 since 3.14's incremental GC).
    if not isinstance(value, list) or not 1 <= len(value) <= 3:
        raise ValueError(f"{name} is not a list of 1 to 3 entries")
    return value


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} is not true or false")
    return value


def _int(value: object, name: str, low: int = 0, high: int = _COUNT_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} is not an integer")
    if not low <= value <= high:
        raise ValueError(f"{name} is out of range [{low}, {high}]")
    return value


def _opt_int(value: object, name: str, high: int = _COUNT_MAX) -> int | None:
    return None if value is None else _int(value, name, 0, high)


def _float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} is not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} is not a finite number >= 0")
    return number


# -- counting collections -------------------------------------------------------


class GCCollector:
    """Counts the calling process's collections through :data:`gc.callbacks`.

    The callback does a few additions per collection and nothing else. A
    forked child inherits the installed collector with the parent's counts:
    it calls :meth:`reset` first.
    """

    __slots__ = ("_c0", "_cpu_max", "_gens", "_ident", "_pauses", "_t0")

    def __init__(self) -> None:
        self._gens: list[list[float]] = [[0, 0, 0, 0.0, 0.0] for _ in range(3)]
        self._pauses = [0] * (len(PAUSE_BUCKETS) + 1)
        self._cpu_max = 0.0
        self._t0 = self._c0 = 0.0
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
        self._pauses = [0] * (len(PAUSE_BUCKETS) + 1)
        self._cpu_max = 0.0

    def _callback(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            self._c0 = time.thread_time()
            return
        pause = time.perf_counter() - self._t0
        cpu = time.thread_time() - self._c0
        if cpu > self._cpu_max:
            self._cpu_max = cpu
        gen = self._gens[min(max(info.get("generation", 0), 0), 2)]
        gen[0] += 1
        gen[1] += info.get("collected", 0)
        gen[2] += info.get("uncollectable", 0)
        gen[3] += pause
        if pause > gen[4]:
            gen[4] = pause
        self._pauses[bucket_of(pause)] += 1

    def snapshot(self) -> tuple[GenStats, ...]:
        """The counts now, one entry per generation."""
        # tuple() copies each generation at once: the callback may run meanwhile.
        return tuple(GenStats(int(c), int(n), int(u), t, m)
                     for c, n, u, t, m in (tuple(g) for g in self._gens))

    def _identity(self) -> tuple[int, int, float]:
        # Read once per process; a forked child has a new pid, so reads its own.
        pid = os.getpid()
        if self._ident[0] != pid:
            self._ident = (pid, process_start(pid) or 0, procfs.create_time(pid))
        return self._ident

    def record(self, role: str, requests: int | None, **extra: Any) -> StatsRecord:
        """A record of the calling process's GC state and counts now.

        Args:
            role: the adapter's word for this process (e.g. ``worker``).
            requests: requests served so far; None for a process that serves none.
            **extra: ``final``, ``uss_at_exit``, ``by_path``.
        """
        pid, start, started = self._identity()
        return StatsRecord(
            role=role, pid=pid, start=start, started=started, written=time.time(),
            requests=requests, gc_enabled=gc.isenabled(), thresholds=gc.get_threshold(),
            freeze_count=gc.get_freeze_count(), generations=self.snapshot(),
            pauses=tuple(self._pauses), pause_cpu_max=self._cpu_max, **extra,
        )


# -- the publishing thread ------------------------------------------------------


class Publisher:
    """A daemon thread that publishes a record every ``interval`` seconds.

    Args:
        stats_dir: where to publish.
        build: makes the record; called in the thread, never on a request path.
        interval: seconds between two records.
        on_error: told once, in words, if publishing fails; the thread carries on.
        also: called in the thread after each record (the worker's
            ``gcfork explain`` poll), so a worker runs one gcfork thread.
        release_memory: after each record, give the C allocator's free pages
            back to the OS (:func:`gcfork.actions.release_free_memory`): what
            a worker's collections and requests freed in the middle of its
            heap stays resident otherwise, counted in its private memory.
            About 0.3 ms when there is something to release, 0.01 ms when
            not; ``malloc_trim`` runs without the GIL.
    """

    __slots__ = ("_also", "_build", "_dir", "_error_told", "_interval", "_on_error",
                 "_release_memory", "_stop", "_thread")

    def __init__(
        self,
        stats_dir: StatsDir,
        build: Callable[[], StatsRecord],
        interval: float = PUBLISH_INTERVAL,
        on_error: Callable[[str], object] | None = None,
        also: Callable[[], object] | None = None,
        release_memory: bool = False,
    ) -> None:
        self._dir = stats_dir
        self._also = also
        self._release_memory = release_memory
        self._build = build
        self._interval = interval
        self._on_error = on_error
        self._error_told = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, untracked: bool = False) -> None:
        """Publish now, then every ``interval`` seconds, from a daemon thread.

        Args:
            untracked: start a bare ``_thread`` thread, which the
                ``threading`` module does not track: for a process that
                monkey-patches ``threading`` after this (gunicorn's gevent
                worker), where a tracked thread's end would look itself up
                under the patched ``get_ident`` and fail.

        .. versionchanged:: 0.4
           ``untracked``.
        """
        if untracked:
            _thread.start_new_thread(self._run, ())
            return
        self._thread = threading.Thread(target=self._run, name="gcfork-publisher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.publish()
            if self._also is not None:
                self._also()
            if self._release_memory:
                actions.release_free_memory()
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
