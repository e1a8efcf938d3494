"""The fleet's settings: recycling workers on private memory, and metrics export.

Declared apart from :mod:`gcfork.config` (which lists them in ``SETTINGS`` and
resolves them with the others) so that neither file passes 500 lines.
"""

from __future__ import annotations

from gcfork import validate
from gcfork.setting import Setting

__all__ = [
    "MAX_WORKER_PRIVATE",
    "METRICS_ALLOW_REMOTE",
    "METRICS_BIND",
    "METRICS_TEXTFILE",
    "RECYCLE_MIN_AGE",
]

# -- Recycling workers on private memory (issue 12, item 3) ---------------------

MAX_WORKER_PRIVATE: Setting[int | None] = Setting(
    name="max_worker_private",
    section="Recycling workers",
    default=None,
    validator=validate.size,
    from_env=validate.env_size,
    allowed=("None (off), an int of bytes > 0, or a size such as '300MiB', '1.5GiB' or "
             "'500MB' (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
    env_syntax="a size such as 300MiB, 1.5GiB, 500MB or 314572800; empty or 'none' for off",
    doc="""\
Recycle a worker whose private memory (USS: the pages no other process maps)
stays above this size: when two consecutive samples of the master's sampler
find it above, the master sends that worker ``SIGTERM``, gunicorn's graceful
stop (the worker finishes its requests, within ``graceful_timeout`` for the
kinds that keep several), and gunicorn forks its replacement. ``None`` (the
default) never recycles.

USS, not RSS: RSS counts the pages a worker shares with the master, so the
better the sharing the sooner an RSS limit fires on a healthy worker; USS is
what a worker's exit gives back (``docs/fleet.md``). At most one worker is
in recycle at a time (the next is considered once it has exited), and none
younger than ``recycle_min_age``. Each recycle is one line in the master's
log (pid, slot, USS in both samples and their distance, the bound).

While it is set the sampler measures the cluster every 2 s (instead of every
``report_interval``, at most 30 s), sooner when a worker's growth would carry
it over the bound before the next sample, and confirms a worker seen above
0.5 s later: a worker is asked to stop within about a second of crossing the
bound. The log line keeps its ``report_interval``.
Measuring costs about 1 ms per worker (a ``smaps_rollup`` read), in a thread
of the master. Workers only: the master, gunicorn's dirty arbiter and its
dirty workers are never recycled.""",
)

RECYCLE_MIN_AGE: Setting[float] = Setting(
    name="recycle_min_age",
    section="Recycling workers",
    default=60.0,
    validator=validate.seconds,
    from_env=validate.env_float,
    allowed="a number of seconds >= 0",
    env_syntax="a number of seconds >= 0",
    doc="""\
A worker younger than this is never recycled by ``max_worker_private``,
whatever its USS: an app that builds its caches in its first minute would
otherwise be restarted in a loop, each replacement building them again.
Ignored while ``max_worker_private`` is None.""",
)

# -- Fleet metrics (issue 12: Prometheus, textfile, statsd) --------------------

METRICS_BIND: Setting[str | None] = Setting(
    name="metrics_bind",
    section="Fleet metrics",
    default=None,
    validator=validate.host_port,
    from_env=validate.env_text,
    allowed=("None (no HTTP endpoint) or 'host:port', e.g. '127.0.0.1:9464' or '[::1]:9464'; "
             "a non-loopback host only with metrics_allow_remote"),
    env_syntax="host:port, e.g. 127.0.0.1:9464; empty for None",
    doc="""\
Serve the cluster's figures in Prometheus' text format at
``http://HOST:PORT/metrics``, from a thread of the master (the template),
from the sampler's last sample: no request measures anything. Port ``0``
takes a free port; the master logs the address it bound either way. Needs
``prometheus_client`` (``pip install 'gcfork[metrics]'``), imported only
when this or ``metrics_textfile`` is set.

Only ``localhost`` and loopback addresses are accepted, since the figures
describe the server's processes; any other host (including ``0.0.0.0`` and
host names, which are not resolved) is refused at start unless
``metrics_allow_remote`` is true. If the address cannot be bound at run
time, the master logs it at ERROR and the server runs without the endpoint.
See ``docs/fleet.md`` for the metrics and their labels.""",
)

METRICS_ALLOW_REMOTE: Setting[bool] = Setting(
    name="metrics_allow_remote",
    section="Fleet metrics",
    default=False,
    validator=validate.boolean,
    from_env=validate.env_bool,
    allowed="True or False",
    env_syntax="1/0, true/false, yes/no or on/off",
    doc="""\
Let ``metrics_bind`` take a host that is not loopback (``0.0.0.0``, a LAN
address, a host name). The endpoint has no authentication: put it behind a
firewall or a network only the scraper reaches.""",
)

METRICS_TEXTFILE: Setting[str | None] = Setting(
    name="metrics_textfile",
    section="Fleet metrics",
    default=None,
    validator=validate.optional_textfile,
    from_env=validate.env_text,
    allowed="None or an absolute path ending in .prom, in an existing directory",
    env_syntax="an absolute path ending in .prom; empty for None",
    doc="""\
Write the same metrics to this file after every sample, for node_exporter's
textfile collector (``--collector.textfile.directory``). The file is
replaced atomically: the master writes a hidden temporary file in the same
directory and renames it over the path, so a reader sees the previous
sample or the new one, never part of one. gcfork neither creates nor changes
the directory. The file is mode 0640, owned by the master's user and group:
a node_exporter running as another user reads it if it is in the file's
group (make the directory setgid and group-owned by node_exporter's group,
and new files take that group). A write that fails is logged at ERROR (once
per distinct failure) and the server goes on.""",
)
