"""Property-based fuzzing of every gcfork setting, and real starts with bad ones.

The property, for any value of any setting given to ``install()`` (validated by
:meth:`gcfork.policy.Policy.from_settings`, which is what ``install()`` runs)
or through a ``GCFORK_*`` variable: the result is either a policy whose values
the interpreter accepts (thresholds that ``gc.set_threshold`` takes, a
timeout a lock can wait for, a path the OS functions can encode) or a
:class:`gcfork.ConfigError` whose ``str()`` is one line naming the setting.
Any other exception is a traceback the user would see instead of that line.

:func:`check` returns an :class:`Outcome` instead of asserting, so that the long
run can count outcomes over thousands of examples while the short tests
assert on each one.
"""

from __future__ import annotations

import gc
import math
import os
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from hypothesis import strategies as st

from gcfork.config import SETTINGS
from gcfork.exceptions import ConfigError
from gcfork.policy import Policy
from gcfork.typing import WorkerInfo
from gcfork.validate import MODES, is_loopback, split_host_port
from tests.torture.harness import start_server

NAMES: tuple[str, ...] = tuple(SETTINGS)

# -- outcomes -----------------------------------------------------------------------

ACCEPTED = "accepted"
REJECTED = "rejected"  # a ConfigError: one line naming the setting
BAD_MESSAGE = "bad-message"  # a ConfigError, but not one line naming the setting
BAD_ACCEPT = "bad-accept"  # accepted, but the interpreter refuses the value
IGNORED = "ignored"  # a GCFORK_* variable neither applied nor refused
TRACEBACK = "traceback"  # any other exception
GOOD = frozenset({ACCEPTED, REJECTED})


class Outcome(NamedTuple):
    kind: str
    detail: str = ""


@dataclass
class Tally:
    """Outcomes counted over a fuzzing run, with a few examples of each failure."""

    kinds: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, outcome: Outcome, what: str) -> None:
        self.kinds[outcome.kind] += 1
        if outcome.kind not in GOOD:
            found = self.examples.setdefault(outcome.kind, [])
            if len(found) < 5:
                found.append(f"{what}: {outcome.detail}"[:400])

    @property
    def tried(self) -> int:
        return sum(self.kinds.values())


def _safe_repr(value: object) -> str:
    try:
        return repr(value)[:120]
    except Exception:  # a 50,000-deep list: the point is what gcfork does with it
        return f"<{type(value).__name__} whose repr fails>"


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = "<str() fails>"
    return f"{type(exc).__name__}: {text}"[:300]


def _check_message(exc: ConfigError, names: Sequence[str]) -> Outcome:
    try:
        text = str(exc)
    except Exception as inner:  # the message itself must not fail (10**5000)
        return Outcome(TRACEBACK, f"str(ConfigError) raised {_describe(inner)}")
    if "\n" in text or "\r" in text:
        return Outcome(BAD_MESSAGE, f"not one line: {text[:200]!r}")
    if not any(name in text for name in names):
        return Outcome(BAD_MESSAGE, f"does not name {names[0]}: {text[:200]!r}")
    return Outcome(REJECTED, text[:200])


def check(given: Mapping[str, object], environ: Mapping[str, str],
          names: Sequence[str]) -> Outcome:
    """Validate one configuration as ``install()`` does and judge the result.

    Args:
        given: keyword settings of ``install()``.
        environ: the environment (``GCFORK_*`` variables).
        names: the setting or variable names an error must mention (any one).
    """
    saved = gc.get_threshold()
    try:
        try:
            policy = Policy.from_settings(given, environ)
        except ConfigError as exc:
            return _check_message(exc, names)
        except Exception as exc:
            return Outcome(TRACEBACK, _describe(exc))
        return interpreter_refuses(policy)
    finally:
        gc.set_threshold(*saved)


def _set_threshold(thresholds: object) -> Outcome | None:
    if not isinstance(thresholds, tuple):
        return Outcome(BAD_ACCEPT, f"thresholds {_safe_repr(thresholds)} are not a tuple")
    try:
        gc.set_threshold(*thresholds)
    except Exception as exc:
        return Outcome(BAD_ACCEPT, f"gc.set_threshold{_safe_repr(thresholds)}: {_describe(exc)}")
    return None


