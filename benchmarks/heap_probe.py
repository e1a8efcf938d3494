"""The heap probe: what finishing the heap (hashes, type tags) saves a forked child.

No load, no server: a master process imports the Django example
(``examples/django_app``; ``--example flask``: ``examples/flask_app``), warms
it up with one pass of its ``paths.txt`` in-process (not with ``--cold``),
closes its database connections, collects
and freezes, applies one technique, and forks a child. The child measures its USS
(``Private_Clean + Private_Dirty`` of ``/proc/self/smaps_rollup``), does a
fixed amount of work, and measures again. The figure is the child's USS
after the work: what a worker holds on its own after serving it. (Its growth
from right after the fork is not used: a master that freed a large block
just before the fork leaves the child a different starting USS, so the
growth moves by up to 3 MiB with no change in what the child holds at the end.)

Techniques (``--modes``): ``freeze`` (nothing more), ``hashes``, ``tags``,
``finish`` (both, :func:`gcfork.finish.finish_heap`), ``walk`` (the same
walk doing nothing: its own cost), and on 3.12+
``immortal`` (:func:`gcfork.immortal.immortalize_heap`) alone or with a
finisher (``immortal+hashes``, ``immortal+tags``, ``immortal+finish``).

Work (``--work``): ``requests`` runs ``paths.txt`` through the WSGI app
``--passes`` times in the child, as a worker would serve them; ``hash``
looks every ``str`` the master held up in a set (the upper bound of what
cached hashes can save); ``types`` reads a missing attribute of every class
through ``type.__getattribute__`` (the upper bound for version tags).

Usage (the database first: ``python examples/django_app/manage.py setup_demo``)::

    python benchmarks/heap_probe.py --python 3.11=/path/python3.11 --python 3.12=...
    python benchmarks/heap_probe.py --python 3.12=... --explain   # + gcfork explain of the child
    python benchmarks/heap_probe.py --one finish --work requests   # one run here, JSON

Each run is a fresh interpreter with this checkout on ``PYTHONPATH``; the
interpreter needs Django (and psutil, which gcfork imports). Figures are the
median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# --example: its directory and WSGI app (module, attribute), as in its gunicorn.conf.py.
EXAMPLES = {
    "django": (REPO / "examples" / "django_app", "shopsite.wsgi", "application"),
    "flask": (REPO / "examples" / "flask_app", "wsgi", "app"),
}
PLAIN = ("freeze", "walk", "hashes", "tags", "finish")
IMMORTAL = ("immortal", "immortal+hashes", "immortal+tags", "immortal+finish")
WORKS = ("requests", "hash", "types")


def _private() -> int:
    """Private_Clean + Private_Dirty of this process, in bytes (its USS)."""
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Private_"))


def _paths(app_dir: Path) -> list[str]:
    return [line.strip() for line in (app_dir / "paths.txt").read_text().splitlines()
            if line.strip()]


# The inherited types whose pages the techniques are about, in --explain.
EXPLAINED = ("str", "bytes", "type", "tuple", "code", "dict", "int")


def one_run(mode: str, work: str, passes: int, explain: bool = False,
            cold: bool = False, example: str = "django") -> dict[str, Any]:
    """Load, warm up, freeze, apply ``mode``, fork a child doing ``work``; the figures."""
    gc.disable()
    app_dir, module, attribute = EXAMPLES[example]
    sys.path.insert(0, str(app_dir))
    os.chdir(app_dir)
    from gcfork.warmup import close_connections, request

    application = getattr(importlib.import_module(module), attribute)
    paths = _paths(app_dir)
    for path in [] if cold else paths:
        request(application, path, host="localhost")
    close_connections()
    strings: list[str] = []
    classes: list[type] = []
    if work == "hash":
        strings = [o for o in gc.get_objects() for o in gc.get_referents(o) if type(o) is str]
    elif work == "types":
        classes = [o for o in gc.get_objects() if isinstance(o, type)]
    gc.collect()
    gc.freeze()
    result: dict[str, Any] = {"python": sys.version.split()[0], "mode": mode, "work": work}
    started = time.perf_counter()
    hashes = mode.endswith(("hashes", "finish"))
    tags = mode.endswith(("tags", "finish"))
    if mode.startswith("immortal"):
        from gcfork.finish import Finisher
        from gcfork.immortal import immortalize_heap

        finisher = Finisher(hashes, tags) if hashes or tags else None
        outcome = immortalize_heap(finish=finisher)
        result["objects"] = outcome.objects
        if finisher is not None:
            result.update(finisher.result()._asdict())
    elif hashes or tags or mode == "walk":
        from gcfork.finish import finish_heap

        result.update(finish_heap(hashes, tags)._asdict())
    result["technique_seconds"] = round(time.perf_counter() - started, 3)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        gc.enable()  # a gcfork worker's collector runs (frozen objects are skipped)
        before = _private()
        if work == "requests":
            for _ in range(passes):
                for path in paths:
                    request(application, path, host="localhost")
        elif work == "hash":
            seen = set()
            for s in strings:
                if s in seen:
                    continue
                seen.add(s)
        else:
            lookup = type.__getattribute__
            for kind in classes:
                # AttributeError, or a descriptor's own error
                with contextlib.suppress(Exception):
                    lookup(kind, "__gcfork_probe__")
        figures: dict[str, Any] = {"child_uss_before": before, "child_uss": _private()}
        if explain:
            from gcfork.explain.capture import profile_self

            profile = profile_self(top=200)
            figures["explain_pages"] = {
                row.key: row.pages for row in profile.by_type
                if row.origin == "inherited" and row.key in EXPLAINED}
        os.write(write_end, json.dumps(figures).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        result.update(json.loads(pipe.read()))
    os.waitpid(child, 0)
    return result


def _run_in(python: str, mode: str, work: str, passes: int, explain: bool,
            cold: bool, example: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [python, __file__, "--one", mode, "--work", work, "--passes", str(passes),
         *(["--explain"] if explain else []), *(["--cold"] if cold else []),
         "--example", example],
        capture_output=True, text=True, env=env, timeout=120,
    )
    if out.returncode != 0:
        raise SystemExit(f"{python} {mode}: {out.stderr.strip()[-2000:]}")
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", default=[],
                        help="VERSION=PATH of an interpreter with Django (repeatable)")
    parser.add_argument("--modes", help="comma-separated techniques (default: all that apply)")
    parser.add_argument("--work", choices=WORKS, default="requests")
    parser.add_argument("--passes", type=int, default=2, help="paths.txt passes in the child")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--example", choices=sorted(EXAMPLES), default="django")
    parser.add_argument("--cold", action="store_true",
                        help="no warm-up pass in the master before the fork")
    parser.add_argument("--explain", action="store_true",
                        help="profile the child after the work (gcfork explain): exclusive "
                             "pages holding inherited objects of a few types")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_run(args.one, args.work, args.passes, args.explain, args.cold,
                                 args.example)))
        return 0
    if not args.python:
        parser.error("pass --python VERSION=PATH at least once")
    kib = 1024
    print(f"heap probe: {args.example} example, child work {args.work!r}"
          f"{f' ({args.passes} passes of paths.txt)' if args.work == 'requests' else ''}, "
          f"{'no warm-up' if args.cold else 'master warmed up with one pass'}, "
          f"median of {args.repeat}; {os.getloadavg()[0]:.2f} load average")
    print(f"{'python':<8} {'technique':<16} {'child USS':>13} {'vs freeze':>10} "
          f"{'hashed':>7} {'tagged':>7} {'seconds':>8}  runs (KiB)")
    for pair in args.python:
        version, _, python = pair.partition("=")
        immortal_ok = tuple(int(x) for x in version.split(".")[:2]) >= (3, 12)
        modes = args.modes.split(",") if args.modes else [
            *PLAIN, *(IMMORTAL if immortal_ok else ())]
        base = None
        for mode in modes:
            runs = [_run_in(python, mode, args.work, args.passes, args.explain, args.cold,
                            args.example)
                    for _ in range(args.repeat)]
            copied = statistics.median(r["child_uss"] for r in runs)
            if base is None:
                base = copied
            last = runs[-1]
            print(f"{version:<8} {mode:<16} {copied / kib:>9.0f} KiB "
                  f"{(copied - base) / kib:>+7.0f} KiB {last.get('hashed', ''):>7} "
                  f"{last.get('tagged', ''):>7} {last['technique_seconds']:>8}  "
                  f"{[r['child_uss'] // kib for r in runs]}", flush=True)
            if args.explain:
                pages = {key: statistics.median(r["explain_pages"].get(key, 0) for r in runs)
                         for key in EXPLAINED}
                print(f"{'':<8} {'':<16} inherited objects on exclusive pages (pages of 4 KiB): "
                      + ", ".join(f"{key} {n:.0f}" for key, n in pages.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
