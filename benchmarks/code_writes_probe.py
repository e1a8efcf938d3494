"""Which of the master's code objects does a worker write to, and how many pages do they cost?

On 3.11+ the specializing interpreter writes into the code object it runs:
adaptive counters and inline caches live in the bytecode, which lives in the
code object. The immortal heap stops reference counts from being written,
not these. This probe measures what that costs a worker on the Django
example, in-process (no sockets):

- the master imports the app (collector off), warms it up with one pass of
  ``paths.txt``, collects what the warm-up made, freezes, and on 3.12+
  makes the heap immortal, as gcfork's ``beyond`` does;
- it copies the bytes of every code object a function refers to (nested
  ones included);
- a child serves ``--requests`` requests of the mix, then compares every code
  object with its copy and reports how many it wrote to, their size, and the
  4 KiB pages they lie on: the pages the child copied for them, most of
  which also hold code objects it did not write (if the written ones were
  packed together they would fill ``size / 4 KiB`` pages).

    DJANGO_APP_DB=/tmp/probe.sqlite3 .venvs/bench-3.12/bin/python \\
        benchmarks/code_writes_probe.py
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import random
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gc_pause_probe import EXAMPLE, load_app

from gcfork.warmup import request

PAGE = 4096


def code_objects() -> list[types.CodeType]:
    """Every code object a function of this process refers to, nested ones too."""
    gc.unfreeze()  # gc.get_objects() lists no frozen object
    functions = [o for o in gc.get_objects() if isinstance(o, types.FunctionType)]
    gc.freeze()
    found: dict[int, types.CodeType] = {}
    todo = [f.__code__ for f in functions]
    while todo:
        code = todo.pop()
        if id(code) not in found:
            found[id(code)] = code
            todo.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return list(found.values())


def pages(codes: list[types.CodeType]) -> set[int]:
    spans = ((id(c), id(c) + sys.getsizeof(c) - 1) for c in codes)
    return {page for start, end in spans for page in range(start // PAGE, end // PAGE + 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    app = load_app()
    mix = [p for p in (EXAMPLE / "paths.txt").read_text().split() if p.startswith("/")]
    for path in dict.fromkeys(mix):
        request(app, path)
    from django.db import connections

    connections.close_all()
    gc.collect(0)
    gc.freeze()
    if sys.version_info >= (3, 12):
        from gcfork.immortal import immortalize_heap

        immortalize_heap()
    codes = code_objects()
    copies = [ctypes.string_at(id(c), sys.getsizeof(c)) for c in codes]
    total = sum(map(len, copies))
    print(f"CPython {sys.version.split()[0]}: {len(codes):,} code objects, "
          f"{total / 2**20:.1f} MiB on {len(pages(codes)):,} pages; "
          f"a child serves {args.requests:,} requests; load {os.getloadavg()[0]:.2f}")
    random.Random(0).shuffle(mix)
    pid = os.fork()
    if pid == 0:
        try:
            gc.set_threshold(700, 10, 10)
            gc.enable()
            for i in range(args.requests):
                request(app, mix[i % len(mix)])
            written = [c for c, copy in zip(codes, copies)
                       if ctypes.string_at(id(c), len(copy)) != copy]
            size = sum(sys.getsizeof(c) for c in written)
            touched = len(pages(written))
            print(f"written by the child: {len(written):,} code objects, "
                  f"{size / 2**20:.2f} MiB, on {touched:,} pages ({touched * PAGE / 2**20:.1f} "
                  f"MiB); packed together: {-(-size // PAGE):,} pages")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
