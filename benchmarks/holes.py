"""Allocator holes: the free slots in the master's pymalloc pools at fork time.

CPython's small-object allocator (pymalloc, objects of up to 512 bytes) keeps
its memory in pools (4 KiB up to 3.9, 16 KiB from 3.10) of one size class
each. A pool that has both used and free blocks is *used*: the next object of
its size class goes into one of its free blocks. The master frees
temporaries while it imports the app, even with the collector off, so at the
fork its used pools can hold free slots ("holes") between objects the
workers share. A worker's first new objects go into those holes, and each one
writes to, and so copies, a page it shared with the master.

:func:`pool_stats` reads how many such slots there are from the allocator's
own statistics (``sys._debugmallocstats()``). :func:`fill_holes` allocates
objects that exactly fit those slots and keeps them alive, so that a worker's
new objects go to fresh pools instead.

Measured with ``benchmarks/holes_probe.py`` (the Django example preloaded
with the collector off, 4 forked workers x 300 in-process requests, 5 fresh
masters per variant, CPython 3.11.7 and 3.12.1): at freeze time the master's
used pools hold only 1,700 to 2,100 free blocks (0.23 to 0.29 MiB) against
35 to 37 MiB allocated, because with the collector off little is freed.
Filling them takes 3 ms and 0.2 to 0.3 MiB of master RSS, and does not lower
worker USS: medians 30.8 -> 30.9 MiB (3.11) and 28.1 -> 28.7 MiB (3.12),
inside the spread of +-1.5 MiB. A worker that serves requests writes
reference counts in most pages holding live objects anyway, so the pages a
hole would have cost are mostly copied regardless; also emptying the free
lists (``free_lists=True``) changes nothing either. With the heap made
immortal (3.12, 30 requests per worker, where refcount writes no longer copy
pages), filling saves 0.11 MiB per worker (13.72 -> 13.61 MiB, 0.8 %):
real but small. So no setting turns it on, and this module lives beside
``benchmarks/holes_probe.py``, not in the ``gcfork`` package, so that the
probe can reproduce the measurement on other apps and interpreters. It is not
wired into the server: reading the statistics redirects file descriptor 2 for
a few milliseconds, which could swallow a log line written by another thread
of a running master. It needs only the standard library, so any interpreter
can import it with the checkout on ``PYTHONPATH`` (``from benchmarks import
holes``).

Where each function runs: anywhere (read-only statistics), and
:func:`fill_holes` in the master, right before the first fork, before the
freeze.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import sys
import tempfile
import time
from typing import Callable, NamedTuple

__all__ = [
    "FillResult",
    "FreeList",
    "PoolStats",
    "PoolStatsUnavailable",
    "SizeClass",
    "fill_holes",
    "filled_objects",
    "own_rss",
    "parse_debugmallocstats",
    "pool_stats",
    "read_pool_stats",
    "release_fill",
]


class PoolStatsUnavailable(Exception):
    """The allocator's statistics could not be read or understood.

    Args:
        reason: why, in one sentence a user can act on.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

    def __str__(self) -> str:
        return f"gcfork cannot read pymalloc's statistics: {self.reason}"


class SizeClass(NamedTuple):
    """One pymalloc size class, one row of ``sys._debugmallocstats()``.

    Attributes:
        number: the class number (0 for 16-byte blocks on 64-bit builds).
        size: bytes per block.
        pools: pools of this class that hold at least one object ("used" pools).
        used: blocks in use in those pools.
        free: blocks available in those pools: the slots the next objects of
            this size go to. Includes the never-used tail of each pool, and
            (3.10+) a whole pool's worth when an emptied pool is still counted.
    """

    number: int
    size: int
    pools: int
    used: int
    free: int

    @property
    def free_bytes(self) -> int:
        """Bytes in the available blocks of this class."""
        return self.free * self.size


class FreeList(NamedTuple):
    """One of the interpreter's own free lists (dicts, lists, tuples of a size...).

    Attributes:
        name: the type as printed (``PyDictObjects``, ``3-sized PyTupleObjects``).
        objects: objects waiting on the list, each in memory the master wrote.
        size: bytes each.
    """

    name: str
    objects: int
    size: int


