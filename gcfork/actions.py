"""The garbage-collector transitions of a pre-fork server, one function each.

Each function says which process runs it. None knows anything of gunicorn:
the adapter in :mod:`gcfork.gunicorn` decides when to call them.
"""

from __future__ import annotations

import gc
import sys
from typing import Callable, NamedTuple

from gcfork import settle
from gcfork.exceptions import ThresholdsRefused
from gcfork.typing import Thresholds

__all__ = [
    "FreezePlan",
    "GCState",
    "ThresholdsRefused",
    "collect_since_last_freeze",
    "default_thresholds",
    "disable_in_master",
    "enable_in_master",
    "enable_in_worker",
    "free_threaded",
    "freeze",
    "freeze_plan",
    "gc_semantics",
    "gc_state",
    "release_free_memory",
    "significant_thresholds",
    "worker_default_thresholds",
]


class FreezePlan(NamedTuple):
    """What the template does to its collector right before one fork."""

    freeze: bool
    collect_all: bool
    collect_young: bool


def freeze_plan(first: bool, collect_before_freeze: bool,
                free_threaded_build: bool | None = None) -> FreezePlan:
    """Template, right before a fork: freeze, and collect what first?

    - The first fork: freeze; collect everything first only if
      ``collect_before_freeze`` asks (a collection of the freshly imported app
      leaves holes that workers fill, copying the pages).
    - Every later fork of a GIL build: free the cycles made since the previous
      freeze (:func:`collect_since_last_freeze`), then freeze what is left.
    - Every later fork of a free-threaded build: nothing. There ``gc.freeze()``
      stops the world and sets a bit in the header of every object it freezes,
      and a collection visits every object of the heap; doing either before each
      fork would write to pages the running workers share with the template.
      What the template made since the first fork stays young in the new
      worker, where its own collections may free it.

    Args:
        free_threaded_build: whether this is a free-threaded build; None reads
            it from this interpreter (:func:`free_threaded`).
    """
    if free_threaded_build is None:
        free_threaded_build = free_threaded()
    if first:
        return FreezePlan(True, collect_before_freeze, False)
    if free_threaded_build:
        return FreezePlan(False, False, False)
    return FreezePlan(True, False, True)


def free_threaded() -> bool:
    """Whether this interpreter is a free-threaded (no-GIL) build: 3.13t and later.

    ``sys._is_gil_enabled`` exists on every 3.13 build and tells whether the
    GIL is on now, not the build; the build flag does.
    """
    if "t" in getattr(sys, "abiflags", ""):
        return True
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


class GCState(NamedTuple):
    """A snapshot of the collector of the calling process."""

    enabled: bool
    thresholds: Thresholds
    freeze_count: int
    counts: tuple[int, ...]


def gc_state() -> GCState:
    """The collector's state in the calling process, read back from :mod:`gc`."""
    return GCState(gc.isenabled(), gc.get_threshold(), gc.get_freeze_count(), gc.get_count())


def disable_in_master() -> None:
    """Master, as early as possible: stop the collector.

    Done before the app is imported, so that no collection frees objects
    between the import and the fork: every freed slot would be a hole in an
    otherwise shared page, and a worker's first allocations would fill it,
    copying the page.
    """
    gc.disable()


def enable_in_master() -> None:
    """Master, when a reload turns mode ``off``: give the collector back."""
    gc.enable()


def freeze(collect_first: bool = False, collect_young: bool = False) -> int:
    """Master, right before each fork: move every tracked object to the
    permanent generation, so that collections in the child never write to
    their headers. Also used in the master before the warm-up (so that the
    collection after it visits only what its requests made), and in a worker
    right after a late app import.

    Args:
        collect_first: run a full collection before freezing (see the
            ``collect_before_freeze`` setting for why it is off by default).
        collect_young: collect the objects made since the previous freeze
            first (see :func:`collect_since_last_freeze`).

    Returns:
        The number of objects now frozen.
    """
    if collect_first:
        gc.collect()
    elif collect_young:
        collect_since_last_freeze()
    release_free_memory()
    gc.freeze()
    return gc.get_freeze_count()


def collect_since_last_freeze() -> int:
    """Master, right before every freeze but the first, and right after the
    warm-up: free the cycles made since the previous freeze.

    The master's collector is off for its whole life, so without this every
    cycle it makes (gunicorn re-reading its config on HUP, a user's hook) would
    be frozen at the next fork and kept forever. Everything older is in the
    permanent generation, which no collection scans; with the collector off
    nothing is ever promoted either, so the youngest generation holds exactly
    the objects made since the last freeze. Collecting it writes only to their
    headers, on pages those allocations had already written; frozen objects'
    headers are read, never written. It costs microseconds for the few hundred
    objects a master makes between two forks.

    Returns:
        The number of unreachable objects found.
    """
    return gc.collect(0)


