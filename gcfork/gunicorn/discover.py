"""Find the gcfork masters of this user for ``gcfork report``, and say what
a pid that is not one is.

A master is what gcfork itself advertises, never a guess from a command line:
at start, a master with gcfork installed writes ``PID-START.json`` into a
runtime directory of its user (:func:`gcfork.stats.advertise`). A file counts
only if :func:`gcfork.stats.advertised` trusts it and its pid still runs with
that start time, so a wrapper (``timeout``, ``tini``, ``dumb-init``, ``uv
run``) whose command line says ``gunicorn`` is never taken for the master, and
a reused pid never finds an old master's file.

A pid in a master's tree is named by its role there
(:func:`gcfork.gunicorn.roles.members`); one outside it that runs gunicorn is
told apart by its command line, only to word the refusal.

Runs in the ``gcfork`` command, never in a server (psutil is imported by the
functions that need it).

.. versionadded:: 0.2
.. versionchanged:: 0.3
   Masters are found by their advertisement, not by command line; a pid that
   is not a master is refused with what it is. Moved from ``gcfork.discover``
   into the gunicorn adapter; the roles are in :mod:`gcfork.gunicorn.roles`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

from gcfork.exceptions import DiscoveryError, StatsDirError
from gcfork.gunicorn.roles import DIRTY_ARBITER, DIRTY_WORKER, MASTER, WORKER, members
from gcfork.memory import process_start
from gcfork.stats import StatsDir, StatsRecord, advertised, parse_key, runtime_dirs

__all__ = [
    "DiscoveryError",
    "Master",
    "choose",
    "find_masters",
    "is_gunicorn",
    "master_from_pid",
    "master_from_pidfile",
]


class Master(NamedTuple):
    """A running gcfork master (returned by :func:`find_masters`)."""

    pid: int
    start: int  # memory.process_start(pid)
    cmdline: str
    stats_dir: str | None  # what the master advertised (or --stats-dir)


def _cmdline(pid: int) -> str:
    # psutil is imported only by the functions that `gcfork report` runs to
    # find masters, never by what a server's master runs (see gcfork.procfs).
    import psutil

    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def _name(pid: int) -> str:
    import psutil

    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"


def is_gunicorn(cmdline: Sequence[str]) -> bool:
    """Whether a command line (as psutil gives it) runs gunicorn.

    Only used to word a refusal: a wrapper's command line also says gunicorn.
    """
    if " ".join(cmdline).startswith("gunicorn:"):
        return True
    for i, arg in enumerate(cmdline):
        if os.path.basename(arg) == "gunicorn":
            return True
        if arg == "-m" and i + 1 < len(cmdline) and cmdline[i + 1] == "gunicorn":
            return True
    return False


def find_masters() -> list[Master]:
    """Every running master that advertised itself to this user, oldest first.

    A stale file (its master exited without removing it) or one that
    :func:`~gcfork.stats.advertised` does not trust is skipped.
    """
    keys: set[tuple[int, int]] = set()
    for directory in runtime_dirs():
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            key = parse_key(name)
            if key is not None:
                keys.add(key)
    masters = []
    for pid, start in keys:
        if process_start(pid) != start:
            continue
        stats_dir = advertised(pid, start)
        if stats_dir is not None:
            masters.append(Master(pid, start, _cmdline(pid), stats_dir))
    return sorted(masters, key=lambda m: (m.start, m.pid))


def _records(master: Master) -> dict[int, StatsRecord]:
    """The records of a master's stats directory, by pid; none if unreadable."""
    if master.stats_dir is None:
        return {}
    try:
        read = StatsDir.open(master.stats_dir).read()
    except StatsDirError:
        return {}
    return {pid: record for (pid, _), record in read.records.items()}


def _ancestors(pid: int) -> list[int]:
    """``pid``'s parent, grandparent, ... up to pid 1, nearest first."""
    import psutil

    chain: list[int] = []
    try:
        proc = psutil.Process(pid)
        for parent in proc.parents():
            chain.append(parent.pid)
    except psutil.Error:
        pass
    return chain


# How a refusal names the role of a pid in a master's tree.
_WHAT = {WORKER: "a worker", DIRTY_ARBITER: "the dirty arbiter",
         DIRTY_WORKER: "a dirty worker"}


