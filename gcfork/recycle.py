"""Which worker to recycle on private memory: the decision, knowing no server.

A worker is recycled when its USS (the pages no other process maps, what its
exit gives back) is above the bound ``max_worker_private`` in two consecutive
samples of the template's sampler: one sample above can be a request's
temporary peak, two in a row a worker that keeps what it took.

The sampler measures every :data:`SAMPLE_EVERY` seconds, but the recycler
asks for the next sample sooner (:meth:`Recycler.next_sample_in`) in two
cases, so that a worker ends within one sample's growth of the bound rather
than two: a worker whose growth since the previous sample would carry it
over the bound before the next one is measured when it should cross (not
sooner than :data:`LOOK_AHEAD_MIN`), and a worker seen above is measured
again :data:`CONFIRM_AFTER` later. RSS is not the
figure: it counts the pages a worker shares with the template, so it grows
with good sharing as much as with a leak (``docs/fleet.md``).

:class:`Recycler` holds what the decision needs between two samples (the
workers above the bound in the previous one, the worker being recycled) and
the count of recycles by reason. It sends no signal: the adapter does
(:mod:`gcfork.gunicorn.recycling`), then tells it with :meth:`Recycler.started`.
It runs in the template's sampler thread, once per sample.

.. versionadded:: 0.4
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["CONFIRM_AFTER", "LOOK_AHEAD_MIN", "PRIVATE_MEMORY", "SAMPLE_EVERY", "Candidate",
           "Recycle", "Recycler"]

PRIVATE_MEMORY = "private_memory"
"""The reason of a recycle for ``max_worker_private`` (a label of the count)."""

SAMPLE_EVERY = 2.0
"""Seconds between two samples of the cluster while ``max_worker_private`` is
set and no worker is near the bound."""

CONFIRM_AFTER = 0.5
"""Seconds from a sample that saw a worker above the bound to the one that
confirms it: a peak shorter than this is not a reason to recycle."""

LOOK_AHEAD_MIN = 0.25
"""The shortest wait for a sample timed at a worker's predicted crossing."""


class Candidate(NamedTuple):
    """A worker as one sample saw it."""

    pid: int
    start: int  # with pid, the process's identity (pids are reused)
    age: float  # seconds
    uss: int  # bytes


class Recycle(NamedTuple):
    """A worker to recycle (returned by :meth:`Recycler.decide`)."""

    pid: int
    start: int
    reason: str
    uss_before: int  # bytes, in the previous sample
    uss_now: int  # bytes, in this sample
    bound: int  # bytes
    apart: float  # seconds between the two samples


class Recycler:
    """The decision of which worker to recycle, from sample to sample.

    Never more than one worker in recycle: while the one asked to stop is still
    in the samples, nothing else is decided. Never a worker younger than the
    minimum age.

    :attr:`recycles` counts the recycles started, by reason
    (:data:`PRIVATE_MEMORY`): the one count of them, which the metrics
    (``gcfork_worker_recycles_total{reason}``) read. It only grows, for the
    life of the template.
    """

    __slots__ = ("_above", "_in_recycle", "_next", "_seen", "recycles")

    def __init__(self) -> None:
        # USS of the workers above the bound in the previous sample, by identity.
        self._above: dict[tuple[int, int], int] = {}
        # (age, USS) of every worker in the previous sample, by identity: its growth.
        self._seen: dict[tuple[int, int], tuple[float, int]] = {}
        self._in_recycle: tuple[int, int] | None = None
        self._next: float | None = None
        self.recycles: Counter[str] = Counter()

    def next_sample_in(self) -> float | None:
        """Seconds from the last sample to the next one the decision needs:
        :data:`CONFIRM_AFTER` while an old enough worker above the bound awaits
        its second sample, the time to a worker's predicted crossing, else
        :data:`SAMPLE_EVERY`; None when no bound is set."""
        return self._next

    @property
    def in_recycle(self) -> tuple[int, int] | None:
        """(pid, start) of the worker asked to stop and still seen, if any."""
        return self._in_recycle

    def decide(self, workers: Sequence[Candidate], bound: int | None,
               min_age: float) -> Recycle | None:
        """Read one sample of the workers; the worker to recycle now, if any.

        Args:
            workers: every worker of the sample with its figures (a worker that
                could not be measured is left out: it breaks its streak).
            bound: ``max_worker_private`` in bytes; None clears the state.
            min_age: seconds; a younger worker is never chosen.

        Returns:
            The worker above the bound in this sample and the previous one, old
            enough, with the largest USS now; None if there is none, or while
            an earlier one is still stopping.
        """
        previous = self._above
        seen = self._seen
        self._above = {} if bound is None else {
            (w.pid, w.start): w.uss for w in workers if w.uss > bound}
        self._seen = {(w.pid, w.start): (w.age, w.uss) for w in workers}
        if self._in_recycle is not None and all(
                (w.pid, w.start) != self._in_recycle for w in workers):
            self._in_recycle = None  # gone: the next may be considered
        self._next = None if bound is None else self._pace(workers, seen, bound, min_age)
        if bound is None or self._in_recycle is not None:
            return None
        ready = [w for w in workers
                 if (w.pid, w.start) in self._above and (w.pid, w.start) in previous
                 and w.age >= min_age]
        if not ready:
            return None
        chosen = max(ready, key=lambda w: w.uss)
        identity = (chosen.pid, chosen.start)
        return Recycle(chosen.pid, chosen.start, PRIVATE_MEMORY, previous[identity], chosen.uss,
                       bound, chosen.age - seen[identity][0])

    def started(self, recycle: Recycle) -> None:
        """The worker was asked to stop: hold the others back until it is gone,
        and count it."""
        self._in_recycle = (recycle.pid, recycle.start)
        self._above.pop(self._in_recycle, None)
        self.recycles[recycle.reason] += 1
        self._next = SAMPLE_EVERY

    def _pace(self, workers: Sequence[Candidate], seen: dict[tuple[int, int], tuple[float, int]],
              bound: int, min_age: float) -> float:
        """The wait to the next sample, from this one (see :meth:`next_sample_in`)."""
        if self._in_recycle is not None:
            return SAMPLE_EVERY  # nothing is decided until it is gone
        wait = SAMPLE_EVERY
        for w in workers:
            if w.age + SAMPLE_EVERY < min_age:
                continue  # too young to be recycled by the next regular sample
            if (w.pid, w.start) in self._above:
                wait = min(wait, max(CONFIRM_AFTER, min_age - w.age))
                continue
            before = seen.get((w.pid, w.start))
            if before is None or w.age <= before[0] or w.uss <= before[1]:
                continue  # no growth to extrapolate
            rate = (w.uss - before[1]) / (w.age - before[0])  # bytes per second
            wait = min(wait, max(LOOK_AHEAD_MIN, (bound - w.uss) / rate))
        return wait
