"""The ``gcfork`` command: every subcommand's options, in one parser.

Subcommands:

- ``gcfork report``: the memory-sharing report of a running cluster;
- ``gcfork settings``: the settings reference, generated from
  :mod:`gcfork.config`, or a check that a copy of it is current;
- ``gcfork explain``: the copy-on-write profile of one running worker
  (:mod:`gcfork.tools.explain`; exit status 1 if it cannot be had);
- ``gcfork bench``: an app under gunicorn in several variants, side by side
  (:mod:`gcfork.tools.bench`).

Exit status: 0 when all went well, 1 when no master was found, the pid given
is not a gcfork master, or the master vanished (or, for ``settings --check``,
the file is stale), 2 for a usage error.

.. versionadded:: 0.2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, TextIO

from gcfork.attribution_settings import ATTRIBUTE_EVERY
from gcfork.config import STATS_DIR, settings_markdown
from gcfork.exceptions import DiscoveryError, MasterGone
from gcfork.gunicorn.discover import (
    Master,
    choose,
    find_masters,
    master_from_pid,
    master_from_pidfile,
)
from gcfork.report import JSONRenderer, Report, TableRenderer, collect
from gcfork.tools import bench, explain
from gcfork.tools.bench.variants import VARIANTS
from gcfork.tools.bench.workload import EXAMPLES, Settings
from gcfork.tools.clusters import members

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_NO_MASTER = 1
EXIT_USAGE = 2

# The command runs beside the server, not in it: measure on every CPU, up to 4.
_THREADS = min(os.cpu_count() or 1, 4)
_CLEAR = "\x1b[H\x1b[2J"  # cursor home, erase the screen: the table refreshes in place


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pid") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a pid (it must be > 0)")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} seconds: the interval must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each sets ``func`` to its runner."""
    parser = argparse.ArgumentParser(
        prog="gcfork", description="Garbage collection for pre-forked gunicorn servers."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    report = sub.add_parser(
        "report", help="memory sharing and GC statistics of a running pre-fork cluster",
        # argparse %-formats help strings but not descriptions: a bare % here.
        description="Measure a running cluster (a gunicorn master, a Celery parent or a "
                    "pool's template, and its workers): RSS, PSS, USS, shared %, requests "
                    "and GC statistics, with the memory that copy-on-write saves. A template "
                    "is what gcfork advertises when it is installed there; without --pid or "
                    "--pidfile, the one such template of this user is reported.",
    )
    which = report.add_mutually_exclusive_group()
    which.add_argument("--pid", type=_positive_int,
                       help="pid of the template: gunicorn's master, Celery's parent, a pool's "
                            "parent (refused, with the pid to use, if it "
                            "is a worker, a wrapper or a process without gcfork)")
    which.add_argument("--pidfile", metavar="PATH",
                       help="gunicorn's pidfile (its --pidfile setting)")
    report.add_argument(
        "--stats-dir", metavar="PATH",
        help="the master's stats directory, when the master could not advertise it (its "
             f"log says so; the {STATS_DIR.name!r} setting, env {STATS_DIR.env})",
    )
    report.add_argument("--json", action="store_true",
                        help="print JSON (schema: gcfork/report.schema.json) instead of a table")
    report.add_argument("--watch", type=_positive_seconds, metavar="SECONDS",
                        help="measure again every SECONDS, refreshing in place, until Ctrl-C")
    report.add_argument("--unit", choices=("MiB", "MB"), default="MiB",
                        help="unit of the table's sizes (default MiB)")
    report.set_defaults(func=run_report)

    settings = sub.add_parser("settings", help="the settings reference, in Markdown",
                              description="Print or check docs/configuration.md, generated "
                                          "from gcfork's settings declarations.")
    mode = settings.add_mutually_exclusive_group(required=True)
    mode.add_argument("--markdown", action="store_true", help="print the reference")
    mode.add_argument("--check", metavar="PATH",
                      help="exit 1 if PATH differs from the reference")
    settings.set_defaults(func=run_settings)

    bench_parser = sub.add_parser(
        "bench", help="baseline vs gcfork side by side, on an example or your own app",
        description="Run an app under gunicorn in two or more configurations, one after the "
                    "other on 127.0.0.1, with the same workers and the same load; measure the "
                    "cluster at request checkpoints and print the figures side by side, with "
                    "ratios to the baseline. Writes results.json and chart.png.",
    )
    _bench_options(bench_parser)
    bench_parser.set_defaults(func=bench.run)

    explain_parser = sub.add_parser(
        "explain", help="which Python types and modules a worker's copied pages hold; "
        "with --by-path, which request paths make the workers copy",
        description="Show where a gunicorn worker's private (copied) memory is and which "
        "Python types and modules live on it. Every worker of a gunicorn master running "
        "gcfork answers (gcfork starts the trigger in post_fork). With --by-path, show "
        "instead how much the workers' private memory grows per request, by request path, "
        "added up over the live workers of a master (attribute_every).",
    )
    source = explain_parser.add_mutually_exclusive_group()
    source.add_argument("--pid", type=_positive_int,
                        help="the worker to profile (with --by-path: the master; default "
                        "the one gcfork master of this user)")
    source.add_argument("--file", help="render a profile saved as JSON instead")
    explain_parser.add_argument("--by-path", action="store_true",
                                help="per-path growth of the workers' private memory "
                                "(docs/report.md, 'Which requests copy')")
    explain_parser.add_argument("--stats-dir", metavar="PATH",
                                help="with --by-path: the master's stats directory, when it "
                                "could not advertise it")
    explain_parser.add_argument("--dir", help="trigger directory (default: .explain in the "
                                "stats directory the worker's master advertises)")
    explain_parser.add_argument("--timeout", type=float, default=60.0,
                                help="seconds to wait")
    explain_parser.add_argument("--top", type=int, default=15, help="rows per table")
    explain_parser.add_argument("--json", action="store_true",
                                help="print the profile (or the per-path figures) as JSON")
    explain_parser.set_defaults(func=explain.run)
    return parser


def _bench_options(parser: argparse.ArgumentParser) -> None:
    # Each default is the load's own (Settings), so it is declared once.
    defaults = Settings()
    what = parser.add_argument_group("what to run")
    what.add_argument("--example", choices=EXAMPLES,
                      help="one of the example apps of a gcfork checkout")
    what.add_argument("--app", help="WSGI or ASGI target, module:callable (instead of --example)")
    what.add_argument("--config", type=Path, help="the app's gunicorn config file")
    what.add_argument("--chdir", type=Path, help="directory to run the app from "
                      "(default: the config file's directory)")
    what.add_argument("--paths", type=Path, help="request mix: a file of paths, one per line")
    what.add_argument("--path", action="append", default=[], dest="path_list",
                      help="a request path (repeatable; instead of --paths)")
    what.add_argument("--python", default=defaults.python,
                      help="interpreter to run gunicorn with (default: this one)")
    what.add_argument("--worker-class",
                      help="gunicorn worker class for every variant, e.g. gthread, gevent, "
                      "asgi, uvicorn_worker.UvicornWorker (default: the config's)")
    what.add_argument("--warmup-paths", type=Path, metavar="FILE",
                      help="what the warm-up variants (warmup, beyond) warm up with, a file of "
                      "paths, each answering 2xx or 3xx (default: the distinct paths of the mix)")
    what.add_argument("--warmup-path", action="append", default=[], dest="warmup_path_list",
                      help="a warm-up path (repeatable; instead of --warmup-paths)")
    how = parser.add_argument_group("how")
    how.add_argument("--variants", default="off,gcfork",
                     help="comma-separated, the first is the baseline; from: "
                     + ", ".join(f"{v.name} ({v.doc})" for v in VARIANTS.values()))
    how.add_argument("--workers", type=int, default=defaults.workers)
    how.add_argument("--checkpoints", default=",".join(map(str, defaults.checkpoints)),
                     help="request counts at which to measure; the last is the total")
    how.add_argument("--concurrency", type=int, default=defaults.concurrency,
                     help="requests in flight")
    how.add_argument("--idle", type=float, default=defaults.idle,
                     help="seconds to wait after the load before the idle measurement")
    how.add_argument("--repeat", type=int, default=defaults.repeat,
                     help="runs per variant, interleaved")
    how.add_argument("--out", type=Path, help="results directory (default bench-results/DATE)")
    how.add_argument("--explain", action="store_true",
                     help="after the load, profile one worker per variant with gcfork explain "
                     "(what it copied, by mapping, type and module)")
    how.add_argument("--attribute-every", type=int, metavar="N",
                     help="sample one request in N in every variant's workers for the per-path "
                     f"table ({ATTRIBUTE_EVERY.env}; default: the setting's, "
                     f"{ATTRIBUTE_EVERY.default}; a short run wants a few, e.g. 10)")
    how.add_argument("--baseline", help="variant the ratios compare with (default: the first)")
    how.add_argument("--results", type=Path, metavar="RESULTS_JSON",
                     help="print the table of an earlier run's results.json instead of running")


def _error(message: str) -> None:
    print(f"gcfork: error: {message}", file=sys.stderr)


def _find_master(args: argparse.Namespace) -> Master:
    if args.pid is not None:
        return master_from_pid(args.pid, args.stats_dir)
    if args.pidfile is not None:
        return master_from_pidfile(args.pidfile, args.stats_dir)
    master = choose(find_masters())
    print(f"gcfork: reporting the cluster of {master.pid} ({master.cmdline[:100]})",
          file=sys.stderr)
    return master


def run_report(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``gcfork report``; returns the exit status.

    Args:
        args: the parsed command line.
        out: where the report goes; stdout when None.
    """
    stream = out or sys.stdout
    try:
        master = _find_master(args)
    except DiscoveryError as exc:
        _error(str(exc))
        return EXIT_NO_MASTER
    render: Callable[[Report], str]
    if args.json:
        render = JSONRenderer(indent=None if args.watch else 2)
    else:
        render = TableRenderer(unit=args.unit)
    refresh = bool(args.watch) and not args.json and stream.isatty()
    try:
        while True:
            report = collect(master.pid, members, args.stats_dir or master.stats_dir,
                             threads=_THREADS)
            text = render(report)
            stream.write((_CLEAR if refresh else "") + text + "\n")
            stream.flush()
            if not args.watch:
                return EXIT_OK
            if not refresh and not args.json:
                stream.write("\n")
            time.sleep(args.watch)
    except MasterGone:
        _error(f"master {master.pid} exited; run `gcfork report` again to find the running "
               "masters")
        return EXIT_NO_MASTER
    except KeyboardInterrupt:
        return EXIT_OK


def run_settings(args: argparse.Namespace) -> int:
    """``gcfork settings``; returns the exit status."""
    reference = settings_markdown()
    if args.markdown:
        sys.stdout.write(reference)
        return EXIT_OK
    try:
        with open(args.check, encoding="utf-8") as f:
            current = f.read()
    except OSError as exc:
        _error(f"cannot read {args.check}: {exc.strerror}")
        current = None
    if current != reference:
        if current is not None:
            _error(f"{args.check} is out of date with gcfork/config.py")
        print(f"regenerate it with: python -m gcfork settings --markdown > {args.check}",
              file=sys.stderr)
        return EXIT_NO_MASTER
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gcfork`` command; returns the exit status (argparse exits 2 on
    a usage error)."""
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status
