"""How much memory a set of processes really costs, and how much they share.

This module knows nothing of gunicorn: it measures pids and adds up rows that
carry a role chosen by the caller.

Figures come from psutil's ``memory_full_info()``, which on Linux reads
``/proc/PID/statm`` (RSS) and ``/proc/PID/smaps_rollup`` (PSS, USS, swap):

- RSS: resident pages of the process, shared or not;
- PSS: each resident page divided by the number of processes mapping it, so
  that the PSS of all processes adds up to the memory really used;
- USS: pages only this process maps (``Private_Clean + Private_Dirty``);
- shared = RSS - USS: resident pages that some other process maps too.

psutil's errors are translated here, at the boundary, into a ``problem`` on the
row: a process that exits while it is measured, one we may not read, or a
platform without PSS gives a readable mark in its row, never an exception.

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import psutil

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

# Checked once at import, like psutil's HAS_* flags. Only Linux has PSS, and
# only with smaps (CONFIG_PROC_PAGE_MONITOR): without it psutil's
# memory_full_info() is memory_info(). macOS and Windows give USS alone.
HAS_PSS: bool = sys.platform.startswith("linux") and os.path.exists("/proc/self/smaps")


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
    """The start time of ``pid`` as an integer that never changes while it runs.

    On Linux it is field 22 of ``/proc/PID/stat``: clock ticks since boot,
    exact. psutil's ``create_time()`` adds the boot time from ``/proc/stat``,
    which can move by a second when the clock is stepped, so two processes could
    disagree on it. Elsewhere: ``create_time()`` in hundredths of a second.

    Args:
        pid: the process.

    Returns:
        The start time, or None if there is no such process.
    """
    if sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            return None
        # The command name (field 2) may contain spaces and parentheses.
        return int(data[data.rindex(b")") + 2 :].split()[19])
    try:
        return round(psutil.Process(pid).create_time() * 100)
    except psutil.Error:
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
    start = process_start(pid)
    try:
        proc = psutil.Process(pid)
        started = proc.create_time()
    except psutil.AccessDenied:
        return _failed(pid, start, None, DENIED)
    except psutil.NoSuchProcess:  # ZombieProcess too
        return _failed(pid, start, None, EXITED)
    try:
        mem = proc.memory_full_info()
    except psutil.AccessDenied:
        return _failed(pid, start, started, DENIED)
    except psutil.NoSuchProcess:
        return _failed(pid, start, started, EXITED)
    pss, uss = getattr(mem, "pss", None), getattr(mem, "uss", None)
    problem = None if pss is not None and uss is not None else NO_PSS
    if mem.rss == 0 and _is_zombie(proc):
        # An exited child not yet reaped has no memory left: not a zero row.
        return _failed(pid, start, started, EXITED)
    if start is not None and process_start(pid) != start:
        return _failed(pid, start, started, EXITED)  # the pid was reused meanwhile
    return MemorySample(pid, start, started, mem.rss, pss, uss, getattr(mem, "swap", None),
                        problem)


def _is_zombie(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return True


def sample_many(pids: Iterable[int], threads: int = 1) -> list[MemorySample]:
    """Measure each of ``pids``, in order (see :func:`sample`).

    Args:
        pids: the processes.
        threads: how many to measure at once. Nearly all the time goes to the
            kernel walking each process's page tables for ``smaps_rollup``,
            with the GIL released, so threads scale with the CPUs; keep 1 in
            a server's master so it stays one sampling thread.
    """
    if threads <= 1:
        return [sample(pid) for pid in pids]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gcfork-sample") as pool:
        return list(pool.map(sample, pids))


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
