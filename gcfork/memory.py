"""How much memory a set of processes really costs, and how much they share.

This module knows no server: it measures pids and adds up rows that
carry a role chosen by the caller.

Figures come from :mod:`gcfork.procfs`, which on Linux reads
``/proc/PID/statm`` (RSS) and ``/proc/PID/smaps_rollup`` (PSS, USS, swap):

- RSS: resident pages of the process, shared or not;
- PSS: each resident page divided by the number of processes mapping it, so
  that the PSS of all processes adds up to the memory really used;
- USS: pages only this process maps (``Private_Clean + Private_Dirty``);
- shared = RSS - USS: resident pages that some other process maps too.

What a sample costs: the kernel walks the process's page tables to write
``smaps_rollup`` (about 0.7 ms for a 45 MiB Python worker on a 2-core VM),
with the GIL released. Around it a sample reads ``/proc/PID/stat`` once before
(identity and zombie state) and once after (the pid not reused meanwhile),
and reads ``statm``; the boot time that turns start ticks into epoch seconds is
read once per :func:`sample_many` call, not once per process
(``benchmarks/measure_vs_smem.py`` measures the overhead against the walk).

The platform's errors are turned here, at the boundary, into a ``problem`` on
the row: a process that exits while it is measured, one we may not read, or a
platform without PSS gives a readable mark in its row, never an exception.

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from gcfork import procfs

__all__ = [
    "DENIED",
    "EXITED",
    "HAS_PSS",
    "NO_PSS",
    "ClusterTotals",
    "MemorySample",
    "RoleSample",
    "own_uss",
    "process_start",
    "sample",
    "sample_many",
    "totals",
]

EXITED = "exited"
DENIED = "access denied"
NO_PSS = "no PSS/USS on this platform"

HAS_PSS: bool = procfs.HAS_PSS
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if procfs.LINUX else 100


class MemorySample(NamedTuple):
    """One process's memory, in bytes (returned by :func:`sample`).

    A field is None when it could not be measured; ``problem`` then says why
    (:data:`EXITED`, :data:`DENIED` or :data:`NO_PSS`).
    """

    pid: int
    start: int | None  # process_start(pid): with pid, the process's identity
    started: float | None  # creation time, seconds since the epoch, for its age
    rss: int | None
    pss: int | None
    uss: int | None
    swap: int | None
    problem: str | None = None

    @property
    def shared(self) -> int | None:
        """Resident bytes that another process maps too: RSS - USS."""
        if self.rss is None or self.uss is None:
            return None
        return max(self.rss - self.uss, 0)

    @property
    def shared_percent(self) -> float | None:
        """``shared`` as a percentage of RSS."""
        shared = self.shared
        if shared is None or not self.rss:
            return None
        return 100.0 * shared / self.rss


class RoleSample(NamedTuple):
    """A sample with the role its caller gave the process (e.g. ``worker``)."""

    role: str
    memory: MemorySample


class ClusterTotals(NamedTuple):
    """The sums over a cluster's measured processes (returned by :func:`totals`).

    Sums are None when no process could be measured for them (PSS on a
    platform without it); processes with a ``problem`` are left out of every
    sum and counted in ``unmeasured``.
    """

    processes: int
    unmeasured: int
    workers: int
    sum_rss: int
    sum_pss: int | None
    sum_uss: int | None
    mean_worker_uss: float | None
    mean_worker_shared_percent: float | None

    @property
    def savings(self) -> int | None:
        """What sharing saves: what the processes would cost with nothing shared
        (sum of RSS) minus what they cost (sum of PSS)."""
        if self.sum_pss is None:
            return None
        return self.sum_rss - self.sum_pss

    @property
    def savings_percent(self) -> float | None:
        """``savings`` as a percentage of the sum of RSS."""
        savings = self.savings
        if savings is None or not self.sum_rss:
            return None
        return 100.0 * savings / self.sum_rss


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` as an integer that never changes while it runs
    (:func:`gcfork.procfs.start_time`: clock ticks since boot on Linux).

    Args:
        pid: the process.

    Returns:
        The start time, or None if there is no such process.
    """
    try:
        return procfs.start_time(pid)
    except OSError:
        return None


def _failed(pid: int, start: int | None, started: float | None, problem: str) -> MemorySample:
    return MemorySample(pid, start, started, None, None, None, None, problem)


def sample(pid: int) -> MemorySample:
    """Measure one process now.

    Args:
        pid: the process.

    Returns:
        Its sample; never raises for a process that exits, one that may not
        be read, or a platform without PSS: ``problem`` says so instead.
    """
    return _sample(pid, _boot_time())


