"""How each setting's values are checked: coerce, then reject.

Each function takes a value given to ``install()`` (or parsed from a
``GCFORK_*`` variable by its ``env_*`` companion) and returns the clean value,
or raises :class:`ValueError` / :class:`TypeError` with the reason in words;
:mod:`gcfork.config` declares which setting uses which, and turns the reason
into a one-line :class:`~gcfork.exceptions.ConfigError`.
"""

from __future__ import annotations

import gc
import inspect
import ipaddress
import math
import operator
import os
import re
from typing import Callable

from gcfork.exceptions import short_repr
from gcfork.typing import Mode, Thresholds, ThresholdsSetting, WarmupSetting, WorkerInfo

__all__ = [
    "MAX_EVERY",
    "MAX_SECONDS",
    "MAX_SIZE",
    "MODES",
    "boolean",
    "env_bool",
    "env_float",
    "env_int",
    "env_paths",
    "env_size",
    "env_text",
    "env_thresholds",
    "host",
    "host_port",
    "is_loopback",
    "mode",
    "one_in",
    "optional_dir",
    "optional_textfile",
    "seconds",
    "size",
    "split_host_port",
    "threshold_tuple",
    "thresholds",
    "warmup",
]

MODES: tuple[Mode, ...] = ("freeze", "disable", "off")
MAX_SECONDS = 365 * 24 * 3600.0
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def mode(value: object) -> Mode:
    for mode in MODES:
        if value == mode:
            return mode
    raise ValueError("unknown mode")


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"expected True or False, got {type(value).__name__}")


def env_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("not a boolean word")


def threshold_tuple(value: object) -> Thresholds:
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


def thresholds(value: object) -> ThresholdsSetting:
    if value is None:
        return None
    if value == "auto":
        return "auto"
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
            threshold_tuple(result)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"called with {probe} it returned {short_repr(result)}: {exc}"
            ) from exc
        fn: Callable[[WorkerInfo], Thresholds] = value
        return fn
    return threshold_tuple(value)


def env_thresholds(text: str) -> object:
    if text.lower() in ("", "default"):
        return None
    if text.lower() == "auto":
        return "auto"
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError("not a comma-separated list of ints") from None


def seconds(value: object) -> float:
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


def env_float(text: str) -> object:
    return float(text)


MAX_EVERY = 1_000_000_000  # one request in a billion: beyond it, say 0 (off)


def one_in(value: object) -> int:
    """N of "one in N" (``attribute_every``): an int >= 0, 0 for off."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an int, got {type(value).__name__}")
    number = operator.index(value)
    if not 0 <= number <= MAX_EVERY:
        raise ValueError(f"not in [0, {MAX_EVERY:,}]")
    return number


def env_int(text: str) -> object:
    return int(text)


def optional_dir(value: object) -> str | None:
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


def host_port(value: object) -> str | None:
    """``host:port`` (``[v6]:port`` for IPv6), returned as given; port 0 picks a free one."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a 'host:port' string, got {type(value).__name__}")
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError("no 'host:' before the port")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r:.20} is not a number from 0 to 65535")
    bracketed = host.startswith("[") and host.endswith("]")
    bare = host[1:-1] if bracketed else host
    if not bare or any(c in bare for c in "[]/ "):
        raise ValueError(f"host {host!r:.60} is not a name or an address")
    if ":" in bare and not bracketed:
        raise ValueError("an IPv6 address goes in brackets, e.g. [::1]:9464")
    return value


def split_host_port(bind: str) -> tuple[str, int]:
    """A :func:`host_port` value's host (without brackets) and port."""
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address. Other names are
    not resolved here: what they resolve to can change, so they count as remote."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def optional_textfile(value: object) -> str | None:
    """An absolute ``*.prom`` path in an existing directory (node_exporter reads only those)."""
    path = optional_dir(value)
    if path is None:
        return None
    if not path.endswith(".prom"):
        raise ValueError("node_exporter's textfile collector reads only files named *.prom")
    if not os.path.isdir(os.path.dirname(path)):
        raise ValueError("its directory does not exist (gcfork does not create it)")
    return path


def env_text(text: str) -> object:
    return text or None


def warmup(value: object) -> WarmupSetting | None:
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


def env_paths(text: str) -> object:
    if not text:
        return None
    return [part.strip() for part in text.split(",")]


# A DNS name, an IPv4 address or a bracketed IPv6 address; no port, scheme or path.
_HOST = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\]")


def host(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a host name, got {type(value).__name__}")
    if not _HOST.fullmatch(value):
        raise ValueError("not a bare host name (no scheme, port or path)")
    return value


# -- sizes (max_worker_private) -------------------------------------------------

# Binary units are what the report prints (MiB); decimal ones are what a
# container limit or a cloud console often says (MB): both are accepted, spelled out.
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
MAX_SIZE = 2**62  # bytes; beyond any machine, and below MAX_BYTES of gcfork.units


def size(value: object) -> int | None:
    """A number of bytes > 0: an int, or text such as ``300MiB``, ``1.5GiB``,
    ``500MB``, ``4096``; None stays None (off)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"expected a size such as '300MiB' or an int of bytes, "
                        f"got {type(value).__name__}")
    if isinstance(value, int):
        number = operator.index(value)  # a plain int, whatever subclass was given
    else:
        match = _SIZE.fullmatch(value)
        if match is None:
            raise ValueError("not a number followed by an optional unit")
        digits, unit = match.group(1), match.group(2).lower()
        if unit not in _SIZE_UNITS:
            raise ValueError(f"unknown unit {match.group(2)!r}")
        if len(digits) > 30:
            # Before any conversion: float() would give inf, int() hit its digit limit.
            raise ValueError("larger than any machine's memory")
        number = (int(float(digits) * _SIZE_UNITS[unit]) if "." in digits
                  else int(digits) * _SIZE_UNITS[unit])
    if number <= 0:
        raise ValueError("not a size > 0; None turns it off")
    if number > MAX_SIZE:
        raise ValueError("larger than any machine's memory")
    return number


def env_size(text: str) -> object:
    return None if text.lower() in ("", "none", "off") else text
