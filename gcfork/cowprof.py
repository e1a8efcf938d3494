"""Copy-on-write profiler: where a worker's private pages are, and what lives on them.

Runs inside the worker it profiles (Linux only). Two views:

- **by mapping**, from ``/proc/self/smaps``: private clean and dirty bytes of
  the heap, the anonymous mappings (pymalloc arenas, large allocations),
  the stack and each library, grouped by name;
- **by Python object**, by matching the addresses of live objects with the
  pages ``/proc/self/pagemap`` marks as *exclusively mapped* (bit 56; readable
  without privileges): rows per type and per module, for objects the worker
  inherited (frozen when it was forked) and objects it made since.

"Exclusively mapped" means no other process maps the page now: the pages this
worker copied or allocated, and also inherited pages that every other sharer
(the master, the other workers) has since copied away from. With one worker
and a master that writes to a page after the fork, that page shows up here
although this worker never wrote it.

How it runs (:func:`profile_self`):

1. the worker reads ``smaps`` and the ``pagemap`` entries of its writable
   private mappings, into a few large buffers, *before* anything is forked:
   a child maps the same pages and clears their exclusive bit;
2. it forks a throw-away child (same addresses): inspecting objects from
   Python writes their reference counts, so the walk copies pages in the
   child, never in the worker. The child parses, walks every object the
   collector knows plus the untracked ones they refer to, sends the result
   through a pipe and leaves with ``os._exit``;
3. the worker waits for the child (with a timeout) and returns the profile.

The worker itself allocates only those buffers and the result: a few pages of
its own may be copied by profiling it, no more.

How it is triggered: gunicorn reserves its signals in workers (``USR1``
reopens logs; ``USR2`` is reset to its default action, which kills the
worker), so a worker looks now and then for ``explain-<pid>.request`` in a
directory (``0700``, owned by the worker's user): :mod:`gcfork.trigger`.
``gcfork explain --pid PID`` (:func:`explain_main`) creates that file, waits
for ``explain-<pid>.json`` (written ``0600``) and prints
:func:`render_explain`. The gunicorn adapter polls from the thread that
publishes the worker's statistics; other servers may call
:func:`start_trigger`, a thread of its own. The directory is hidden inside
the server's private stats directory, so ``gcfork explain`` finds it from the
worker's pid the way ``gcfork report`` finds the stats
(:func:`trigger_dir_of`), and it goes away with the stats directory.

Module attribution: modules, functions, classes and code objects name their
own module (``__name__``, ``__module__``, ``co_filename``); instances of
classes defined in Python name their class's module; everything else (dicts,
lists, strings, ints...) takes the label of the first labelled object the walk
reached it from, starting from ``sys.modules``. Objects reachable from no
module are ``<unreachable from modules>``. An untracked object takes the
origin (inherited or worker-made) of the object it was reached from.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import select
import signal
import stat
import sys
import threading
import time
import types
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from gcfork import files
from gcfork.exceptions import CowProfileError, StatsDirError
from gcfork.memory import process_start
from gcfork.stats import TRIGGER_NAME, StatsDir, advertised
from gcfork.trigger import ExplainTrigger, request_names

__all__ = [
    "CowProfile",
    "CowProfileError",
    "MappingRow",
    "ObjectRow",
    "explain_main",
    "profile_self",
    "read_profile",
    "render_explain",
    "request_profile",
    "start_trigger",
    "trigger_dir",
    "trigger_dir_of",
    "write_profile",
]

SCHEMA = 1
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PAGE_SHIFT = _PAGE_SIZE.bit_length() - 1
_PRESENT = 1 << 63
_EXCLUSIVE = 1 << 56
# A mapping larger than this is a reservation (sanitizers, some allocators):
# reading its pagemap would cost 2 MB per GiB for pages that are not there.
_MAX_SCANNED_MAPPING = 64 << 30
_SMAPS_FIELDS = {
    b"Size:": "size",
    b"Rss:": "rss",
    b"Pss:": "pss",
    b"Shared_Clean:": "shared_clean",
    b"Shared_Dirty:": "shared_dirty",
    b"Private_Clean:": "private_clean",
    b"Private_Dirty:": "private_dirty",
    b"Swap:": "swap",
}


class MappingRow(NamedTuple):
    """One group of mappings of :attr:`CowProfile.mappings`; sizes in bytes.

    Attributes:
        group: ``[heap]``, ``[anon]``, ``[stack]``, or a file's path.
        mappings: how many mappings the group adds up.
        exclusive: bytes of pages pagemap marks exclusively mapped (scanned
            mappings only: writable and private; 0 for the others).
    """

    group: str
    mappings: int
    size: int
    rss: int
    pss: int
    shared_clean: int
    shared_dirty: int
    private_clean: int
    private_dirty: int
    swap: int
    exclusive: int


class ObjectRow(NamedTuple):
    """Objects of one type or module found on exclusively mapped pages.

    Attributes:
        key: the type (``module.QualName``; builtins bare) or the module.
        origin: ``inherited`` (frozen when the worker was forked) or
            ``worker`` (made by the worker since).
        objects: how many objects start on such a page.
        bytes: their ``sys.getsizeof`` total.
        pages: distinct exclusive pages holding at least one of them (a page
            shared by several keys counts for each).
    """

    key: str
    origin: str
    objects: int
    bytes: int
    pages: int


@dataclass
class CowProfile:
    """The result of :func:`profile_self`; sizes in bytes.

    Attributes:
        pid: the profiled worker; with ``started``, its identity.
        started: the worker's start time, in clock ticks since boot (as in
            ``/proc/PID/stat``).
        ppid: its parent (the gunicorn master).
        taken: when the profile was taken (Unix time).
        seconds: how long it took.
        python: the worker's Python version.
        page_size: bytes per page.
        frozen: objects in the permanent generation when it was taken.
        scanned: bytes of the mappings whose pagemap was read.
        exclusive: bytes of exclusively mapped pages among those.
        with_objects: bytes of exclusive pages holding at least one object
            the walk found (inherited or worker-made).
        mappings: one row per group, most private first.
        by_type: rows per type and origin, most pages first.
        by_module: rows per module and origin, most pages first.
        notes: what the reader should know about this profile.
    """

    pid: int
    started: int
    ppid: int
    taken: float
    seconds: float
    python: str
    page_size: int
    frozen: int
    scanned: int
    exclusive: int
    with_objects: int
    mappings: list[MappingRow] = field(default_factory=list)
    by_type: list[ObjectRow] = field(default_factory=list)
    by_module: list[ObjectRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema"] = SCHEMA
        data["mappings"] = [row._asdict() for row in self.mappings]
        data["by_type"] = [row._asdict() for row in self.by_type]
        data["by_module"] = [row._asdict() for row in self.by_module]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CowProfile:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"profile schema {data.get('schema')!r}, expected {SCHEMA}")
        fields = {k: v for k, v in data.items() if k != "schema"}
        fields["mappings"] = [MappingRow(**row) for row in data["mappings"]]
        fields["by_type"] = [ObjectRow(**row) for row in data["by_type"]]
        fields["by_module"] = [ObjectRow(**row) for row in data["by_module"]]
        return cls(**fields)


# -- taking a profile (worker) ----------------------------------------------------


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
        smaps = _read(f"/proc/{pid}/smaps")
        ranges = _scannable(smaps)
        pagemaps = _read_pagemap(pid, ranges)
    except OSError as exc:
        raise CowProfileError(pid, f"cannot read /proc/{pid}: {exc}") from exc
    # Only now: the child maps the same pages and clears their exclusive bit.
    payload = _in_child(lambda: _analyse(smaps, ranges, pagemaps, top), pid, timeout)
    data = json.loads(payload)
    data["seconds"] = time.perf_counter() - begun
    return CowProfile.from_json(data)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _scannable(smaps: bytes) -> list[tuple[int, int]]:
    """Address ranges whose pagemap to read: private, writable, resident."""
    ranges = []
    start = end = 0
    wanted = False
    for line in smaps.split(b"\n"):
        head = line.split(None, 1)[0] if line else b""
        if b"-" in head and not head.endswith(b":"):
            first, last = head.split(b"-")
            start, end = int(first, 16), int(last, 16)
            perms = line.split()[1]
            wanted = perms[1:2] == b"w" and perms[3:4] == b"p"
        elif (
            head == b"Rss:"
            and wanted
            and int(line.split()[1]) > 0
            and end - start <= _MAX_SCANNED_MAPPING
        ):
            ranges.append((start, end))
    return ranges


def _read_pagemap(pid: int, ranges: list[tuple[int, int]]) -> list[bytes]:
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        out = []
        for start, end in ranges:
            want = ((end - start) >> _PAGE_SHIFT) * 8
            offset = (start >> _PAGE_SHIFT) * 8
            chunks = []
            while want > 0:
                chunk = os.pread(fd, min(want, 1 << 22), offset)
                if not chunk:
                    break
                chunks.append(chunk)
                want -= len(chunk)
                offset += len(chunk)
            out.append(b"".join(chunks))
        return out
    finally:
        os.close(fd)


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
            view = memoryview(text)
            while view:
                view = view[os.write(write_end, view):]
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


# -- analysis (throw-away child) ----------------------------------------------------


def _analyse(
    smaps: bytes, ranges: list[tuple[int, int]], pagemaps: list[bytes], top: int
) -> str:  # pragma: no cover - runs in the throw-away child
    import array

    worker = os.getppid()
    exclusive: set[int] = set()
    scanned = 0
    for (start, _end), raw in zip(ranges, pagemaps):
        entries = array.array("Q")
        entries.frombytes(raw[: len(raw) - len(raw) % 8])
        first = start >> _PAGE_SHIFT
        scanned += len(entries)
        mask = _PRESENT | _EXCLUSIVE
        for index, entry in enumerate(entries):
            if entry & mask == mask:
                exclusive.add(first + index)
    del pagemaps
    mappings = _group_mappings(smaps, sorted(exclusive))
    frozen = gc.get_freeze_count()
    walk = _Walk(exclusive)
    walk.run()
    profile = CowProfile(
        pid=worker,
        started=_start_time(worker),
        ppid=_parent_of(worker),
        taken=time.time(),
        seconds=0.0,
        python=sys.version.split()[0],
        page_size=_PAGE_SIZE,
        frozen=frozen,
        scanned=scanned * _PAGE_SIZE,
        exclusive=len(exclusive) * _PAGE_SIZE,
        with_objects=len(walk.pages_seen) * _PAGE_SIZE,
        mappings=mappings,
        by_type=walk.rows(walk.by_type, top),
        by_module=walk.rows(walk.by_module, top),
        notes=walk.notes,
    )
    return json.dumps(profile.to_json())


def _group_mappings(smaps: bytes, exclusive: list[int]) -> list[MappingRow]:
    """Sum smaps fields per path; ``exclusive`` is the sorted exclusive page numbers."""
    from bisect import bisect_left
    groups: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    for line in smaps.split(b"\n"):
        parts = line.split()
        if not parts:
            continue
        head = parts[0]
        if b"-" in head and not head.endswith(b":"):
            first, last = (int(x, 16) for x in head.split(b"-"))
            path = b" ".join(parts[5:]).decode(errors="replace") if len(parts) > 5 else ""
            name = path or "[anon]"
            current = groups.setdefault(name, dict.fromkeys(MappingRow._fields[1:], 0))
            current["mappings"] += 1
            count = bisect_left(exclusive, last >> _PAGE_SHIFT) - bisect_left(
                exclusive, first >> _PAGE_SHIFT
            )
            current["exclusive"] += _PAGE_SIZE * count
        elif current is not None and head in _SMAPS_FIELDS:
            current[_SMAPS_FIELDS[head]] += int(parts[1]) * 1024
    rows = [MappingRow(group=name, **values) for name, values in groups.items()]
    rows.sort(key=lambda r: (r.private_dirty + r.private_clean, r.rss), reverse=True)
    return rows


class _Walk:  # pragma: no cover - runs in the throw-away child
    """Every object the collector knows, and the untracked ones they refer to,
    labelled with a module and an origin; counts those on exclusive pages."""

    UNREACHABLE = "<unreachable from modules>"

    def __init__(self, exclusive: set[int]) -> None:
        self.exclusive = exclusive
        self.by_type: dict[tuple[str, str], list[Any]] = {}
        self.by_module: dict[tuple[str, str], list[Any]] = {}
        self.pages_seen: set[int] = set()
        self.notes: list[str] = []
        self._files: dict[str, str] = {}
        self._type_names: dict[type, str] = {}

    def run(self) -> None:
        young = {id(o) for o in gc.get_objects()}
        gc.unfreeze()  # this child is thrown away: its GC state does not matter
        tracked = gc.get_objects()
        if not gc.get_freeze_count() and len(young) == len(tracked):
            self.notes.append("no frozen objects: every object counts as made by the worker")
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if isinstance(file, str):
                self._files[file] = name
        seen: set[int] = set()
        roots: list[tuple[object, str, str]] = [
            (m, getattr(m, "__name__", "?"), "inherited") for m in list(sys.modules.values())
        ]
        roots.extend(
            (o, self.UNREACHABLE, "worker" if id(o) in young else "inherited") for o in tracked
        )
        del tracked
        for root, label, origin in roots:
            if id(root) not in seen:
                self._dfs(root, label, origin, seen, young)

    def _dfs(
        self, root: object, label: str, origin: str, seen: set[int], young: set[int]
    ) -> None:
        is_tracked = gc.is_tracked
        stack: list[tuple[Any, str, str]] = [(root, label, origin)]
        seen.add(id(root))
        while stack:
            obj, inherited_label, parent_origin = stack.pop()
            address = id(obj)
            own = self._label(obj)
            label = own or inherited_label
            if is_tracked(obj):
                parent_origin = "worker" if address in young else "inherited"
            page = address >> _PAGE_SHIFT
            if page in self.exclusive:
                self._count(obj, label, parent_origin, page)
            for child in _children(obj):
                if id(child) not in seen:
                    seen.add(id(child))
                    stack.append((child, label, parent_origin))

    def _label(self, obj: Any) -> str | None:
        kind = type(obj)
        try:
            if kind is types.ModuleType:
                return str(obj.__name__)
            if kind is types.FunctionType:
                return str(obj.__module__)
            if kind is types.CodeType:
                return self._files.get(obj.co_filename, str(obj.co_filename))
            if isinstance(obj, type):
                return str(type.__dict__["__module__"].__get__(obj))
            if kind.__flags__ & (1 << 9):  # Py_TPFLAGS_HEAPTYPE: a class made in Python
                return str(type.__dict__["__module__"].__get__(kind))
        except Exception:
            return None
        return None

    def _count(self, obj: object, label: str, origin: str, page: int) -> None:
        kind = type(obj)
        name = self._type_names.get(kind)
        if name is None:
            module = getattr(kind, "__module__", "builtins")
            name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
            self._type_names[kind] = name
        try:
            size = sys.getsizeof(obj)
        except Exception:
            size = 0
        self.pages_seen.add(page)
        for table, key in ((self.by_type, name), (self.by_module, label)):
            row = table.get((key, origin))
            if row is None:
                row = table[(key, origin)] = [0, 0, set()]
            row[0] += 1
            row[1] += size
            row[2].add(page)

    @staticmethod
    def rows(table: dict[tuple[str, str], list[Any]], top: int) -> list[ObjectRow]:
        rows = [
            ObjectRow(key, origin, count, size, len(pages))
            for (key, origin), (count, size, pages) in table.items()
        ]
        rows.sort(key=lambda r: (r.pages, r.bytes), reverse=True)
        kept: list[ObjectRow] = []
        for origin in ("inherited", "worker"):
            kept.extend([r for r in rows if r.origin == origin][:top])
        return kept


def _children(obj: Any) -> Iterable[object]:  # pragma: no cover - throw-away child
    if type(obj) is types.CodeType:
        # Not a GC object: get_referents sees nothing in it.
        return (obj.co_consts, obj.co_names, obj.co_filename, obj.co_name)
    children = gc.get_referents(obj)
    if issubclass(type(obj), dict):
        # dict_traverse skips the keys of str-keyed dicts. type(), not
        # isinstance: a proxy (Django's SimpleLazyObject) claims its target's
        # __class__, and dict.keys refuses it.
        children.extend(dict.keys(obj))
    return children


def _start_time(pid: int) -> int:
    try:
        stat = _read(f"/proc/{pid}/stat")
        return int(stat.rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def _parent_of(pid: int) -> int:
    try:
        stat = _read(f"/proc/{pid}/stat")
        return int(stat.rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


# -- files and trigger ----------------------------------------------------------------

# A profile is a few hundred kilobytes; anything much larger is not one.
_MAX_PROFILE_BYTES = 64 << 20


def write_profile(profile: CowProfile, path: str, *, dir_fd: int | None = None) -> None:
    """Write ``profile`` as JSON to ``path``, mode ``0600``, atomically.

    Args:
        dir_fd: an open directory; ``path`` is then a name in it.

    .. versionchanged:: 0.3
       Written to a random temporary name (``O_EXCL``), then renamed; ``dir_fd``.
    """
    _write(path, json.dumps(profile.to_json(), allow_nan=False).encode(), dir_fd)


def _write(path: str, data: bytes, dir_fd: int | None) -> None:
    if dir_fd is not None:
        files.write_private(dir_fd, path, data)
        return
    parent = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        files.write_private(parent, os.path.basename(path), data)
    finally:
        os.close(parent)


def _read_json(path: str, dir_fd: int | None, owners: Collection[int] | None) -> dict[str, Any]:
    """Raises FileNotFoundError, or ValueError saying why, in words."""
    data = files.loads_strict(files.read_private(dir_fd, path, _MAX_PROFILE_BYTES, owners))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def read_profile(path: str, *, dir_fd: int | None = None,
                 owners: Collection[int] | None = None) -> CowProfile:
    """Read a profile written by :func:`write_profile` (a symlink is refused).

    Args:
        dir_fd: an open directory; ``path`` is then a name in it.
        owners: the uids the file may belong to; None for any.

    Raises:
        CowProfileError: unreadable, not JSON, or another schema.
    """
    try:
        return CowProfile.from_json(_read_json(path, dir_fd, owners))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CowProfileError(0, f"cannot read {path}: {exc}") from exc


def trigger_dir(stats_dir: str) -> str:
    """The trigger directory of a server whose stats directory is ``stats_dir``.

    A hidden entry, so the stats readers skip it; made by the master for the
    workers' user and removed with the stats directory (see
    :meth:`gcfork.stats.StatsDir.create`).
    """
    return os.path.join(stats_dir, TRIGGER_NAME)


def trigger_dir_of(pid: int) -> str:
    """The trigger directory of worker ``pid``: in the stats directory its
    master (its parent) advertised, as ``gcfork report`` finds it.

    Raises:
        CowProfileError: no such process, or its parent advertises nothing.
    """
    master = _parent_of(pid)
    if not master:
        raise CowProfileError(pid, "no such process")
    start = process_start(master)
    stats_dir = advertised(master, start) if start is not None else None
    if stats_dir is None:
        raise CowProfileError(
            pid, f"its parent {master} advertises no gcfork stats directory: is {pid} a worker "
            "of a gunicorn master running gcfork? Otherwise pass --dir"
        )
    return trigger_dir(stats_dir)


def _private_dir(directory: str | StatsDir) -> int:
    """Open the trigger directory, made 0700 if missing; refused, naming it,
    unless it is a private directory of ours (or of its parent's owner, who
    controls the path anyway: a root master's workers run as another user).
    Worker, in ``post_fork``."""
    if isinstance(directory, StatsDir):
        try:
            return directory.subdir(TRIGGER_NAME)
        except StatsDirError as exc:
            raise CowProfileError(os.getpid(), str(exc)) from None
    path = os.path.normpath(directory)
    try:
        # Not followed either: the parent is normally the stats directory.
        parent = files.open_dir(os.path.dirname(path) or ".")
        try:
            owners = {os.geteuid(), os.fstat(parent).st_uid}
            with contextlib.suppress(FileExistsError):
                os.close(files.make_dir(parent, os.path.basename(path)))
            fd = files.open_dir(os.path.basename(path), parent)
        finally:
            os.close(parent)
    except OSError as exc:
        raise CowProfileError(os.getpid(), f"refusing directory {path}: "
                              f"{'it is a symlink' if exc.errno == errno.ELOOP else exc}") from None
    info = os.fstat(fd)
    if info.st_uid not in owners or stat.S_IMODE(info.st_mode) & 0o077:
        os.close(fd)
        raise CowProfileError(os.getpid(), f"refusing directory {path}: it must be owned by uid "
                              f"{' or '.join(map(str, sorted(owners)))}, mode 0700 (it is uid "
                              f"{info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o})")
    return fd


def start_trigger(directory: str | StatsDir, interval: float = 1.0) -> threading.Thread:
    """Worker, in ``post_fork``: start the daemon thread that profiles this
    worker when ``gcfork explain --pid PID`` asks.

    The thread checks for ``explain-<pid>.request`` in the trigger directory
    every ``interval`` seconds, through a descriptor opened here. A request
    file owned by another user than the worker's, the directory's or root is
    ignored.

    Args:
        directory: the server's stats directory (its ``.explain``
            subdirectory is used), or the trigger directory's path
            (:func:`trigger_dir`), made ``0700`` if missing.
        interval: seconds between two checks.

    Returns:
        The started thread.

    Raises:
        CowProfileError: the directory is not a private one of ours; naming it.

    .. versionadded:: 0.2
    .. versionchanged:: 0.3
       Accepts a :class:`~gcfork.stats.StatsDir`; works through a descriptor.
    """
    trigger = ExplainTrigger(_private_dir(directory))
    thread = threading.Thread(
        target=_serve, args=(trigger, interval), name="gcfork-explain", daemon=True
    )
    thread.start()
    return thread


def _serve(trigger: ExplainTrigger, interval: float) -> None:
    # A daemon thread of the worker; under gunicorn's ``user`` it runs as that
    # user from the setuid on (glibc applies it to every thread).
    pid = os.getpid()
    while os.getpid() == pid:  # a fork of the worker inherits no thread, but be sure
        time.sleep(interval)
        trigger.poll()


def request_profile(pid: int, directory: str | None = None, timeout: float = 60.0) -> CowProfile:
    """Ask the worker ``pid`` (running :func:`start_trigger`) for a profile and wait.

    Args:
        pid: the worker.
        directory: its trigger directory; None finds it with :func:`trigger_dir_of`.
        timeout: seconds to wait for the profile.

    Raises:
        CowProfileError: no answer in time, or the worker reported an error.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise CowProfileError(pid, "no such process") from None
    except PermissionError:
        pass
    where = os.path.normpath(directory or trigger_dir_of(pid))
    try:
        # Neither the stats directory nor the trigger directory is followed.
        parent = files.open_dir(os.path.dirname(where) or ".")
        try:
            fd = files.open_dir(os.path.basename(where), parent)
        finally:
            os.close(parent)
    except FileNotFoundError:
        raise CowProfileError(
            pid, f"{where} does not exist: no worker started the explain trigger with it"
        ) from None
    except OSError as exc:
        why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise CowProfileError(pid, f"refusing directory {where}: {why}") from None
    try:
        return _ask(pid, where, fd, timeout)
    finally:
        os.close(fd)


