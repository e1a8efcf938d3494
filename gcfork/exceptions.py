"""Every exception gcfork raises on purpose, all subclasses of :class:`GcforkError`.

Kept in a module of their own so that every other module can import them
without import cycles; each is also importable from the module that raises it.
"""

from __future__ import annotations

__all__ = [
    "BenchError",
    "ConfigError",
    "CowProfileError",
    "DiscoveryError",
    "FinishUnsupported",
    "GcforkError",
    "ImmortalizeUnsupported",
    "MasterGone",
    "ServerError",
    "StartupError",
    "StatsDirError",
    "ThresholdsRefused",
    "WarmupError",
]


class GcforkError(Exception):
    """Base class of every exception gcfork raises on purpose."""


class ConfigError(GcforkError, ValueError):
    """A setting was given a value it does not accept.

    Raised while the configuration is loaded, before any worker is forked.

    Args:
        setting: the setting's name, as passed to :func:`gcfork.install`.
        value: the value given, as received (an environment variable's raw text).
        allowed: a short description of the values the setting accepts.
        source: where the value came from (``install()`` or ``env GCFORK_...``).
        reason: why the value was refused, when there is more to say than ``allowed``.
    """

    def __init__(
        self, setting: str, value: object, allowed: str, source: str, reason: str = ""
    ) -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        self.source = source
        self.reason = reason
        super().__init__(setting, value, allowed, source, reason)

    def __str__(self) -> str:
        because = f" ({_one_line(self.reason)})" if self.reason else ""
        return (
            f"invalid value for setting {self.setting!r} from {self.source}: "
            f"{short_repr(self.value)}{because}; allowed: {self.allowed}"
        )


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` on one line and at most ``limit`` characters, whatever
    the value: an int of 5,000 digits has no repr on 3.11+ (the int/str
    conversion limit), and an error message must not fail in turn."""
    try:
        text = repr(value)
    except Exception as exc:  # any repr may raise: say so instead
        if isinstance(value, int):
            return f"<int of about {int(value.bit_length() * 0.30103) + 1} digits>"
        return f"<{type(value).__name__} whose repr raised {type(exc).__name__}>"
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split()) if "\n" in text or "\r" in text else text


class StartupError(GcforkError, RuntimeError):
    """gcfork refuses to let the server start; raised in the master before any fork.

    The gunicorn adapter lets it through its hooks (every other exception of
    gcfork's own hook code is logged and swallowed). It is a
    :class:`RuntimeError` because gunicorn's ``BaseApplication.run`` catches
    that from the arbiter, prints ``Error: <message>`` and exits with status 1:
    one line, no traceback.

    Args:
        msg: what failed and what to do, in one line.

    .. versionadded:: 0.2
    """

    def __init__(self, msg: str) -> None:
        self.msg = msg
        super().__init__(msg)

    def __str__(self) -> str:
        return self.msg


class ThresholdsRefused(GcforkError):
    """A worker could not set its thresholds; its collector is on regardless.

    Raised in a worker, right after the fork, by
    :func:`gcfork.actions.enable_in_worker`.

    Args:
        thresholds: what the policy asked for.
        state: the collector's state read back afterwards (a ``GCState``).
        error: what ``gc.set_threshold`` raised.
    """

    def __init__(self, thresholds: object, state: object, error: BaseException) -> None:
        self.thresholds = thresholds
        self.state = state
        self.error = error
        super().__init__(thresholds, state, error)

    def __str__(self) -> str:
        return f"gc.set_threshold{short_repr(self.thresholds)} raised {self.error!r}"


class DiscoveryError(GcforkError):
    """No master could be chosen; the message says what to do."""


class MasterGone(DiscoveryError):
    """The cluster's template (gunicorn's master) exited before or while it
    was measured."""


class StatsDirError(GcforkError):
    """A stats or runtime directory that gcfork refuses to use.

    Args:
        path: the directory.
        reason: why it is refused, in words.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(path, reason)

    def __str__(self) -> str:
        return f"refusing directory {self.path}: {self.reason}"


class WarmupError(GcforkError):
    """A warm-up request failed; the server should not start.

    Args:
        path: the request path.
        status: the HTTP status answered, or None if the app raised.
        reason: the status line or the exception.
    """

    def __init__(self, path: str, status: int | None, reason: str) -> None:
        self.path = path
        self.status = status
        self.reason = reason
        super().__init__(path, status, reason)

    def __str__(self) -> str:
        if self.path == "<app>":  # gcfork.warmup.APP: the app itself, not a request
            return f"warm-up impossible: {self.reason}"
        if self.status is None:
            return f"warm-up request GET {self.path} raised {self.reason}"
        return (
            f"warm-up request GET {self.path} answered {self.reason!r}; warm-up paths must "
            "answer 2xx or 3xx"
        )


class CowProfileError(GcforkError):
    """The profile could not be taken or read.

    Args:
        pid: the worker concerned.
        msg: what went wrong.
    """

    def __init__(self, pid: int, msg: str) -> None:
        self.pid = pid
        self.msg = msg
        super().__init__(pid, msg)

    def __str__(self) -> str:
        return f"copy-on-write profile of pid {self.pid}: {self.msg}"


class _Because(GcforkError):
    """Something gcfork cannot do here, and why, in one sentence a user can act on."""

    what = "do this"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

    def __str__(self) -> str:
        return f"gcfork cannot {self.what}: {self.reason}"


class ImmortalizeUnsupported(_Because):
    """This interpreter cannot make objects immortal safely; nothing was written."""

    what = "make the heap immortal on this interpreter"


class FinishUnsupported(_Because):
    """This interpreter offers no safe way to finish the heap (hashes, type
    version tags); nothing was written."""

    what = "finish the heap before the fork on this interpreter"


class ServerError(GcforkError, RuntimeError):
    """The server did not start, or stopped answering; the message quotes its log."""


class BenchError(GcforkError, RuntimeError):
    """The benchmark cannot go on; the message says why and what to do."""