class PoolStats(NamedTuple):
    """pymalloc's own statistics at one moment, returned by :func:`pool_stats`.

    Every memory figure is in bytes.

    Attributes:
        classes: the size classes that have used pools, by index.
        arenas: arenas allocated now.
        arena_size: bytes per arena.
        pool_size: bytes per pool.
        allocated: bytes in allocated blocks.
        available: bytes in available blocks of used pools (the sum of
            ``free_bytes`` over the classes).
        free_pools: whole pools that are empty, in the arenas (reused by any class).
        free_lists: the object free lists, when printed (empty otherwise).
        python: the interpreter version that printed them.
    """

    classes: tuple[SizeClass, ...]
    arenas: int
    arena_size: int
    pool_size: int
    allocated: int
    available: int
    free_pools: int
    free_lists: tuple[FreeList, ...]
    python: str

    @property
    def free_blocks(self) -> int:
        """Available blocks in used pools, all classes together."""
        return sum(c.free for c in self.classes)

    def by_size(self) -> dict[int, SizeClass]:
        """The classes keyed by block size."""
        return {c.size: c for c in self.classes}


class FillResult(NamedTuple):
    """What :func:`fill_holes` did.

    Attributes:
        objects: objects allocated and kept alive (see :func:`filled_objects`).
        filled: their blocks' total size, in bytes (free lists not included).
        per_class: objects allocated per block size.
        skipped: block sizes left alone, with why (no object fits exactly).
        before: the statistics it worked from.
        after: the statistics read back afterwards (None if unreadable).
        seconds: wall time of the whole call, both readings included.
        rss_before: resident set of the calling process before, in bytes.
        rss_after: the same after.
    """

    objects: int
    filled: int
    per_class: dict[int, int]
    skipped: dict[int, str]
    before: PoolStats
    after: PoolStats | None
    seconds: float
    rss_before: int
    rss_after: int


# -- reading -----------------------------------------------------------------

_CLASS_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")
_NUM = r"([\d,]+)"
_ARENAS_CURRENT = re.compile(r"^# arenas allocated current\s*=\s*" + _NUM, re.M)
_ARENA_SIZE = re.compile(r"^" + _NUM + r" arenas \* " + _NUM + r" bytes/arena", re.M)
_ALLOCATED = re.compile(r"^# bytes in allocated blocks\s*=\s*" + _NUM, re.M)
_AVAILABLE = re.compile(r"^# bytes in available blocks\s*=\s*" + _NUM, re.M)
_FREE_POOLS = re.compile(r"^" + _NUM + r" unused pools \* " + _NUM + r" bytes", re.M)
_FREE_LIST = re.compile(r"^\s*" + _NUM + r" free (.+?) \* " + _NUM + r" bytes each", re.M)
_HEADER = "Small block threshold"


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def parse_debugmallocstats(text: str, python: str = "") -> PoolStats:
    """Parse the text ``sys._debugmallocstats()`` prints (CPython 3.9 to 3.13).

    The pymalloc part has kept its shape since 3.9: one row per size class
    with used pools, then the arena totals; 3.10 added arena-map lines and
    changed the pool and arena sizes, 3.13 added free lists. Rows and lines
    not recognised are ignored; the totals are cross-checked.

    Args:
        text: the captured output.
        python: the version to record (defaults to this interpreter's).

    Raises:
        PoolStatsUnavailable: pymalloc is not in use (``PYTHONMALLOC=malloc``)
            or the text does not have the expected shape.

    .. versionadded:: 0.3
    """
    if _HEADER not in text:
        raise PoolStatsUnavailable(
            "the output has no pymalloc section: pymalloc is not in use "
            "(PYTHONMALLOC=malloc, or a free-threaded build)"
        )
    classes: list[SizeClass] = []
    pymalloc, _, rest = text.partition("# arenas allocated total")
    for line in pymalloc.splitlines():
        row = _CLASS_ROW.match(line)
        if row:
            number, size, pools, used, free = (int(g) for g in row.groups())
            classes.append(SizeClass(number, size, pools, used, free))
    found: dict[str, re.Match[str] | None] = {
        "arenas": _ARENAS_CURRENT.search(text),
        "arena size": _ARENA_SIZE.search(text),
        "allocated": _ALLOCATED.search(text),
        "available": _AVAILABLE.search(text),
        "unused pools": _FREE_POOLS.search(text),
    }
    missing = [name for name, match in found.items() if match is None]
    if missing or not rest:
        raise PoolStatsUnavailable(f"unrecognised output: no line for {', '.join(missing)}")
    matches = {name: m for name, m in found.items() if m is not None}
    available = _int(matches["available"].group(1))
    summed = sum(c.free_bytes for c in classes)
    if summed != available:
        raise PoolStatsUnavailable(
            f"unrecognised output: the class rows add up to {summed} available bytes, "
            f"the total says {available}"
        )
    free_lists = tuple(
        FreeList(m.group(2).strip(), _int(m.group(1)), _int(m.group(3)))
        for m in _FREE_LIST.finditer(text)
    )
    return PoolStats(
        classes=tuple(classes),
        arenas=_int(matches["arenas"].group(1)),
        arena_size=_int(matches["arena size"].group(2)),
        pool_size=_int(matches["unused pools"].group(2)),
        allocated=_int(matches["allocated"].group(1)),
        available=available,
        free_pools=_int(matches["unused pools"].group(1)),
        free_lists=free_lists,
        python=python or sys.version.split()[0],
    )