def _what_it_is(pid: int, masters: Sequence[Master]) -> str:
    """Why ``pid`` (a live process that advertised nothing) is not a master,
    and which master to report instead when there is one."""
    label = f"pid {pid} ({_name(pid)})"
    by_pid = {m.pid: m for m in masters}
    chain = _ancestors(pid)
    for ancestor in chain:
        master = by_pid.get(ancestor)
        if master is None:
            continue
        how = f"run gcfork report --pid {master.pid}"
        role = {m.pid: m.role for m in members(master.pid, _records(master))}.get(pid)
        what = _WHAT.get(role or "")
        if what is not None:
            return f"pid {pid} is {what} of gcfork master {master.pid}: {how}"
        return (f"pid {pid} is a process in the tree of gcfork master {master.pid} "
                f"(its parent is {chain[0]}): {how}")
    children = [m for m in masters if pid in _ancestors(m.pid)[:1]]
    if children:
        return (f"{label} is not a gcfork master; it started gcfork master "
                f"{children[0].pid} (a wrapper?): run gcfork report --pid {children[0].pid}")
    import psutil

    try:
        proc = psutil.Process(pid)
        uid = proc.uids().real
        cmdline = proc.cmdline()
    except psutil.Error:
        uid, cmdline = os.geteuid(), []
    gunicorn = is_gunicorn(cmdline)
    if gunicorn and uid != os.geteuid():
        return (f"{label} runs gunicorn as uid {uid}: a master advertises its statistics "
                "to its own user only; run gcfork report as that user, or pass --stats-dir")
    if gunicorn:
        return (f"pid {pid} runs gunicorn but advertises no gcfork stats (gcfork not installed "
                "in its config?); if its log says it could not advertise, pass the "
                "--stats-dir it names")
    return f"{label} is not a gcfork master; run gcfork report without --pid to list them"


def master_from_pid(pid: int, stats_dir: str | None = None) -> Master:
    """The master ``pid``, checked: it must have advertised itself, or have a
    master record in ``stats_dir`` when one is given.

    Args:
        pid: the process.
        stats_dir: the master's stats directory, for a master that could not
            advertise (its log names it).

    Raises:
        DiscoveryError: there is no such process, or it is not a gcfork master
            (the message says what it is and which pid to report instead).
    """
    start = process_start(pid)
    if start is None:
        raise DiscoveryError(
            f"no process {pid} is running; run `gcfork report` without --pid to look for "
            "gcfork masters"
        )
    found = advertised(pid, start)
    if found is None and stats_dir is not None:
        try:
            record = StatsDir.open(stats_dir).read_one(pid, start)
        except StatsDirError as exc:
            raise DiscoveryError(f"pid {pid} advertises no gcfork stats, and {exc}") from None
        if record is not None and record.role == MASTER:
            found = stats_dir
    if found is None:
        raise DiscoveryError(_what_it_is(pid, find_masters()))
    return Master(pid, start, _cmdline(pid), found)


def master_from_pidfile(path: str, stats_dir: str | None = None) -> Master:
    """The master whose pid is in gunicorn's ``pidfile``, checked as by
    :func:`master_from_pid`.

    Raises:
        DiscoveryError: the file is missing, holds no pid, or its process is
            gone or is not a gcfork master.
    """
    try:
        with open(path, "rb") as f:
            text = f.read(64).decode("ascii", "replace").strip()
    except OSError as exc:
        raise DiscoveryError(
            f"cannot read pidfile {path}: {exc.strerror}; is gunicorn running with "
            f"--pidfile {path}?"
        ) from None
    if not text.isdigit() or len(text) > 10 or int(text) == 0:
        raise DiscoveryError(f"pidfile {path} holds {text!r}, not a pid")
    return master_from_pid(int(text), stats_dir)


def choose(candidates: Sequence[Master]) -> Master:
    """The one master among ``candidates``.

    Raises:
        DiscoveryError: there are none (with how to proceed), or several
            (listed, with how to pick one).
    """
    if not candidates:
        raise DiscoveryError(
            "no gcfork master of this user is running (a gunicorn master with "
            "gcfork.install(globals()) in its config advertises itself in "
            f"{' or '.join(runtime_dirs())}); check that its config installs gcfork, "
            "or pass --pid PID --stats-dir PATH for a master whose log says it could not "
            "advertise; a master of another user is reported by running gcfork as that user"
        )
    if len(candidates) > 1:
        lines = [f"  --pid {m.pid}  {m.cmdline[:100]}" for m in candidates]
        raise DiscoveryError(
            f"{len(candidates)} gcfork masters are running; choose one with --pid:\n"
            + "\n".join(lines)
        )
    return candidates[0]
