"""The memory-sharing report of a cluster: one model, one renderer class per format.

A *cluster* is a template process (the one that holds the loaded app and
forks the workers) and the processes of its tree, each with a role. The
report knows no server: the roles come from the server's adapter, as a
:data:`MembersOf` function given to :func:`collect` (see
``docs/architecture.md``). The report only needs to know which role serves
requests, :data:`WORKER`, for the worker counts and means.

:func:`collect` measures the cluster now and joins each process with the GC
statistics it published; the result is a :class:`Report`. Renderers
(re-exported from :mod:`gcfork.render`) turn a report into text:
:class:`TableRenderer` (for a person), :class:`JSONRenderer` (the versioned
schema in ``gcfork/report.schema.json``) and :class:`LogLineRenderer` (one
line for the server's log).

:class:`Sampler` is the template's daemon thread that takes a report every
few seconds and logs the line; it only needs a pid, the adapter's roles and a
log function. At shutdown the template stops it (:meth:`Sampler.stop` waits
for it) and measures once more (:meth:`Sampler.sample_now`).

.. versionadded:: 0.2
.. versionchanged:: 0.3
   Roles come from the adapter (``members`` of :func:`collect` and
   :class:`Sampler`); ``master_pid``, ``master_start``, ``master`` and
   ``master_gc_enabled`` of :class:`Report` are ``template_pid``,
   ``template_start``, ``template`` and ``template_gc_enabled``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from gcfork import memory
from gcfork.exceptions import MasterGone, StatsDirError
from gcfork.memory import ClusterTotals, MemorySample, RoleSample
from gcfork.pauses import PAUSE_BUCKETS
from gcfork.render import JSONRenderer, LogLineRenderer, TableRenderer, json_safe, worker_exit_line
from gcfork.stats import StatsDir, StatsRecord, advertised
from gcfork.units import format_age, format_bytes, format_percent, plural

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "WORKER",
    "JSONRenderer",
    "LogLineRenderer",
    "MasterGone",
    "Member",
    "MembersOf",
    "ProcessRow",
    "Report",
    "Sampler",
    "TableRenderer",
    "Watcher",
    "collect",
    "format_age",
    "format_bytes",
    "plural",
    "worker_exit_line",
]

REPORT_SCHEMA_VERSION = 1
"""Version of :meth:`Report.to_dict`'s object (``schema`` in it)."""

WORKER = "worker"
"""The role of the processes that serve: the report counts them as workers
and takes the worker means over them. An adapter gives it to its workers."""


class Member(NamedTuple):
    """A process of a cluster and the role its adapter gives it."""

    pid: int
    role: str


MembersOf = Callable[[int, Mapping[int, StatsRecord]], Sequence[Member]]
"""An adapter's view of a cluster, called by :func:`collect` with the
template's pid and the newest valid record each process published (by pid):
the template first, then every process of its tree with a role; empty when
the template is gone."""


@dataclass(frozen=True)
class ProcessRow:
    """One process of the cluster: its role, its memory and its GC statistics.

    ``stats`` is None when the process published no record (gcfork does not
    run in it, or it is too young to have published one).
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
        """Collections counted since the process started (the template: since
        gcfork was installed)."""
        return None if self.stats is None else self.stats.collections

    @property
    def gc_max_pause(self) -> float | None:
        """Longest collection pause in seconds."""
        return None if self.stats is None else self.stats.pause_max


@dataclass(frozen=True)
class Report:
    """A cluster's memory sharing and GC statistics at one moment: the
    template's row first, then its processes'.

    Build it with :func:`collect`; turn it into text with a renderer.
    """

    template_pid: int
    template_start: int
    taken: float  # seconds since the epoch
    stats_dir: str | None
    rows: tuple[ProcessRow, ...]
    totals: ClusterTotals
    notes: tuple[str, ...] = ()

    @property
    def workers(self) -> tuple[ProcessRow, ...]:
        return tuple(r for r in self.rows if r.role == WORKER)

    @property
    def template(self) -> ProcessRow:
        return self.rows[0]

    @property
    def template_gc_enabled(self) -> bool | None:
        """Whether the template's collector is on, from its record; None if unknown."""
        stats = self.template.stats
        return None if stats is None else stats.gc_enabled

    def summary(self) -> str:
        """One sentence with the savings, for a person."""
        t = self.totals
        workers = plural(t.workers, "worker")
        if t.savings is None or t.savings_percent is None:
            if t.processes == 0:
                return "nothing could be measured"
            return (f"savings unknown: no PSS here, so the sum of RSS ({format_bytes(t.sum_rss)}) "
                    f"is only an upper bound of what the cluster costs")
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
            # "master" in schema 1: the template, whatever its adapter calls it.
            "master": {"pid": self.template_pid, "start": self.template_start,
                       "gc_enabled": self.template_gc_enabled},
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
            "pause_p99": s.pause_quantile(0.99),
            "pause_cpu_max": s.pause_cpu_max,
            "pauses": [{"le": bound, "count": count} for bound, count
                       in zip((*PAUSE_BUCKETS, None), s.pauses)],
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
        "by_path": (None if row.stats is None or row.stats.by_path is None
                    else row.stats.by_path.to_json()),
    }


