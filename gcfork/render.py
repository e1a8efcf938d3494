"""Turn a :class:`~gcfork.report.Report` into text: one renderer class per format.

Renderers are slotted classes configured in ``__init__`` that turn a report
into text in ``__call__``: :class:`TableRenderer` (for a person),
:class:`JSONRenderer` (the versioned schema in ``gcfork/report.schema.json``,
always valid JSON) and :class:`LogLineRenderer` (one line for the server's
log); :func:`worker_exit_line` is the template's line about a worker that
exited. Processes are named by the roles their adapter gave them.

Figures are written as :mod:`gcfork.units` says (``-`` for a figure that is
missing or not to be trusted, null in JSON). :mod:`gcfork.report` re-exports
all of this.

.. versionadded:: 0.3
   Split from :mod:`gcfork.report`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gcfork.stats import StatsRecord
from gcfork.units import (
    MAX_BYTES,
    MISSING,
    format_age,
    format_bytes,
    format_count,
    format_ms,
    format_percent,
    plural,
)

if TYPE_CHECKING:  # gcfork.report imports this module: no import cycle at run time
    from gcfork.report import ProcessRow, Report

__all__ = [
    "JSONRenderer",
    "LogLineRenderer",
    "TableRenderer",
    "json_safe",
    "worker_exit_line",
]


class TableRenderer:
    """A table a person reads in seconds: one row per process, then the totals
    and one sentence with the savings.

    Args:
        unit: ``MiB`` (default) or ``MB``.
    """

    __slots__ = ("_unit",)

    _HEAD = ("ROLE", "PID", "AGE", "REQS", "RSS", "PSS", "USS", "SHARED", "GC", "P99 PAUSE",
             "MAX PAUSE")

    def __init__(self, unit: str = "MiB") -> None:
        format_bytes(0, unit)  # a unit it does not know fails here, not at the first report
        self._unit = unit

    def _size(self, n: int | float | None) -> str:
        return format_bytes(n, self._unit)

    def _row(self, row: ProcessRow, now: float) -> list[str]:
        m, s = row.memory, row.stats
        gc_cell = MISSING if s is None else (format_count(s.collections)
                                             + ("" if s.gc_enabled else " (off)"))
        return [
            row.role, str(m.pid), format_age(row.age(now)), format_count(row.requests),
            self._size(m.rss), self._size(m.pss), self._size(m.uss),
            format_percent(m.shared_percent),
            gc_cell, _p99(s),
            MISSING if s is None or not s.collections else format_ms(s.pause_max),
            m.problem or "",
        ]

    def __call__(self, report: Report) -> str:
        t = report.totals
        template = report.template.role
        gc_state = {True: "on", False: "off", None: "unknown"}[report.template_gc_enabled]
        lines = [
            f"cluster of {template} {report.template_pid}: {plural(t.workers, 'worker')}, "
            f"{plural(len(report.rows), 'process', 'processes')}, {template} GC {gc_state}  "
            f"({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(report.taken))})",
            "",
        ]
        table = [[*self._HEAD, ""]]
        table += [self._row(r, report.taken) for r in report.rows]
        table.append(["TOTAL", "", "", _sum_requests(report), self._size(t.sum_rss),
                      self._size(t.sum_pss), self._size(t.sum_uss), "", "", "", "", ""])
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        left = {0, len(self._HEAD)}
        for i, cells in enumerate(table):
            if i == len(table) - 1:
                lines.append("  ".join("-" * w for w in widths[:-1]))
            lines.append("  ".join(c.ljust(w) if j in left else c.rjust(w)
                                   for j, (c, w) in enumerate(zip(cells, widths))).rstrip())
        lines += ["", report.summary() + "."]
        if t.mean_worker_uss is not None and t.mean_worker_shared_percent is not None:
            lines.append(f"mean worker: {self._size(t.mean_worker_uss)} private, "
                         f"{format_percent(t.mean_worker_shared_percent)} of its RSS shared.")
        lines += [f"note: {n}" for n in report.notes]
        return "\n".join(lines)


def _p99(stats: StatsRecord | None) -> str:
    """99 % of the collections paused at most this long (a histogram bucket's
    bound, hence the sign)."""
    p99 = None if stats is None else stats.pause_quantile(0.99)
    return MISSING if p99 is None else "<=" + format_ms(p99)


def _sum_requests(report: Report) -> str:
    counts = [r.requests for r in report.workers if r.requests is not None]
    return format_count(sum(counts)) if counts else MISSING


def json_safe(value: Any) -> Any:
    """``value`` with every figure JSON cannot carry replaced by None: NaN and
    the infinities (``json.dumps`` would write the non-JSON ``NaN``), and ints
    beyond 2**63 (no reader keeps them; past 4,300 digits ``str`` refuses them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value if abs(value) <= MAX_BYTES else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class JSONRenderer:
    """The report as JSON (``Report.to_dict``), always valid JSON: a figure
    that is not finite (from a record written by another process) is null.

    Args:
        indent: passed to the serializer; None for one line.
        serializer: turns the object into text; :func:`json.dumps` (with
            ``allow_nan=False``) by default.

    .. versionchanged:: 0.3
       Non-finite figures are null instead of ``NaN``/``Infinity``.
    """

    __slots__ = ("_dumps", "_indent")

    def __init__(self, indent: int | None = 2,
                 serializer: Callable[..., str] | None = None) -> None:
        self._indent = indent
        self._dumps = serializer

    def __call__(self, report: Report) -> str:
        document = json_safe(report.to_dict())
        if self._dumps is None:
            return json.dumps(document, indent=self._indent, allow_nan=False)
        return self._dumps(document, indent=self._indent)


class LogLineRenderer:
    """One compact line for the template's log.

    Args:
        prefix: put before the figures.
    """

    __slots__ = ("_prefix",)

    def __init__(self, prefix: str = "gcfork: memory: ") -> None:
        self._prefix = prefix

    def __call__(self, report: Report) -> str:
        t = report.totals
        parts = [plural(t.workers, "worker"), f"sum RSS {format_bytes(t.sum_rss)}",
                 f"sum PSS {format_bytes(t.sum_pss)}",
                 f"savings {format_percent(t.savings_percent)}",
                 f"mean worker shared {format_percent(t.mean_worker_shared_percent)}"]
        if t.unmeasured:
            parts.append(f"{t.unmeasured} not measured")
        return self._prefix + ", ".join(parts)


def worker_exit_line(pid: int, record: StatsRecord | None, age: float | None,
                     private: int | None, measured_ago: float | None = None) -> str:
    """The template's line about a worker that exited.

    Args:
        pid: the worker.
        record: its last published record, if any.
        age: seconds it ran, if known.
        private: its USS in bytes at exit, if known.
        measured_ago: None if ``private`` was measured by the worker as it
            exited; else how long before its exit the template measured it
            (a worker killed, or of a kind that publishes no final record).

    .. versionchanged:: 0.4
       ``measured_ago``: a sample taken before the exit is no longer called
       "at exit".
    """
    if record is None:
        gc_part = "no GC statistics published"
    elif not record.collections:
        gc_part = "0 GC collections"
    else:
        p99 = record.pause_quantile(0.99)
        gc_part = (f"{plural(record.collections, 'GC collection')}, "
                   + ("" if p99 is None else f"99 % of pauses <= {format_ms(p99)}, ")
                   + f"max pause {format_ms(record.pause_max)}")
    if record is None or record.requests is None:
        requests = "- requests"
    else:
        requests = plural(record.requests, "request")
    when = ("at exit" if measured_ago is None or private is None
            else f"measured {format_age(measured_ago)} before exit")
    return (f"gcfork: worker {pid} exited: age {format_age(age)}, {requests}, "
            f"{format_bytes(private)} private {when}, {gc_part}")
