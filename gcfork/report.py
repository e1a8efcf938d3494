"""The memory-sharing report: one model, one renderer class per format.

:func:`collect` measures a gunicorn master's tree now and joins each process
with the GC statistics it published; the result is a :class:`Report`.
Renderers (re-exported from :mod:`gcfork.render`) turn a report into text:
:class:`TableRenderer` (for a person), :class:`JSONRenderer` (the versioned
schema in ``gcfork/report.schema.json``) and :class:`LogLineRenderer` (one
line for gunicorn's log).

:class:`Sampler` is the master's daemon thread that takes a report every few
seconds and logs the line; it only needs a pid and a log function. At
shutdown the master stops it (:meth:`Sampler.stop` waits for it) and measures
once more (:meth:`Sampler.sample_now`).

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gcfork import memory
from gcfork.discover import WORKER, classify
from gcfork.exceptions import MasterGone, StatsDirError
from gcfork.memory import ClusterTotals, MemorySample, RoleSample
from gcfork.render import JSONRenderer, LogLineRenderer, TableRenderer, json_safe, worker_exit_line
from gcfork.stats import StatsDir, StatsRecord, advertised
from gcfork.units import format_age, format_bytes, format_percent, plural

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "JSONRenderer",
    "LogLineRenderer",
    "MasterGone",
    "ProcessRow",
    "Report",
    "Sampler",
    "TableRenderer",
    "collect",
    "format_age",
    "format_bytes",
    "plural",
    "worker_exit_line",
]

REPORT_SCHEMA_VERSION = 1
"""Version of :meth:`Report.to_dict`'s object (``schema`` in it)."""


@dataclass(frozen=True)
class ProcessRow:
    """One process of the cluster: its role, its memory and its GC statistics.

    ``stats`` is None when the process published no record (not a gcfork
    worker or master, or too young to have published one).
    """

    role: str
    memory: MemorySample
    stats: StatsRecord | None

    @property
    def pid(self) -> int:
        return self.memory.pid

    def age(self, now: float) -> float | None:
        """Seconds since the process started, or None if unknown."""
        return None if self.memory.started is None else max(now - self.memory.started, 0.0)

    @property
    def requests(self) -> int | None:
        return None if self.stats is None else self.stats.requests

    @property
    def gc_collections(self) -> int | None:
        """Collections counted since the worker started (the master: since gcfork
        was installed)."""
        return None if self.stats is None else self.stats.collections

    @property
    def gc_max_pause(self) -> float | None:
        """Longest collection pause in seconds."""
        return None if self.stats is None else self.stats.pause_max