def interpreter_refuses(policy: Policy) -> Outcome:
    """Whether the interpreter takes what a policy accepted (caller restores
    the thresholds)."""
    if policy.mode not in MODES:
        return Outcome(BAD_ACCEPT, f"mode {policy.mode!r}")
    for flag in ("collect_before_freeze", "immortalize", "fast_exit"):
        if not isinstance(getattr(policy, flag), bool):
            return Outcome(BAD_ACCEPT, f"{flag}={_safe_repr(getattr(policy, flag))}")
    thresholds = policy.thresholds
    if callable(thresholds):
        # What the master's pre_fork does for the first slots and ages.
        for index in range(4):
            info = WorkerInfo(index=index, age=index + 1)
            try:
                got = policy.thresholds_for(info)
            except ConfigError as exc:
                outcome = _check_message(exc, ("thresholds",))
                if outcome.kind != REJECTED:
                    return outcome
                continue
            except Exception as exc:
                return Outcome(TRACEBACK, f"thresholds_for({info}): {_describe(exc)}")
            if got is not None and (bad := _set_threshold(got)) is not None:
                return bad
    elif thresholds == "auto":
        got = policy.thresholds_for(WorkerInfo(0, 1))  # None in modes disable and off
        if got is not None and (bad := _set_threshold(got)) is not None:
            return bad
    elif thresholds is not None and (bad := _set_threshold(thresholds)) is not None:
        return bad
    interval = policy.report_interval
    if not isinstance(interval, float) or not interval >= 0:
        return Outcome(BAD_ACCEPT, f"report_interval={_safe_repr(interval)}")
    try:
        # A timer in the master waits this long: the lock converts the timeout
        # before it looks at the (free) lock, so it answers at once or raises.
        threading.Lock().acquire(timeout=interval)
        if not math.isfinite(time.monotonic() + interval):
            raise OverflowError("the deadline is not finite")
    except (OverflowError, ValueError) as exc:
        return Outcome(BAD_ACCEPT, f"report_interval={interval!r}: {_describe(exc)}")
    if policy.stats_dir is not None:
        path = policy.stats_dir
        if not isinstance(path, str) or not os.path.isabs(path):
            return Outcome(BAD_ACCEPT, f"stats_dir={_safe_repr(path)}")
        try:
            os.lstat(path)
        except (ValueError, UnicodeError) as exc:  # NUL bytes, lone surrogates
            return Outcome(BAD_ACCEPT, f"stats_dir={_safe_repr(path)}: {_describe(exc)}")
        except OSError:
            pass  # missing, too long: gcfork reports that at start like any OS error
    warmup = policy.warmup
    if warmup is not None and not callable(warmup) and (
            not isinstance(warmup, tuple)
            or not all(isinstance(p, str) and p.startswith("/") for p in warmup)):
        return Outcome(BAD_ACCEPT, f"warmup={_safe_repr(warmup)}")
    if not isinstance(policy.warmup_host, str) or not policy.warmup_host.isascii():
        return Outcome(BAD_ACCEPT, f"warmup_host={_safe_repr(policy.warmup_host)}")
    bound = policy.max_worker_private
    if bound is not None and (type(bound) is not int or not 0 < bound <= 2**62):
        return Outcome(BAD_ACCEPT, f"max_worker_private={_safe_repr(bound)}")
    min_age = policy.recycle_min_age
    if not isinstance(min_age, float) or not 0 <= min_age < math.inf:
        return Outcome(BAD_ACCEPT, f"recycle_min_age={_safe_repr(min_age)}")
    every = policy.attribute_every
    if type(every) is not int or not 0 <= every <= 10**9:
        return Outcome(BAD_ACCEPT, f"attribute_every={_safe_repr(every)}")
    return _metrics_refused(policy) or Outcome(ACCEPTED)


