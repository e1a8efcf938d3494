"""A WSGI app that reports the garbage-collector state of the worker serving it.

Endpoints:
    /gc?sleep=S   the worker's pid, ppid and GC state (after sleeping S seconds,
                  so that concurrent requests spread over the workers), whether
                  the GC was on at import, and whether the master froze right
                  before this worker's fork (see FORK_MARKERS)
    /fork         forks a child the way multiprocessing does and reports the GC
                  state of both sides, to show that gcfork leaves it alone
    /cycles?n=N   makes N reference cycles (garbage for the collector);
                  with counted=1, cycles that CYCLES counts while they live
    /reference    reads every record of REFERENCE, as a request reading the
                  app's shared data would (each read writes a reference count)
    /heap-hole?mib=N  allocates N MiB in blocks C malloc serves from its heap,
                  keeps one block made after them (so the heap cannot shrink
                  from its top), frees the N MiB, and answers its own USS:
                  free pages in the middle of the heap, resident until
                  malloc_trim gives them back
    /modules      the worker's pid and the names of the modules it has loaded
    /thread       runs a threading.Thread to its end (a greenlet once gevent
                  patched threading) and says what the threading module is
    /leak?mib=N&pid=P  keeps N MiB (1 by default) more in LEAKED, for good: a
                  leak, written so that its pages are the worker's own (USS);
                  with pid, only the worker of that pid leaks (the others answer)
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any, Callable
from urllib.parse import parse_qs

# Whether the collector was on while the app was imported: with preload, gcfork
# turned it off in the master before gunicorn imported this module.
ENABLED_AT_IMPORT = gc.isenabled()

# Objects the master makes right before each fork (a test's pre_fork hook
# appends one): the newest one a worker inherited was made just before its own
# fork, so it is frozen only if the master froze right before that fork.
FORK_MARKERS: list[object] = []

# A little heap for the master to share, as a real app would have.
REFERENCE = {f"key{i}": {"id": i, "tags": [str(i)] * 3} for i in range(20_000)}


class _Lazy:
    """A proxy that claims its target's class, as Django's SimpleLazyObject
    (``request.user``, ``settings``) does: heap walks must not trust isinstance."""

    def __init__(self, target: object) -> None:
        self._target = target

    __class__ = property(lambda self: type(self._target))  # type: ignore[assignment]


LAZY = _Lazy({"debug": False})



class _Cycle:
    """An object that refers to itself: only the cyclic GC frees it."""

    def __init__(self) -> None:
        self.me = self


# The /cycles?counted=1 cycles still alive in this process: a worker that
# inherits some was forked from a master that kept them.
CYCLES: weakref.WeakSet[_Cycle] = weakref.WeakSet()

# The blocks /heap-hole keeps after the ones it frees.
HEAP_PINS: list[bytes] = []


def _own_uss() -> int:
    with open("/proc/self/smaps_rollup") as rollup:
        fields = dict(line.split()[:2] for line in rollup if line.split()[0].startswith("Private_"))
    return sum(int(kib) for kib in fields.values()) * 1024


# What /leak keeps: never freed, as a cache that only grows.
LEAKED: list[bytes] = []


def _state() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "enabled": gc.isenabled(),
        "thresholds": list(gc.get_threshold()),
        "freeze_count": gc.get_freeze_count(),
        "enabled_at_import": ENABLED_AT_IMPORT,
        "own_fork_marker_frozen": _newest_marker_frozen(),
        "counted_cycles_alive": len(CYCLES),
    }


def _newest_marker_frozen() -> bool | None:
    if not FORK_MARKERS:
        return None
    marker = FORK_MARKERS[-1]
    # gc.get_objects() lists the young generations only, never the permanent
    # one that gc.freeze() fills; the worker's are small, so this is cheap.
    return gc.is_tracked(marker) and not any(o is marker for o in gc.get_objects())


def _fork_report() -> dict[str, Any]:
    before = _state()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.write(write_end, json.dumps(_state()).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return {"before": before, "after": _state(), "child": child}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    path = environ.get("PATH_INFO", "/")
    if path == "/gc":
        time.sleep(float(query.get("sleep", ["0"])[0]))
        body: Any = _state()
    elif path == "/fork":
        body = _fork_report()
    elif path == "/reference":
        total = 0
        for key, record in REFERENCE.items():
            total += len(key) + record["id"] + len(record["tags"][0])
        body = {"pid": os.getpid(), "records": len(REFERENCE), "total": total}
    elif path == "/modules":
        body = {"pid": os.getpid(), "modules": sorted(sys.modules)}
    elif path == "/thread":
        ran: list[int] = []
        thread = threading.Thread(target=lambda: (time.sleep(0.05), ran.append(1)))
        thread.start()
        thread.join()
        body = {"pid": os.getpid(), "ran": ran,
                "thread_module": type(thread).__module__ + "." + time.sleep.__module__}
    elif path == "/leak":
        only = query.get("pid")
        mib = int(query.get("mib", ["1"])[0]) if only is None or int(only[0]) == os.getpid() else 0
        for _ in range(mib):
            # Filled with a non-zero byte: a zero-filled buffer may be mapped
            # lazily and not be resident at all.
            LEAKED.append(b"\x01" * 2**20)
        body = {"pid": os.getpid(), "leaked_mib": len(LEAKED)}
    elif path == "/heap-hole":
        # 4,000-byte bytes objects: above pymalloc's 512, below malloc's mmap threshold.
        blocks = [bytes([1]) * 4000 for _ in range(int(query.get("mib", ["16"])[0]) * 262)]
        HEAP_PINS.append(bytes([2]) * 4000)
        del blocks
        body = {"pid": os.getpid(), "uss_after_free": _own_uss()}
    elif path == "/cycles":
        counted = query.get("counted") == ["1"]
        for _ in range(int(query.get("n", ["1000"])[0])):
            if counted:
                CYCLES.add(_Cycle())
            else:
                node: dict[str, Any] = {}
                node["self"] = node
        body = _state()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]