def _ask(pid: int, where: str, dir_fd: int, timeout: float) -> CowProfile:
    info = os.fstat(dir_fd)
    if (info.st_uid != os.geteuid() and os.geteuid() != 0) or info.st_mode & 0o022:
        raise CowProfileError(pid, f"refusing directory {where}: uid {info.st_uid}, mode "
                              f"{stat.S_IMODE(info.st_mode):04o}; others could plant answers")
    owners = {os.geteuid(), info.st_uid}
    request, result = request_names(pid)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(result, dir_fd=dir_fd)
    files.write_private(dir_fd, request, b"")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = _read_json(result, dir_fd, owners)
        except FileNotFoundError:
            time.sleep(0.2)
            continue
        except ValueError as exc:
            raise CowProfileError(pid, f"cannot read {where}/{result}: {exc}") from None
        if "error" in data:
            raise CowProfileError(pid, f"the worker reported: {str(data['error'])[:500]}")
        try:
            return CowProfile.from_json(data)
        except (ValueError, TypeError, KeyError) as exc:
            raise CowProfileError(pid, f"cannot read {where}/{result}: {exc!r}") from None
    raise CowProfileError(
        pid,
        f"no profile in {where} after {timeout:.0f}s: is it a gcfork worker started with the "
        "explain trigger, using this directory?",
    )


