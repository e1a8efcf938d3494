"""User hooks of the torture soak's gunicorn config; they run inside the server.

The config file imports them (``from tests.torture.hooks import ...``) rather
than defining them, so that their state lives in a module that gunicorn's HUP
does not re-execute: the markers made before a fork must survive a reload.

Records are JSON lines appended to files in ``$TORTURE_DIR``, each with a
single ``os.write`` on an ``O_APPEND`` descriptor, so that lines written by
concurrent workers never interleave.

gunicorn runs these hooks chained with gcfork's: the user's ``pre_fork``
before gcfork's freeze, the user's ``post_fork`` after gcfork has set up the
worker's GC, the user's ``on_exit`` after gcfork's shutdown report.
"""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Any

# Not GCFORK_*: gcfork refuses unknown variables of its own prefix.
_DIR = os.environ.get("TORTURE_DIR", ".")
BASE_THRESHOLD = 5000
# Markers and slots of the last forks only: a marker per fork kept forever
# would itself grow the master that the soak measures.
_KEEP = 64


class Marker:
    """An object the GC tracks (an instance with a ``__dict__``), made in the
    master right before one fork."""


MARKERS: dict[int, Marker] = {}  # by worker age
ASKED: dict[int, int] = {}  # worker age -> slot gcfork passed to the thresholds callable
_forks = 0


def _append(name: str, record: dict[str, Any]) -> None:
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(os.path.join(_DIR, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _forget_old(table: dict[int, Any], age: int) -> None:
    for old in [a for a in table if a <= age - _KEEP]:
        del table[old]


def thresholds(worker: Any) -> tuple[int, int, int]:
    """The per-slot thresholds callable; gcfork calls it in the master before
    each fork. It remembers the slot it was given, which the child inherits,
    so that the worker can check it got the thresholds of its own slot."""
    ASKED[worker.age] = worker.index
    _forget_old(ASKED, worker.age)
    return (BASE_THRESHOLD + worker.index, 10, 10)


def pre_fork(server: Any, worker: Any) -> None:
    """Master, before gcfork's freeze: make this fork's marker and sample the
    master's young objects (those a freeze would move to the permanent generation)."""
    global _forks
    _forks += 1
    try:
        MARKERS[worker.age] = Marker()
        _forget_old(MARKERS, worker.age)
        young = gc.get_objects()
        record = {"age": worker.age, "t": time.time(), "num_workers": server.num_workers,
                  "young": len(young), "frozen": gc.get_freeze_count(),
                  "gc_enabled": gc.isenabled()}
        del young
    except Exception as exc:  # gcfork's freeze must still run after this hook
        record = {"age": getattr(worker, "age", None), "error": repr(exc)}
    _append("master.jsonl", record)


def post_fork(server: Any, worker: Any) -> None:
    """Worker, after gcfork's part: what the worker's GC looks like now."""
    try:
        marker = MARKERS.get(worker.age)
        # gc.get_objects() lists the three young generations only: a frozen
        # object (permanent generation) is not in it.
        young = gc.get_objects()
        in_young = marker is not None and any(o is marker for o in young)
        del young
        slot = ASKED.get(worker.age)
        record: dict[str, Any] = {
            "pid": os.getpid(), "ppid": os.getppid(), "age": worker.age, "t": time.time(),
            "enabled": gc.isenabled(), "thresholds": list(gc.get_threshold()),
            "freeze_count": gc.get_freeze_count(), "num_workers": server.num_workers,
            "marker_seen": marker is not None,
            "marker_tracked": marker is not None and gc.is_tracked(marker),
            "marker_frozen": marker is not None and gc.is_tracked(marker) and not in_young,
            "slot": slot,
            "expected": None if slot is None else [BASE_THRESHOLD + slot, 10, 10],
        }
    except Exception as exc:
        record = {"pid": os.getpid(), "age": getattr(worker, "age", None), "error": repr(exc)}
    _append("workers.jsonl", record)


def on_exit(server: Any) -> None:
    """Master, last: how many objects it holds that nothing can reach.

    Unfreezing puts the permanent generation back where a collection sees it;
    DEBUG_SAVEALL keeps what the collection finds unreachable in gc.garbage
    instead of freeing it, so that it can be counted.
    """
    try:
        gc.unfreeze()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        record: dict[str, Any] = {"unreachable": len(gc.garbage), "t": time.time()}
        gc.set_debug(0)
        del gc.garbage[:]
    except Exception as exc:
        record = {"error": repr(exc)}
    _append("exit.jsonl", record)
