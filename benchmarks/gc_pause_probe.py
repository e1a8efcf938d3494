"""Where a worker's GC pauses come from: one worker's collections, in-process.

Loads the Django example in this process as a gunicorn master with gcfork
would (GC off, the app imported, ``gc.freeze()``), then forks one child per
configuration; each child enables its GC with that configuration's
thresholds, serves ``--requests`` requests of the example's mix through the
WSGI app in-process (no sockets, no other process competing for the CPU),
and reports every collection: its generation, wall time and CPU time. Printed
per configuration: the number of collections, the pause distribution (p50,
p99, max) by generation, the child's USS at the end and the requests/s.

    DJANGO_APP_DB=/tmp/probe.sqlite3 .venvs/bench-3.12/bin/python \\
        benchmarks/gc_pause_probe.py --requests 5000

Each configuration is ``name=t0,t1,t2`` (``--config``, repeatable), with
``+freeze@N`` to call ``gc.collect()`` then ``gc.freeze()`` in the child after
its first N requests, or ``+settle@K`` to call ``gc.freeze()`` from a
``gc.callbacks`` callback right after the child's K-th full collection, and
``+reset`` to call ``gc.collect()`` in the child before it serves.
``--floor`` times freeing one ``/cycles/?n=20000``'s garbage in a child
that does nothing else; ``--floor-after N`` the same in a child that served N
requests of the mix first. Standard library only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "django_app"
sys.path.insert(0, str(REPO))

from gcfork.procfs import memory  # noqa: E402  (after the path)
from gcfork.warmup import request  # noqa: E402

DEFAULT_CONFIGS = ("default=700,10,10", "t2000=2000,10,10", "t10000=10000,10,10",
                   "default+freeze@500=700,10,10", "t10000+freeze@500=10000,10,10")


def uss() -> int:
    return memory(os.getpid()).uss or 0


def load_app() -> Any:
    os.chdir(EXAMPLE)
    sys.path.insert(0, str(EXAMPLE))
    if not Path(os.environ.setdefault("DJANGO_APP_DB", "/tmp/gcfork-probe.sqlite3")).exists():
        subprocess.run([sys.executable, "manage.py", "setup_demo"], check=True,
                       stdout=subprocess.DEVNULL)
    gc.disable()
    from django.db import connections
    from shopsite.wsgi import application

    connections.close_all()
    gc.freeze()
    return application


def run_child(app: Any, thresholds: tuple[int, ...], freeze_at: int | None,
              settle_at: int | None, reset: bool, paths: list[str], out: int) -> None:
    pauses: list[tuple[int, float, float, int, int]] = []
    started: list[float] = [0.0, 0.0]
    current = [0]  # index of the request being served

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0], started[1] = time.perf_counter(), time.thread_time()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0],
                           time.thread_time() - started[1], info["collected"], current[0]))
            full = sum(p[0] == 2 for p in pauses)
            if info["generation"] == 2 and full == settle_at:
                gc.freeze()  # right after a full collection: no cyclic garbage left

    gc.set_threshold(*thresholds)
    gc.callbacks.append(callback)
    if reset:
        gc.collect()  # the collector's count of long-lived objects: the worker's, not the master's
    gc.enable()
    t0 = time.perf_counter()
    for i, path in enumerate(paths):
        current[0] = i
        if freeze_at is not None and i == freeze_at:
            gc.collect()
            gc.freeze()
        request(app, path)
    elapsed = time.perf_counter() - t0
    gc.callbacks.remove(callback)
    result = {"pauses": pauses, "uss": uss(), "rps": len(paths) / elapsed,
              "frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}
    os.write(out, json.dumps(result).encode())


def floor(out: int) -> None:
    """The cost of freeing one ``/cycles/?n=20000``'s garbage alone: the
    example's own nodes, built as its view builds them, dropped, collected."""
    from shopsite.views import _Node

    gc.disable()
    costs = []
    for _ in range(7):
        nodes = [_Node("home", None)]
        for i in range(1, 20000):
            nodes.append(_Node(f"node-{i}", nodes[(i - 1) // 40]))
        del nodes
        wall, cpu = time.perf_counter(), time.thread_time()
        freed = gc.collect()
        costs.append((time.perf_counter() - wall, time.thread_time() - cpu, freed))
    os.write(out, json.dumps(costs).encode())


def floor_in_worker(app: Any, paths: list[str], out: int) -> None:
    """The same garbage in a worker: serve ``paths`` first (collector on,
    ``(700, 1, 1)``), then time the collection that frees each of five
    ``/cycles/?n=20000`` requests' garbage, right after the request."""
    gc.set_threshold(700, 1, 1)
    gc.enable()
    for path in paths:
        request(app, path)
    gc.collect()
    costs = []
    for _ in range(5):
        request(app, "/cycles/?n=20000")
        wall, cpu = time.perf_counter(), time.thread_time()
        freed = gc.collect()
        costs.append((time.perf_counter() - wall, time.thread_time() - cpu, freed))
    os.write(out, json.dumps(costs).encode())


def in_child(work: Callable[[int], None]) -> Any:
    """Run ``work(fd)`` in a forked child; what it wrote to fd, as JSON."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            work(write)
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 1 << 20):
        chunks.append(chunk)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--config", action="append", help="name=t0,t1,t2[+freeze@N]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--longest", type=int, default=0, help="print the N longest pauses")
    parser.add_argument("--floor", action="store_true",
                        help="also time freeing one /cycles/?n=20000's garbage alone")
    parser.add_argument("--floor-after", type=int, action="append", default=[], metavar="N",
                        help="also time it in a worker that served N requests first "
                             "(repeatable)")
    parser.add_argument("--exclude", action="append", default=[],
                        help="leave the mix's paths starting with this out")
    args = parser.parse_args()
    app = load_app()
    mix = [p for p in (EXAMPLE / "paths.txt").read_text().split()
           if p.startswith("/") and not any(p.startswith(x) for x in args.exclude)]
    random.Random(args.seed).shuffle(mix)
    paths = [mix[i % len(mix)] for i in range(args.requests)]
    print(f"CPython {sys.version.split()[0]}, {args.requests} requests, "
          f"{gc.get_freeze_count()} objects frozen in the parent; load {os.getloadavg()[0]:.2f}")
    print(f"{'config':<26} {'gen':>3} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'max cpu':>8} {'USS MiB':>8} {'req/s':>6}")
    if args.floor:
        print("freeing one /cycles/?n=20000's garbage alone: "
              + ", ".join(f"{c * 1e3:.1f} ms CPU ({w * 1e3:.1f} wall, {n:,} objects)"
                          for w, c, n in in_child(floor)))
    for served in args.floor_after:
        costs = in_child(partial(floor_in_worker, app, paths[:served]))
        print(f"the same, in a worker after {served:,} requests of the mix: "
              + ", ".join(f"{c * 1e3:.1f} ms CPU ({n:,} objects)" for _, c, n in costs))
    for spec in args.config or DEFAULT_CONFIGS:
        name, _, values = spec.partition("=")
        freeze_at = int(name.split("+freeze@")[1]) if "+freeze@" in name else None
        settle_at = int(name.split("+settle@")[1]) if "+settle@" in name else None
        thresholds = tuple(int(v) for v in values.split(","))
        result = in_child(partial(run_child, app, thresholds, freeze_at, settle_at,
                                  "+reset" in name, paths))
        for gen in (0, 1, 2):
            wall = [p[1] * 1e3 for p in result["pauses"] if p[0] == gen]
            cpu = [p[2] * 1e3 for p in result["pauses"] if p[0] == gen]
            print(f"{name if gen == 0 else '':<26} {gen:>3} {len(wall):>6} "
                  f"{percentile(wall, 0.5):>8.2f} {percentile(wall, 0.99):>8.2f} "
                  f"{max(wall, default=0):>8.2f} {max(cpu, default=0):>8.2f} "
                  + (f"{result['uss'] / 2**20:>8.1f} {result['rps']:>6.0f}" if gen == 0 else ""))
        total = [p[1] * 1e3 for p in result["pauses"]]
        full = [p[3] for p in result["pauses"] if p[0] == 2]
        print(f"{'':<26} all pauses: mean {statistics.fmean(total) if total else 0:.2f} ms, "
              f"total {sum(total):.0f} ms; {result['tracked']} tracked objects at the end; "
              f"a full collection frees {statistics.fmean(full) if full else 0:,.0f} "
              "objects on average")
        if args.longest:
            for gen, wall, cpu, collected, i in sorted(result["pauses"], key=lambda p: -p[1])[
                    :args.longest]:
                print(f"{'':<26} gen {gen} {wall * 1e3:.1f} ms (cpu {cpu * 1e3:.1f}) freed "
                      f"{collected:,} during request {i} {paths[i]}")


if __name__ == "__main__":
    main()
