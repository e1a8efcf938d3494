"""Short collections in a worker: freeze its own heap once it has settled.

Why: ``gc.freeze()`` in the master keeps a worker's collections off the
inherited heap, but a worker builds a heap of its own as it serves (ORM and
template caches, connections, compiled regular expressions) and every full
collection traverses all of it, together with the cyclic garbage of the
latest requests. On the Django example that made full collections of 46 ms
(median) to 122 ms (``benchmarks/gc_pause_probe.py``,
``docs/beyond-freeze-part-two.md``).

What :func:`install` does, in a worker, right after the fork: a
``gc.callbacks`` callback counts the worker's full collections and, right
after the :data:`SETTLE_AFTER`-th, calls ``gc.freeze()``. At that moment a
full collection has just freed every unreachable cycle, so what is frozen is
what the worker holds: its caches and the objects of the request in flight.
Later full collections only traverse what the worker made since, and the
worker's thresholds (:data:`AUTO_THRESHOLDS`) run them often enough that each
has little to traverse and little garbage to free.

What it trades: an object frozen there that later becomes part of cyclic
garbage is never freed (reference counting still frees what is not in a
cycle). Once per worker, that is at most the worker's heap of that moment;
in practice the cycles of the request in flight and of cache entries evicted
later.

Where it runs: installed by :func:`gcfork.actions.enable_in_worker` in each
worker whose policy has ``thresholds="auto"``; the callback runs in the
worker, in whatever thread triggered the collection.

.. versionadded:: 0.5
"""

from __future__ import annotations

import gc
from collections.abc import Mapping

__all__ = ["AUTO_THRESHOLDS", "SETTLE_AFTER", "install", "settled"]

AUTO_THRESHOLDS = (700, 1, 1)
"""A worker's thresholds with ``thresholds="auto"``: a young collection every
700 allocations (gcfork's worker default), and a full collection as soon as
the interpreter allows one after each collection of the middle generation
(CPython still waits until the objects promoted since the last full one are
a quarter of those it kept). Cheap once the worker's heap is frozen."""

SETTLE_AFTER = 3
"""Full collections of a worker before its heap is frozen: its first
requests have filled the caches they fill, and their garbage is gone."""


class _Settler:
    __slots__ = ("full", "settled")

    def __init__(self) -> None:
        self.full = 0
        self.settled = False

    def __call__(self, phase: str, info: Mapping[str, int]) -> None:
        # A gc callback must not raise: what it raises is printed to stderr
        # for every collection, and the freeze would be tried again.
        if phase != "stop" or info.get("generation") != 2 or self.settled:
            return
        self.full += 1
        if self.full >= SETTLE_AFTER:
            self.settled = True
            gc.freeze()


_SETTLER = _Settler()


def install() -> None:
    """Worker, right after the fork: freeze the worker's heap after its
    :data:`SETTLE_AFTER`-th full collection. Counts start from zero in each
    worker (a worker forked from a settled one settles again)."""
    global _SETTLER
    if _SETTLER in gc.callbacks:
        gc.callbacks.remove(_SETTLER)
    _SETTLER = _Settler()
    gc.callbacks.append(_SETTLER)


def settled() -> bool:
    """Whether this process's heap has been frozen by :func:`install`."""
    return _SETTLER.settled
