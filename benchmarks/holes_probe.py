"""The allocator-holes probe: does filling the master's free pymalloc slots
before the fork lower a worker's private memory?

A parent process loads the Django example the way the gunicorn master does
with ``preload_app`` (``shopsite.wsgi``: settings, URLconf, templates, one
query) with the collector off, closes its database connection, reads
pymalloc's statistics (:func:`benchmarks.holes.read_pool_stats`), optionally
fills the free blocks (:func:`benchmarks.holes.fill_holes`), freezes, and forks
children one after the other. Each child turns the collector on (as a gcfork
worker does), calls the WSGI application in-process for the example's
request mix (``examples/django_app/paths.txt``, cycled), and reports its USS
(``Private_Clean + Private_Dirty`` of ``/proc/PID/smaps_rollup``).

Variants: ``off`` (freeze only), ``fill`` (fill the pools' free blocks),
``fill+lists`` (also empty the dict/list/tuple/float free lists). Every run
is a fresh interpreter; variants alternate within each repeat.

Usage (the database first, once)::

    DJANGO_APP_DB=/tmp/holes.sqlite3 .venv/bin/python examples/django_app/manage.py setup_demo
    .venv/bin/python benchmarks/holes_probe.py --python .venv/bin/python \\
        --python /tmp/holes312/bin/python --repeats 5 --children 4 --requests 300

``HOLES_PROBE_IMMORTAL=1`` also makes the heap immortal after the freeze
(:func:`gcfork.immortal.immortalize_heap`, 3.12+), as the ``immortalize``
setting does. Each ``--python`` needs Django; ``benchmarks`` and ``gcfork``
come from this checkout (``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "examples" / "django_app"
VARIANTS = ("off", "fill", "fill+lists")
MIB = 1024 * 1024


def _private(pid: int | str = "self") -> int:
    """Private_Clean + Private_Dirty of ``pid``, in bytes (its USS)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Private_"))


