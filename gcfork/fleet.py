"""The cluster's figures for fleet tools: Prometheus (an endpoint, a textfile) and statsd.

Everything here runs in the template (gunicorn's master), over the
:class:`~gcfork.report.Sampler`'s last report: exporting measures nothing
itself. This module is standard library only; ``prometheus_client`` is
imported (by :mod:`gcfork.prometheus`) only when :class:`Exporter` starts
with ``metrics_bind`` or ``metrics_textfile`` set.

Labels stay bounded: a process is named by its role and its *slot*, never
its pid. A worker's slot is the adapter's (gunicorn's: 0 to workers - 1, a
respawned worker takes the slot of the one it replaces); a process the
adapter gives no slot takes the lowest number its role has free, oldest
first.
When two processes of one role hold one slot (a HUP forks the new worker
before the old one leaves), the younger one's figures are shown.

.. versionadded:: 0.4
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from gcfork.policy import Policy
from gcfork.report import ProcessRow, Report, Sampler

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from gcfork.prometheus import MetricsServer, TextfileWriter

__all__ = ["Exporter", "Recycles", "Series", "SlotOf", "series", "statsd_gauges"]

SlotOf = Callable[[int], "int | None"]
"""The adapter's slot of a pid (gunicorn's worker index), or None if it gives none."""

Recycles = Callable[[], Mapping[str, int]]
"""Workers recycled so far, by reason, for ``gcfork_worker_recycles_total``:
the adapter's count, read at every scrape. An adapter without recycling
returns an empty mapping (the family is then shown with no sample); one with
it lists each reason it can recycle for, 0 until the first."""


class Series(NamedTuple):
    """One process as the metrics name it: its role, its slot and its row."""

    role: str
    slot: int
    row: ProcessRow


def series(report: Report, slot_of: SlotOf) -> list[Series]:
    """The report's processes with their labels, one per (role, slot), in report order."""
    # Oldest first, so that the younger of two processes holding one slot wins
    # and the processes without a slot are numbered by age.
    aged = sorted(report.rows, key=lambda r: (r.memory.started or 0.0, r.pid))
    slots = {id(row): slot_of(row.pid) for row in aged}
    by_label: dict[tuple[str, int], ProcessRow] = {
        (row.role, slot): row for row in aged if (slot := slots[id(row)]) is not None}
    # Then the others take the lowest free numbers of their role: a worker the
    # adapter has not given its slot yet (the sample saw its pid before
    # gunicorn's table did) does not push a slotted worker's series out.
    for row in aged:
        if slots[id(row)] is None:
            free = next(n for n in range(len(aged) + 1) if (row.role, n) not in by_label)
            by_label[(row.role, free)] = row
    kept = {id(row): label for label, row in by_label.items()}
    return [Series(*kept[id(r)], r) for r in report.rows if id(r) in kept]


def statsd_gauges(report: Report, slot_of: SlotOf) -> list[tuple[str, float]]:
    """The gauges statsd gets at every sample (names under the server's prefix):
    ``gcfork.cluster.<rss|pss|uss>``, ``gcfork.cluster.cow_saved`` and, per
    process, ``gcfork.<role>.<slot>.<rss|pss|uss|shared|swap>``,
    ``....gc_pause_max`` (seconds) and ``....gc_frozen_objects``."""
    t = report.totals
    out: list[tuple[str, float]] = [("gcfork.cluster.rss", t.sum_rss)]
    out += [(f"gcfork.cluster.{k}", v) for k, v in (("pss", t.sum_pss), ("uss", t.sum_uss),
                                                    ("cow_saved", t.savings)) if v is not None]
    for role, slot, row in series(report, slot_of):
        name = f"gcfork.{role}.{slot}"
        out += [(f"{name}.{kind}", value) for kind, value in memory_kinds(row)]
        if row.stats is not None:
            out += [(f"{name}.gc_pause_max", row.stats.pause_max),
                    (f"{name}.gc_frozen_objects", row.stats.freeze_count)]
    return out


def memory_kinds(row: ProcessRow) -> list[tuple[str, int]]:
    """A row's measured figures by kind (rss, pss, uss, shared, swap), in bytes."""
    m = row.memory
    kinds = (("rss", m.rss), ("pss", m.pss), ("uss", m.uss), ("shared", m.shared),
             ("swap", m.swap))
    return [(kind, value) for kind, value in kinds if value is not None]


