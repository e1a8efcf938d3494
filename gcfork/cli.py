"""The ``gcfork`` command.

Subcommands:

- ``gcfork report``: the memory-sharing report of a running gunicorn master;
- ``gcfork settings``: the settings reference, generated from
  :mod:`gcfork.config`, or a check that a copy of it is current;
- ``gcfork explain``: the copy-on-write profile of one running worker
  (:func:`gcfork.explain.explain_main`; exit status 1 if it cannot be had).

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
from typing import Callable, TextIO

from gcfork import bench
from gcfork.config import STATS_DIR, settings_markdown
from gcfork.discover import (
    Master,
    choose,
    find_masters,
    master_from_pid,
    master_from_pidfile,
)
from gcfork.exceptions import DiscoveryError
from gcfork.explain import explain_main
from gcfork.report import JSONRenderer, Report, TableRenderer, collect

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
        "report", help="memory sharing and GC statistics of a running gunicorn master",
        # argparse %-formats help strings but not descriptions: a bare % here.
        description="Measure a running gunicorn master and its workers: RSS, PSS, USS, "
                    "shared %, requests and GC statistics, with the memory that "
                    "copy-on-write saves. A master is what gcfork advertises when it is "
                    "installed in the master's config; without --pid or --pidfile, the one "
                    "such master of this user is reported.",
    )
    which = report.add_mutually_exclusive_group()
    which.add_argument("--pid", type=_positive_int,
                       help="pid of the gunicorn master (refused, with the pid to use, if it "
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
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(func=bench.run)

    # Its options belong to explain_main, which parses them itself:
    # with no prefix characters of its own, this parser passes every word on.
    explain = sub.add_parser(
        "explain", help="which Python types and modules a worker's copied pages hold",
        add_help=False, prefix_chars="\0",
    )
    explain.add_argument("argv", nargs=argparse.REMAINDER)
    explain.set_defaults(func=lambda args: explain_main(args.argv))
    return parser


def _error(message: str) -> None:
    print(f"gcfork: error: {message}", file=sys.stderr)


def _find_master(args: argparse.Namespace) -> Master:
    if args.pid is not None:
        return master_from_pid(args.pid, args.stats_dir)
    if args.pidfile is not None:
        return master_from_pidfile(args.pidfile, args.stats_dir)
    master = choose(find_masters())
    print(f"gcfork: reporting gunicorn master {master.pid} ({master.cmdline[:100]})",
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
            text = render(collect(master.pid, args.stats_dir or master.stats_dir, threads=_THREADS))
            stream.write((_CLEAR if refresh else "") + text + "\n")
            stream.flush()
            if not args.watch:
                return EXIT_OK
            if not refresh and not args.json:
                stream.write("\n")
            time.sleep(args.watch)
    except DiscoveryError as exc:
        _error(f"{exc}; run `gcfork report` again to find the running masters")
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
