"""gcfork's settings, each declared once.

A :class:`Setting` holds everything about one setting: its name, the
environment variable that overrides it, how text from that variable is parsed,
how a value is validated, its default and its documentation. Validation,
environment parsing and ``docs/configuration.md`` all come from these
declarations (the last through ``gcfork settings --markdown``).

Validators coerce and then reject: they return the clean value or raise
:class:`ValueError` / :class:`TypeError` with the reason; :func:`resolve` turns
that into a :class:`~gcfork.exceptions.ConfigError` naming the setting, the
value and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from gcfork import immortal, validate
from gcfork.attribution_settings import ATTRIBUTE_EVERY
from gcfork.exceptions import ConfigError, short_repr
from gcfork.fleet_settings import (
    MAX_WORKER_PRIVATE,
    METRICS_ALLOW_REMOTE,
    METRICS_BIND,
    METRICS_TEXTFILE,
    RECYCLE_MIN_AGE,
)
from gcfork.setting import Setting
from gcfork.typing import (
    Mode,
    Thresholds,
    ThresholdsFn,
    ThresholdsSetting,
    WarmupSetting,
    WorkerInfo,
)

__all__ = [
    "SETTINGS",
    "Resolved",
    "Setting",
    "resolve",
    "settings_markdown",
    "worker_thresholds",
]

def _check_immortalize(resolved: Mapping[str, Resolved]) -> None:
    """Refuse ``immortalize`` where it cannot run, unless mode ``off`` ignores it.

    Checked at load time, so that gunicorn exits before any fork rather than a
    worker discovering it later; after every setting is resolved, since the
    answer depends on ``mode``.
    """
    wanted = resolved[IMMORTALIZE.name]
    if not wanted.value or resolved[MODE.name].value == "off":
        return
    reason = immortal.unsupported_reason()
    if reason is not None:
        raise ConfigError(IMMORTALIZE.name, wanted.value, IMMORTALIZE.allowed, wanted.source,
                          reason)


def _check_metrics_bind(resolved: Mapping[str, Resolved]) -> None:
    """Refuse a non-loopback ``metrics_bind`` unless ``metrics_allow_remote``:
    checked once both are resolved, since either may come from the environment."""
    bind = resolved[METRICS_BIND.name]
    if bind.value is None or resolved[METRICS_ALLOW_REMOTE.name].value:
        return
    host, _ = validate.split_host_port(bind.value)
    if not validate.is_loopback(host):
        raise ConfigError(METRICS_BIND.name, bind.value, METRICS_BIND.allowed, bind.source,
                          f"{host} is not a loopback address; set metrics_allow_remote=True "
                          "to serve the figures beyond this host")


# -- the declarations -----------------------------------------------------------

MODE: Setting[Mode] = Setting(
    name="mode",
    section="Garbage collector",
    default="freeze",
    validator=validate.mode,
    from_env=str,
    allowed="'freeze', 'disable' or 'off'",
    env_syntax="freeze, disable or off",
    doc="""\
What gcfork does to the cyclic garbage collector.

- ``freeze`` (default): the collector is disabled in the master from the
  moment gcfork is installed, every object is frozen (``gc.freeze()``)
  right before each worker is forked, and each worker re-enables the collector
  with its thresholds. Collections in workers then never touch the objects
  inherited from the master.
- ``disable``: as ``freeze``, but the collector stays off in the workers too
  (Instagram, 2017). Reference cycles created by requests are then never
  freed: use it only with ``max_requests`` or an app known to make no cycles.
  gcfork logs a warning at start.
- ``off``: gcfork changes nothing; the collector runs as Python sets it up,
  and the settings of "Beyond freeze" (``warmup``, ``immortalize``,
  ``fast_exit``) are ignored, with a line in the log. Useful as the baseline
  of a comparison, and as the one switch that takes gcfork out of the way:
  memory is still measured.""",
)

THRESHOLDS: Setting[ThresholdsSetting] = Setting(
    name="thresholds",
    section="Garbage collector",
    default=None,
    validator=validate.thresholds,
    from_env=validate.env_thresholds,
    allowed=(
        "None (gcfork's worker default), 'auto' (short pauses), a tuple of 1 to 3 ints "
        ">= 0, or a callable taking a gcfork.WorkerInfo and returning such a tuple"
    ),
    env_syntax="'default', 'auto' or 1 to 3 comma-separated ints >= 0, e.g. 50000,20,20",
    doc="""\
