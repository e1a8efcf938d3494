"""Does forking workers from a warm worker (a "mold") save memory? A probe.

Pitchfork (Ruby) and Puma's ``fork_worker`` fork the next generation of
workers from a worker that has served requests, so that what the first
generation had to build and copy (caches, specialized bytecode, touched
reference counts) is shared by the next. This probe measures that on the
Django example, in-process (the requests go through the WSGI app, no
sockets), without building it:

- ``master``: the master loads the app as gunicorn would with gcfork (GC off,
  app imported, ``gc.freeze()``; with ``--immortalize``, the heap immortal),
  and forks ``--workers`` workers;
- ``mold``: the master forks one worker, the mold, which serves ``--warm``
  requests, collects, freezes (and, with ``--immortalize``, makes its own
  heap immortal), and forks the ``--workers`` workers.

With ``--warmup``, the master first warms the app up as gcfork's ``warmup``
setting does (one pass of the mix's distinct paths, then a collection of what
the requests made, then the freeze), so that ``master`` is part one's
``beyond`` and ``mold`` shows what a mold adds to it.

Every worker then serves ``--requests`` requests of the example's mix with its
GC on (gcfork's worker thresholds) and waits; the probe measures every
process of the tree at that moment (RSS, PSS, USS from ``smaps_rollup``):
the workers' mean USS and the tree's PSS (master, mold if any, workers).

    DJANGO_APP_DB=/tmp/probe.sqlite3 .venvs/bench-3.12/bin/python \\
        benchmarks/refork_probe.py --immortalize
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gc_pause_probe import EXAMPLE, load_app

from gcfork.procfs import memory
from gcfork.warmup import request

MiB = 2**20


def serve(app: Any, paths: list[str]) -> None:
    for path in paths:
        request(app, path)


def fork_workers(app: Any, count: int, paths: list[str]) -> list[tuple[int, int, int]]:
    """Fork ``count`` workers that serve ``paths`` then wait: (pid, ready fd, go fd)."""
    workers = []
    for _ in range(count):
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                gc.set_threshold(700, 10, 10)
                gc.enable()
                serve(app, paths)
                os.write(ready_w, b"x")
                os.read(go_r, 1)  # measured meanwhile
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(go_r)
        workers.append((pid, ready_r, go_w))
    return workers


def measure_and_end(tree: list[int], workers: list[tuple[int, int, int]]) -> dict[str, float]:
    for _, ready, _ in workers:
        os.read(ready, 1)
    figures = {pid: memory(pid) for pid in tree + [w[0] for w in workers]}
    for pid, _, go in workers:
        os.write(go, b"x")
        os.waitpid(pid, 0)
    worker_uss = [figures[w[0]].uss or 0 for w in workers]
    return {"mean_worker_uss": sum(worker_uss) / len(worker_uss) / MiB,
            "tree_pss": sum(m.pss or 0 for m in figures.values()) / MiB,
            "template_rss": figures[tree[-1]].rss / MiB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=1000, help="per worker")
    parser.add_argument("--warm", type=int, default=1000, help="requests the mold serves")
    parser.add_argument("--immortalize", action="store_true")
    parser.add_argument("--warmup", action="store_true",
                        help="warm the master up first, as the warmup setting does")
    args = parser.parse_args()
    app = load_app()
    mix = [p for p in (EXAMPLE / "paths.txt").read_text().split() if p.startswith("/")]
    if args.warmup:
        from django.db import connections

        serve(app, list(dict.fromkeys(mix)))
        connections.close_all()
        gc.collect(0)  # the warm-up's cycles; the imported app is frozen already
        gc.freeze()
    if args.immortalize:
        from gcfork.immortal import immortalize_heap

        immortalize_heap()
    random.Random(0).shuffle(mix)
    paths = [mix[i % len(mix)] for i in range(args.requests)]
    print(f"CPython {sys.version.split()[0]}, {args.workers} workers x {args.requests} "
          f"requests, mold warmed by {args.warm}, immortalize={args.immortalize}, "
          f"master warm-up={args.warmup}, "
          f"load {os.getloadavg()[0]:.2f}")
    master = os.getpid()

    from_master = measure_and_end([master], fork_workers(app, args.workers, paths))

    ready_r, ready_w = os.pipe()
    mold = os.fork()
    if mold == 0:  # the mold: a worker that serves, then becomes the template
        gc.set_threshold(700, 10, 10)
        gc.enable()
        serve(app, [mix[i % len(mix)] for i in range(args.warm)])
        gc.disable()
        gc.collect()
        gc.freeze()
        if args.immortalize:
            immortalize_heap()
        result = measure_and_end([master, os.getpid()],
                                 fork_workers(app, args.workers, paths))
        os.write(ready_w, json.dumps(result).encode())
        os._exit(0)
    os.close(ready_w)
    from_mold = json.loads(os.read(ready_r, 4096))
    os.waitpid(mold, 0)
    print(f"{'forked from':<12} {'mean worker USS':>16} {'tree PSS':>10} {'template RSS':>13}")
    for name, r in (("master", from_master), ("mold", from_mold)):
        print(f"{name:<12} {r['mean_worker_uss']:>12.1f} MiB {r['tree_pss']:>6.1f} MiB "
              f"{r['template_rss']:>9.1f} MiB")


if __name__ == "__main__":
    main()
