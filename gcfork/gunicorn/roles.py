"""The roles of a gunicorn cluster's processes, for the report.

The engine's report (:mod:`gcfork.report`) knows a template and its tree;
this module names them as gunicorn does, and is the
:data:`~gcfork.report.MembersOf` the gunicorn adapter hands the report (in
the master's sampler, and in ``gcfork report``):

- ``master``: the template;
- ``worker``: a direct child of the master, which serves requests; one that
  has not published a record yet is taken for a worker too;
- ``dirty-arbiter``: the direct child whose own record says so (gunicorn
  25+'s dirty arbiter publishes one from ``on_dirty_starting``, before it
  forks), never guessed from the tree;
- ``dirty-worker``: a child of the dirty arbiter;
- ``child``: anything else deeper (e.g. a process a request forked).

Runs in the master's sampling thread or in a tool; reads ``/proc`` only
(:mod:`gcfork.procfs`).

.. versionadded:: 0.3
   Split from ``gcfork.discover``; the dirty arbiter is known by its own
   record instead of the master's.
"""

from __future__ import annotations

from collections.abc import Mapping

from gcfork import procfs
from gcfork.memory import process_start
from gcfork.report import WORKER, Member
from gcfork.stats import StatsRecord

__all__ = ["DIRTY_ARBITER", "DIRTY_WORKER", "MASTER", "OTHER_CHILD", "ROLES", "WORKER",
           "members"]

MASTER = "master"
DIRTY_ARBITER = "dirty-arbiter"
DIRTY_WORKER = "dirty-worker"
OTHER_CHILD = "child"

ROLES = (MASTER, WORKER, DIRTY_ARBITER, DIRTY_WORKER, OTHER_CHILD)
"""Every role, in the report's order."""


def members(master_pid: int, records: Mapping[int, StatsRecord]) -> list[Member]:
    """The master and every descendant, each with its role, master first,
    then by role in the order of :data:`ROLES`, then by pid.

    Args:
        master_pid: the master.
        records: the newest record each process published, by pid.

    Returns:
        The members; an empty list if the master is gone.
    """
    if process_start(master_pid) is None:
        return []
    parent_of = procfs.descendants(master_pid)
    roles: dict[int, str] = {}
    for pid, ppid in parent_of.items():
        if ppid == master_pid:
            record = records.get(pid)
            roles[pid] = DIRTY_ARBITER if record and record.role == DIRTY_ARBITER else WORKER
    for pid, ppid in parent_of.items():
        if pid not in roles:
            roles[pid] = DIRTY_WORKER if roles.get(ppid) == DIRTY_ARBITER else OTHER_CHILD
    found = sorted((Member(pid, role) for pid, role in roles.items()),
                   key=lambda m: (ROLES.index(m.role), m.pid))
    return [Member(master_pid, MASTER), *found]
