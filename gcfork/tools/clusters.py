"""Which adapter's roles name a template's cluster, for ``gcfork report``.

A template says what it is in its own record: gunicorn's master publishes
role ``master``; a pool's template (:mod:`gcfork.pool`) publishes its
adapter's word (``template``, ``celery-parent``) before it forks anything.
A template with no record yet is taken for a gunicorn master, which
publishes its record only once it is ready.

.. versionadded:: 0.4
"""

from __future__ import annotations

from collections.abc import Mapping

from gcfork import pool
from gcfork.gunicorn import roles
from gcfork.report import Member
from gcfork.stats import StatsRecord

__all__ = ["members"]


def members(template_pid: int, records: Mapping[int, StatsRecord]) -> list[Member]:
    """The cluster of ``template_pid`` named by its adapter's roles
    (a :data:`gcfork.report.MembersOf`)."""
    own = records.get(template_pid)
    if own is None or own.role in roles.ROLES:
        return roles.members(template_pid, records)
    return pool.members(template_pid, records)
