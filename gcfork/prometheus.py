"""The cluster's figures as Prometheus metrics, through ``prometheus_client``.

Imported by :class:`gcfork.fleet.Exporter` in the template only when
``metrics_bind`` or ``metrics_textfile`` is set: a server without them never
loads ``prometheus_client``. :class:`ClusterCollector` turns the sampler's
last report into metric families at each scrape (no hand-written format);
:class:`MetricsServer` serves them from a thread; :class:`TextfileWriter`
writes them for node_exporter. ``docs/fleet.md`` is the metric reference.

.. versionadded:: 0.4
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from gcfork import files, validate
from gcfork.fleet import Recycles, SlotOf, memory_kinds, series
from gcfork.report import Report

__all__ = ["ClusterCollector", "MetricsServer", "TextfileWriter", "registry"]

_TEXTFILE_MODE = 0o640  # docs/configuration.md, metrics_textfile: why not 0644


class ClusterCollector:
    """A ``prometheus_client`` collector over the last report (read at each collect).

    Args:
        last: returns the sampler's last report (None before the first).
        slot_of: the adapter's slots (:data:`gcfork.fleet.SlotOf`).
        recycles: the adapter's recycle counts by reason.
        info: labels of ``gcfork_info`` (version, mode, python), read at each
            collect (a reload can change the mode).
    """

    def __init__(self, last: Callable[[], Report | None], slot_of: SlotOf, recycles: Recycles,
                 info: Callable[[], Mapping[str, str]]) -> None:
        self._last = last
        self._slot_of = slot_of
        self._recycles = recycles
        self._info = info

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily("gcfork", "gcfork's version, mode and Python",
                               value=dict(self._info()))
        recycles = CounterMetricFamily(
            "gcfork_worker_recycles", "Workers gcfork asked to stop, by reason",
            labels=["reason"])
        for reason, count in sorted(self._recycles().items()):
            recycles.add_metric([reason], count)
        yield recycles
        report = self._last()
        if report is None:
            return  # no sample yet: the families would be empty
        yield GaugeMetricFamily("gcfork_sample_timestamp_seconds",
                                "When the figures below were measured (Unix time)",
                                value=report.taken)
        yield from self._cluster(report)
        yield from self._processes(report)

    @staticmethod
    def _cluster(report: Report) -> Iterator[Metric]:
        t = report.totals
        cluster = GaugeMetricFamily(
            "gcfork_cluster_memory_bytes",
            "Sums over the cluster's measured processes; pss is what it really costs",
            labels=["kind"])
        for kind, value in (("rss", t.sum_rss), ("pss", t.sum_pss), ("uss", t.sum_uss)):
            if value is not None:
                cluster.add_metric([kind], value)
        yield cluster
        if t.savings is not None:
            yield GaugeMetricFamily("gcfork_cluster_cow_saved_bytes",
                                    "Bytes copy-on-write sharing saves: sum of RSS - sum of PSS",
                                    value=t.savings)

    def _processes(self, report: Report) -> Iterator[Metric]:
        labels = ["role", "slot"]
        mem = GaugeMetricFamily("gcfork_process_memory_bytes",
                                "Memory of one process of the cluster, by kind",
                                labels=[*labels, "kind"])
        collections = CounterMetricFamily(
            "gcfork_gc_collections", "Collections since the process started, by generation",
            labels=[*labels, "generation"])
        pause = GaugeMetricFamily("gcfork_gc_pause_seconds_max",
                                  "Longest collection pause of the process", labels=labels)
        frozen = GaugeMetricFamily("gcfork_gc_frozen_objects",
                                   "Objects in the permanent generation (gc.freeze)",
                                   labels=labels)
        for role, slot, row in series(report, self._slot_of):
            who = [role, str(slot)]
            for kind, value in memory_kinds(row):
                mem.add_metric([*who, kind], value)
            if row.stats is None:
                continue
            for gen, stats in enumerate(row.stats.generations):
                collections.add_metric([*who, str(gen)], stats.collections)
            pause.add_metric(who, row.stats.pause_max)
            frozen.add_metric(who, row.stats.freeze_count)
        yield from (mem, collections, pause, frozen)


def registry(last: Callable[[], Report | None], slot_of: SlotOf, recycles: Recycles,
             info: Callable[[], Mapping[str, str]]) -> CollectorRegistry:
    """A registry of gcfork's collector alone (not the process-wide default one)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ClusterCollector(last, slot_of, recycles, info))
    return reg


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would fill the master's stderr: say nothing."""


class MetricsServer:
    """``/metrics`` served by a daemon thread of the template.

    Build it with :meth:`start`; :attr:`url` is the address it bound.
    """

    __slots__ = ("_httpd", "_thread", "url")

    def __init__(self, httpd: WSGIServer, thread: threading.Thread, url: str) -> None:
        self._httpd = httpd
        self._thread = thread
        self.url = url

    @classmethod
    def start(cls, bind: str, reg: CollectorRegistry) -> MetricsServer:
        """Bind ``bind`` (``host:port``) and serve in a thread.

        Raises:
            OSError: the address cannot be bound (in use, not local, refused).
        """
        host, port = validate.split_host_port(bind)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_MetricsHTTPServer", (ThreadingMixIn, WSGIServer),
                            {"daemon_threads": True, "address_family": family})
        httpd: WSGIServer = make_server(host, port, make_wsgi_app(reg), server_class=server_class,
                            handler_class=_QuietHandler)
        # A worker forked later inherits the listening socket; it never
        # accepts on it, but closing it there frees the port with the master.
        os.register_at_fork(after_in_child=httpd.socket.close)
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                  name="gcfork-metrics", daemon=True)
        thread.start()
        bound = httpd.server_address[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        return cls(httpd, thread, f"http://{shown}:{bound}/metrics")

    def stop(self) -> None:
        """Template, at exit: stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(2.0)


class TextfileWriter:
    """Writes the metrics to a ``.prom`` file after every sample, atomically.

    Called in the sampler's thread; a failed write is logged at ERROR, once
    per distinct failure, and the next sample tries again.
    """

    __slots__ = ("_dir", "_last_error", "_log_error", "_name", "_registry")

    def __init__(self, path: str, reg: CollectorRegistry,
                 log_error: Callable[[str], object]) -> None:
        self._dir, self._name = os.path.split(path)
        self._registry = reg
        self._log_error = log_error
        self._last_error = ""

    def write(self, report: Report) -> None:
        try:
            data = generate_latest(self._registry)
            fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                files.write_private(fd, self._name, data, mode=_TEXTFILE_MODE)
            finally:
                os.close(fd)
            self._last_error = ""
        except Exception as exc:  # the sampler and the server go on without the file
            if repr(exc) != self._last_error:
                self._last_error = repr(exc)
                self._log_error(f"gcfork: cannot write the metrics textfile "
                                f"{os.path.join(self._dir, self._name)}: {exc}")