def _open_stats(template_pid: int, start: int, stats_dir: str | None,
                notes: list[str]) -> StatsDir | None:
    path = stats_dir if stats_dir is not None else advertised(template_pid, start)
    if path is None:
        notes.append(f"process {template_pid} advertises no stats directory (gcfork not "
                     "installed in it, or another user's): no GC statistics; pass "
                     "--stats-dir if you know it")
        return None
    try:
        return StatsDir.open(path)
    except StatsDirError as exc:
        notes.append(f"{exc}: no GC statistics")
        return None


def collect(template_pid: int, members: MembersOf, stats_dir: str | None = None,
            threads: int = 1) -> Report:
    """Measure the cluster of template ``template_pid`` now.

    Args:
        template_pid: the process that forks the cluster's workers.
        members: the adapter's view of the cluster: which processes are in
            it and the role of each (:data:`MembersOf`).
        stats_dir: its stats directory; None to use the one it advertised.
        threads: processes measured at once (see :func:`gcfork.memory.sample_many`).

    Returns:
        The report. Processes that exit meanwhile, or that may not be read,
        get a row with a ``problem`` instead of figures.

    Raises:
        MasterGone: the template is not running, or exited while measured.
    """
    start = memory.process_start(template_pid)
    if start is None:
        raise MasterGone(f"process {template_pid} is not running")
    notes: list[str] = []
    sdir = _open_stats(template_pid, start, stats_dir, notes)
    records: dict[tuple[int, int], StatsRecord] = {}
    if sdir is not None:
        read = sdir.read()
        records = read.records
        notes += [f"ignored {os.path.join(sdir.path, name)}: {why}"
                  for name, why in read.problems.items()]
    by_pid: dict[int, StatsRecord] = {}
    for (pid, _), record in sorted(records.items(), key=lambda kv: kv[1].written):
        by_pid[pid] = record  # a reused pid's stale record, if any, gives way to the newest
    cluster = list(members(template_pid, by_pid))
    samples = (memory.sample_many([m.pid for m in cluster], threads) if threads > 1
               else [memory.sample(m.pid) for m in cluster])
    rows = [
        ProcessRow(member.role, sample,
                   None if sample.start is None else records.get((member.pid, sample.start)))
        for member, sample in zip(cluster, samples)
    ]
    if not rows or rows[0].memory.problem == memory.EXITED or rows[0].memory.start != start:
        raise MasterGone(f"process {template_pid} exited while it was measured")
    if sdir is not None and (template_pid, start) not in records:
        notes.append(f"{rows[0].role} {template_pid} has published no record yet: the roles "
                     "come from the process tree alone")
    totals = memory.totals([RoleSample(r.role, r.memory) for r in rows], worker_role=WORKER)
    return Report(template_pid, start, time.time(), None if sdir is None else sdir.path,
                  tuple(rows), totals, tuple(notes))


# -- the template's sampling thread ---------------------------------------------


class Watcher(Protocol):
    """Reads every report the :class:`Sampler` takes, in the sampler's thread
    (e.g. the recycling of workers on private memory, :mod:`gcfork.recycle`).

    .. versionadded:: 0.4
    """

    def every(self) -> float | None:
        """Seconds between two samples the watcher needs now; None for the
        sampler's own pace. Asked before each wait, so a ``HUP`` can change it."""

    def __call__(self, report: Report) -> None:
        """Read a fresh report. What it raises is logged by the sampler."""


