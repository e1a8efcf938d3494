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
is already immortal (and skipped); on 3.13 interned strings can be mortal
(``SSTATE_INTERNED_MORTAL``) and this module makes them immortal by their
reference count only, leaving their interned state alone. At exit,
``_PyUnicode_ClearInterned`` only restores and drops the interned
dictionary's references in ``Py_DEBUG`` builds (which are refused here); in
release builds it leaves the dictionary alone, and ``Py_SET_REFCNT`` is a no-op
on an immortal object anyway. Checked by running both versions to a normal exit
after interning, in the child, strings made immortal in the parent (see
``tests/test_immortal.py``). Finalization of a worker still writes to many
inherited objects (module dicts are cleared one by one); the ``fast_exit``
option (:mod:`gcfork.fastexit`) skips it.

Supported: 64-bit little-endian CPython 3.12 and 3.13, release builds with the
GIL. Everything else is refused with :class:`ImmortalizeUnsupported`, before
anything is written: older versions have no immortal objects, free-threaded
builds keep two reference counts per object, ``Py_REF_DEBUG`` builds keep a
total that immortal objects would unbalance, and 3.14 splits the field into a
32-bit count and flags; its entry in :data:`_LAYOUTS` is written but not
verified, so it is refused until it is.
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
    """Where a version keeps the reference count, and the immortal value.

    Args:
        width: bytes written at the object's address (8: the whole
            ``ob_refcnt``; 4: only its low, 32-bit half).
        value: the value written, as ``_Py_SetImmortal`` would.
        verified: checked against this version's ``Include/object.h`` and by
            the tests; unverified layouts are refused.
        source: where the numbers come from.
    """

    width: int
    value: int
    verified: bool
    source: str


# 64-bit little-endian builds only (checked separately).
_LAYOUTS: dict[tuple[int, int], _Layout] = {
    # object.h: union { Py_ssize_t ob_refcnt; uint32_t ob_refcnt_split[2]; };
    # _Py_IMMORTAL_REFCNT = UINT_MAX; Py_INCREF adds 1 to the low half and
    # skips the store when it wraps to 0; _Py_IsImmortal is (int32)refcnt < 0.
    # Writing the whole word reproduces _Py_SetImmortal exactly (high half 0).
    (3, 12): _Layout(8, 0xFFFFFFFF, True, "Include/object.h of 3.12.1"),
    (3, 13): _Layout(8, 0xFFFFFFFF, True, "Include/object.h of 3.13.0"),
    # 3.14: ob_refcnt is a uint32_t next to ob_flags (and ob_overflow) in the
    # same 8 bytes; _Py_IMMORTAL_INITIAL_REFCNT = 3 << 30 and the flags half
    # (e.g. _Py_STATICALLY_ALLOCATED_FLAG) must not be clobbered, so only the
    # low 32 bits are written. Not checked against a 3.14 build: refused.
    (3, 14): _Layout(4, 3 << 30, False, "CPython 3.14 object.h, from its description"),
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
            "run the server on 3.12 or 3.13, or leave immortalize off"
        )
    if _free_threaded():
        return "free-threaded (no-GIL) builds keep two reference counts per object"
    if hasattr(sys, "gettotalrefcount"):
        return "this is a debug (Py_REF_DEBUG) build, whose reference total it would unbalance"
    if sys.maxsize <= 2**32:
        return "32-bit builds keep a different immortal value"
    if sys.byteorder != "little":
        return "big-endian builds are not handled"
    layout = _LAYOUTS.get(version)
    if layout is None:
        return f"Python {version[0]}.{version[1]}'s object layout is not known to gcfork"
    if not layout.verified:
        return (
            f"Python {version[0]}.{version[1]}'s object layout ({layout.source}) has not been "
            "verified by gcfork yet"
        )
    return None


