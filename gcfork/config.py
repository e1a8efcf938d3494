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

import gc
import inspect
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Generic, NamedTuple, TypeVar

from gcfork import immortal
from gcfork.exceptions import ConfigError, short_repr
from gcfork.typing import Mode, Thresholds, ThresholdsSetting, WorkerInfo
from gcfork.warmup import WarmupSetting

__all__ = [
    "SETTINGS",
    "Resolved",
    "Setting",
    "resolve",
    "settings_markdown",
    "worker_thresholds",
]

T = TypeVar("T")

MODES: tuple[Mode, ...] = ("freeze", "disable", "off")
MAX_SECONDS = 365 * 24 * 3600.0
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class Setting(Generic[T]):
    """The one declaration of a setting.

    Args:
        name: keyword of :func:`gcfork.install`; the environment variable is
            ``GCFORK_`` followed by the name in upper case.
        section: heading under which the reference docs list the setting.
        default: value used when neither ``install()`` nor the environment sets it.
        validator: coerces a value given to ``install()`` or parsed from the
            environment, raising ValueError/TypeError to refuse it.
        from_env: parses the environment variable's text into a value for the
            validator; raises ValueError to refuse it.
        allowed: what the setting accepts, in words; quoted in every error.
        env_syntax: what the environment variable accepts, in words.
        doc: what the setting does, for the reference docs.
    """

    name: str
    section: str
    default: T
    validator: Callable[[object], T]
    from_env: Callable[[str], object]
    allowed: str
    env_syntax: str
    doc: str

    @property
    def env(self) -> str:
        return "GCFORK_" + self.name.upper()

    def validate(self, value: object, source: str) -> T:
        try:
            return self.validator(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(self.name, value, self.allowed, source, str(exc)) from exc

    def parse_env(self, text: str) -> T:
        source = f"environment variable {self.env}"
        try:
            raw = self.from_env(text.strip())
        except ValueError as exc:
            raise ConfigError(self.name, text, self.env_syntax, source, str(exc)) from exc
        return self.validate(raw, source)


# -- validators -----------------------------------------------------------------


def _mode(value: object) -> Mode:
    for mode in MODES:
        if value == mode:
            return mode
    raise ValueError("unknown mode")


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"expected True or False, got {type(value).__name__}")


def _env_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("not a boolean word")


def _threshold_tuple(value: object) -> Thresholds:
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"expected a tuple of ints, got {type(value).__name__}")
    if not 1 <= len(value) <= 3:
        raise ValueError(f"{len(value)} values given, gc.set_threshold takes 1 to 3")
    for item in value:
        # bool is an int subclass, but True as a threshold is always a mistake.
        if not isinstance(item, int) or isinstance(item, bool):
            raise TypeError(f"{short_repr(item)} is not an int")
        if item < 0:
            raise ValueError(f"{item} is negative")
    thresholds = tuple(value)
    _fits_the_interpreter(thresholds)
    return thresholds


def _fits_the_interpreter(thresholds: Thresholds) -> None:
    """Refuse what ``gc.set_threshold`` would refuse in a worker.

    Its limits are the C ``int`` of the build (2**31 - 1 here), not Python's,
    so the only faithful check is the call itself. It runs in the process that
    validates (the master, at start-up) and puts the old thresholds back at
    once; the master's collector is off or about to be, so the moment between
    changes nothing.
    """
    saved = gc.get_threshold()
    try:
        gc.set_threshold(*thresholds)
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"gc.set_threshold refuses it: {exc}") from None
    finally:
        gc.set_threshold(*saved)


def _positional_arity(fn: Callable[..., object]) -> int | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None  # builtins without a signature: let the probe call decide
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    required = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(required)


def _thresholds(value: object) -> ThresholdsSetting:
    if value is None:
        return None
    if callable(value):
        arity = _positional_arity(value)
        if arity not in (None, 1):
            raise TypeError(f"the callable takes {arity} arguments, it must take one (WorkerInfo)")
        # Probe once now so that a callable that cannot produce a valid tuple
        # stops the server at start-up rather than in its first worker.
        probe = WorkerInfo(index=0, age=1)
        try:
            result = value(probe)
        except Exception as exc:
            raise ValueError(f"calling it with {probe} raised {short_repr(exc)}") from exc
        try:
            _threshold_tuple(result)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"called with {probe} it returned {short_repr(result)}: {exc}"
            ) from exc
        fn: Callable[[WorkerInfo], Thresholds] = value
        return fn
    return _threshold_tuple(value)


