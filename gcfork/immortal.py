"""Make the master's heap immortal before the first fork (CPython 3.12+).

``gc.freeze()`` stops a worker's collections from writing to the objects it
inherited, but every reference a worker takes to one of them still writes its
reference count, and each such write copies a 4 KiB page. Since 3.12 an object
whose reference count holds the *immortal* value is never written by
``Py_INCREF``/``Py_DECREF`` (PEP 683). :func:`immortalize_heap` gives that
value to the objects that exist in the master when it runs, so workers read
them without copying their pages.

Where it runs: in the master, once, right before the first fork and after the
first :func:`gcfork.actions.freeze`.

What it trades (read before turning it on):

- The objects made immortal are **never freed**, in the master or in any
  worker. A worker that drops one (clears a cache built before the fork,
  replaces a module-level list) does not get its memory back. That memory
  stays shared with the master, so the cost is the memory the worker could
  have reused, not a new copy; but a master that keeps building and dropping
  objects after the first fork leaks the ones that existed at that moment.
- Weak references to them never die: ``weakref.finalize`` callbacks and
  ``WeakValueDictionary`` entries for them stay for the life of the process.
- Code that reads reference counts sees ``4294967295``
  (``sys.getrefcount``); the only stdlib uses are optimisations (in-place
  ``str`` concatenation, result-tuple reuse in ``zip``/``enumerate``/``dict``
  iterators) that fall back to copying. Third-party checks of "am I the only
  reference" behave as if there were many: numpy's ``ndarray.resize()`` with
  the default ``refcheck=True`` refuses to resize an array made immortal.
  Pass such types in ``skip_types``.

Objects that are left mortal on purpose:

- instances of types with a finalizer (``__del__`` or a C ``tp_finalize``:
  files, sockets, generators, coroutines...), whose finalizer is what releases
  a file descriptor or flushes a buffer when a worker drops them;
- frame objects, which hold the locals of code that was running at the time.

Interned strings and interpreter finalization: on 3.12 every interned string
is already immortal (and skipped); from 3.13 interned strings can be mortal
(``SSTATE_INTERNED_MORTAL``) and this module makes them immortal by their
reference count only, leaving their interned state alone. At exit,
``_PyUnicode_ClearInterned`` only restores and drops the interned
dictionary's references in ``Py_DEBUG`` builds (which are refused here); in
release builds it leaves the dictionary alone, and ``Py_SET_REFCNT`` is a no-op
on an immortal object anyway. Checked on every supported version by running a
child to a normal exit, and to ``os._exit``, after it interned again strings
made immortal in the parent (``tests/test_immortal.py``). Finalization of a
worker still writes to many inherited objects (module dicts are cleared one by
one); the ``fast_exit`` option (:mod:`gcfork.fastexit`) skips it.

How each version is written (:data:`_LAYOUTS`): on 3.12 and 3.13 the 64-bit
``ob_refcnt`` gets ``_Py_IMMORTAL_REFCNT``; on 3.14 and 3.15 the field is a
32-bit count beside ``ob_flags``, and gcfork calls the interpreter's own
``_Py_SetImmortalUntracked``. Either way a probe object is checked first: its
header must read what that version's headers say, and its reference count must
not move.

Supported: 64-bit little-endian CPython 3.12 to 3.15, release builds with the
GIL. Everything else is refused with :class:`ImmortalizeUnsupported`, before
anything is written: older versions have no immortal objects, free-threaded
builds keep two reference counts per object (and a thread id) and mark
immortal objects differently, ``Py_REF_DEBUG`` builds keep a total that
immortal objects would unbalance, and a version whose layout gcfork has not
checked is refused until it is.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import types
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from gcfork import actions, procfs
from gcfork.exceptions import ImmortalizeUnsupported
from gcfork.referents import referents

__all__ = [
    "ImmortalizeResult",
    "ImmortalizeUnsupported",
    "immortalize_heap",
    "is_immortal",
    "unsupported_reason",
]


class ImmortalizeResult(NamedTuple):
    """What :func:`immortalize_heap` did, returned to the master's log.

    Attributes:
        objects: objects given the immortal reference count by this call.
        skipped: objects left mortal on purpose (finalizers, frames, ``skip_types``).
        seconds: wall time of the whole call.
        rss_before: resident set of the calling process before, in bytes.
        rss_after: the same after; the difference is what the walk itself cost.
    """

    objects: int
    skipped: int
    seconds: float
    rss_before: int
    rss_after: int


@dataclass(frozen=True)
class _Layout:
    """How one version makes an object immortal (64-bit little-endian builds).

    Args:
        split: False: the value is written over the whole 64-bit
            ``ob_refcnt``. True (3.14+): the value goes into the 32-bit
            ``ob_refcnt`` and ``_Py_IMMORTAL_FLAGS`` into the 16-bit
            ``ob_flags`` that follows ``ob_overflow``.
        value: the reference count written.
        source: where the numbers come from.
    """

    split: bool
    value: int
    source: str


# 3.14+: _Py_IMMORTAL_INITIAL_REFCNT and _Py_IMMORTAL_FLAGS (refcount.h).
_INITIAL_REFCNT = 3 << 30
_IMMORTAL_FLAGS = 1
# Above the initial count on purpose. A reference the interpreter took while
# an object was still mortal (the walk's own loop variable, a frame of the
# caller) is dropped later without the immortality check (3.15's
# Py_DECREF_MORTAL), one below the initial count; from there every checked
# Py_INCREF writes the count again, one step at a time, until it is back at
# the initial count: each worker's first reference would copy the page. The
# margin keeps the count at or above the initial count through a million
# such drops, and is a quarter of the range away from the 2**31 boundary
# below which an object stops being immortal.
_SPLIT_MARGIN = 1 << 20

_LAYOUTS: dict[tuple[int, int], _Layout] = {
    # object.h: union { Py_ssize_t ob_refcnt; uint32_t ob_refcnt_split[2]; };
    # _Py_IMMORTAL_REFCNT = UINT_MAX; Py_INCREF adds 1 to the low half and
    # skips the store when it wraps to 0; _Py_IsImmortal is (int32)refcnt < 0.
    # Writing the whole word reproduces _Py_SetImmortal exactly (high half 0).
    (3, 12): _Layout(False, 0xFFFFFFFF, "Include/object.h of 3.12.1"),
    (3, 13): _Layout(False, 0xFFFFFFFF, "Include/object.h of 3.13.0"),
    # 3.14 and 3.15 (object.h, refcount.h): the word is uint32 ob_refcnt,
    # uint16 ob_overflow, uint16 ob_flags. Py_INCREF skips counts >=
    # _Py_IMMORTAL_INITIAL_REFCNT, _Py_IsImmortal is (int32)ob_refcnt < 0, and
    # the interpreter tags a stack reference as not owning a count when
    # ob_flags & _Py_IMMORTAL_FLAGS (PyStackRef_FromPyObjectSteal), so both
    # are written, as _Py_SetImmortalUntracked does; the self-check compares
    # the result with that function's on a probe. GIL builds defer no
    # reference counts (PyUnstable_Object_EnableDeferredRefcount is a no-op
    # there); free-threaded builds are refused above.
    (3, 14): _Layout(True, _INITIAL_REFCNT + _SPLIT_MARGIN,
                     "Include/refcount.h and object.h of 3.14.10"),
    (3, 15): _Layout(True, _INITIAL_REFCNT + _SPLIT_MARGIN,
                     "Include/refcount.h and object.h of 3.15.2"),
}

# _Py_IsImmortal on 64-bit: (int32_t)ob_refcnt < 0, i.e. bit 31 of the low half.
_IMMORTAL_BIT = 1 << 31


def unsupported_reason() -> str | None:
    """Why :func:`immortalize_heap` would refuse to run here, or None if it would run.

    Cheap and side-effect free: meant for validating the ``immortalize``
    setting at start-up, before any worker is forked.
    """
    if sys.implementation.name != "cpython":
        return f"it needs CPython, this is {sys.implementation.name}"
    version = sys.version_info[:2]
    if version < (3, 12):
        return (
            f"Python {version[0]}.{version[1]} has no immortal objects (PEP 683 came in 3.12); "
            "run the server on 3.12 or later, or leave immortalize off"
        )
    if actions.free_threaded():
        return "free-threaded (no-GIL) builds keep two reference counts per object"
    if hasattr(sys, "gettotalrefcount"):
        return "this is a debug (Py_REF_DEBUG) build, whose reference total it would unbalance"
    if sys.maxsize <= 2**32:
        return "32-bit builds keep a different immortal value"
    if sys.byteorder != "little":
        return "big-endian builds are not handled"
    layout = _LAYOUTS.get(version)
    if layout is None:
        return (
            f"Python {version[0]}.{version[1]}'s object layout has not been verified by gcfork "
            f"(it knows {', '.join(f'{a}.{b}' for a, b in _LAYOUTS)})"
        )
    return None


def is_immortal(obj: object) -> bool:
    """Whether CPython treats ``obj`` as immortal (3.12+, 64-bit; False before 3.12)."""
    if sys.version_info < (3, 12):
        return False
    # sys.getrefcount reports the raw low half of the field on 3.12 to 3.15
    # (plus one for the argument on 3.12/3.13), so bit 31 is the flag
    # _Py_IsImmortal tests; the tests compare it with sys._is_immortal (3.14+).
    return bool(sys.getrefcount(obj) & _IMMORTAL_BIT)


def immortalize_heap(
    skip_types: tuple[type, ...] = (), finish: Callable[[Any], None] | None = None
) -> ImmortalizeResult:
    """Master, once, after the first freeze and right before the first fork:
    make every object that exists now immortal, so workers never write their
    reference counts.

    The walk goes over every object the collector tracks (frozen or not) and
    descends, with an explicit stack, into the untracked objects they refer to
    (strings, ints, code objects, tuples and dicts the collector untracked).
    The immortal reference count is the walk's visited mark, so it allocates
    nothing per object: its temporaries are one list of the tracked objects
    (large, so malloc gives it its own mapping and returns it on free) and
    the stack.

    The collector is kept off during the walk and restored afterwards. Frozen
    objects are unfrozen to be listed and frozen again, with whatever else was
    tracked at that moment: call it right after a freeze.

    Args:
        skip_types: further types whose instances (subclasses included) stay
            mortal, e.g. ``numpy.ndarray`` if workers resize arrays in place.
        finish: called with each object made immortal, e.g. a
            :class:`gcfork.finish.Finisher` (hashes, type version tags), so
            that the heap is walked once for both.

    Returns:
        Counts, time, and the master's RSS before and after.

    Raises:
        ImmortalizeUnsupported: on an interpreter it does not handle (see
            :func:`unsupported_reason`); nothing has been written then.

    .. versionadded:: 0.2
    .. versionchanged:: 0.3 ``finish``.
    """
    reason = unsupported_reason()
    if reason is not None:
        raise ImmortalizeUnsupported(reason)
    layout = _LAYOUTS[sys.version_info[:2]]
    started = time.perf_counter()
    rss_before = _rss()
    write = _writer(layout)
    _self_check(write, layout)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        objects, skipped = _walk(write, skip_types, finish)
    finally:
        if was_enabled:
            gc.enable()
    # The walk's large temporary lists are freed by now, but glibc raises its
    # mmap threshold after the first large free, so later ones came from the
    # brk heap and stay resident (about 4 MB for 640,000 objects) unless trimmed.
    actions.release_free_memory()
    return ImmortalizeResult(objects, skipped, time.perf_counter() - started, rss_before, _rss())


def _writer(layout: _Layout) -> Callable[[int], None]:
    # ctypes is imported here only: in the master, when immortalize is on.
    import ctypes

    value = layout.value
    if layout.split:
        count_at = ctypes.c_uint32.from_address
        flags_at = ctypes.c_uint16.from_address

        def write_split(address: int) -> None:
            count_at(address).value = value
            flags_at(address + 6).value = _IMMORTAL_FLAGS

        return write_split
    word_at = ctypes.c_uint64.from_address

    def write_word(address: int) -> None:
        word_at(address).value = value

    return write_word


def _self_check(write: Callable[[int], None], layout: _Layout) -> None:
    """Immortalize one fresh object and check that the interpreter agrees,
    before touching anything that matters: its reference count must not move,
    and on 3.14+ its header must match what the interpreter's own
    ``_Py_SetImmortalUntracked`` makes of another probe, but for the count."""
    import ctypes

    probe = object()
    write(id(probe))
    header = ctypes.c_uint64.from_address(id(probe)).value
    before = sys.getrefcount(probe)
    refs = [probe] * 8
    after = sys.getrefcount(probe)
    del refs
    problem = None
    if not is_immortal(probe) or before != after:
        problem = f"its reference count moved from {before} to {after}"
    elif layout.split:
        own = getattr(ctypes.pythonapi, "_Py_SetImmortalUntracked", None)
        if own is None:
            problem = "the interpreter does not export _Py_SetImmortalUntracked to compare with"
        else:
            own.argtypes, own.restype = [ctypes.c_void_p], None
            reference = object()
            own(id(reference))
            expected = ctypes.c_uint64.from_address(id(reference)).value
            if (expected & 0xFFFFFFFF != _INITIAL_REFCNT
                    or header & ~0xFFFFFFFF != expected & ~0xFFFFFFFF):
                problem = f"the interpreter's own function writes {expected:#x}"
    if problem is not None:
        raise ImmortalizeUnsupported(
            f"a probe object made immortal reads {header:#x} and {problem}: this build "
            f"does not use the layout of {layout.source}"
        )


def _walk(
    write: Callable[[int], None], skip_types: tuple[type, ...],
    finish: Callable[[Any], None] | None,
) -> tuple[int, int]:
    frozen = gc.get_freeze_count() > 0
    if frozen:
        # gc.get_objects() does not list the permanent generation.
        gc.unfreeze()
    try:
        # Not in its own result, and nothing created below is in it either.
        tracked = gc.get_objects()
    finally:
        if frozen:
            gc.freeze()

    is_tracked = gc.is_tracked
    getrefcount = sys.getrefcount
    mortal_type: dict[type, bool] = {}
    made = 0
    skipped = 0
    stack: list[object] = []

    def keep_mortal(kind: type) -> bool:
        answer = mortal_type.get(kind)
        if answer is None:
            try:
                answer = (
                    issubclass(kind, types.FrameType)
                    or hasattr(kind, "__del__")
                    or (bool(skip_types) and issubclass(kind, skip_types))
                )
            except Exception:  # a metaclass __getattr__ that raises: leave it alone
                answer = True
            mortal_type[kind] = answer
        return answer

    for obj in tracked:
        if keep_mortal(type(obj)):
            skipped += 1
            continue
        if not getrefcount(obj) & _IMMORTAL_BIT:
            write(id(obj))
            made += 1
            if finish is not None:
                finish(obj)
        stack.append(obj)
        while stack:
            parent: Any = stack.pop()
            children = referents(parent)
            for child in children:
                # Immortal: done already (or born so). Tracked: the outer loop
                # does it, once.
                if getrefcount(child) & _IMMORTAL_BIT or is_tracked(child):
                    continue
                if keep_mortal(type(child)):
                    skipped += 1
                    continue
                write(id(child))
                made += 1
                if finish is not None:
                    finish(child)
                stack.append(child)
    del tracked
    return made, skipped


def _rss() -> int:
    try:
        return procfs.rss(os.getpid())
    except (OSError, ValueError, IndexError):
        return 0