def _metrics_refused(policy: Policy) -> Outcome | None:
    """What the fleet exporter would fail on in a policy that was accepted."""
    if not isinstance(policy.metrics_allow_remote, bool):
        return Outcome(BAD_ACCEPT, f"metrics_allow_remote={policy.metrics_allow_remote!r}")
    bind = policy.metrics_bind
    if bind is not None:
        try:
            host, port = split_host_port(bind)
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_NUMERICHOST if host != "localhost" else 0)
        except (ValueError, OSError, UnicodeError) as exc:
            if policy.metrics_allow_remote and isinstance(exc, socket.gaierror):
                return None  # a host name, resolved only when the master binds
            return Outcome(BAD_ACCEPT, f"metrics_bind={_safe_repr(bind)}: {_describe(exc)}")
        if not policy.metrics_allow_remote and not is_loopback(host):
            return Outcome(BAD_ACCEPT, f"metrics_bind={_safe_repr(bind)} is not loopback")
    path = policy.metrics_textfile
    if path is not None and (not isinstance(path, str) or not os.path.isabs(path)
                             or not path.endswith(".prom")):
        return Outcome(BAD_ACCEPT, f"metrics_textfile={_safe_repr(path)}")
    return None


# -- strategies ---------------------------------------------------------------------


def _deep_list(depth: int) -> list[Any]:
    deep: list[Any] = []
    for _ in range(depth):
        deep = [deep]
    return deep


class _Ambiguous:
    """Compares like a numpy array: ``==`` gives an object whose truth raises."""

    def __eq__(self, other: object) -> Any:
        return self

    def __bool__(self) -> bool:
        raise ValueError("the truth value is ambiguous")

    __hash__ = object.__hash__


class _BigInt(int):
    pass


class _Str(str):
    pass


def _returning(value: object) -> Callable[[Any], object]:
    def thresholds(worker: Any) -> object:
        return value
    return thresholds


def _per_slot(base: int) -> Callable[[Any], object]:
    def thresholds(worker: Any) -> object:
        return (base + worker.index, 10, 10)
    return thresholds


def _raising(exc: Exception) -> Callable[[Any], object]:
    def thresholds(worker: Any) -> object:
        raise exc
    return thresholds


def _first_slot_only(worker: Any) -> object:
    # Passes the probe with WorkerInfo(index=0, age=1), then fails.
    if worker.index == 0:
        return (700, 10, 10)
    raise RuntimeError("slot > 0")


# Ints past 4,300 digits have no repr (ValueError on 3.11+): made at draw
# time from their exponent, so that the strategy itself can be printed.
HUGE_INTS = st.sampled_from([5000, 400]).map(lambda e: 10**e) \
    | st.sampled_from([5000]).map(lambda e: -(10**e)) | st.sampled_from([
        2**31, 2**31 - 1, 2**32, 2**63 - 1, 2**63, 2**64, -1, 0, 1, _BigInt(5), _BigInt(2**31),
    ])
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([
    float("inf"), float("-inf"), float("nan"), 1e308, 1e300, 1e19, 5e-324, -0.0, 0.5,
    365 * 24 * 3600.0, 365 * 24 * 3600.0 + 1,
])
SPECIAL_TEXT = st.sampled_from([
    "", " ", "\0", "freeze\0", "/tmp/gcfork\0x", "/\ud800", "/\udcff", "FREEZE", "Off",
    " off", "disabled", "/" + "a" * 5000, "9" * 5000, "inf", "nan", "1e400", "-1",
    "1_000", "\u0661\u0662\u0663", "0x10", "default", "relative/dir", "[::1]", "a..b",
    "http://x", "x:80", "\u00e9.example", "a" * 300,
])
TEXT = st.text(max_size=30) | SPECIAL_TEXT
WEIRD = st.sampled_from([
    object(), _Ambiguous(), b"freeze", bytearray(b"/x"), Path("/tmp/gcfork-fuzz"),
    PurePosixPath("relative"), _Str("freeze"), _Str("/tmp"), frozenset({1}), range(3),
    Ellipsis, NotImplemented, 1 + 2j,
])
DEEP = st.builds(_deep_list, st.just(50_000))  # no repr either: RecursionError
CALLABLES = st.sampled_from([
    lambda: (1, 2, 3), lambda a, b: (1,), lambda *args: (700,), lambda w, *, k: (1,),
    _raising(ZeroDivisionError("x")), _raising(RecursionError()), _raising(MemoryError()),
    _first_slot_only, len, tuple, max, str,
]) | st.builds(_returning, st.tuples(HUGE_INTS) | st.none() | FLOATS | TEXT) \
   | st.builds(_per_slot, st.integers(2**31 - 4, 2**31 - 1) | st.integers(0, 10**6))
