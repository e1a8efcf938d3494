"""Exceptions raised by gcfork.

Kept in a module of their own so that every other module can import them
without import cycles.
"""

from __future__ import annotations

__all__ = ["ConfigError", "GcforkError", "StartupError"]


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
        because = f" ({self.reason})" if self.reason else ""
        return (
            f"invalid value for setting {self.setting!r} from {self.source}: "
            f"{self.value!r}{because}; allowed: {self.allowed}"
        )


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
