"""Find the gunicorn masters of this user, and tell the roles in a master's tree.

A gunicorn process is one whose command line runs gunicorn (``gunicorn ...``,
``python -m gunicorn ...``) or whose title ``setproctitle`` set to
``gunicorn: ...``. A master is a gunicorn process whose parent is not one, or
whose title says ``master``.

In a master's tree, a direct child is a worker unless it is gunicorn's dirty
arbiter (named by the master's stats record, its title, or, when neither says,
because it has children and published no worker record); the dirty arbiter's
children are dirty workers; anything else is a ``child`` (e.g. a process a
request forked).

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import NamedTuple

import psutil

from gcfork.exceptions import DiscoveryError
from gcfork.memory import process_start
from gcfork.stats import advertised

__all__ = [
    "DIRTY_ARBITER",
    "DIRTY_WORKER",
    "MASTER",
    "OTHER_CHILD",
    "WORKER",
    "DiscoveryError",
    "Master",
    "Member",
    "choose",
    "classify",
    "find_masters",
    "master_from_pid",
    "master_from_pidfile",
]

MASTER = "master"
WORKER = "worker"
DIRTY_ARBITER = "dirty-arbiter"
DIRTY_WORKER = "dirty-worker"
OTHER_CHILD = "child"


class Master(NamedTuple):
    """A running gunicorn master (returned by :func:`find_masters`)."""

    pid: int
    start: int  # memory.process_start(pid)
    cmdline: str
    stats_dir: str | None  # what the master advertised, if it runs gcfork


class Member(NamedTuple):
    """A process of a master's tree and its role (returned by :func:`classify`)."""

    pid: int
    role: str


def _title(cmdline: Sequence[str]) -> str:
    return " ".join(cmdline)


def is_gunicorn(cmdline: Sequence[str]) -> bool:
    """Whether a command line (as psutil gives it) runs gunicorn."""
    if _title(cmdline).startswith("gunicorn:"):
        return True
    for i, arg in enumerate(cmdline[:4]):
        if os.path.basename(arg) == "gunicorn":
            return True
        if arg == "-m" and i + 1 < len(cmdline) and cmdline[i + 1] == "gunicorn":
            return True
    return False


def find_masters() -> list[Master]:
    """Every gunicorn master whose real uid is this process's, oldest first."""
    uid = os.getuid()
    gunicorns: dict[int, tuple[int, list[str]]] = {}
    for proc in psutil.process_iter(["ppid", "uids", "cmdline"]):
        info = proc.info
        cmdline = info.get("cmdline") or []
        uids = info.get("uids")
        if uids is not None and uids.real == uid and is_gunicorn(cmdline):
            gunicorns[proc.pid] = (info.get("ppid") or 0, cmdline)
    masters = []
    for pid, (ppid, cmdline) in gunicorns.items():
        title = _title(cmdline)
        if title.startswith("gunicorn:") and not title.startswith("gunicorn: master"):
            continue
        if ppid in gunicorns and not title.startswith("gunicorn: master"):
            continue
        start = process_start(pid)
        if start is not None:
            masters.append(Master(pid, start, title, advertised(pid, start)))
    return sorted(masters, key=lambda m: m.start)


def master_from_pid(pid: int) -> Master:
    """The master ``pid``, checked.

    Raises:
        DiscoveryError: there is no such process.
    """
    start = process_start(pid)
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.NoSuchProcess:
        start = None
    except psutil.AccessDenied:
        cmdline = []
    if start is None:
        raise DiscoveryError(
            f"no process {pid} is running; run `gcfork report` without --pid to look for "
            "gunicorn masters"
        )
    return Master(pid, start, _title(cmdline), advertised(pid, start))


def master_from_pidfile(path: str) -> Master:
    """The master whose pid is in gunicorn's ``pidfile``.

    Raises:
        DiscoveryError: the file is missing, holds no pid, or its process is gone.
    """
    try:
        with open(path, "rb") as f:
            text = f.read(64).decode("ascii", "replace").strip()
    except OSError as exc:
        raise DiscoveryError(
            f"cannot read pidfile {path}: {exc.strerror}; is gunicorn running with "
            f"--pidfile {path}?"
        ) from None
    if not text.isdigit():
        raise DiscoveryError(f"pidfile {path} holds {text!r}, not a pid")
    return master_from_pid(int(text))


def choose(candidates: Sequence[Master]) -> Master:
    """The one master among ``candidates``.

    Raises:
        DiscoveryError: there are none, or several (listed, with how to pick one).
    """
    if not candidates:
        raise DiscoveryError(
            "no gunicorn master of this user is running; start one, or pass --pid PID or "
            "--pidfile PATH (a master of another user needs to be reported as that user)"
        )
    if len(candidates) > 1:
        lines = [f"  --pid {m.pid}  {m.cmdline[:100]}" for m in candidates]
        raise DiscoveryError(
            f"{len(candidates)} gunicorn masters are running; choose one with --pid:\n"
            + "\n".join(lines)
        )
    return candidates[0]


def classify(
    master_pid: int, dirty_arbiter_pid: int | None = None, workers: Collection[int] = ()
) -> list[Member]:
    """The master and every descendant, each with its role, master first.

    Args:
        master_pid: the master.
        dirty_arbiter_pid: gunicorn's dirty arbiter as the master said it
            (0: it has none); None when the master did not say.
        workers: pids known to be workers (they published a worker record).

    Returns:
        The members; an empty list if the master is gone.
    """
    try:
        descendants = psutil.Process(master_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    parent_of: dict[int, int] = {}
    for proc in descendants:
        try:
            parent_of[proc.pid] = proc.ppid()
        except psutil.NoSuchProcess:
            continue
    has_children = set(parent_of.values())
    roles: dict[int, str] = {}
    for pid, ppid in parent_of.items():
        if ppid == master_pid:
            roles[pid] = _child_role(pid, dirty_arbiter_pid, workers, pid in has_children)
    for pid, ppid in parent_of.items():
        if pid not in roles:
            roles[pid] = DIRTY_WORKER if roles.get(ppid) == DIRTY_ARBITER else OTHER_CHILD
    order = {MASTER: 0, WORKER: 1, DIRTY_ARBITER: 2, DIRTY_WORKER: 3, OTHER_CHILD: 4}
    members = sorted((Member(pid, role) for pid, role in roles.items()),
                     key=lambda m: (order[m.role], m.pid))
    return [Member(master_pid, MASTER), *members]


def _child_role(
    pid: int, dirty_arbiter_pid: int | None, workers: Collection[int], has_children: bool
) -> str:
    if pid in workers:
        return WORKER
    if dirty_arbiter_pid is not None:
        return DIRTY_ARBITER if pid == dirty_arbiter_pid else WORKER
    try:
        title = _title(psutil.Process(pid).cmdline())
    except psutil.Error:
        title = ""
    if "dirty-arbiter" in title or has_children:
        return DIRTY_ARBITER
    return WORKER
