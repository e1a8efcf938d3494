"""The Celery row of docs/benchmarks.md: the shop example (examples/celery_app)
under the prefork pool, without and with gcfork, in one run.

    .venv/bin/python benchmarks/celery_bench.py --tasks 6000 --repeat 3 --out celery.json

Each variant starts its own ``celery worker`` (``-c 4``) on one throw-away
redis-server, runs the same task mix, and is measured with ``gcfork report``
once the load is done; variants are interleaved, ``--repeat`` times. Prints a
Markdown table (medians; the range in brackets) and writes every figure as
JSON. ``immortal`` (``GCFORK_IMMORTALIZE=1``) needs CPython 3.12 to 3.15:
give ``--python`` an interpreter with celery, redis and gcfork installed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "celery_app"))

import run as shop  # noqa: E402 - examples/celery_app/run.py, after the path

# variant -> (GCFORK_MODE, extra environment)
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "off": ("off", {}),
    "gcfork": ("freeze", {}),
    "immortal": ("freeze", {"GCFORK_IMMORTALIZE": "1"}),
}


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f} MiB"


def _cell(values: list[float], base: float | None, fmt: str) -> str:
    mid = statistics.median(values)
    text = fmt.format(mid)
    if len(values) > 1:
        text += " [" + "-".join(fmt.format(v).replace(" MiB", "") for v in
                                (min(values), max(values))) + "]"
    if base:
        text += f" ({mid / base:.2f}x)"
    return text


def table(results: dict[str, list[dict[str, Any]]], baseline: str) -> str:
    rows = [("cluster PSS", "sum_pss", True), ("sum of RSS", "sum_rss", True),
            ("mean worker USS", "mean_worker_uss", True),
            ("tasks/s", "tasks_per_second", False)]
    names = list(results)
    lines = ["| figure | " + " | ".join(f"`{n}`" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for label, key, size in rows:
        base = statistics.median(r[key] for r in results[baseline])
        cells = []
        for name in names:
            values = [r[key] for r in results[name]]
            if size:
                cells.append(_cell([v / 2**20 for v in values],
                                   None if name == baseline else base / 2**20, "{:.1f} MiB"))
            else:
                cells.append(_cell(values, None if name == baseline else base, "{:.0f}"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="off,gcfork", help="from: " + ", ".join(VARIANTS))
    parser.add_argument("--tasks", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    # The worker runs from the example's directory: a relative path would not resolve.
    python = str(Path(args.python).absolute()) if os.sep in args.python else args.python
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with shop.broker() as url:
        for i in range(args.repeat):
            for name in names:
                mode, extra = VARIANTS[name]
                os.environ.update(extra)  # read by the worker run() starts
                try:
                    result = shop.run(url, mode, args.tasks, args.concurrency, python)
                finally:
                    for key in extra:
                        os.environ.pop(key, None)
                print(f"run {i + 1} {name}: {result['tasks_per_second']:.0f} tasks/s, cluster "
                      f"PSS {_mib(result['sum_pss'])}, mean worker USS "
                      f"{_mib(result['mean_worker_uss'])}", file=sys.stderr)
                results[name].append({k: v for k, v in result.items() if k != "table"})
    print(table(results, names[0]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