_malloc_trim: Callable[[int], int] | None = None
_malloc_trim_looked_up = False


def release_free_memory() -> None:
    """Master, before a fork: give the C allocator's free pages back to the OS.

    Memory the master freed (import-time temporaries, a large list of the
    immortal walk) stays resident inside glibc's heap. A worker inherits those
    pages, and its first allocations into them copy each one although it held
    nothing the worker needed; released, the same allocations take fresh
    pages and the master stops counting them. ``malloc_trim(0)`` releases every
    whole free page of the heap, not only its top. It takes well under a
    millisecond once the heap is trimmed; without glibc it does nothing.

    libc is looked up once per process: a ``ctypes.CDLL`` holds reference
    cycles, and one made before every fork would be garbage the master keeps.
    """
    global _malloc_trim, _malloc_trim_looked_up
    if not _malloc_trim_looked_up:
        _malloc_trim_looked_up = True
        _malloc_trim = _find_malloc_trim()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _find_malloc_trim() -> Callable[[int], int] | None:
    import ctypes

    try:
        # The process's own symbols, libc's included; no ctypes.util, which
        # may run ldconfig in a subprocess.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    fn: Callable[[int], int] = trim
    return fn


def enable_in_worker(thresholds: Thresholds | None, enable: bool = True,
                     settles: bool = False) -> GCState:
    """Worker, right after the fork: set the thresholds, turn the collector on.

    Args:
        thresholds: the worker's thresholds; None keeps the current ones.
        enable: False leaves the collector off (mode ``disable``).
        settles: freeze the worker's own heap once it has settled
            (``thresholds="auto"``, :mod:`gcfork.settle`).

    Returns:
        The collector's state read back afterwards, as proof.

    Raises:
        ThresholdsRefused: the interpreter refused the thresholds; the
            collector was still turned on (or off) as asked, since a worker
            whose collector is off never frees a cycle.
    """
    refused: Exception | None = None
    if thresholds is not None:
        try:
            gc.set_threshold(*thresholds)
        except (OverflowError, ValueError, TypeError) as exc:
            refused = exc
    if enable:
        if settles:
            settle.install()
        gc.enable()
    else:
        gc.disable()
    if refused is not None:
        raise ThresholdsRefused(thresholds, gc_state(), refused)
    return gc_state()


_THRESHOLDS_AT_IMPORT: Thresholds = gc.get_threshold()


# The first threshold of a worker given none: CPython's value up to 3.12.
# 3.13 raised its own to 2,000 for fewer collections; in a pre-fork worker the
# cyclic garbage of ~2,000 allocations between young collections is memory the
# worker's pages hold privately. On the Django example under 3.14.10 (4
# workers, 20,000 requests, every opt-in on) a worker kept 39.3 MiB private
# with 2,000 and 26.6 MiB with 700, at 2.9x the young collections and no loss
# of throughput (docs/how-it-works.md).
WORKER_FIRST_THRESHOLD = 700


def worker_default_thresholds() -> Thresholds:
    """What a worker sets when the ``thresholds`` setting is None: 700
    allocations between young collections, and the interpreter's own values
    for the others (on 3.10 to 3.12, exactly the interpreter's default)."""
    return (WORKER_FIRST_THRESHOLD, *default_thresholds()[1:])


def default_thresholds() -> Thresholds:
    """The thresholds in force when gcfork was imported: the interpreter's
    default (700, 10, 10 up to 3.12; 2000, 10, 10 from 3.13), unless something
    imported earlier changed them."""
    return _THRESHOLDS_AT_IMPORT


def _incremental() -> bool:
    # CPython 3.14.0 to 3.14.4 shipped the incremental collector; 3.14.5
    # brought the generational one back.
    return (3, 14, 0) <= sys.version_info[:3] <= (3, 14, 4)


def significant_thresholds() -> int:
    """How many threshold values this interpreter keeps: the incremental
    collector ignores the third and reads it back as 0."""
    return 2 if _incremental() else 3


def gc_semantics() -> str:
    """Which collector this interpreter runs, in a few words for the log line.

    ``docs/how-it-works.md`` says what each one makes of the three thresholds.
    """
    if free_threaded():
        return "free-threaded GC, one generation, frozen before the first fork only"
    if _incremental():
        return "incremental GC, threshold2 ignored"
    return "generational GC"
