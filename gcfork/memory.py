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

What a sample costs: the kernel walks the process's page tables to write
``smaps_rollup`` (about 0.7 ms for a 45 MiB Python worker on a 2-core VM),
with the GIL released. Around it a sample reads ``/proc/PID/stat`` once before
(identity and zombie state) and once after (the pid not reused meanwhile),
psutil reads it once more to build its ``Process`` and reads ``statm``; the
boot time that turns start ticks into epoch seconds is read once per
:func:`sample_many` call, not once per process as ``create_time()`` would.
All that adds about 12 % to the kernel's walk (``benchmarks/measure_vs_smem.py``).

psutil's errors are translated here, at the boundary, into a ``problem`` on the
row: a process that exits while it is measured, one we may not read, or a
platform without PSS gives a readable mark in its row, never an exception.

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
import sys
import threading
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

_LINUX = sys.platform.startswith("linux")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if _LINUX else 100  # as psutil's CLOCK_TICKS


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
    if _LINUX:
        try:
            return _stat(pid)[0]
        except OSError:
            return None
    try:
        return round(psutil.Process(pid).create_time() * 100)
    except psutil.Error:
        return None


def _stat(pid: int) -> tuple[int, bool]:
    """Linux: ``pid``'s start time in clock ticks and whether it is a zombie,
    from one read of ``/proc/PID/stat``.

    Raises:
        OSError: no such process (``FileNotFoundError``, ``ProcessLookupError``)
            or not ours to read (``PermissionError``, ``hidepid=1``).
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name (field 2) may contain spaces and parentheses.
    fields = data[data.rindex(b")") + 2 :].split(None, 20)
    return int(fields[19]), fields[0] in (b"Z", b"X")  # zombie or dead


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
    """psutil's boot time (read from ``/proc/stat``), once per batch: the
    Linux start times in clock ticks become epoch seconds from it, as
    ``create_time()`` would give them for each process at the cost of one
    read of ``/proc/stat`` per process. None elsewhere."""
    if not _LINUX:
        return None
    try:
        return psutil.boot_time()
    except (OSError, RuntimeError):
        return None


def _sample(pid: int, boot: float | None) -> MemorySample:
    # Linux reads /proc/PID/stat once before (identity and zombie state) and
    # once after (the pid not reused meanwhile); psutil reads it once more to
    # build its Process, then smaps_rollup and statm for memory_full_info().
    start: int | None = None
    started: float | None = None
    if _LINUX:
        try:
            start, zombie = _stat(pid)
        except PermissionError:
            return _failed(pid, None, None, DENIED)
        except OSError:
            return _failed(pid, None, None, EXITED)
        started = None if boot is None else start / _CLOCK_TICKS + boot
        if zombie:  # exited, not yet reaped: no memory left, not a zero row
            return _failed(pid, start, started, EXITED)
    else:
        start = process_start(pid)
    try:
        proc = psutil.Process(pid)
        if started is None:
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
    if _exited_meanwhile(pid, start, proc, mem.rss):
        return _failed(pid, start, started, EXITED)
    pss, uss = getattr(mem, "pss", None), getattr(mem, "uss", None)
    problem = None if pss is not None and uss is not None else NO_PSS
    return MemorySample(pid, start, started, mem.rss, pss, uss, getattr(mem, "swap", None),
                        problem)


def _exited_meanwhile(pid: int, start: int | None, proc: psutil.Process, rss: int) -> bool:
    """Whether ``pid`` exited, or its pid was reused, while it was measured: an
    exited child not yet reaped has no memory left, which is not a zero row."""
    if _LINUX:
        try:
            after, zombie = _stat(pid)
        except OSError:
            return True
        return after != start or (rss == 0 and zombie)
    if rss == 0 and _is_zombie(proc):
        return True
    return start is not None and process_start(pid) != start


def _is_zombie(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return True


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
