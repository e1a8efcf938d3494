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

import inspect
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Generic, NamedTuple, TypeVar

from gcfork.exceptions import ConfigError
from gcfork.typing import Mode, Thresholds, ThresholdsSetting, WorkerInfo

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
            raise TypeError(f"{item!r} is not an int")
        if item < 0:
            raise ValueError(f"{item} is negative")
    return tuple(value)


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
            raise ValueError(f"calling it with {probe} raised {exc!r}") from exc
        try:
            _threshold_tuple(result)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"called with {probe} it returned {result!r}: {exc}") from exc
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
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{value} is not a finite number >= 0")
    return float(value)


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
    if not os.path.isabs(path):
        raise ValueError("the path must be absolute: workers may change directory")
    return path


def _env_text(text: str) -> object:
    return text or None


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
- ``off``: gcfork changes nothing; the collector runs as Python sets it up.
  Useful as the baseline of a comparison: memory is still measured.""",
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
``gcfork report``. ``None`` creates a fresh directory under the system's
temporary directory when the master starts. Either way the master makes it
mode 0700 and refuses one that is a symlink or belongs to another user; files in
it are mode 0600.""",
)

SETTINGS: Mapping[str, Setting[Any]] = {
    s.name: s for s in (MODE, THRESHOLDS, COLLECT_BEFORE_FREEZE, REPORT_INTERVAL, STATS_DIR)
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
    stray = sorted(k for k in env if k.startswith("GCFORK_") and k[7:].lower() not in SETTINGS)
    if stray:
        raise ConfigError(stray[0], env[stray[0]], ", ".join(s.env for s in SETTINGS.values()),
                          "the environment", "no such setting")
    out: dict[str, Resolved] = {}
    for name, setting in SETTINGS.items():
        if setting.env in env:
            out[name] = Resolved(setting.parse_env(env[setting.env]), f"env {setting.env}")
        elif name in given:
            out[name] = Resolved(setting.validate(given[name], "install()"), "install()")
        else:
            out[name] = Resolved(setting.default, "default")
    return out


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