def _capture_debugmallocstats() -> str:
    """Run ``sys._debugmallocstats()`` with the C-level stderr sent to a file.

    It writes with ``fprintf(stderr)``, below :data:`sys.stderr`; file
    descriptor 2 points at a temporary file for the call. Anything another
    thread writes to fd 2 meanwhile goes there too, and is ignored.
    """
    dump = getattr(sys, "_debugmallocstats", None)
    if dump is None:
        raise PoolStatsUnavailable("this interpreter has no sys._debugmallocstats (not CPython)")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):  # closed or replaced
            stream.flush()
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            dump()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        return out.read().decode("ascii", "replace")


def read_pool_stats() -> PoolStats:
    """pymalloc's statistics in the calling process, now.

    Takes a few milliseconds; the capture and the parse allocate and free
    small objects, so the figures move a little from one call to the next.

    Raises:
        PoolStatsUnavailable: with the reason, when they cannot be read.

    .. versionadded:: 0.3
    """
    try:
        text = _capture_debugmallocstats()
    except OSError as exc:
        raise PoolStatsUnavailable(f"could not capture the output: {exc}") from exc
    return parse_debugmallocstats(text)


def pool_stats() -> PoolStats | None:
    """:func:`read_pool_stats`, or None when they cannot be read (the reason
    is in the exception :func:`read_pool_stats` raises).

    .. versionadded:: 0.3
    """
    try:
        return read_pool_stats()
    except PoolStatsUnavailable:
        return None


# -- filling -----------------------------------------------------------------

_FILLED: list[object] = []

_BYTES_OVERHEAD = sys.getsizeof(b"")  # header + the trailing NUL: 33 on 64-bit


def _maker(size: int, step: int) -> Callable[[], object] | str:
    """A factory of new, untracked objects whose block is exactly ``size``
    bytes (``size - step < request <= size``), or why there is none."""
    candidates: list[Callable[[], object]] = [object]
    half = 0.5

    def new_float() -> object:
        return half + 0.0  # a new float every call (after the float free list)

    candidates.append(new_float)
    length = size - _BYTES_OVERHEAD
    if length >= 2:  # bytes of length 0 and 1 are shared singletons
        candidates.append(lambda: bytes(length))
    for make in candidates:
        probe = make()
        if size - step < sys.getsizeof(probe) <= size:
            return make
    return f"no untracked object of {size - step + 1} to {size} bytes"