SCALARS = st.none() | st.booleans() | st.integers() | HUGE_INTS | FLOATS | TEXT \
    | st.binary(max_size=8) | WEIRD
ANY = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner) | st.tuples(inner, inner)
    | st.tuples(inner, inner, inner) | st.tuples(inner, inner, inner, inner)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
) | DEEP | CALLABLES

_THRESHOLD_ITEM = st.integers(-5, 10**6) | HUGE_INTS | st.booleans() | FLOATS | TEXT
_PATHS = st.text(max_size=12).map(lambda s: "/" + s) | TEXT
SPECIFIC: dict[str, st.SearchStrategy[Any]] = {
    "mode": st.sampled_from([*MODES, "Freeze", "OFF", "off ", "freeze\0", "disabled"]),
    "thresholds": st.lists(_THRESHOLD_ITEM, max_size=4).map(tuple)
    | st.lists(st.integers(0, 2**40), min_size=1, max_size=3) | CALLABLES
    | st.sampled_from(["auto", "Auto", "AUTO", "auto ", "automatic"]),
    "collect_before_freeze": st.booleans() | HUGE_INTS,
    "report_interval": FLOATS | st.integers(-10, 2**70) | HUGE_INTS,
    "stats_dir": _PATHS | st.builds(Path, _PATHS) | st.binary(max_size=10).map(lambda b: b"/" + b),
    "warmup": st.lists(_PATHS, max_size=4) | st.lists(_PATHS, max_size=3).map(tuple)
    | _PATHS | CALLABLES,
    "warmup_host": TEXT | st.from_regex(r"[a-z0-9.\-\[\]:]{0,20}", fullmatch=True),
    "immortalize": st.booleans() | HUGE_INTS,
    "fast_exit": st.booleans() | HUGE_INTS,
    "max_worker_private": st.integers(-10, 2**70) | HUGE_INTS | FLOATS
    | st.from_regex(r" ?[0-9]{0,40}(\.[0-9]{0,5})? ?[KMGTkmgti]{0,2}[Bb]? ?", fullmatch=True),
    "recycle_min_age": FLOATS | st.integers(-10, 2**70) | HUGE_INTS,
    # Fleet metrics (issue 12).
    "metrics_bind": TEXT | st.from_regex(r"[a-z0-9.\-\[\]:]{0,20}:[0-9]{0,6}", fullmatch=True),
    "metrics_allow_remote": st.booleans() | HUGE_INTS,
    "metrics_textfile": _PATHS | _PATHS.map(lambda p: p + ".prom") | st.builds(Path, _PATHS),
    # Which requests copy (issue 13).
    "attribute_every": st.integers(-10, 2**70) | HUGE_INTS | FLOATS | TEXT,
}

def _in_an_environment(text: str) -> bool:
    """Whether a real environment can hold ``text``: os.environ decodes with
    surrogateescape, so only surrogates that escape bytes occur (NUL cannot
    either, but it is kept: the in-process path must refuse it cleanly)."""
    try:
        os.fsencode(text)
    except UnicodeError:
        return False
    return True


ENV_TEXT = (st.text(max_size=40) | SPECIAL_TEXT).filter(_in_an_environment) | st.sampled_from([
    "2147483648", "2147483647", "2147483647,10,10", "2147483648,10,10", "1,2,3,4", "1,,2",
    "1e300", "10" * 300, "DEFAULT", "true", "TRUE", "2", "/a,b", ",", "/,/", "localhost",
    "freeze", "disable", "off", "/tmp/gcfork-fuzz",
])

# A value each setting accepts from its environment variable: with the
# variable's name in the wrong case, it must be applied or refused, not ignored.
VALID_ENV_TEXT: dict[str, str] = {
    "mode": "off", "thresholds": "1234,10,10", "collect_before_freeze": "true",
    "report_interval": "7", "stats_dir": "/tmp/gcfork-fuzz", "warmup": "/",
    "warmup_host": "example.com", "immortalize": "false", "fast_exit": "true",
    "max_worker_private": "300MiB", "recycle_min_age": "5",
    "metrics_bind": "127.0.0.1:9464", "metrics_allow_remote": "true",
    "metrics_textfile": "/tmp/gcfork-fuzz.prom", "attribute_every": "50",
}


