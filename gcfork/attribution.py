"""Which requests copy: a worker's private memory growth, attributed to request paths.

A worker's USS (the pages no other process maps: those it copied from the
master, and those it allocated and kept) grows as it serves. To tell which
paths make it grow, the worker reads its own USS right before and right after
about one request in ``attribute_every`` (:mod:`gcfork.attribution_settings`)
and counts the difference for the request's path (:class:`Attribution`), like
uWSGI's ``memory-report`` turned into per-path figures. The figures go out
with the worker's stats record (:class:`gcfork.records.ByPath`); the tools add
up the workers' (:func:`merge`).

Which requests: the gap to the next sample is drawn at random around
``attribute_every`` (1 to 2N-1, N on average), so that a load cycling through
its paths is not sampled on one path only. A sample whose request overlapped
another request of the same worker (a thread or greenlet of gthread, gevent,
ASGI) is dropped and counted as ``overlapped``: the growth could be either
request's. A failed read switches attribution off in that worker, told once.

Paths are normalised (:func:`normalise_path`): no query string; a segment
that is a number, a UUID or a long hex string becomes ``:id``; and a worker
keeps :data:`MAX_KEPT` distinct paths, the others counted as ``(other)``.

Engine code: it knows no server (the gunicorn glue is
:mod:`gcfork.gunicorn.attribution`) and imports only the standard library.

.. versionadded:: 0.4
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Iterable
from typing import Callable, NamedTuple
from urllib.parse import quote

from gcfork import procfs
from gcfork.records import MAX_PATH_CHARS, MAX_PATHS, ByPath, PathGrowth

__all__ = ["MAX_KEPT", "OTHER", "Attribution", "merge", "normalise_path", "own_uss"]

OTHER = "(other)"
"""The path under which a worker counts the paths past :data:`MAX_KEPT`, and a
record those past :data:`gcfork.records.MAX_PATHS`."""

MAX_KEPT = 2 * MAX_PATHS
"""Distinct paths a worker counts; the :data:`~gcfork.records.MAX_PATHS` with
the biggest growth are published, the rest added to ``(other)``."""

_STALE = 300.0  # seconds: a sample whose request never ended is given up

# Segments that name one object among many: numbers, UUIDs, hashes.
_ID = re.compile(r"[0-9]+|[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}")
# Kept as they are: RFC 3986's unreserved and sub-delims, ':' and '@' (a
# path's own characters); anything else (spaces, non-ASCII) is percent-encoded.
_SAFE = "/-._~!$&'()*+,;=:@%"


def normalise_path(path: str) -> str:
    """The path a sample is counted under.

    The query string (and fragment) dropped; each segment that is all digits,
    a UUID or a hex string of 16 digits or more replaced by ``:id``
    (``/user/42/orders`` -> ``/user/:id/orders``), so that one route is one
    row; anything but printable ASCII percent-encoded; cut to
    :data:`~gcfork.records.MAX_PATH_CHARS` characters (the last three ``...``).
    """
    path = path.split("?", 1)[0].split("#", 1)[0] or "/"
    path = "/".join(":id" if _ID.fullmatch(s) else s for s in path.split("/"))
    path = quote(path, safe=_SAFE)
    if len(path) > MAX_PATH_CHARS:
        path = path[: MAX_PATH_CHARS - 3] + "..."
    return path


def own_uss() -> int:
    """The calling process's USS in bytes (one ``smaps_rollup`` read).

    Raises:
        OSError: it cannot be read; ValueError where the platform has no USS.
    """
    uss = procfs.uss(os.getpid())
    if uss is None:
        raise ValueError("this platform gives no USS (no /proc/PID/smaps)")
    return uss


class _Open(NamedTuple):
    """The sample in progress (at most one per worker)."""

    key: int  # the request's identity, as the adapter gives it
    path: str  # as received; normalised once the sample is counted
    started: int  # the worker's request count at its start
    since: float  # time.monotonic() at its start
    before: int | None  # USS in bytes; None while being read


class Attribution:
    """Worker: samples requests and counts their USS growth by path.

    The adapter calls :meth:`begin` as a request starts and :meth:`end` as it
    ends (gunicorn's ``pre_request`` and ``post_request``, from the thread or
    greenlet serving it); the publishing thread calls :meth:`snapshot`. An
    unsampled request costs a lock and three additions; a sampled one two
    USS reads. Nothing here raises: a failure is told once through
    ``on_error`` and switches attribution off in this worker.

    Args:
        every: sample about one request in ``every``; 0 is off.
        read_uss: reads this process's USS in bytes (:func:`own_uss`).
        on_error: told once, in words, why attribution switched off.
    """

    __slots__ = ("_active", "_countdown", "_every", "_failed", "_lock", "_on_error", "_open",
                 "_overlapped", "_paths", "_random", "_read", "_sampled", "_started")

    def __init__(self, every: int, read_uss: Callable[[], int] = own_uss,
                 on_error: Callable[[str], object] | None = None) -> None:
        self._every = every
        self._read = read_uss
        self._on_error = on_error
        self._failed = False
        # A lock of the process that makes the object (the worker, after the
        # fork): requests of gthread's threads begin and end concurrently.
        self._lock = threading.Lock()
        self._random = random.Random()  # seeded from os.urandom: each worker its own gaps
        self._countdown = self._gap()
        self._active = 0  # requests in progress
        self._started = 0  # requests begun
        self._open: _Open | None = None
        self._paths: dict[str, list[int]] = {}  # path -> [samples, total, max]
        self._sampled = 0
        self._overlapped = 0

    @property
    def every(self) -> int:
        """One request in how many is sampled; 0 when off (or switched off)."""
        return self._every

    def _gap(self) -> int:
        # Uniform on 1..2N-1: N on average, and never in step with a load's cycle.
        return self._random.randint(1, 2 * self._every - 1) if self._every > 0 else 0

    def begin(self, key: int, path: str) -> None:
        """A request starts (``key``: its identity, e.g. ``id()`` of the
        server's request object, alive until :meth:`end`)."""
        with self._lock:
            self._active += 1
            self._started += 1
            if self._every <= 0:
                return
            self._countdown -= 1
            if self._countdown > 0:
                return
            self._countdown = self._gap()
            now = time.monotonic()
            if self._open is not None and now - self._open.since > _STALE:
                self._open = None  # its end never came (a killed greenlet): give it up
            if self._active > 1 or self._open is not None:
                self._overlapped += 1
                return
            self._open = _Open(key, path, self._started, now, None)
        before = self._measure()
        with self._lock:
            if self._open is not None and self._open.key == key:
                self._open = self._open._replace(before=before)

    def end(self, key: int) -> None:
        """The request ``key`` has ended (its response sent)."""
        with self._lock:
            self._active -= 1
            sample = self._open
            if sample is None or sample.key != key:
                return
            self._open = None
            if sample.before is None:
                return  # the read before failed
            if self._started != sample.started or self._active:
                self._overlapped += 1
                return
        after = self._measure()
        if after is None:
            return
        path = normalise_path(sample.path)  # outside the lock: other threads go on
        with self._lock:
            if self._started != sample.started:  # one began while USS was read
                self._overlapped += 1
                return
            self._count(path, after - sample.before)

    def _count(self, path: str, growth: int) -> None:
        # Under the lock.
        if path not in self._paths and len(self._paths) >= MAX_KEPT:
            path = OTHER
        entry = self._paths.setdefault(path, [0, 0, growth])
        entry[0] += 1
        entry[1] += growth
        entry[2] = max(entry[2], growth)
        self._sampled += 1

    def _measure(self) -> int | None:
        try:
            return self._read()
        except Exception as exc:  # the request and the worker go on without it
            self._switch_off(f"cannot read this worker's USS ({exc!r}); per-path "
                             "attribution is off in this worker")
            return None

    def _switch_off(self, why: str) -> None:
        with self._lock:
            self._every = 0
            self._open = None
            told, self._failed = self._failed, True
        if not told and self._on_error is not None:
            self._on_error(why)

    def snapshot(self) -> ByPath | None:
        """The figures so far, for the worker's record (the publishing thread);
        None when attribution was never on here."""
        with self._lock:
            if self._every <= 0 and not self._failed:
                return None
            rows = [PathGrowth(p, n, total, top) for p, (n, total, top) in self._paths.items()]
            sampled, overlapped = self._sampled, self._overlapped
        return ByPath(self._every, sampled, overlapped, _bounded(rows))


def _bounded(rows: list[PathGrowth]) -> tuple[PathGrowth, ...]:
    """The :data:`~gcfork.records.MAX_PATHS` rows of biggest total growth, the
    rest added to ``(other)``, which comes last."""
    rows.sort(key=lambda r: (-r.total, r.path))
    kept = [r for r in rows if r.path != OTHER]
    rest = kept[MAX_PATHS:] + [r for r in rows if r.path == OTHER]
    kept = kept[:MAX_PATHS]
    if rest:
        kept.append(PathGrowth(OTHER, sum(r.samples for r in rest), sum(r.total for r in rest),
                               max(r.max for r in rest)))
    return tuple(kept)


def merge(parts: Iterable[ByPath]) -> ByPath | None:
    """The figures of several workers added up, path by path (the tools, over
    a cluster's live workers): samples and totals summed, the largest single
    growth kept; ``every`` is the largest of theirs. None if ``parts`` is empty.
    The result may hold more than :data:`~gcfork.records.MAX_PATHS` paths."""
    parts = list(parts)
    if not parts:
        return None
    paths: dict[str, list[int]] = {}
    for part in parts:
        for row in part.paths:
            entry = paths.setdefault(row.path, [0, 0, row.max])
            entry[0] += row.samples
            entry[1] += row.total
            entry[2] = max(entry[2], row.max)
    rows = sorted((PathGrowth(p, n, t, m) for p, (n, t, m) in paths.items()),
                  key=lambda r: (r.path == OTHER, -r.total, r.path))
    return ByPath(max(p.every for p in parts), sum(p.sampled for p in parts),
                  sum(p.overlapped for p in parts), tuple(rows))
