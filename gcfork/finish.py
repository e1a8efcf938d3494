"""Finish the master's heap before the first fork: hashes and type version tags.

The interpreter fills two caches lazily, inside the objects themselves:

- a ``str`` (or ``bytes``) object keeps its hash in its header, written the
  first time it is hashed. Strings the compiler interned were hashed then;
  most others were not: string and bytes constants loaded from ``.pyc``
  files that are not identifiers, text built or read at import. A worker's
  first dict or set lookup with one of them writes the hash into the
  inherited object and copies its page.
- a type gets a *version tag* (``tp_version_tag``) the first time an
  attribute is looked up through the method cache or a specialised
  instruction needs one (3.11+). Types that existed in the master but were
  never used there (most of them: classes imported and not yet instantiated)
  are tagged in each worker, on their first use, which writes the type object
  and copies its page.

:class:`Finisher` does both to one object; :func:`finish_heap` walks the heap
with it (the same walk as :mod:`gcfork.immortal`, over every object the
collector tracks and the untracked objects they hold, by
:func:`gcfork.referents.referents`). When ``immortalize`` is on, the
immortal walk calls the finisher on each object it makes immortal instead,
so the heap is walked once.

Where it runs: in the master, once, after the first freeze and right before
the first fork (after warm-up, so what the warm-up built is finished too).

When it pays (``docs/beyond-freeze.md``, "Finishing the heap"): only with the
immortal heap. Without it a worker that touches an inherited string or type
writes its reference count, on the same page, anyway: measured on 3.11, and
on 3.12 and 3.14 without ``immortalize``, finishing saved 0.1 to 1 MiB per
worker even when the worker hashed every inherited string. So gcfork runs
it inside ``immortalize`` only; :func:`finish_heap` is there to measure.

What is hashed: exact ``str`` and ``bytes`` only, whose hash is computed by
the interpreter from their contents (no Python code runs, and a subclass's own
``__hash__`` is never called). Tuples (which cache their hash from 3.14) are
left alone: hashing one calls its items' ``__hash__``.

How a type is tagged: ``PyUnstable_Type_AssignVersionTag`` (3.12+, the C API
made for this); before 3.12, ``_PyType_Lookup`` of a name no type defines,
the lookup every attribute access does, which assigns the tag as a side
effect and runs no Python code (short of a class ``__dict__`` holding a
non-string key whose hash equals that name's, whose ``__eq__`` the dict
lookup would call). Types not ready (``Py_TPFLAGS_READY`` unset)
are left alone. A type that cannot be tagged (the interpreter ran out of
tags for it) is counted, and the master's log says how many.

No memory is added: a hash and a tag are fields every object already has.
The time is about 0.1 s per 100,000 objects walked.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any, Callable, NamedTuple

from gcfork import actions
from gcfork.exceptions import FinishUnsupported
from gcfork.referents import referents

__all__ = [
    "FinishResult",
    "FinishUnsupported",
    "Finisher",
    "finish_heap",
    "version_tagger",
    "warnings",
]

# object.h: Py_TPFLAGS_READY; before 3.13, Py_TPFLAGS_VALID_VERSION_TAG too.
_READY = 1 << 12
_VALID_VERSION_TAG = 1 << 19
# A name no class defines: the pre-3.12 lookup misses, and caches the miss.
_MISSING_NAME = sys.intern("__gcfork_version_tag__")
# Untracked objects that hold no others.
_LEAVES = (str, bytes, int, float)
# type.__flags__ read without the metatype's __getattribute__ (no user code).
_flags: Callable[[type], int] = type.__dict__["__flags__"].__get__


class FinishResult(NamedTuple):
    """What :func:`finish_heap` (or the immortal walk with a finisher) did.

    Attributes:
        hashed: ``str`` and ``bytes`` objects whose hash was computed now
            (those hashed already are not counted).
        tagged: types walked that have a version tag afterwards (given now,
            or kept from before: the interpreter does not tell which).
        untagged: types the interpreter refused a tag (not ready, or out of
            tags for them).
        seconds: wall time of the walk (0 when it ran inside the immortal walk).
        problems: why a part was not done on this interpreter (empty: all done).
    """

    hashed: int
    tagged: int
    untagged: int
    seconds: float
    problems: tuple[str, ...] = ()


def version_tagger() -> Callable[[type], bool]:
    """A function that assigns a type its version tag and says whether it has one.

    Raises:
        FinishUnsupported: this interpreter exports neither
            ``PyUnstable_Type_AssignVersionTag`` (3.12+) nor ``_PyType_Lookup``.
    """
    if sys.implementation.name != "cpython":
        raise FinishUnsupported(f"it needs CPython, this is {sys.implementation.name}")
    # ctypes is imported here only: in the master, when the setting is on.
    import ctypes

    api = ctypes.pythonapi
    if sys.version_info >= (3, 12):
        try:
            assign = api.PyUnstable_Type_AssignVersionTag
        except AttributeError:
            raise FinishUnsupported(
                "this interpreter does not export PyUnstable_Type_AssignVersionTag"
            ) from None
        assign.argtypes, assign.restype = [ctypes.py_object], ctypes.c_int

        def assign_tag(kind: type) -> bool:
            return bool(_flags(kind) & _READY) and assign(kind) == 1

        return assign_tag
    try:
        lookup = api._PyType_Lookup
    except AttributeError:
        raise FinishUnsupported("this interpreter does not export _PyType_Lookup") from None
    lookup.argtypes, lookup.restype = [ctypes.py_object, ctypes.py_object], ctypes.c_void_p

    def lookup_tag(kind: type) -> bool:
        if not _flags(kind) & _READY:
            return False
        lookup(kind, _MISSING_NAME)
        return bool(_flags(kind) & _VALID_VERSION_TAG)

    return lookup_tag


class Finisher:
    """Finishes one object at a time: hashes a ``str``/``bytes``, tags a type.

    A part this interpreter cannot do (:class:`FinishUnsupported` from
    :func:`version_tagger` or the hash check) is switched off and its reason
    kept in :attr:`problems`, which the caller must report: the master's log
    says it in a warning.

    Args:
        hashes: compute the hash of exact ``str`` and ``bytes`` objects.
        type_tags: assign version tags to types.

    .. versionadded:: 0.3
    """

    __slots__ = ("_hash_size", "_tag", "_types", "hashed", "problems", "untagged")

    def __init__(self, hashes: bool = True, type_tags: bool = True) -> None:
        self.problems: list[str] = []
        self._tag: Callable[[type], bool] | None = None
        self._hash_size: Callable[[Any], int] | None = None
        try:
            self._tag = version_tagger() if type_tags else None
        except FinishUnsupported as exc:
            self.problems.append(f"no type version tags: {exc.reason}")
        try:
            self._hash_size = _hash_reader() if hashes else None
        except FinishUnsupported as exc:
            self.problems.append(f"no precomputed hashes: {exc.reason}")
        # Types met so far, by address: a few thousand. A type reached again
        # (a static type, untracked, is reached from each of its users) is
        # not tagged or counted again.
        self._types: set[int] = set()
        self.hashed = 0
        self.untagged = 0

    def __call__(self, obj: Any) -> None:
        kind = type(obj)
        if kind is str or kind is bytes:
            if self._hash_size is not None and self._hash_size(obj) == -1:
                hash(obj)
                self.hashed += 1
        # issubclass of type(): a proxy (types.GenericAlias, list[int]) passes
        # isinstance(obj, type) by its __class__, and is no type object.
        elif self._tag is not None and issubclass(kind, type) and id(obj) not in self._types:
            self._types.add(id(obj))
            if not self._tag(obj):
                self.untagged += 1

    def result(self, seconds: float = 0.0) -> FinishResult:
        """The counts so far, and ``seconds`` as given."""
        tagged = len(self._types) - self.untagged
        return FinishResult(self.hashed, tagged, self.untagged, seconds, tuple(self.problems))


def warnings(result: FinishResult) -> list[str]:
    """The lines the master's log must show as warnings about ``result``
    (empty when everything was done)."""
    lines = [f"gcfork: {problem}" for problem in result.problems]
    if result.untagged:
        lines.append(f"gcfork: {result.untagged} types could not be given a version tag; "
                     "workers tag them on first use")
    return lines


def _hash_reader() -> Callable[[Any], int]:
    """Reads the cached hash of a ``str`` or ``bytes`` (-1: not computed yet).

    Both keep it right after their ``PyVarObject``-sized header on every
    supported version (``PyASCIIObject.hash``, ``PyBytesObject.ob_shash``);
    checked on a fresh object of each before it is trusted.
    """
    import ctypes

    at = ctypes.c_ssize_t.from_address
    offset = 3 * ctypes.sizeof(ctypes.c_void_p)

    def cached(obj: Any) -> int:
        return at(id(obj) + offset).value

    fresh: Any
    for fresh in ("".join(["gcfork", str(id(at))]), b"".join([b"gcfork", bytes(8)])):
        before = cached(fresh)
        expected = hash(fresh)
        after = cached(fresh)
        if before != -1 or after != expected:
            raise FinishUnsupported(
                f"a fresh {type(fresh).__name__} does not keep its hash where gcfork reads it "
                f"(read {before:#x} before hashing it and {after:#x} after)"
            )
    return cached


def finish_heap(hashes: bool = True, type_tags: bool = True) -> FinishResult:
    """Master, once, after the first freeze and right before the first fork:
    hash every ``str`` and ``bytes`` and tag every type that exists now.

    Use it without ``immortalize`` (on 3.11, say); with it, pass a
    :class:`Finisher` to :func:`gcfork.immortal.immortalize_heap` instead.
    The collector is kept off during the walk and restored afterwards.

    Args:
        hashes: compute string and bytes hashes.
        type_tags: assign type version tags.

    Returns:
        Counts, time, and the parts not done (see :class:`Finisher`).

    .. versionadded:: 0.3
    """
    started = time.perf_counter()
    finish = Finisher(hashes, type_tags)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        _walk(finish)
    finally:
        if was_enabled:
            gc.enable()
    return finish.result(time.perf_counter() - started)


def _walk(finish: Finisher) -> None:
    frozen = gc.get_freeze_count() > 0
    if frozen:
        gc.unfreeze()  # gc.get_objects() does not list the permanent generation
    try:
        tracked = gc.get_objects()
    finally:
        if frozen:
            gc.freeze()
    is_tracked = gc.is_tracked
    stack: list[Any] = []
    for obj in tracked:
        finish(obj)
        stack.append(obj)
        while stack:
            for child in referents(stack.pop()):
                if is_tracked(child):
                    continue  # the outer loop finishes it, once
                finish(child)
                if type(child) not in _LEAVES:
                    stack.append(child)
    del tracked
    actions.release_free_memory()
