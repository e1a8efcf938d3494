"""Recycling gunicorn workers on private memory: the engine's decision, acted on.

Runs in the master's sampler thread (:class:`gcfork.report.Sampler` calls the
:class:`GunicornRecycler` with every report). The decision is the engine's
(:class:`gcfork.recycle.Recycler`); what is gunicorn's is here: the worker is
asked to stop with ``SIGTERM``, gunicorn's graceful stop of a worker (it
finishes its requests; the gthread, gevent and ASGI workers give up after
``graceful_timeout``), and gunicorn's main loop reaps it and forks its
replacement as for any worker that exits. The thread never touches gunicorn's
own state: it reads the worker table and sends a signal, both atomic.

.. versionadded:: 0.4
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from typing import Any, Callable

from gcfork.memory import process_start
from gcfork.policy import Policy
from gcfork.recycle import SAMPLE_EVERY, Candidate, Recycler
from gcfork.report import Report
from gcfork.units import format_bytes

__all__ = ["GunicornRecycler"]


class GunicornRecycler:
    """The master's :class:`~gcfork.report.Watcher` that recycles workers.

    Args:
        server: gunicorn's arbiter (its worker table and logger are read).
        policy: the policy in force now (read at every sample, so that a
            ``HUP`` changes the bound).
        slots: the adapter's slot of each worker, by gunicorn's age.

    :attr:`engine` holds the count of recycles by reason
    (``engine.recycles``), which the metrics read.
    """

    __slots__ = ("_policy", "_server", "_slots", "engine")

    def __init__(self, server: Any, policy: Callable[[], Policy],
                 slots: Callable[[], Mapping[int, int]]) -> None:
        self._server = server
        self._policy = policy
        self._slots = slots
        self.engine = Recycler()

    def slot_of(self, pid: int) -> int | None:
        """A live worker's slot; None if gunicorn or gcfork does not know it."""
        worker = self._server.WORKERS.get(pid)  # one dict lookup: atomic beside the main loop
        return None if worker is None else self._slots().get(worker.age)

    def every(self) -> float | None:
        if self._policy().max_worker_private is None:
            return None
        # The engine's pace once it has seen a sample under this bound.
        return self.engine.next_sample_in() or SAMPLE_EVERY

    def __call__(self, report: Report) -> None:
        policy = self._policy()
        # Only the workers gunicorn lists: a child of the master the tree calls
        # a worker but gunicorn does not know is never signalled.
        listed = self._server.WORKERS.copy()  # one C-level copy: atomic beside the main loop
        workers = [
            Candidate(row.pid, row.memory.start, age, row.memory.uss)
            for row in report.workers
            if row.pid in listed and row.memory.start is not None
            and row.memory.uss is not None and (age := row.age(report.taken)) is not None
        ]
        recycle = self.engine.decide(workers, policy.max_worker_private, policy.recycle_min_age)
        if recycle is None:
            return
        # The pid could have been reused since the sample: signal only the same process.
        if process_start(recycle.pid) != recycle.start:
            return
        try:
            os.kill(recycle.pid, signal.SIGTERM)
        except ProcessLookupError:
            return  # it exited meanwhile; the next sample finds no streak
        self.engine.started(recycle)
        self._server.log.info(
            "gcfork: recycling worker pid=%s slot=%s: USS %s then %s in two samples %.1fs "
            "apart, above max_worker_private=%s; sent SIGTERM (graceful stop), gunicorn forks "
            "its replacement", recycle.pid, self.slot_of(recycle.pid),
            format_bytes(recycle.uss_before), format_bytes(recycle.uss_now), recycle.apart,
            format_bytes(recycle.bound))
