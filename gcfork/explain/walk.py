"""The object walk of ``gcfork explain``: which Python objects sit on exclusive pages.

Runs only in the throw-away child of :mod:`gcfork.explain.capture`: looking
at an object from Python writes its reference count, which would copy the
page in the worker; in the child the copy is the child's and goes with it.

Every object the collector knows is visited, plus the untracked ones they
refer to, and each one whose address falls on an exclusive page
(:mod:`gcfork.explain.pages`) is counted by type and by module, separately for
objects the worker *inherited* (frozen when it was forked) and objects the
*worker* made since.

Module attribution: modules, functions, classes and code objects name their
own module (``__name__``, ``__module__``, ``co_filename``); instances of
classes defined in Python name their class's module; everything else (dicts,
lists, strings, ints...) takes the label of the first labelled object the walk
reached it from, starting from ``sys.modules``. Objects reachable from no
module are ``<unreachable from modules>``. An untracked object takes the
origin (inherited or worker-made) of the object it was reached from.

.. versionadded:: 0.2
"""

from __future__ import annotations

import gc
import sys
import types
from typing import Any

from gcfork.explain.model import ObjectRow
from gcfork.explain.pages import PAGE_SHIFT
from gcfork.referents import referents

__all__ = ["ObjectWalk"]


class ObjectWalk:  # pragma: no cover - runs in the throw-away child
    """Every object the collector knows, and the untracked ones they refer to,
    labelled with a module and an origin; counts those on exclusive pages.

    Args:
        exclusive: the numbers of the exclusively mapped pages.
    """

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
            page = address >> PAGE_SHIFT
            if page in self.exclusive:
                self._count(obj, label, parent_origin, page)
            for child in referents(obj):
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
        """The rows of ``by_type`` or ``by_module``, most pages first, ``top``
        per origin."""
        rows = [
            ObjectRow(key, origin, count, size, len(pages))
            for (key, origin), (count, size, pages) in table.items()
        ]
        rows.sort(key=lambda r: (r.pages, r.bytes), reverse=True)
        kept: list[ObjectRow] = []
        for origin in ("inherited", "worker"):
            kept.extend([r for r in rows if r.origin == origin][:top])
        return kept
