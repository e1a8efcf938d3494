"""The gunicorn master's fleet exports: Prometheus (:mod:`gcfork.fleet`) and statsd.

Runs in the master, from ``when_ready`` once the sampler runs. What gunicorn
adds to the engine's exporter: the workers' slots (the adapter gives each
worker one in ``pre_fork``; ``server.WORKERS`` maps a pid to its age) and
gunicorn's own statsd logger, which sends under gunicorn's ``statsd_prefix``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gcfork.fleet import Exporter, Recycles, SlotOf, statsd_gauges
from gcfork.policy import Policy
from gcfork.report import Report, Sampler

__all__ = ["Exporter", "start_exports"]


def start_exports(server: Any, sampler: Sampler, policy: Policy,
                  slots: Callable[[], Mapping[int, int]], recycles: Recycles) -> Exporter:
    """Master: start the exports the settings ask for; returns what to stop at exit.

    Args:
        slots: the adapter's slot by worker age, read at every sample.
        recycles: the adapter's recycle counts by reason.
    """

    def slot_of(pid: int) -> int | None:
        # Read from the sampler's or a scrape's thread while the main loop
        # changes WORKERS: one dict lookup each, atomic.
        worker = server.WORKERS.get(pid)
        return None if worker is None else slots().get(worker.age)

    exporter = Exporter(policy, sampler, slot_of, recycles, server.log.info, server.log.error)
    exporter.start()
    # gunicorn swaps its logger for its Statsd class when statsd_host is set;
    # gauge() sends "<prefix><name>:<value>|g" over its UDP socket.
    if getattr(server.cfg, "statsd_host", None) and callable(getattr(server.log, "gauge", None)):
        sampler.subscribe(lambda report: _send_gauges(server.log, report, slot_of))
        server.log.info("gcfork: memory gauges sent to statsd at every sample, prefix %r",
                        getattr(server.log, "prefix", ""))
    return exporter


def _send_gauges(log: Any, report: Report, slot_of: SlotOf) -> None:
    # In the sampler's thread; gunicorn's Statsd logs its own send failures
    # (a warning), so a statsd daemon that is down never stops the sampler.
    for name, value in statsd_gauges(report, slot_of):
        log.gauge(name, value)