The collector thresholds each worker sets right after it is forked, as
``gc.set_threshold`` takes them. ``None`` is gcfork's worker default: a first
threshold of 700 (CPython's own up to 3.12; 3.13 raised it to 2,000, which
lets a worker's pages hold about three times as much cyclic garbage between
young collections) and the interpreter's values for the other two. Give
``(2000, 10, 10)`` to keep 3.13's.
A callable receives a :class:`gcfork.WorkerInfo` and returns the tuple, so
workers can run different thresholds. Under gunicorn ``index`` is the worker's
slot, 0 to workers - 1, and ``age`` gunicorn's spawn counter; under
``gcfork.celery`` and ``gcfork.fork`` see docs/pools.md. The callable runs in the master right
before the worker is forked; it is called once at start-up with
``WorkerInfo(index=0, age=1)`` to check it. Ignored in modes ``disable`` and
``off``. Since inherited objects are frozen, a worker's collections only scan
what the worker allocated itself: raising the first threshold trades memory
held by cyclic garbage for fewer pauses.

``"auto"`` is for short pauses: each worker runs ``(700, 1, 1)`` and freezes
its own heap right after its third full collection (``gcfork.settle``), so
that later full collections traverse only what it made since and free the
garbage of a few requests at a time. On the Django example (CPython 3.12) it
cut the median full collection from 46 ms to 3 ms and the longest from 122
to 41 ms, with less memory held by garbage; it does not cap pauses: freeing
one request's cyclic garbage still takes what it takes
(``docs/beyond-freeze-part-two.md``). The trade: objects the worker held at
that moment that later become cyclic garbage are never freed.""",
)

def worker_thresholds(fn: ThresholdsFn, worker: WorkerInfo) -> Thresholds:
    """Call a ``thresholds`` callable for one worker and check what it returns.

    Raises:
        ConfigError: naming the ``thresholds`` setting and the worker, if the
            callable raised or returned what ``gc.set_threshold`` refuses.
    """
    source = f"the thresholds callable for {worker}"
    try:
        value: object = fn(worker)
    except Exception as exc:  # the user's code: any failure is a refusal
        raise ConfigError(THRESHOLDS.name, fn, THRESHOLDS.allowed, source,
                          short_repr(exc)) from exc
    try:
        return validate.threshold_tuple(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(THRESHOLDS.name, value, THRESHOLDS.allowed, source, str(exc)) from exc


COLLECT_BEFORE_FREEZE: Setting[bool] = Setting(
    name="collect_before_freeze",
    section="Garbage collector",
    default=False,
    validator=validate.boolean,
    from_env=validate.env_bool,
    allowed="True or False",
    env_syntax="1/0, true/false, yes/no or on/off",
    doc="""\
Run one full ``gc.collect()`` in the master before the first freeze. Off by
default: the objects it frees leave holes in memory pages that are otherwise
shared, and each worker's first allocations fill those holes, copying the pages
(the reason the CPython docs advise against it). Turn it on only if the master
makes a lot of cyclic garbage while importing the app, and measure.""",
)

REPORT_INTERVAL: Setting[float] = Setting(
    name="report_interval",
    section="Report",
    default=60.0,
    validator=validate.seconds,
    from_env=validate.env_float,
    allowed="a number of seconds >= 0 (0 turns the periodic log line off)",
    env_syntax="a number of seconds >= 0",
    doc="""\
Every this many seconds the master logs one line with the cluster's memory
sharing (workers, sum of RSS, sum of PSS, savings, mean worker shared %).
Sampling runs in a thread of the master, never in gunicorn's main loop.
``0`` turns the periodic line off; the line at each worker's exit and the
report at shutdown stay.""",
)

STATS_DIR: Setting[Any] = Setting(
    name="stats_dir",
    section="Report",
    default=None,
    validator=validate.optional_dir,
    from_env=validate.env_text,
    allowed="None (a new private directory per server) or an absolute path",
    env_syntax="an absolute path; empty for a new private directory",
    doc="""\
