"""What the platform says about a process: the one seam between gcfork and the OS.

On Linux everything is read from ``/proc`` here, directly: this module runs in
a server's master (the sampler, the shutdown report), and importing psutil
there would cost the master about 1 MiB that every worker inherits and the
cluster pays once. Elsewhere (macOS) psutil answers, imported on first use.

Errors are plain :class:`OSError` subclasses on every platform:
:class:`ProcessLookupError` for a process that is gone (or never was) and
:class:`PermissionError` for one that may not be read.

.. versionadded:: 0.3
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import psutil

__all__ = [
    "HAS_PSS",
    "LINUX",
    "Memory",
    "Stat",
    "boot_time",
    "create_time",
    "descendants",
    "is_zombie",
    "memory",
    "rss",
    "start_time",
    "stat",
    "uss",
]

LINUX = sys.platform.startswith("linux")
# Only Linux has PSS, and only with smaps (CONFIG_PROC_PAGE_MONITOR).
HAS_PSS: bool = LINUX and os.path.exists("/proc/self/smaps")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if LINUX else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if LINUX else 4096
_ROLLUP = LINUX and os.path.exists("/proc/self/smaps_rollup")


class Stat(NamedTuple):
    """Linux: what one read of ``/proc/PID/stat`` says (see :func:`stat`)."""

    start: int  # clock ticks since boot: with the pid, the process's identity
    zombie: bool  # exited (or dead), not yet reaped
    ppid: int


class Memory(NamedTuple):
    """One process's memory in bytes; the last three are None where the
    platform cannot tell (no smaps: PSS, USS and swap are unknown)."""

    rss: int
    pss: int | None
    uss: int | None
    swap: int | None


def _psutil_process(pid: int) -> psutil.Process:
    import psutil  # elsewhere than Linux only; see the module's docstring

    return psutil.Process(pid)


def _translated(pid: int, exc: Exception) -> OSError:
    import psutil

    if isinstance(exc, psutil.AccessDenied):
        return PermissionError(f"pid {pid}: access denied")
    if isinstance(exc, psutil.NoSuchProcess):  # ZombieProcess too
        return ProcessLookupError(f"pid {pid}: no such process")
    return OSError(f"pid {pid}: {exc}")


def _read(path: str) -> bytes:
    # os.read on a descriptor, not a file object: a worker reads its own
    # identity once, and each buffer and object it allocates there lands on a
    # page it shares with the master, which it then copies.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _open_proc(pid: int, name: str) -> bytes:
    try:
        return _read(f"/proc/{pid}/{name}")
    except (FileNotFoundError, NotADirectoryError):
        raise ProcessLookupError(f"pid {pid}: no such process") from None


def stat(pid: int) -> Stat:
    """Linux only: ``pid``'s start ticks, zombie state and parent.

    Raises:
        ProcessLookupError: no such process.
        PermissionError: not ours to read (``hidepid``).
    """
    data = _open_proc(pid, "stat")
    # The command name (field 2) may contain spaces and parentheses.
    fields = data[data.rindex(b")") + 2 :].split(None, 20)
    return Stat(int(fields[19]), fields[0] in (b"Z", b"X"), int(fields[1]))


def start_time(pid: int) -> int:
    """An integer that stays the same for as long as ``pid`` runs: on Linux its
    start in clock ticks since boot (exact, unlike epoch seconds, which move when
    the clock is stepped); elsewhere its creation time in hundredths of a second.

    Raises:
        ProcessLookupError, PermissionError: as :func:`stat`.
    """
    if LINUX:
        return stat(pid).start
    try:
        return round(_psutil_process(pid).create_time() * 100)
    except Exception as exc:
        raise _translated(pid, exc) from None


_boot: list[float] = []  # boot_time(), once read: the master's is inherited


def boot_time() -> float:
    """When the machine booted, in seconds since the epoch.

    Read once per process tree: the kernel's ``btime`` moves when the clock is
    stepped, and every process of a cluster should turn start ticks into the
    same epoch seconds. The master reads it before its first fork.
    """
    if not _boot:
        _boot.append(_read_boot_time())
    return _boot[0]


def _read_boot_time() -> float:
    if LINUX:
        data = _read("/proc/stat")
        start = data.find(b"\nbtime ")
        if start < 0:
            raise OSError("/proc/stat has no btime line")
        return float(data[start + 7 : data.index(b"\n", start + 1)])
    import psutil

    return float(psutil.boot_time())


def create_time(pid: int, boot: float | None = None) -> float:
    """When ``pid`` started, in seconds since the epoch.

    Args:
        boot: :func:`boot_time`, when the caller read it once for many pids.
    """
    if LINUX:
        return stat(pid).start / _CLOCK_TICKS + (boot_time() if boot is None else boot)
    try:
        return float(_psutil_process(pid).create_time())
    except Exception as exc:
        raise _translated(pid, exc) from None


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` exited and is not reaped yet (True if it is gone)."""
    if LINUX:
        try:
            return stat(pid).zombie
        except OSError:
            return True
    import psutil

    try:
        return bool(_psutil_process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return True


def rss(pid: int) -> int:
    """``pid``'s resident set size in bytes (``/proc/PID/statm`` on Linux).

    Raises:
        ProcessLookupError, PermissionError: as :func:`stat`.
    """
    if LINUX:
        return int(_open_proc(pid, "statm").split()[1]) * _PAGE_SIZE
    return _memory_psutil(pid).rss


def memory(pid: int) -> Memory:
    """``pid``'s RSS, PSS, USS (private clean + private dirty) and swap.

    On Linux: RSS from ``/proc/PID/statm``, the rest from ``smaps_rollup``
    (summed from ``smaps`` on kernels before 4.14), as psutil's
    ``memory_full_info()`` reads them.

    Raises:
        ProcessLookupError, PermissionError: as :func:`stat`.
    """
    if not LINUX:
        return _memory_psutil(pid)
    resident = rss(pid)
    if not HAS_PSS:
        return Memory(resident, None, None, None)
    sums = _smaps_sums(_open_proc(pid, "smaps_rollup" if _ROLLUP else "smaps"))
    uss = sums.get(b"Private_Clean:", 0) + sums.get(b"Private_Dirty:", 0)
    return Memory(resident, sums.get(b"Pss:", 0), uss, sums.get(b"Swap:", 0))


def uss(pid: int) -> int | None:
    """``pid``'s USS (private clean + private dirty) in bytes, from one read of
    ``smaps_rollup`` on Linux (no ``statm``, no ``stat``): what a worker reads
    of itself around a sampled request (:mod:`gcfork.attribution`). None
    where it cannot be had (no smaps, or psutil gives none).

    Raises:
        ProcessLookupError, PermissionError: as :func:`stat`.
    """
    if not LINUX:
        return _memory_psutil(pid).uss
    if not HAS_PSS:
        return None
    sums = _smaps_sums(_open_proc(pid, "smaps_rollup" if _ROLLUP else "smaps"))
    return sums.get(b"Private_Clean:", 0) + sums.get(b"Private_Dirty:", 0)


_WANTED = (b"Pss:", b"Private_Clean:", b"Private_Dirty:", b"Swap:")


def _smaps_sums(data: bytes) -> dict[bytes, int]:
    sums: dict[bytes, int] = {}
    for line in data.splitlines():
        key, _, rest = line.partition(b" ")
        if key in _WANTED:
            sums[key] = sums.get(key, 0) + int(rest.split()[0]) * 1024  # kB
    return sums


def _memory_psutil(pid: int) -> Memory:
    try:
        info: Any = _psutil_process(pid).memory_full_info()
    except Exception as exc:
        raise _translated(pid, exc) from None
    return Memory(int(info.rss), getattr(info, "pss", None), getattr(info, "uss", None),
                  getattr(info, "swap", None))


def descendants(pid: int) -> dict[int, int]:
    """Every live descendant of ``pid`` (children, grandchildren, ...), each
    with its parent; empty if ``pid`` is gone or has none."""
    if LINUX:
        parent_of: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    parent_of[int(name)] = stat(int(name)).ppid
                except (OSError, ValueError, IndexError):
                    continue  # exited meanwhile, or unreadable
        found: dict[int, int] = {}
        frontier = [pid]
        children_of: dict[int, list[int]] = {}
        for child, parent in parent_of.items():
            children_of.setdefault(parent, []).append(child)
        while frontier:
            parent = frontier.pop()
            for child in children_of.get(parent, ()):
                if child not in found:
                    found[child] = parent
                    frontier.append(child)
        return found
    import psutil

    try:
        procs = _psutil_process(pid).children(recursive=True)
    except psutil.Error:
        return {}
    result: dict[int, int] = {}
    for proc in procs:
        try:
            result[proc.pid] = proc.ppid()
        except psutil.Error:
            continue
    return result