class Exporter:
    """The template's Prometheus exports: the ``/metrics`` thread and the textfile.

    Start it after the sampler (:meth:`start`); it reads the sampler's last
    report at each scrape and writes the textfile at each sample. Failures
    are logged at ERROR and never raised: the server goes on without them.

    Args:
        policy: ``metrics_bind`` and ``metrics_textfile`` say what to start.
        sampler: the template's sampler.
        slot_of: the adapter's slots.
        recycles: the adapter's recycle counts.
        log_info, log_error: the server's logger's methods.
    """

    __slots__ = ("_log_error", "_log_info", "_policy", "_recycles", "_registry", "_sampler",
                 "_server", "_slot_of", "_subscribed", "_textfile")

    def __init__(self, policy: Policy, sampler: Sampler, slot_of: SlotOf, recycles: Recycles,
                 log_info: Callable[[str], object], log_error: Callable[[str], object]) -> None:
        self._policy = policy
        self._sampler = sampler
        self._slot_of = slot_of
        self._recycles = recycles
        self._log_info = log_info
        self._log_error = log_error
        self._registry: CollectorRegistry | None = None
        self._server: MetricsServer | None = None
        self._textfile: TextfileWriter | None = None
        self._subscribed = False

    def start(self) -> None:
        """Template, once its sampler runs: bind the endpoint, subscribe the textfile."""
        self._apply(bind=self._policy.metrics_bind, textfile=self._policy.metrics_textfile)

    def reconfigure(self, policy: Policy) -> None:
        """Template, after a reload (``HUP``) settled a new policy: move the endpoint
        and the textfile if their settings changed; the others stay as they are."""
        old, self._policy = self._policy, policy
        bind = policy.metrics_bind if policy.metrics_bind != old.metrics_bind else None
        if old.metrics_bind is not None and policy.metrics_bind != old.metrics_bind:
            self._close_endpoint()
            self._log_info(f"gcfork: metrics endpoint {old.metrics_bind} closed (reload)")
        textfile = None
        if policy.metrics_textfile != old.metrics_textfile:
            self._textfile = None  # the sampler's next write goes to the new file, if any
            textfile = policy.metrics_textfile
        self._apply(bind=bind, textfile=textfile)

    def _apply(self, bind: str | None, textfile: str | None) -> None:
        """Start what is given (None: leave that export alone)."""
        if bind is None and textfile is None:
            return
        registry = self._load_registry()
        if registry is None:
            return
        from gcfork import prometheus

        if bind is not None:
            try:
                self._server = prometheus.MetricsServer.start(bind, registry)
            except OSError as exc:
                self._log_error(f"gcfork: cannot serve metrics on {bind}: {exc}; the server "
                                "goes on without the endpoint")
            else:
                self._log_info(f"gcfork: metrics at {self._server.url} (pid {os.getpid()})")
        if textfile is not None:
            self._textfile = prometheus.TextfileWriter(textfile, registry, self._log_error)
            if not self._subscribed:  # once: the writer in force is read at every sample
                self._sampler.subscribe(self._write_textfile)
                self._subscribed = True
            self._log_info(f"gcfork: metrics written to {textfile} at every sample")

    def _load_registry(self) -> CollectorRegistry | None:
        """The registry of gcfork's collector, importing prometheus_client the
        first time an export needs it; None (logged) if it is not installed."""
        if self._registry is not None:
            return self._registry
        try:
            from gcfork import prometheus
        except ImportError as exc:
            self._log_error(f"gcfork: metrics not exported: {exc} (pip install "
                            "'gcfork[metrics]' installs prometheus_client)")
            return None
        self._registry = prometheus.registry(lambda: self._sampler.last, self._slot_of,
                                             self._recycles, self._info)
        return self._registry

    def _info(self) -> dict[str, str]:
        from gcfork import __version__

        return {"version": str(__version__), "mode": self._policy.mode,
                "python": ".".join(map(str, sys.version_info[:3]))}

    def _write_textfile(self, report: Report) -> None:
        writer = self._textfile
        if writer is not None:
            writer.write(report)

    def _close_endpoint(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):  # the endpoint is going: nothing to tell
                server.stop()

    def stop(self) -> None:
        """Template, at exit: close the endpoint (the textfile stays, as node_exporter
        expects; its sample time says how old it is)."""
        self._close_endpoint()
