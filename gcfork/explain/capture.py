"""Taking a copy-on-write profile: the worker reads, a throw-away child looks.

How it runs (:func:`profile_self`, called in the worker that is profiled):

1. the worker reads ``smaps`` and the ``pagemap`` entries of its writable
   private mappings (:mod:`gcfork.explain.pages`), into a few large buffers,
   *before* anything is forked: a child maps the same pages and clears their
   exclusive bit;
2. it forks a throw-away child (same addresses): inspecting objects from
   Python writes their reference counts, so the walk
   (:mod:`gcfork.explain.walk`) copies pages in the child, never in the
   worker. The child parses, walks every object the collector knows plus the
   untracked ones they refer to, sends the result through a pipe and leaves
   with ``os._exit``;
3. the worker waits for the child (with a timeout) and returns the profile.

The worker itself allocates only those buffers and the result: a few pages of
its own may be copied by profiling it, no more.

"Exclusively mapped" means no other process maps the page now. With one
worker and a master that writes to a page after the fork, that page shows up
although this worker never wrote it.

.. versionadded:: 0.2
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import sys
import time
from typing import Any

from gcfork import files, procfs
from gcfork.exceptions import CowProfileError
from gcfork.explain.model import CowProfile
from gcfork.explain.pages import (
    PAGE_SIZE,
    exclusive_pages,
    group_mappings,
    read_pagemap,
    read_smaps,
    scannable,
)
from gcfork.explain.walk import ObjectWalk

__all__ = ["profile_self"]


def profile_self(top: int = 60, timeout: float = 120.0) -> CowProfile:
    """Worker: profile the calling process's private pages (see the module doc).

    Safe to call from any thread of a worker; the calling thread blocks until
    the throw-away child is done.

    Args:
        top: rows kept per table (types, modules), per origin.
        timeout: seconds to wait for the child before killing it.

    Returns:
        The profile.

    Raises:
        CowProfileError: ``/proc`` could not be read, or the child failed.

    .. versionadded:: 0.2
    """
    pid = os.getpid()
    begun = time.perf_counter()
    try:
        smaps = read_smaps(pid)
        ranges = scannable(smaps)
        pagemaps = read_pagemap(pid, ranges)
    except OSError as exc:
        raise CowProfileError(pid, f"cannot read /proc/{pid}: {exc}") from exc
    # Only now: the child maps the same pages and clears their exclusive bit.
    payload = _in_child(lambda: _analyse(smaps, ranges, pagemaps, top), pid, timeout)
    data = json.loads(payload)
    data["seconds"] = time.perf_counter() - begun
    return CowProfile.from_json(data)


def _in_child(work: Any, pid: int, timeout: float) -> bytes:
    """Run ``work()`` (returning JSON text) in a forked child; return its output."""
    import warnings

    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # 3.12+ warns about forking a multi-threaded process; the child only
        # walks objects and writes to a pipe, it takes no lock of another thread.
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:  # pragma: no cover - runs in the throw-away child
        status = 0
        try:
            os.close(read_end)
            text = work().encode()
        except BaseException as exc:
            text = json.dumps({"error": repr(exc)}).encode()
            status = 1
        try:
            files.write_all(write_end, text)
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(child, signal.SIGKILL)
                raise CowProfileError(pid, f"the profiling child took more than {timeout}s")
            chunk = os.read(read_end, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(child, 0)
    payload = b"".join(chunks)
    try:
        error = json.loads(payload).get("error") if payload.startswith(b'{"error"') else None
    except ValueError:
        error = None
    if error or not payload:
        raise CowProfileError(pid, f"the profiling child failed: {error or 'no output'}")
    return payload


def _analyse(
    smaps: bytes, ranges: list[tuple[int, int]], pagemaps: list[bytes], top: int
) -> str:  # pragma: no cover - runs in the throw-away child
    worker = os.getppid()
    exclusive, scanned = exclusive_pages(ranges, pagemaps)
    mappings = group_mappings(smaps, sorted(exclusive))
    frozen = gc.get_freeze_count()
    walk = ObjectWalk(exclusive)
    walk.run()
    try:
        identity = procfs.stat(worker)
        started, ppid = identity.start, identity.ppid
    except (OSError, ValueError, IndexError):  # gone, or a stat line we cannot parse
        started = ppid = 0
    profile = CowProfile(
        pid=worker,
        started=started,
        ppid=ppid,
        taken=time.time(),
        seconds=0.0,
        python=sys.version.split()[0],
        page_size=PAGE_SIZE,
        frozen=frozen,
        scanned=scanned * PAGE_SIZE,
        exclusive=len(exclusive) * PAGE_SIZE,
        with_objects=len(walk.pages_seen) * PAGE_SIZE,
        mappings=mappings,
        by_type=walk.rows(walk.by_type, top),
        by_module=walk.rows(walk.by_module, top),
        notes=walk.notes,
    )
    return json.dumps(profile.to_json())