@dataclass(frozen=True)
class Report:
    """A gunicorn cluster's memory sharing and GC statistics at one moment.

    Build it with :func:`collect`; turn it into text with a renderer.
    """

    master_pid: int
    master_start: int
    taken: float  # seconds since the epoch
    stats_dir: str | None
    rows: tuple[ProcessRow, ...]
    totals: ClusterTotals
    notes: tuple[str, ...] = ()

    @property
    def workers(self) -> tuple[ProcessRow, ...]:
        return tuple(r for r in self.rows if r.role == WORKER)

    @property
    def master(self) -> ProcessRow:
        return self.rows[0]

    @property
    def master_gc_enabled(self) -> bool | None:
        """Whether the master's collector is on, from its record; None if unknown."""
        stats = self.master.stats
        return None if stats is None else stats.gc_enabled

    def summary(self) -> str:
        """One sentence with the savings, for a person."""
        t = self.totals
        workers = plural(t.workers, "worker")
        if t.savings is None or t.savings_percent is None:
            if t.processes == 0:
                return "nothing could be measured"
            return (f"savings unknown: no PSS here, so the sum of RSS ({format_bytes(t.sum_rss)}) "
                    f"is only an upper bound of what {workers} and the master cost")
        text = (f"copy-on-write saves {format_bytes(t.savings)} "
                f"({format_percent(t.savings_percent)}) across {workers}")
        if t.unmeasured:
            text += f" ({plural(t.unmeasured, 'process', 'processes')} not measured)"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The report as the JSON object described by ``gcfork/report.schema.json``.

        Sizes are in bytes, times in seconds, percentages from 0 to 100; a
        figure that could not be measured is null and ``problem`` says why.
        """
        t = self.totals
        return {
            "schema": REPORT_SCHEMA_VERSION,
            "taken": self.taken,
            "master": {"pid": self.master_pid, "start": self.master_start,
                       "gc_enabled": self.master_gc_enabled},
            "stats_dir": self.stats_dir,
            "pss_available": t.sum_pss is not None,
            "processes": [_row_dict(r, self.taken) for r in self.rows],
            "totals": {
                "processes": t.processes,
                "unmeasured": t.unmeasured,
                "workers": t.workers,
                "sum_rss": t.sum_rss,
                "sum_pss": t.sum_pss,
                "sum_uss": t.sum_uss,
                "savings": t.savings,
                "savings_percent": t.savings_percent,
                "mean_worker_uss": t.mean_worker_uss,
                "mean_worker_shared_percent": t.mean_worker_shared_percent,
            },
            "summary": self.summary(),
            "notes": list(self.notes),
        }


def _row_dict(row: ProcessRow, now: float) -> dict[str, Any]:
    m = row.memory
    gc_part: dict[str, Any] | None = None
    if row.stats is not None:
        s = row.stats
        gc_part = {
            "enabled": s.gc_enabled,
            "thresholds": list(s.thresholds),
            "freeze_count": s.freeze_count,
            "collections": s.collections,
            "pause_max": s.pause_max,
            "generations": [g._asdict() for g in s.generations],
            "published": s.written,
        }
        if json_safe(gc_part) != gc_part:
            # A figure JSON cannot carry (inf, NaN, a huge int): the record is
            # not to be trusted as a whole, and the schema has no null for its fields.
            gc_part = None
    return {
        "role": row.role,
        "pid": m.pid,
        "start": m.start,
        "age": row.age(now),
        "requests": row.requests,
        "rss": m.rss,
        "pss": m.pss,
        "uss": m.uss,
        "swap": m.swap,
        "shared": m.shared,
        "shared_percent": m.shared_percent,
        "problem": m.problem,
        "gc": gc_part,
    }


def _open_stats(master_pid: int, start: int, stats_dir: str | None,
                notes: list[str]) -> StatsDir | None:
    path = stats_dir if stats_dir is not None else advertised(master_pid, start)
    if path is None:
        notes.append(f"master {master_pid} advertises no stats directory (gcfork not "
                     "installed in its config, or another user's): no GC statistics; "
                     "pass --stats-dir if you know it")
        return None
    try:
        return StatsDir.open(path)
    except StatsDirError as exc:
        notes.append(f"{exc}: no GC statistics")
        return None


def collect(master_pid: int, stats_dir: str | None = None, threads: int = 1) -> Report:
    """Measure the cluster of gunicorn master ``master_pid`` now.

    Args:
        master_pid: the master.
        stats_dir: its stats directory; None to use the one it advertised.
        threads: processes measured at once (see :func:`gcfork.memory.sample_many`).

    Returns:
        The report. Processes that exit meanwhile, or that may not be read,
        get a row with a ``problem`` instead of figures.

    Raises:
        MasterGone: the master is not running, or exited while measured.
    """
    start = memory.process_start(master_pid)
    if start is None:
        raise MasterGone(f"gunicorn master {master_pid} is not running")
    notes: list[str] = []
    sdir = _open_stats(master_pid, start, stats_dir, notes)
    records: dict[tuple[int, int], StatsRecord] = {}
    if sdir is not None:
        read = sdir.read()
        records = read.records
        notes += [f"ignored {os.path.join(sdir.path, name)}: {why}"
                  for name, why in read.problems.items()]
    master_record = records.get((master_pid, start))
    if sdir is not None and master_record is None:
        notes.append(f"master {master_pid} has published no record yet: its direct children "
                     "are shown as workers")
    members = classify(
        master_pid,
        dirty_arbiter_pid=None if master_record is None else master_record.dirty_arbiter_pid,
        workers={pid for (pid, _), r in records.items() if r.role == WORKER},
    )
    samples = (memory.sample_many([m.pid for m in members], threads) if threads > 1
               else [memory.sample(m.pid) for m in members])
    rows = [
        ProcessRow(member.role, sample,
                   None if sample.start is None else records.get((member.pid, sample.start)))
        for member, sample in zip(members, samples)
    ]
    if not rows or rows[0].memory.problem == memory.EXITED or rows[0].memory.start != start:
        raise MasterGone(f"gunicorn master {master_pid} exited while it was measured")
    totals = memory.totals([RoleSample(r.role, r.memory) for r in rows], worker_role=WORKER)
    return Report(master_pid, start, time.time(), None if sdir is None else sdir.path,
                  tuple(rows), totals, tuple(notes))


# -- the master's sampling thread -----------------------------------------------


class Sampler:
    """A daemon thread of the master: publishes the master's record, takes a
    report every ``sample_every`` seconds and logs its line every ``interval``.

    It runs beside the server's main loop and never blocks it: the main loop
    only reads :attr:`last`, a reference swapped atomically. At shutdown the
    master calls :meth:`stop` (which waits for the thread) before removing
    the stats directory, and :meth:`sample_now` for a report of this moment.

    Args:
        master_pid: the master (the calling process).
        stats_dir: where the master's record goes and workers' records are.
        master_record: makes the master's record.
        log: logs a line (e.g. gunicorn's ``log.info``).
        interval: seconds between two logged lines; 0 for none.
        tick: seconds between two master records.
    """

    __slots__ = ("_dir", "_interval", "_last_error", "_log", "_master_record", "_pid", "_stop",
                 "_thread", "_tick", "last")

    def __init__(self, master_pid: int, stats_dir: StatsDir,
                 master_record: Callable[[], StatsRecord], log: Callable[[str], object],
                 interval: float, tick: float = 2.0) -> None:
        self._pid = master_pid
        self._dir = stats_dir
        self._master_record = master_record
        self._log = log
        self._interval = interval
        self._tick = tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = ""
        self.last: Report | None = None

    @property
    def sample_every(self) -> float:
        """Seconds between two reports: the log interval, at most 30 s, so the
        figures of a worker that exits without a final record are recent even
        with the line off. (The shutdown report is measured by :meth:`sample_now`.)"""
        return min(self._interval, 30.0) if self._interval > 0 else 30.0

    def start(self) -> None:
        """Start the thread (master, once the server is ready)."""
        self._thread = threading.Thread(target=self._run, name="gcfork-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Master: stop the thread and wait up to ``timeout`` seconds for it.

        After this returns True the thread touches the stats directory no more,
        so the master may remove it. Even past the timeout, a failure it meets
        then is not logged (the directory going away is then expected).

        Returns:
            Whether the thread has ended (or never started).

        .. versionchanged:: 0.3
           Waits for the thread; ``timeout`` added.
        """
        self._stop.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return thread is None
        thread.join(timeout)
        return not thread.is_alive()

    def sample_now(self, threads: int = 1) -> Report:
        """Measure the cluster now, in the calling thread (master, e.g. as
        shutdown begins, while the workers still run), and keep it as
        :attr:`last`.

        Args:
            threads: processes measured at once.

        Returns:
            The fresh report.

        Raises:
            MasterGone: the master is not running (cannot happen in the master).

        .. versionadded:: 0.3
        """
        report = collect(self._pid, self._dir.path, threads=threads)
        self.last = report
        return report

    def _run(self) -> None:
        started = time.monotonic()
        next_sample = started + min(self._tick, self.sample_every)
        next_line = started + self._interval
        while True:
            try:
                self._dir.publish(self._master_record())
                self._dir.prune()
                now = time.monotonic()
                if now >= next_sample:
                    next_sample = now + self.sample_every
                    report = collect(self._pid, self._dir.path)
                    # Stopping: sample_now's report must not be replaced by this
                    # older one, nor be followed by a periodic line in the log.
                    if self._stop.is_set():
                        return
                    self.last = report
                    if self._interval > 0 and now >= next_line:
                        next_line = now + self._interval
                        self._log(LogLineRenderer()(report))
                self._last_error = ""
            except Exception as exc:  # the server must not lose its sampler
                if self._stop.is_set():
                    return  # shutting down: the directory may be going away
                # Once per distinct failure: a vanished directory must not flood the log.
                if repr(exc) != self._last_error:
                    self._last_error = repr(exc)
                    self._log(f"gcfork: sampling failed, retrying every {self._tick:g}s: {exc!r}")
            if self._stop.wait(min(self._tick, self.sample_every)):
                return

    def row_of(self, pid: int) -> ProcessRow | None:
        """``pid``'s row in the last report, if any."""
        last = self.last
        if last is None:
            return None
        return next((r for r in last.rows if r.pid == pid), None)