def worker_thresholds(value: object, source: str) -> Thresholds:
    """Check what a thresholds callable returned for one worker.

    Raises:
        ConfigError: naming the ``thresholds`` setting and ``source``.
    """
    try:
        return _threshold_tuple(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(THRESHOLDS.name, value, THRESHOLDS.allowed, source, str(exc)) from exc


def _env_thresholds(text: str) -> object:
    if text.lower() in ("", "default"):
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError("not a comma-separated list of ints") from None


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number of seconds, got {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond any float: 10**400
        raise ValueError("too large") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("not a finite number >= 0")
    if seconds > MAX_SECONDS:
        # threading.Event.wait() overflows past about 2**63 ns; a year is plenty.
        raise ValueError(f"over {MAX_SECONDS:g} s (one year)")
    return seconds


def _env_float(text: str) -> object:
    return float(text)


def _optional_dir(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"expected a path, got {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str) or not path:
        raise ValueError("empty path")
    if "\0" in path:
        raise ValueError("the path holds a NUL byte")
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        raise ValueError("the path cannot be encoded for the file system") from None
    if not os.path.isabs(path):
        raise ValueError("the path must be absolute: workers may change directory")
    return path


def _env_text(text: str) -> object:
    return text or None


def _warmup(value: object) -> WarmupSetting | None:
    if value is None:
        return None
    if callable(value):
        arity = _positional_arity(value)
        if arity not in (None, 1):
            raise TypeError(f"the callable takes {arity} arguments, it must take one (the app)")
        fn: WarmupSetting = value
        return fn
    if isinstance(value, (str, bytes)):
        # A bare string is a sequence of one-letter "paths": always a mistake.
        raise TypeError(f"a single string; give a list of paths, e.g. [{short_repr(value)}]")
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected a list of paths, got {type(value).__name__}")
    if not value:
        raise ValueError("no paths; None turns warm-up off")
    for path in value:
        if not isinstance(path, str):
            raise TypeError(f"{short_repr(path)} is not a str")
        if not path.startswith("/"):
            raise ValueError(f"{short_repr(path)} does not start with '/'")
    return tuple(value)


def _env_paths(text: str) -> object:
    if not text:
        return None
    return [part.strip() for part in text.split(",")]


# A DNS name, an IPv4 address or a bracketed IPv6 address; no port, scheme or path.
_HOST = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\]")


def _host(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a host name, got {type(value).__name__}")
    if not _HOST.fullmatch(value):
        raise ValueError("not a bare host name (no scheme, port or path)")
    return value


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


# -- the declarations -----------------------------------------------------------

MODE: Setting[Mode] = Setting(
    name="mode",
    section="Garbage collector",
    default="freeze",
    validator=_mode,
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
    validator=_thresholds,
    from_env=_env_thresholds,
    allowed=(
        "None (the interpreter's default), a tuple of 1 to 3 ints >= 0, or a callable "
        "taking a gcfork.WorkerInfo and returning such a tuple"
    ),
    env_syntax="'default' or 1 to 3 comma-separated ints >= 0, e.g. 50000,20,20",
    doc="""\
The collector thresholds each worker sets right after it is forked, as
``gc.set_threshold`` takes them. ``None`` keeps the interpreter's default.
A callable receives a :class:`gcfork.WorkerInfo` (``index``: the worker's slot,
0 to workers - 1; ``age``: gunicorn's spawn counter) and returns the tuple, so
workers can run different thresholds. The callable runs in the master right
before the worker is forked; it is called once at start-up with
``WorkerInfo(index=0, age=1)`` to check it. Ignored in modes ``disable`` and
``off``. Since inherited objects are frozen, a worker's collections only scan
what the worker allocated itself: raising the first threshold trades memory
held by cyclic garbage for fewer pauses.""",
)

COLLECT_BEFORE_FREEZE: Setting[bool] = Setting(
    name="collect_before_freeze",
    section="Garbage collector",
    default=False,
    validator=_bool,
    from_env=_env_bool,
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
    validator=_seconds,
    from_env=_env_float,
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
    validator=_optional_dir,
    from_env=_env_text,
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
    validator=_warmup,
    from_env=_env_paths,
    allowed=(
        "None, a list of request paths each starting with '/' (not a single string), "
        "or a callable taking the WSGI app"
    ),
    env_syntax="comma-separated paths, e.g. /,/products/?page=2; empty for None",
    doc="""\
Warm the app up in the master before the first fork, so that what its first
requests build (URL resolvers, template caches, lazily imported modules,
specialised bytecode on 3.11+) is built once and shared, instead of being
built, and copied, in every worker.

gcfork runs each path as an in-process ``GET`` through the WSGI app (no
socket), in order, in the master, in gunicorn's ``on_starting`` hook: after
``preload_app`` imported the app and before anything is frozen or forked. A
callable is called once with the app instead and may use
``gcfork.warmup.request(app, path)`` itself, e.g. to send headers.
Afterwards gcfork closes Django's database connections, if Django is
imported: a connection must not be shared by the workers.

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
    validator=_host,
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
    validator=_bool,
    from_env=_env_bool,
    allowed="True (CPython 3.12 or 3.13, 64-bit release build with the GIL) or False",
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
still be freed. The walk takes about 0.1 s per 100,000 objects; one line in
the master's log gives the count, the time and the master's RSS change.

Refused at start-up, naming the reason, on any interpreter other than 64-bit
CPython 3.12 or 3.13 with the GIL. Ignored in mode ``off``.""",
)

FAST_EXIT: Setting[bool] = Setting(
    name="fast_exit",
    section="Beyond freeze",
    default=False,
    validator=_bool,
    from_env=_env_bool,
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
