"""The comparison of ``gcfork bench``: per variant, the median over repeats of
each figure, and the side-by-side table with every figure's ratio to the
baseline's."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gcfork.tools.bench.results import Checkpoint, Run
from gcfork.tools.bench.workload import Settings
from gcfork.units import MISSING, format_bytes, format_count, format_ms, format_percent

__all__ = ["ROWS", "checkpoint_line", "render_table", "summary"]


def _from_ms(value: float) -> str:  # latencies are kept in milliseconds
    return format_ms(value / 1000)


def _median(values: Sequence[float | None]) -> float:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else float("nan")


ROWS: Sequence[tuple[str, str, Callable[[float], str]]] = (
    ("cluster PSS", "cluster_pss", format_bytes),
    ("sum of RSS", "sum_rss", format_bytes),
    ("mean worker USS", "mean_worker_uss", format_bytes),
    ("mean worker shared", "mean_worker_shared_pct", format_percent),
    ("master RSS", "master_rss", format_bytes),
    ("GC collections (workers)", "gc_collections", format_count),
    ("GC pause p50 (<=)", "gc_pause_p50", format_ms),
    ("GC pause p99 (<=)", "gc_pause_p99", format_ms),
    ("GC pauses > 20 ms", "gc_pauses_over_20ms", format_count),
    ("GC max pause", "gc_max_pause", format_ms),
    ("GC max pause, CPU time", "gc_max_pause_cpu", format_ms),
)


def checkpoint_line(checkpoint: Checkpoint) -> str:
    """The figures of one checkpoint in a line, for the progress output."""
    m = checkpoint.measured
    return (f"cluster PSS {format_bytes(m.get('cluster_pss'))}, mean worker USS "
            f"{format_bytes(m.get('mean_worker_uss'))}, "
            f"shared {format_percent(m.get('mean_worker_shared_pct'))}")


def summary(runs: Sequence[Run], variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per variant: the median over repeats of each final figure, and the
    spread of throughput."""
    out: dict[str, dict[str, Any]] = {}
    for name in variants:
        mine = [r for r in runs if r.variant == name]
        last_mark = [next((c for c in reversed(r.checkpoints) if c.requests), None) for r in mine]
        figures = {key: _median([c.measured.get(key) if c else None for c in last_mark])
                   for _, key, _ in ROWS}
        rps = [r.requests_per_second for r in mine]
        figures.update(
            requests_per_second=_median(rps), rps_min=min(rps), rps_max=max(rps),
            p50_ms=_median([r.p50_ms for r in mine]), p99_ms=_median([r.p99_ms for r in mine]),
        )
        out[name] = figures
    return out


def render_table(summary_: Mapping[str, Mapping[str, Any]], settings: Settings,
                 baseline: str | None = None) -> str:
    """The side-by-side table: one column per variant, the baseline first,
    every other variant's figures with their ratio to the baseline's.

    Args:
        summary_: per variant, as :func:`summary` makes it.
        settings: the load the figures come from.
        baseline: the variant to compare with; the first one when None.
    """
    names = list(summary_)
    if baseline is not None:
        names.remove(baseline)
        names.insert(0, baseline)
    base = summary_[names[0]]
    rows: list[tuple[str, ...]] = [
        (f"after {settings.checkpoints[-1]:,} requests", *names),
    ]

    def cell(name: str, key: str, fmt: Callable[[float], str]) -> str:
        value = summary_[name][key]
        if value is None or math.isnan(value):
            return MISSING
        text = fmt(value)
        if name != names[0] and base[key] and not math.isnan(base[key]):
            text += f" ({value / base[key]:.2f}x)"
        return text

    for label, key, fmt in ROWS:
        rows.append((label, *(cell(n, key, fmt) for n in names)))
    rows.append(("requests/s", *(
        cell(n, "requests_per_second", format_count)
        + ("" if settings.repeat == 1 else
           f" [{summary_[n]['rps_min']:,.0f}-{summary_[n]['rps_max']:,.0f}]")
        for n in names)))
    rows.append(("latency p50", *(cell(n, "p50_ms", _from_ms) for n in names)))
    rows.append(("latency p99", *(cell(n, "p99_ms", _from_ms) for n in names)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