@st.composite
def wrong_case(draw: st.DrawFn, name: str) -> str:
    """``GCFORK_<NAME>`` with at least one letter in the wrong case."""
    proper = SETTINGS[name].env
    flips = draw(st.lists(st.booleans(), min_size=len(proper), max_size=len(proper)))
    letters = [i for i, c in enumerate(proper) if c.isalpha()]
    if not any(flips[i] for i in letters):
        flips[draw(st.sampled_from(letters))] = True
    return "".join(c.swapcase() if flips[i] else c for i, c in enumerate(proper))


def check_wrong_case(name: str, variable: str) -> Outcome:
    """A wrong-case ``GCFORK_*`` variable with a valid value: applied or refused."""
    environ = {variable: VALID_ENV_TEXT[name]}
    saved = gc.get_threshold()
    try:
        try:
            policy = Policy.from_settings({}, environ)
        except ConfigError as exc:
            return _check_message(exc, (variable, name))
        except Exception as exc:
            return Outcome(TRACEBACK, _describe(exc))
        if not policy.sources.get(name, "").startswith("env"):
            return Outcome(IGNORED, f"{variable}={environ[variable]!r} was silently ignored")
        return interpreter_refuses(policy)
    finally:
        gc.set_threshold(*saved)


# -- real starts with bad settings ---------------------------------------------------


class BadStart(NamedTuple):
    settings: str  # keyword arguments of install(), as config-file text
    env: dict[str, str]
    names: tuple[str, ...]  # the setting's name and/or variable; the line names one


BAD_STARTS: tuple[BadStart, ...] = (
    BadStart("thresholds=(2**31,)", {}, ("thresholds",)),
    BadStart("", {"GCFORK_THRESHOLDS": "2147483648"}, ("GCFORK_THRESHOLDS", "thresholds")),
    BadStart("collect_before_freeze=10**5000", {}, ("collect_before_freeze",)),
    BadStart("stats_dir='/tmp/gcfork\\0torture'", {}, ("stats_dir",)),
    BadStart("report_interval=10**400", {}, ("report_interval",)),
)


class StartVerdict(NamedTuple):
    ok: bool
    status: int | None
    problem: str
    log: str


def bad_start(workdir: Path, case: BadStart, index: int, python: str = sys.executable,
              timeout: float = 90.0) -> StartVerdict:
    """Start gunicorn with a bad setting; it must exit != 0 before any worker
    boots, with exactly one line naming the setting and no traceback."""
    settings = f", {case.settings}" if case.settings else ""
    config = ("workers = 2\ncontrol_socket_disable = True\npreload_app = True\n"
              f"import gcfork; gcfork.install(globals(){settings})\n")
    server = start_server(workdir, config, python=python, env=case.env, name=f"bad{index}")
    deadline = time.monotonic() + timeout
    try:
        # Until it exits, or boots a worker (then the setting was accepted).
        while time.monotonic() < deadline:
            assert server.proc is not None
            if server.proc.poll() is not None or "Booting worker" in server.log():
                break
            time.sleep(0.1)
    finally:
        status = server.stop(timeout=30)
    log = server.log()
    naming = [line for line in log.splitlines() if any(n in line for n in case.names)]
    problems = []
    if status == 0 or status is None:
        problems.append(f"exit status {status}")
    if "Booting worker" in log:
        problems.append("a worker booted")
    if "Traceback" in log:
        problems.append("a traceback")
    if len(naming) != 1:
        problems.append(f"{len(naming)} lines name {case.names[0]}")
    return StartVerdict(not problems, status, ", ".join(problems), log)


_SETTING_IN_TEXT = re.compile(r"^(\w+)=")


def setting_of(case: BadStart) -> str:
    """The setting a bad start is about, for tables."""
    match = _SETTING_IN_TEXT.match(case.settings)
    return match.group(1) if match else next(iter(case.env))