def _free_threaded() -> bool:
    # sys._is_gil_enabled exists on every 3.13 build, so it cannot tell; the
    # build flag can ('t' in abiflags, Py_GIL_DISABLED in the config vars).
    if "t" in getattr(sys, "abiflags", ""):
        return True
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def is_immortal(obj: object) -> bool:
    """Whether CPython treats ``obj`` as immortal (3.12+, 64-bit; False before 3.12)."""
    if sys.version_info < (3, 12):
        return False
    # sys.getrefcount reports the raw field on 3.12/3.13 (plus one for the
    # argument), so bit 31 is the flag _Py_IsImmortal tests.
    return bool(sys.getrefcount(obj) & _IMMORTAL_BIT)


def immortalize_heap(skip_types: tuple[type, ...] = ()) -> ImmortalizeResult:
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

    Returns:
        Counts, time, and the master's RSS before and after.

    Raises:
        ImmortalizeUnsupported: on an interpreter it does not handle (see
            :func:`unsupported_reason`); nothing has been written then.

    .. versionadded:: 0.2
    """
    reason = unsupported_reason()
    if reason is not None:
        raise ImmortalizeUnsupported(reason)
    layout = _LAYOUTS[sys.version_info[:2]]
    started = time.perf_counter()
    rss_before = _rss()
    write = _writer(layout)
    _self_check(write)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        objects, skipped = _walk(write, skip_types)
    finally:
        if was_enabled:
            gc.enable()
    # The walk's large temporary lists are freed by now, but glibc raises its
    # mmap threshold after the first large free, so later ones came from the
    # brk heap and stay resident (about 4 MB for 640,000 objects) unless trimmed.
    actions.release_free_memory()
    return ImmortalizeResult(objects, skipped, time.perf_counter() - started, rss_before, _rss())


def _writer(layout: _Layout) -> Callable[[int], None]:
    import ctypes

    field: Any = ctypes.c_uint64 if layout.width == 8 else ctypes.c_uint32
    value = layout.value

    def write(address: int) -> None:
        field.from_address(address).value = value

    return write


def _self_check(write: Callable[[int], None]) -> None:
    """Immortalize one fresh object and check the interpreter agrees, before
    touching anything that matters."""
    probe = object()
    write(id(probe))
    before = sys.getrefcount(probe)
    refs = [probe] * 8
    after = sys.getrefcount(probe)
    del refs
    if not is_immortal(probe) or before != after:
        raise ImmortalizeUnsupported(
            f"a probe object's reference count moved from {before} to {after} after it was "
            "made immortal: this build does not use the layout gcfork expects"
        )


def _walk(write: Callable[[int], None], skip_types: tuple[type, ...]) -> tuple[int, int]:
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

    get_referents = gc.get_referents
    is_tracked = gc.is_tracked
    getrefcount = sys.getrefcount
    code_type = types.CodeType
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
        stack.append(obj)
        while stack:
            parent: Any = stack.pop()
            if type(parent) is code_type:
                # Code objects are not GC objects: get_referents sees nothing.
                # These are plain members (no object is created to read them).
                code: Any = parent  # typed Any: mypy checks against 3.10's CodeType
                children: Any = (
                    code.co_consts, code.co_names, code.co_filename, code.co_name,
                    code.co_qualname, code.co_linetable, code.co_exceptiontable,
                )
            elif issubclass(type(parent), dict):
                # dict_traverse skips the keys of str-keyed dicts (strings
                # cannot form cycles); dict.keys reads the table itself, even
                # for a subclass that overrides __iter__. type(), not
                # isinstance: a proxy (Django's SimpleLazyObject) claims its
                # target's __class__, and dict.keys refuses it.
                children = get_referents(parent)
                children.extend(dict.keys(parent))
            else:
                children = get_referents(parent)
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
                stack.append(child)
    del tracked
    return made, skipped


def _rss() -> int:
    try:
        return procfs.rss(os.getpid())
    except (OSError, ValueError, IndexError):
        return 0