def _free_list_maker(name: str) -> Callable[[], object] | None:
    """A factory that takes one object off the named interpreter free list."""
    if name == "PyDictObjects":
        return dict
    if name == "PyListObjects":
        return list
    if name == "PyFloatObjects":
        half = 0.5
        return lambda: half + 0.0
    match = re.fullmatch(r"(\d+)-sized PyTupleObjects", name)
    if match and int(match.group(1)) > 0:
        items = [None] * int(match.group(1))
        return lambda: tuple(items)
    return None


def fill_holes(
    stats: PoolStats | None = None, *, max_bytes: int = 64 << 20, free_lists: bool = False
) -> FillResult:
    """Master, right before the first fork (before the freeze): fill the free
    blocks of used pools with objects kept alive until exit.

    For each size class it allocates as many objects as the class has
    available blocks, choosing an object that needs exactly that block size
    (``object()`` for 16 bytes, a float for 32, ``bytes`` of the right length
    above), so that pymalloc puts them in the used pools' free slots. The
    objects are untracked by the collector and kept in a module-level list
    (:func:`filled_objects`). A worker's new objects then start fresh pools.

    Interleaved allocations (the list, the loop) move a few blocks; the
    statistics read back afterwards (``after``) show what is left.

    Args:
        stats: the statistics to work from; read now when None.
        max_bytes: stop before filling more than this (a guard, not a target).
        free_lists: also empty the interpreter's free lists of dicts, lists,
            floats and tuples, whose objects a worker would otherwise reuse
            first (the dicts and lists taken are kept alive, tracked, and frozen
            with the rest).

    Raises:
        PoolStatsUnavailable: when the statistics cannot be read.

    .. versionadded:: 0.3
    """
    started = time.perf_counter()
    rss_before = own_rss()
    before = stats if stats is not None else read_pool_stats()
    step = min((c.size for c in before.classes), default=16)
    makers: dict[int, Callable[[], object]] = {}
    skipped: dict[int, str] = {}
    for cls in before.classes:
        made = _maker(cls.size, step)
        if isinstance(made, str):
            skipped[cls.size] = made
        else:
            makers[cls.size] = made
    per_class: dict[int, int] = dict.fromkeys(makers, 0)
    # Sized once, with room to spare (a large buffer: malloc, not pymalloc),
    # then filled in place and trimmed.
    start = len(_FILLED)
    _FILLED.extend(itertools.repeat(None, before.free_blocks + 4096))
    # Every object made so far is alive during the fill, so the counts must
    # be read after them; and the reading's own result takes slots. Read
    # twice and drop the first reading after the second: the second result
    # takes about the slots the first one gives back.
    probe: PoolStats | None = read_pool_stats()
    counts = read_pool_stats()
    del probe
    position = start
    budget = max_bytes
    limit = len(_FILLED)
    filled_bytes = 0
    for cls in counts.classes:
        make = makers.get(cls.size)
        if make is None or cls.free == 0:
            continue
        if cls.free_bytes > budget or position + cls.free > limit:
            skipped[cls.size] = f"over the max_bytes budget ({max_bytes})"
            continue
        budget -= cls.free_bytes
        for _ in itertools.repeat(None, cls.free):
            _FILLED[position] = make()
            position += 1
        per_class[cls.size] = cls.free
        filled_bytes += cls.free_bytes
    if free_lists:
        for free in counts.free_lists:
            take = _free_list_maker(free.name)
            if take is None or position + free.objects > limit:
                continue
            for _ in itertools.repeat(None, free.objects):
                _FILLED[position] = take()
                position += 1
    del _FILLED[position:]
    total = position - start
    after = pool_stats()
    return FillResult(
        objects=total,
        filled=filled_bytes,
        per_class={size: n for size, n in per_class.items() if n},
        skipped=skipped,
        before=before,
        after=after,
        seconds=time.perf_counter() - started,
        rss_before=rss_before,
        rss_after=own_rss(),
    )


def filled_objects() -> int:
    """How many objects :func:`fill_holes` keeps alive in this process."""
    return len(_FILLED)


def release_fill() -> None:
    """Drop the objects :func:`fill_holes` kept (tests, or a master that
    stops forking); their blocks become holes again."""
    _FILLED.clear()


def own_rss() -> int:
    """This process's resident set in bytes, 0 where /proc cannot tell."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