# -- rendering -------------------------------------------------------------------------


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _group_name(group: str) -> str:
    return group if group.startswith("[") or "/" not in group else os.path.basename(group)


def render_explain(profile: CowProfile, top: int = 15) -> str:
    """The profile as text: private memory by mapping, then the types and
    modules found on exclusively mapped pages, most pages first.

    Args:
        profile: as returned by :func:`profile_self` or :func:`read_profile`.
        top: rows per table.
    """
    p = profile
    ps = p.page_size
    lines = [
        f"gcfork explain: worker {p.pid} (parent {p.ppid}), Python {p.python}, "
        f"{p.frozen} objects frozen; profiled in {p.seconds:.1f}s",
        "",
        "Private memory by mapping (exclusive = pages no other process maps now):",
        f"  {'mapping':<34} {'n':>4} {'rss':>10} {'priv dirty':>11} {'priv clean':>11} "
        f"{'exclusive':>10}",
    ]
    for row in p.mappings[:top]:
        if row.private_dirty + row.private_clean + row.exclusive == 0:
            continue
        lines.append(
            f"  {_group_name(row.group)[:34]:<34} {row.mappings:>4} {_size(row.rss):>10} "
            f"{_size(row.private_dirty):>11} {_size(row.private_clean):>11} "
            f"{_size(row.exclusive):>10}"
        )
    total_private = sum(r.private_dirty + r.private_clean for r in p.mappings)
    lines += [
        f"  total private: {_size(total_private)}; exclusive pages in writable mappings: "
        f"{_size(p.exclusive)} of {_size(p.scanned)} scanned; "
        f"{_size(p.with_objects)} of them hold Python objects the walk found",
        "",
    ]
    for title, rows in (("type", p.by_type), ("module", p.by_module)):
        for origin, what in (
            ("inherited", "inherited from the master (frozen at fork)"),
            ("worker", "made by the worker since"),
        ):
            chosen = [r for r in rows if r.origin == origin][:top]
            if not chosen:
                continue
            lines.append(f"Top {title}s on exclusive pages, objects {what}:")
            lines.append(f"  {'pages':>7} {'size':>10} {'objects':>9}  {title}")
            for r in chosen:
                lines.append(f"  {r.pages:>7} {_size(r.pages * ps):>10} {r.objects:>9}  {r.key}")
            lines.append("")
    lines += [f"note: {n}" for n in p.notes]
    lines.append(
        "A page holding objects of several types or modules counts once in each row; "
        "'size' is pages x page size."
    )
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------


def explain_main(argv: Sequence[str]) -> int:
    """``gcfork explain``: profile a running worker, or render a saved profile.

    Args:
        argv: the arguments after ``explain``.

    Returns:
        The exit status: 0, 1 if the profile could not be had, 2 on bad usage.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="gcfork explain",
        description="Show where a gunicorn worker's private (copied) memory is and which "
        "Python types and modules live on it. Every worker of a gunicorn master running "
        "gcfork answers (gcfork starts the trigger in post_fork).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pid", type=int, help="the worker to profile")
    source.add_argument("--file", help="render a profile saved as JSON instead")
    parser.add_argument("--dir", help="trigger directory (default: .explain in the stats "
                        "directory the worker's master advertises)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    parser.add_argument("--top", type=int, default=15, help="rows per table")
    parser.add_argument("--json", action="store_true", help="print the profile as JSON")
    args = parser.parse_args(list(argv))
    try:
        if args.file:
            profile = read_profile(args.file)
        else:
            profile = request_profile(args.pid, args.dir, args.timeout)
    except (CowProfileError, OSError) as exc:
        print(f"gcfork explain: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(profile.to_json(), indent=1))
    else:
        print(render_explain(profile, top=args.top))
    return 0