def _environ(path: str) -> dict[str, Any]:
    route, _, query = path.partition("?")
    return {
        "REQUEST_METHOD": "GET", "PATH_INFO": route, "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "HTTP_HOST": "127.0.0.1:8000",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }  # fmt: skip


def _serve(application: Any, paths: list[str], requests: int) -> int:
    """Call the WSGI app for ``requests`` paths; return how many answered 200."""
    ok = 0
    status: list[str] = []

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
        status.append(line)
        return lambda data: None

    for i in range(requests):
        status.clear()
        body = application(_environ(paths[i % len(paths)]), start_response)
        try:
            for _chunk in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        ok += status[0].startswith("200")
    return ok


def one_run(variant: str, children: int, requests: int) -> dict[str, Any]:
    """Load the app, (fill), freeze, fork ``children`` workers one by one."""
    gc.disable()  # as gcfork.install does, from the config line
    from benchmarks import holes

    sys.path.insert(0, str(APP))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")
    from django.db import connections
    from shopsite.wsgi import application

    connections.close_all()  # the example's pre_fork does this
    paths = [p for p in (APP / "paths.txt").read_text().split() if p]
    stats = holes.read_pool_stats()
    result: dict[str, Any] = {
        "python": sys.version.split()[0], "variant": variant,
        "pool_size": stats.pool_size, "arenas": stats.arenas,
        "allocated": stats.allocated, "free_blocks": stats.free_blocks,
        "hole_bytes": stats.available, "free_pools": stats.free_pools,
        "free_list_objects": sum(f.objects for f in stats.free_lists),
        "classes": [[c.size, c.pools, c.used, c.free] for c in stats.classes],
    }  # fmt: skip
    if variant != "off":
        filled = holes.fill_holes(free_lists=variant == "fill+lists")
        result.update(
            fill_objects=filled.objects, fill_bytes=filled.filled,
            fill_seconds=filled.seconds, fill_rss=filled.rss_after - filled.rss_before,
            after_free_blocks=filled.after.free_blocks if filled.after else None,
        )  # fmt: skip
    gc.freeze()
    if os.environ.get("HOLES_PROBE_IMMORTAL"):  # 3.12+: refcount writes no longer copy
        from gcfork.immortal import immortalize_heap

        immortalize_heap()
        result["variant"] = variant + "+imm"
    result["master_uss"] = _private()
    result["master_rss"] = holes.own_rss()
    workers = []
    for _ in range(children):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            gc.enable()
            start = _private()
            began = time.perf_counter()
            ok = _serve(application, paths, requests)
            figures = {"start": start, "uss": _private(), "ok": ok,
                       "seconds": time.perf_counter() - began}  # fmt: skip
            os.write(write_end, json.dumps(figures).encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            workers.append(json.loads(pipe.read()))
        os.waitpid(pid, 0)
    result["workers"] = workers
    return result


def _run_in(python: str, variant: str, children: int, requests: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.setdefault("DJANGO_APP_DB", "/tmp/holes.sqlite3")
    out = subprocess.run(
        [python, __file__, "--one", variant, "--children", str(children),
         "--requests", str(requests)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if out.returncode:
        raise SystemExit(f"{python} {variant} failed:\n{out.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def _spread(values: list[float]) -> str:
    low, mid, high = (f(values) / MIB for f in (min, statistics.median, max))
    return f"{mid:7.2f} [{low:6.2f}-{high:6.2f}]"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", help="interpreter(s) with Django")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--children", type=int, default=4)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_run(args.one, args.children, args.requests)))
        return 0
    pythons = args.python or [sys.executable]
    variants = [v for v in args.variants.split(",") if v]
    runs: list[dict[str, Any]] = []
    for python in pythons:
        for repeat in range(args.repeats):
            order = variants if repeat % 2 == 0 else variants[::-1]
            for variant in order:
                runs.append(_run_in(python, variant, args.children, args.requests))
                print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    print(f"holes probe: Django example, {args.children} workers x {args.requests} requests, "
          f"{args.repeats} fresh masters per variant; MiB, median [min-max] over all workers")
    print(f"{'python':<8} {'variant':<11} {'worker USS':>22} {'USS growth':>22} "
          f"{'master USS':>9} {'holes':>7} {'filled':>7} {'fill ms':>7} {'fill RSS':>8}")
    for python in sorted({r["python"] for r in runs}):
        for variant in variants:
            rows = [r for r in runs
                    if r["python"] == python and r["variant"].split("+imm")[0] == variant]
            uss = [w["uss"] for r in rows for w in r["workers"]]
            growth = [w["uss"] - w["start"] for r in rows for w in r["workers"]]
            bad = sum(args.requests - w["ok"] for r in rows for w in r["workers"])
            master = statistics.median(r["master_uss"] for r in rows) / MIB
            holes = statistics.median(r["hole_bytes"] for r in rows) / MIB
            filled = statistics.median(r.get("fill_bytes", 0) for r in rows) / MIB
            ms = statistics.median(r.get("fill_seconds", 0) for r in rows) * 1000
            fill_rss = statistics.median(r.get("fill_rss", 0) for r in rows) / MIB
            print(f"{python:<8} {variant:<11} {_spread(uss):>22} {_spread(growth):>22} "
                  f"{master:>9.1f} {holes:>7.2f} {filled:>7.2f} {ms:>7.1f} {fill_rss:>8.2f}"
                  + (f"  ({bad} non-200)" if bad else ""))
    print("\npymalloc at freeze time (first 'off' run per python): size: pools used free")
    for python in sorted({r["python"] for r in runs}):
        first = next(r for r in runs if r["python"] == python)
        top = sorted(first["classes"], key=lambda c: -c[0] * c[3])[:8]
        print(f"{python}: pool {first['pool_size']} B, {first['arenas']} arenas, "
              f"{first['allocated'] / MIB:.1f} MiB allocated, {first['free_blocks']} free blocks "
              f"= {first['hole_bytes'] / MIB:.2f} MiB, {first['free_pools']} free pools, "
              f"{first['free_list_objects']} objects on free lists")
        print("   largest: " + ", ".join(f"{s}B: {p}p {u}u {f}f" for s, p, u, f in top))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