Directory where workers publish their GC statistics for the master and
``gcfork report``. ``None`` makes a fresh private directory under the system's
temporary directory, removed at exit. A path that does not exist is created
mode 0700 for the workers' user (gunicorn's ``user``/``group``) and kept at
exit; an existing directory is used as it is only if it belongs to that user
and is mode 0700. In any other directory (a shared one such as ``/tmp``, one
writable by others, another user's) gcfork makes a private ``gcfork-stats-*``
subdirectory and removes it at exit. gcfork never changes the mode or owner of
a directory it did not create, refuses a symlink, and works through a
descriptor opened once; files in it are mode 0600.""",
)

WARMUP: Setting[WarmupSetting | None] = Setting(
    name="warmup",
    section="Beyond freeze",
    default=None,
    validator=validate.warmup,
    from_env=validate.env_paths,
    allowed=(
        "None, a list of request paths each starting with '/' (not a single string), "
        "or a callable taking the app (WSGI or ASGI)"
    ),
    env_syntax="comma-separated paths, e.g. /,/products/?page=2; empty for None",
    doc="""\
Warm the app up in the master before the first fork, so that what its first
requests build (URL resolvers, template caches, lazily imported modules,
specialised bytecode on 3.11+) is built once and shared, instead of being
built, and copied, in every worker.

gcfork runs each path as an in-process ``GET`` through the app (no socket),
in order, in the master, in gunicorn's ``on_starting`` hook: after
``preload_app`` imported the app and before anything is frozen or forked.
A WSGI app (sync, gthread, gevent workers) is called as a WSGI server calls
it; an ASGI app (``asgi`` and uvicorn's worker: FastAPI, Starlette) is driven
over ASGI in an event loop of its own, lifespan startup first and shutdown
last, closed before the fork. An app the worker kind cannot serve, or an ASGI
app that is not ASGI 3, is refused in one line. A callable is called once
with the app instead (an ``async def`` one is run in its own loop) and may
use ``gcfork.warmup.request(app, path)`` itself, e.g. to send headers.
Afterwards gcfork closes Django's database connections, if Django is
imported: a connection must not be shared by the workers. The master's
collector is off, so gcfork freezes the imported app before the warm-up and
collects right after it: the cycles the requests made are freed instead of
being frozen into every worker, and the collection visits only what the
requests made. The log line gives the number of objects freed.

Every path must answer 2xx or 3xx. If one does not, or the app raises,
gunicorn stops before forking any worker and prints one line naming the path
and the status. Paths should be read-only: they run once per master start.
Needs ``preload_app``: without it gcfork logs a warning and skips the
warm-up. Ignored in mode ``off``. One line in the master's log gives the
number of requests and the time taken.""",
)

WARMUP_HOST: Setting[str] = Setting(
    name="warmup_host",
    section="Beyond freeze",
    default="localhost",
    validator=validate.host,
    from_env=str,
    allowed="a host name or IP address, without scheme, port or path",
    env_syntax="a host name, e.g. shop.example.com",
    doc="""\
The ``Host`` header (and ``SERVER_NAME``) of the warm-up requests. Apps that
check it must accept it: Django answers 400 unless it is in
``ALLOWED_HOSTS`` (which with ``DEBUG = True`` accepts ``localhost``). Set it
to one of your site's names if the warm-up fails with status 400.""",
)

IMMORTALIZE: Setting[bool] = Setting(
    name="immortalize",
    section="Beyond freeze",
    default=False,
    validator=validate.boolean,
    from_env=validate.env_bool,
    allowed="True (CPython 3.12 to 3.15, 64-bit release build with the GIL) or False",
    env_syntax="1/0, true/false, yes/no or on/off",
    doc="""\
Experimental. Make every object of the master immortal (PEP 683) right after
the first freeze, in the master, before the first worker is forked. Freezing
stops the workers' *collections* from writing to inherited objects; every
reference a worker takes to one still writes its reference count and copies
its page. Immortal objects' reference counts are never written, so a worker
that only reads the app's data keeps those pages shared.

What it costs: the objects made immortal are never freed, in the master or in
any worker; weak references to them never die; ``sys.getrefcount`` reports
a huge number for them (third-party "am I the only reference" checks, such as
numpy's ``ndarray.resize``, then refuse). Objects with a finalizer
(``__del__``: files, sockets, generators) and frames stay mortal. It runs
once, at the first fork: objects the master makes later (it makes few) stay
mortal, so that master bookkeeping such as the records of exited workers can
still be freed. The same walk computes the hash of every ``str`` and
``bytes`` and assigns every type its version tag, the two caches a worker
would otherwise write into them on first use (``docs/beyond-freeze.md``).
The walk takes about 0.1 s per 100,000 objects; one line in the master's log
gives the counts, the time and the master's RSS change.

Refused at start-up, naming the reason, on any interpreter other than 64-bit
CPython 3.12 to 3.15 with the GIL. Ignored in mode ``off``.""",
)

FAST_EXIT: Setting[bool] = Setting(
    name="fast_exit",
    section="Beyond freeze",
    default=False,
    validator=validate.boolean,
    from_env=validate.env_bool,
    allowed="True or False",
    env_syntax="1/0, true/false, yes/no or on/off",
    doc="""\
End each worker with ``os._exit`` as the very last step of gunicorn's
``worker_exit`` hook (after your own ``worker_exit`` hook and gcfork's final
statistics), instead of letting the interpreter finalize. Finalization clears
every module's dict and deallocates what it can, writing to inherited objects
and copying, in the worker's last second, much of the memory it shared: all
workers at once on a restart.

What it skips: ``atexit`` handlers (among them ``concurrent.futures`` and
``multiprocessing`` clean-up, ``weakref.finalize`` objects, coverage and
profilers saving data), the joining of non-daemon threads, and ``__del__``
methods and C finalizers of live objects (unflushed files lose their buffer,
database connections are dropped without a goodbye). The standard streams and
``logging`` handlers are flushed first. gunicorn's exit status is kept, so a
worker that fails to boot (3) or to load the app (4) still stops the master.
Ignored in mode ``off``.""",
)

SETTINGS: Mapping[str, Setting[Any]] = {
    s.name: s
    for s in (
        MODE, THRESHOLDS, COLLECT_BEFORE_FREEZE, REPORT_INTERVAL, STATS_DIR,
        WARMUP, WARMUP_HOST, IMMORTALIZE, FAST_EXIT,
        MAX_WORKER_PRIVATE, RECYCLE_MIN_AGE,
        METRICS_BIND, METRICS_ALLOW_REMOTE, METRICS_TEXTFILE, ATTRIBUTE_EVERY,
    )
}
"""Every setting, by name, in the order the reference docs list them."""


class Resolved(NamedTuple):
    """A setting's value and where it came from."""

    value: Any
    source: str  # "default", "install()" or "environment variable GCFORK_..."


def resolve(
    given: Mapping[str, object], environ: Mapping[str, str] | None = None
) -> dict[str, Resolved]:
    """Validate every setting, the environment taking precedence over ``given``.

    The environment wins, as ``GUNICORN_CMD_ARGS`` does over gunicorn's config
    file, so that a deployment can change a setting without editing code.

    Args:
        given: values passed to :func:`gcfork.install`, by setting name.
        environ: the environment to read ``GCFORK_*`` variables from;
            :data:`os.environ` when None.

    Raises:
        ConfigError: an unknown setting, or a value a setting refuses.
    """
    env = os.environ if environ is None else environ
    unknown = sorted(set(given) - set(SETTINGS))
    if unknown:
        raise ConfigError(unknown[0], given[unknown[0]], ", ".join(SETTINGS), "install()",
                          "no such setting")
    _refuse_stray_env(env)
    out: dict[str, Resolved] = {}
    for name, setting in SETTINGS.items():
        if setting.env in env:
            out[name] = Resolved(setting.parse_env(env[setting.env]), f"env {setting.env}")
        elif name in given:
            out[name] = Resolved(setting.validate(given[name], "install()"), "install()")
        else:
            out[name] = Resolved(setting.default, "default")
    _check_immortalize(out)
    _check_metrics_bind(out)
    return out


def _refuse_stray_env(env: Mapping[str, str]) -> None:
    """Refuse a variable that looks like one of gcfork's but is not: a typo or
    the wrong case (``GCFORK_Mode``) would otherwise be silently ignored."""
    ours = {s.env for s in SETTINGS.values()}
    for key in sorted(env):
        if not key.upper().startswith("GCFORK_") or key in ours:
            continue
        near = key.upper()
        reason = (f"no such variable; names are case-sensitive: did you mean {near}?"
                  if near in ours else "no such variable")
        raise ConfigError(key, env[key], ", ".join(sorted(ours)), "the environment", reason)


def settings_markdown() -> str:
    """The reference documentation of every setting, as Markdown."""
    lines = [
        "<!-- Generated by `gcfork settings --markdown` from gcfork/config.py. Do not edit. -->",
        "",
        "# Configuration",
        "",
        "Settings are keyword arguments of `gcfork.install(globals(), ...)` in",
        "`gunicorn.conf.py`. Each one can be overridden by an environment variable,",
        "which takes precedence, so that a deployment can change it without editing",
        "code. A value that a setting refuses stops gunicorn at start-up, before any",
        "worker is forked, with one message naming the setting, the value and what is",
        "allowed.",
        "",
    ]
    section = ""
    for setting in SETTINGS.values():
        if setting.section != section:
            section = setting.section
            lines += [f"## {section}", ""]
        lines += [
            f"### `{setting.name}`",
            "",
            f"- Default: `{setting.default!r}`",
            f"- Allowed: {setting.allowed}",
            f"- Environment: `{setting.env}` ({setting.env_syntax})",
            "",
            setting.doc,
            "",
        ]
    return "\n".join(lines)
