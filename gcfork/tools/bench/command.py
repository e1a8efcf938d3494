"""``gcfork bench``: the options' checks, the run, and what each outcome
returns as exit status.

The options are declared in :mod:`gcfork.tools.cli` with every other
command's; :func:`run` is what it calls with them parsed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from gcfork.exceptions import BenchError
from gcfork.tools.bench.chart import write_chart
from gcfork.tools.bench.results import write_results
from gcfork.tools.bench.runner import run_bench
from gcfork.tools.bench.table import render_table
from gcfork.tools.bench.variants import VARIANTS
from gcfork.tools.bench.workload import (
    EXAMPLES,
    Example,
    Settings,
    check_paths,
    example,
    read_paths,
    setup_target,
)

__all__ = ["default_out_dir", "rerender", "run", "settings_from"]


def default_out_dir() -> Path:
    return Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")


def settings_from(args: argparse.Namespace) -> tuple[Example, Settings, list[str], list[str]]:
    """Check the options; returns the target, settings, variants and request mix.

    Raises:
        BenchError: a bad option, naming it and what is allowed.
    """
    if args.example:
        target = example(args.example)
    elif args.app and args.config:
        config = args.config.resolve()
        target = Example("app", args.app, (args.chdir or config.parent).resolve(), config,
                         (args.paths or Path("-")).resolve())
    else:
        raise BenchError(f"say what to run: --example {'|'.join(EXAMPLES)}, or --app "
                         "MODULE:CALLABLE with --config gunicorn.conf.py and --paths FILE "
                         "(or --path /x ...)")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or len(variants) < 2 or len(set(variants)) != len(variants):
        raise BenchError(f"--variants {args.variants!r}: give two or more distinct names from "
                         f"{', '.join(VARIANTS)}, the baseline first")
    try:
        marks = sorted({int(x) for x in args.checkpoints.split(",")})
    except ValueError:
        raise BenchError(f"--checkpoints {args.checkpoints!r}: comma-separated request counts"
                         ) from None
    if not marks or marks[0] <= 0:
        raise BenchError("--checkpoints: request counts must be positive")
    for name in ("workers", "concurrency", "repeat"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name} must be 1 or more")
    if args.idle < 0:
        raise BenchError("--idle must be >= 0")
    if args.attribute_every is not None and args.attribute_every < 0:
        raise BenchError("--attribute-every must be >= 0 (0: off)")
    if args.path_list:
        paths = check_paths(args.path_list, "--path")
    elif args.paths or args.example:
        paths = read_paths(args.paths or target.paths)
    else:
        raise BenchError("give the request mix: --paths FILE or --path /x (repeatable)")
    warmup_paths: list[str] | None = None
    if args.warmup_path_list:
        warmup_paths = check_paths(args.warmup_path_list, "--warmup-path")
    elif args.warmup_paths:
        warmup_paths = read_paths(args.warmup_paths)
    if not target.config.is_file():
        raise BenchError(f"--config {target.config}: no such file")
    # Resolved now: the servers run in the app's directory, not in this one.
    python = shutil.which(args.python)
    if python is None:
        raise BenchError(f"--python {args.python}: no such interpreter")
    settings = Settings(workers=args.workers, requests=marks[-1], checkpoints=tuple(marks),
                        concurrency=args.concurrency, idle=args.idle, repeat=args.repeat,
                        python=os.path.abspath(python), explain=args.explain,
                        worker_class=args.worker_class, warmup_paths=warmup_paths,
                        attribute_every=args.attribute_every)
    return target, settings, variants, paths


def run(args: argparse.Namespace, stream: TextIO = sys.stdout) -> int:
    """``gcfork bench``, with its options parsed (:mod:`gcfork.tools.cli`).

    Returns the exit status: 0 done, 1 failed, 2 bad options, 130 interrupted.
    """
    if args.results is not None:
        return rerender(args.results, args.baseline, stream)
    try:
        target, settings, variants, paths = settings_from(args)
        if args.baseline is not None and args.baseline not in variants:
            raise BenchError(f"--baseline {args.baseline}: not one of --variants {args.variants}")
    except BenchError as exc:
        sys.stderr.write(f"gcfork bench: error: {exc}\n")
        return 2
    out_dir = (args.out or default_out_dir()).resolve()
    # A polite kill gets the same clean-up as Ctrl-C: every server stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        setup_target(target, settings.python, sys.stderr)
        runs, summary_, failed = run_bench(target, variants, settings, out_dir, paths)
        if not runs:
            raise failed or BenchError("no variant ran")
        json_path = write_results(runs, summary_, settings, target, out_dir, failed)
        chart_path = write_chart(runs, out_dir / "chart.png")
    except BenchError as exc:
        sys.stderr.write(f"gcfork bench: error: {exc}\nEvery server it started is stopped.\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("\ngcfork bench: interrupted; every server it started is stopped.\n")
        return 130
    last = runs[-1]
    stream.write(f"\nMemory-sharing report of {last.variant!r} after the load "
                 f"({target.name}, {settings.workers} workers):\n\n{last.report_table}\n\n")
    for run_ in runs:
        if run_.by_path_table:
            stream.write(run_.by_path_table + "\n\n")
    stream.write(render_table(summary_, settings, args.baseline) + "\n\n")
    stream.write(f"results: {json_path}\nchart:   {chart_path}\n")
    for run_ in runs:
        if run_.explain:
            stream.write(f"explain: {out_dir / f'{run_.variant}-{run_.repeat}' / 'explain.txt'}\n")
    if failed is not None:
        # The variants before it finished and are kept above, and in results.json.
        sys.stderr.write(f"gcfork bench: error: {failed}\nThe results above are of the "
                         f"variants that finished; every server it started is stopped.\n")
        return 1
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def rerender(path: Path, baseline: str | None, stream: TextIO) -> int:
    """``gcfork bench --results FILE``: the table of an earlier run, again,
    against any of its variants as the baseline."""
    try:
        data = json.loads(path.read_text())
        fields = {k: v for k, v in data["settings"].items() if k in Settings.__dataclass_fields__}
        settings = Settings(**{**fields, "checkpoints": tuple(fields["checkpoints"])})
        summary_ = data["summary"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.stderr.write(f"gcfork bench: error: {path} is not a gcfork bench results.json: "
                         f"{exc}\n")
        return 2
    if baseline is not None and baseline not in summary_:
        sys.stderr.write(f"gcfork bench: error: --baseline {baseline}: the run has "
                         f"{', '.join(summary_)}\n")
        return 2
    # JSON has no NaN: figures that could not be measured come back as None.
    clean = {name: {k: (float("nan") if v is None else v) for k, v in figures.items()}
             for name, figures in summary_.items()}
    stream.write(f"{data['target']['name']} on CPython {data.get('server_python', '?')}, "
                 f"{settings.workers} workers, {data['created']}\n\n")
    stream.write(render_table(clean, settings, baseline) + "\n")
    return 0
