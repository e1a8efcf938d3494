"""Do workers write the code objects' members the immortal walk cannot reach?

CinderX's ``immortalize_heap`` also makes each code object's
``co_localsplusnames`` (a tuple) and ``co_localspluskinds`` (bytes)
immortal. No Python API returns them (``co_varnames`` builds a new tuple), so
gcfork's walk does not reach them. This probe checks whether that costs
anything: the master imports and warms up the Django example, runs
``immortalize`` (with the finisher), reads the reference count of both
members of every function's code object, forks a child that serves
``paths.txt`` twice in-process, and counts, in the child, the members whose
count changed.

The members are found by address: their offset in the code object is the
word that points to a tuple holding exactly the local, cell and free variable
names of a probe function (and the next word pointing to bytes of that
length), looked for among the code object's first 40 words, each pointer
checked against ``/proc/self/maps`` before it is read.

Usage (3.12+, an interpreter with Django; the database from ``setup_demo``)::

    DJANGO_APP_DB=/tmp/db.sqlite3 PYTHONPATH=. python benchmarks/localsplus_probe.py
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from pathlib import Path
from types import CodeType

APP_DIR = Path(__file__).resolve().parent.parent / "examples" / "django_app"


def _word(address: int) -> int:
    return ctypes.c_uint64.from_address(address).value


def _count(address: int) -> int:
    return ctypes.c_uint32.from_address(address).value  # the low half: 3.12 to 3.15


def _readable() -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            if perms.startswith("r"):
                low, high = (int(x, 16) for x in span.split("-"))
                ranges.append((low, high))
    return ranges


def _offsets() -> tuple[int, int]:
    """Offsets of co_localsplusnames and co_localspluskinds in a code object."""

    def probe(alpha_local: int, beta_local: int) -> object:
        gamma_local = alpha_local + beta_local

        def inner() -> int:
            return gamma_local

        return inner

    code = probe.__code__
    names = set(code.co_varnames + code.co_cellvars + code.co_freevars)
    ranges = _readable()
    for index in range(2, 40):
        pointer = _word(id(code) + 8 * index)
        if pointer % 8 or not any(lo <= pointer and pointer + 16 <= hi for lo, hi in ranges):
            continue
        if _word(pointer + 8) != id(tuple):
            continue
        found = ctypes.cast(pointer, ctypes.py_object).value
        following = _word(id(code) + 8 * (index + 1))
        if (set(found) == names and len(found) == len(names)
                and _word(following + 8) == id(bytes)):
            return 8 * index, 8 * (index + 1)
    raise SystemExit("co_localsplusnames not found in this interpreter's code objects")


def main() -> int:
    if sys.version_info < (3, 12):
        raise SystemExit("needs CPython 3.12+ (immortalize)")
    gc.disable()
    sys.path.insert(0, str(APP_DIR))
    os.chdir(APP_DIR)
    from shopsite.wsgi import application

    from gcfork.finish import Finisher
    from gcfork.immortal import immortalize_heap
    from gcfork.warmup import close_connections, request

    paths = [line.strip() for line in Path("paths.txt").read_text().splitlines() if line.strip()]
    for path in paths:
        request(application, path, host="localhost")
    close_connections()
    names_at, kinds_at = _offsets()
    gc.collect()
    gc.freeze()
    immortalize_heap(finish=Finisher())
    gc.unfreeze()
    codes = {id(o.__code__): o.__code__ for o in gc.get_objects()
             if isinstance(getattr(o, "__code__", None), CodeType)}
    gc.freeze()
    members = [_word(id(code) + at) for code in codes.values() for at in (names_at, kinds_at)]
    before = [_count(address) for address in members]
    immortal = sum(count >= 2**31 for count in before)
    print(f"{sys.version.split()[0]}: {len(codes)} code objects, {len(members)} members, "
          f"{immortal} of them immortal (shared with other objects, or empty)")
    child = os.fork()
    if child == 0:
        gc.enable()
        for _ in range(2):
            for path in paths:
                request(application, path, host="localhost")
        written = sum(_count(address) != count for address, count in zip(members, before))
        print(f"child after serving paths.txt twice: {written} members had their count written")
        os._exit(0)
    os.waitpid(child, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
