"""``gcfork explain --by-path``: which request paths make a cluster's workers copy.

Runs in the ``gcfork`` command, never in a server. It measures the cluster as
``gcfork report`` does (:func:`gcfork.report.collect`), takes the per-path
figures each live worker published with its record (``attribute_every``,
:mod:`gcfork.attribution`) and adds them up (:func:`gcfork.attribution.merge`).
``gcfork bench`` prints the same table for each variant.

.. versionadded:: 0.4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from gcfork.attribution import merge
from gcfork.exceptions import DiscoveryError, MasterGone
from gcfork.gunicorn.discover import choose, find_masters, master_from_pid
from gcfork.records import ByPath
from gcfork.report import Report, collect
from gcfork.tools.clusters import members
from gcfork.units import format_count, format_percent, format_size, plural

__all__ = ["by_path_json", "cluster_by_path", "render_by_path", "run_by_path"]


def cluster_by_path(report: Report) -> tuple[ByPath | None, int]:
    """The figures of the report's live workers added up, and how many
    workers published some (None and 0 when none did: attribution off)."""
    parts = [w.stats.by_path for w in report.workers
             if w.stats is not None and w.stats.by_path is not None]
    return merge(parts), len(parts)


def render_by_path(by_path: ByPath | None, workers: int, top: int = 15,
                   title: str = "") -> str:
    """The per-path table: most growth first, with each path's mean growth
    per sampled request and its share of all the growth sampled.

    Args:
        by_path: as :func:`cluster_by_path` gives it.
        workers: how many workers the figures come from.
        top: rows at most; the rest are summed in one line.
        title: the first line's subject (e.g. ``cluster of master 1234``).
    """
    head = f"gcfork explain --by-path: {title}" if title else "requests that copy, by path"
    if by_path is None:
        return (f"{head}\nno worker published per-path figures: attribution is off "
                "(attribute_every = 0), the workers run a kind without request hooks "
                "(uvicorn), or none has published yet (every 2 s)")
    lines = [
        f"{head}: {plural(workers, 'worker')}, about 1 request in "
        f"{format_count(by_path.every)} sampled: {plural(by_path.sampled, 'sample')}"
        f" ({by_path.overlapped} dropped as they overlapped another request)",
        "USS growth (private memory: pages copied from the master, memory kept) measured "
        "around each sampled request:",
        f"  {'path':<40} {'samples':>8} {'mean/req':>10} {'max':>10} {'total':>10} {'share':>8}",
    ]
    grown = sum(max(r.total, 0) for r in by_path.paths)
    for row in by_path.paths[:top]:
        share = format_percent(100 * max(row.total, 0) / grown) if grown else "-"
        lines.append(f"  {row.path[:40]:<40} {row.samples:>8,} {format_size(row.mean):>10} "
                     f"{format_size(row.max):>10} {format_size(row.total):>10} {share:>8}")
    rest = by_path.paths[top:]
    if rest:
        lines.append(f"  ({plural(len(rest), 'more path')}: "
                     f"{plural(sum(r.samples for r in rest), 'sample')}, "
                     f"{format_size(sum(r.total for r in rest))} in total)")
    if not by_path.paths:
        lines.append("  (no sample yet)")
    return "\n".join(lines)


def by_path_json(report: Report) -> dict[str, Any]:
    """``gcfork explain --by-path --json``: the master, when, from how many
    workers, and the figures (``$defs/by_path`` of ``gcfork/report.schema.json``)."""
    merged, workers = cluster_by_path(report)
    return {"master": report.template_pid, "taken": report.taken, "workers": workers,
            "by_path": None if merged is None else merged.to_json()}


def run_by_path(args: argparse.Namespace) -> int:
    """``gcfork explain --by-path``: ``--pid`` is the master (none: the one
    master of this user); returns the exit status (1: no such master)."""
    try:
        master = choose(find_masters()) if args.pid is None else master_from_pid(
            args.pid, args.stats_dir)
        report = collect(master.pid, members, args.stats_dir or master.stats_dir)
    except (DiscoveryError, MasterGone) as exc:
        print(f"gcfork explain: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(by_path_json(report), indent=1))
        return 0
    merged, workers = cluster_by_path(report)
    print(render_by_path(merged, workers, top=args.top,
                         title=f"cluster of master {master.pid}, "
                               f"{time.strftime('%H:%M:%S', time.localtime(report.taken))}"))
    return 0
