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


def warm_up(app: object, mix: list[str]) -> None:
    """As gcfork's ``warmup``: each distinct path once, then free what the
    requests left in cycles, then freeze."""
    from django.db import connections

    for path in dict.fromkeys(mix):
        request(app, path)
    connections.close_all()
    gc.collect(0)
    gc.freeze()


def immortalize() -> None:
    if sys.version_info >= (3, 12):
        from gcfork.immortal import immortalize_heap

        immortalize_heap()


def fill_malloc_free_chunks() -> None:
    """Take every free chunk of glibc's heap, so that what is allocated next
    comes from its top, one object after the other (kept for ever)."""

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def binned() -> tuple[int, int]:
        info = libc.mallinfo2()
        return info.fordblks - info.keepcost, info.keepcost

    size = 1 << 17
    while size >= 16:
        while True:
            free, top = binned()
            block = libc.malloc(size)
            after, top_after = binned()
            if top_after != top or after >= free:  # from the top, not a free chunk
                libc.free(block)
                break
        size //= 2


def pack_hot_code(hot: set[int]) -> tuple[int, int]:
    """Give every function whose code object is in ``hot`` (ids) a fresh copy
    of it, made one after the other (a parent whose nested code moved is
    copied too, so closures it makes get the copy). (functions, copies)."""
    copies: dict[int, types.CodeType] = {}

    def packed(code: types.CodeType) -> types.CodeType:
        if id(code) not in copies:
            consts = tuple(packed(c) if isinstance(c, types.CodeType) else c
                           for c in code.co_consts)
            moved = any(a is not b for a, b in zip(consts, code.co_consts))
            copies[id(code)] = (code.replace(co_consts=consts) if id(code) in hot or moved
                                else code)
        return copies[id(code)]

    fill_malloc_free_chunks()
    gc.unfreeze()
    functions = [o for o in gc.get_objects() if isinstance(o, types.FunctionType)]
    repointed = 0
    for function in functions:
        copy = packed(function.__code__)
        if copy is not function.__code__:
            function.__code__ = copy
            repointed += 1
    del functions
    gc.freeze()
    return repointed, sum(id(v) != k for k, v in copies.items())


def pack_and_measure(app: object, mix: list[str], codes: list[types.CodeType],
                     copies: list[bytes], workers: int) -> None:
    """``--pack``: the code objects the warm-up wrote to (``copies`` were
    taken before it) are the hot ones; copy them together, warm up again (the
    copies specialise in the master), make the heap immortal, fork the
    workers; against the same steps without the packing."""
    from refork_probe import fork_workers, measure_and_end

    # The reference count (the first word) moves when functions are made; the
    # rest is written when the code runs.
    hot = {id(c) for c, copy in zip(codes, copies)
           if ctypes.string_at(id(c) + 8, len(copy) - 8) != copy[8:]}
    paths = [mix[i % len(mix)] for i in range(1000)]
    for pack in (False, True):
        pid = os.fork()
        if pid == 0:
            try:
                done = pack_hot_code(hot) if pack else (0, 0)
                warm_up(app, mix)  # the copies specialise here, not in every worker
                immortalize()
                figures = measure_and_end([os.getpid()], fork_workers(app, workers, paths))
                print(f"{'packed' if pack else 'not packed':<11} ({done[0]:,} functions, "
                      f"{done[1]:,} code objects copied): mean worker USS "
                      f"{figures['mean_worker_uss']:.1f} MiB, tree PSS "
                      f"{figures['tree_pss']:.1f} MiB, "
                      f"master RSS {figures['template_rss']:.1f} MiB", flush=True)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--pack", type=int, metavar="WORKERS",
                        help="instead: measure packing the warm-up's code, with this many workers")
    args = parser.parse_args()
    app = load_app()
    mix = [p for p in (EXAMPLE / "paths.txt").read_text().split() if p.startswith("/")]
    codes = code_objects()
    before_warmup = [ctypes.string_at(id(c), sys.getsizeof(c)) for c in codes]
    warm_up(app, mix)
    random.Random(0).shuffle(mix)
    if args.pack is not None:
        print(f"CPython {sys.version.split()[0]}, {args.pack} workers x 1,000 requests; "
              f"load {os.getloadavg()[0]:.2f}")
        pack_and_measure(app, mix, codes, before_warmup, args.pack)
        return
    immortalize()
    copies = [ctypes.string_at(id(c), sys.getsizeof(c)) for c in codes]
    total = sum(map(len, copies))
    print(f"CPython {sys.version.split()[0]}: {len(codes):,} code objects, "
          f"{total / 2**20:.1f} MiB on {len(pages(codes)):,} pages; "
          f"a child serves {args.requests:,} requests; load {os.getloadavg()[0]:.2f}")
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