def _boot_time() -> float | None:
    """The boot time, once per batch: on Linux the start times in clock ticks
    become epoch seconds from it, as they would from one read of ``/proc/stat``
    per process. None where it cannot be read, or is not needed."""
    if not procfs.LINUX:
        return None
    try:
        return procfs.boot_time()
    except OSError:
        return None


def _sample(pid: int, boot: float | None) -> MemorySample:
    # Linux reads /proc/PID/stat once before (identity and zombie state) and
    # once after (the pid not reused meanwhile), around statm and smaps_rollup.
    try:
        if procfs.LINUX:
            start, zombie, _ = procfs.stat(pid)
            started = None if boot is None else start / _CLOCK_TICKS + boot
            if zombie:  # exited, not yet reaped: no memory left, not a zero row
                return _failed(pid, start, started, EXITED)
        else:
            start = procfs.start_time(pid)
            started = procfs.create_time(pid)
    except PermissionError:
        return _failed(pid, None, None, DENIED)
    except OSError:
        return _failed(pid, None, None, EXITED)
    try:
        mem = procfs.memory(pid)
    except PermissionError:
        return _failed(pid, start, started, DENIED)
    except OSError:
        return _failed(pid, start, started, EXITED)
    if _exited_meanwhile(pid, start, mem.rss):
        return _failed(pid, start, started, EXITED)
    problem = None if mem.pss is not None and mem.uss is not None else NO_PSS
    return MemorySample(pid, start, started, mem.rss, mem.pss, mem.uss, mem.swap, problem)


def _exited_meanwhile(pid: int, start: int, rss: int) -> bool:
    """Whether ``pid`` exited, or its pid was reused, while it was measured: an
    exited child not yet reaped has no memory left, which is not a zero row."""
    if not procfs.LINUX:
        return (rss == 0 and procfs.is_zombie(pid)) or process_start(pid) != start
    try:
        after = procfs.stat(pid)
    except OSError:
        return True
    return after.start != start or (rss == 0 and after.zombie)


def sample_many(pids: Iterable[int], threads: int = 1) -> list[MemorySample]:
    """Measure each of ``pids``, in order (see :func:`sample`).

    Args:
        pids: the processes.
        threads: how many to measure at once, the calling thread being one of
            them. Nearly all the time goes to the kernel walking each
            process's page tables for ``smaps_rollup``, with the GIL released,
            so threads scale with the CPUs; keep 1 in a server's master so it
            stays one sampling thread.
    """
    boot = _boot_time()
    todo = list(pids)
    threads = min(threads, len(todo))
    if threads <= 1:
        return [_sample(pid, boot) for pid in todo]
    # Only `gcfork report` measures with threads: the master never pays this import.
    from concurrent.futures import ThreadPoolExecutor

    rows: list[MemorySample | None] = [None] * len(todo)
    queue = iter(enumerate(todo))
    lock = threading.Lock()

    def measure() -> None:
        while True:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            rows[item[0]] = _sample(item[1], boot)

    with ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="gcfork-sample") as pool:
        helpers = [pool.submit(measure) for _ in range(threads - 1)]
        measure()
        for helper in helpers:
            helper.result()
    return [row for row in rows if row is not None]


def totals(rows: Sequence[RoleSample], worker_role: str = "worker") -> ClusterTotals:
    """Add up a cluster's rows.

    Args:
        rows: every process of the cluster with its role.
        worker_role: the role whose rows the worker means are taken over.

    Returns:
        The sums over the rows measured without problem (RSS alone where the
        platform has no PSS).
    """
    with_rss = [r for r in rows if r.memory.rss is not None]
    full = [r for r in with_rss if r.memory.problem is None]
    workers = [r.memory for r in full if r.role == worker_role]
    pss_ok = bool(full) and len(full) == len(with_rss)
    shared = [m.shared_percent for m in workers if m.shared_percent is not None]
    return ClusterTotals(
        processes=len(with_rss),
        unmeasured=len(rows) - len(with_rss),
        workers=len([r for r in with_rss if r.role == worker_role]),
        sum_rss=sum(r.memory.rss or 0 for r in with_rss),
        sum_pss=sum(r.memory.pss or 0 for r in full) if pss_ok else None,
        sum_uss=sum(r.memory.uss or 0 for r in full) if pss_ok else None,
        mean_worker_uss=sum(m.uss or 0 for m in workers) / len(workers) if workers else None,
        mean_worker_shared_percent=sum(shared) / len(shared) if shared else None,
    )


def own_uss() -> int | None:
    """The calling process's USS in bytes, or None where it cannot be read."""
    return sample(os.getpid()).uss