class Sampler:
    """A daemon thread of the template: publishes the template's record, takes
    a report every ``sample_every`` seconds and logs its line every ``interval``.

    It runs beside the server's main loop and never blocks it: the main loop
    only reads :attr:`last`, a reference swapped atomically. At shutdown the
    template calls :meth:`stop` (which waits for the thread) before removing
    the stats directory, and :meth:`sample_now` for a report of this moment.

    Args:
        template_pid: the template (the calling process).
        stats_dir: where the template's record goes and the others' are.
        members: the adapter's roles (:data:`MembersOf`).
        template_record: makes the template's record.
        log: logs a line (e.g. the server's logger's ``info``).
        interval: seconds between two logged lines; 0 for none.
        tick: seconds between two template records.
        watcher: reads every report; may ask for faster sampling.

    .. versionchanged:: 0.3
       ``members``; ``master_pid`` and ``master_record`` renamed.
    .. versionchanged:: 0.4
       ``watcher``.
    """

    __slots__ = ("_dir", "_interval", "_last_error", "_listeners", "_log", "_members", "_pid",
                 "_record", "_stop", "_thread", "_tick", "_watcher", "last")

    def __init__(self, template_pid: int, stats_dir: StatsDir, members: MembersOf,
                 template_record: Callable[[], StatsRecord], log: Callable[[str], object],
                 interval: float, tick: float = 2.0, watcher: Watcher | None = None) -> None:
        self._pid = template_pid
        self._dir = stats_dir
        self._members = members
        self._record = template_record
        self._log = log
        self._interval = interval
        self._tick = tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = ""
        self._watcher = watcher
        self._listeners: list[Callable[[Report], object]] = []
        self.last: Report | None = None

    def subscribe(self, listener: Callable[[Report], object]) -> None:
        """Call ``listener(report)`` in the sampler's thread after every periodic
        sample (not :meth:`sample_now`'s), in the order subscribed. It must be
        quick and handle its own failures; one it raises is logged like a
        failed sample. It may subscribe while the thread runs.

        .. versionadded:: 0.4
        """
        self._listeners.append(listener)

    @property
    def sample_every(self) -> float:
        """Seconds between two reports: the log interval, at most 30 s, so the
        figures of a worker that exits without a final record are recent even
        with the line off; faster if the watcher asks. (The shutdown report is
        measured by :meth:`sample_now`.)"""
        own = min(self._interval, 30.0) if self._interval > 0 else 30.0
        wanted = self._watcher.every() if self._watcher is not None else None
        return own if wanted is None else min(own, wanted)

    def start(self) -> None:
        """Start the thread (template, once the server is ready)."""
        self._thread = threading.Thread(target=self._run, name="gcfork-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Template: stop the thread and wait up to ``timeout`` seconds for it.

        After this returns True the thread touches the stats directory no more,
        so the template may remove it. Even past the timeout, a failure it meets
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
        """Measure the cluster now, in the calling thread (template, e.g. as
        shutdown begins, while the workers still run), and keep it as
        :attr:`last`.

        Args:
            threads: processes measured at once.

        Returns:
            The fresh report.

        Raises:
            MasterGone: the template is not running (cannot happen in it).

        .. versionadded:: 0.3
        """
        report = collect(self._pid, self._members, self._dir.path, threads=threads)
        self.last = report
        return report

    def _run(self) -> None:
        started = time.monotonic()
        next_sample = started + min(self._tick, self.sample_every)
        previous = started
        next_line = started + self._interval
        while True:
            if os.getpid() != self._pid:
                # A copy in a child: a greenlet (gevent patched the template's
                # threading) is forked with the process, where a thread is not.
                # It parks for good, sampling nothing: returning would end a
                # Thread the child's threading no longer lists (a KeyError).
                threading.Event().wait()
            try:
                self._dir.publish(self._record())
                self._dir.prune()
                now = time.monotonic()
                # The pace is asked again at each tick: a watcher that asks for
                # a faster one (max_worker_private set by a HUP) shortens the
                # wait already under way.
                if now >= min(next_sample, previous + self.sample_every):
                    previous = now
                    next_sample = now + self.sample_every
                    report = collect(self._pid, self._members, self._dir.path)
                    # Stopping: sample_now's report must not be replaced by this
                    # older one, nor be followed by a periodic line in the log.
                    if self._stop.is_set():
                        return
                    self.last = report
                    if self._watcher is not None:
                        self._watcher(report)
                    if self._interval > 0 and now >= next_line:
                        next_line = now + self._interval
                        self._log(LogLineRenderer()(report))
                    for listener in self._listeners:
                        listener(report)
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

