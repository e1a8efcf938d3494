"""The declaration of one setting: its name, default, validation, env name and docs.

Every setting is declared once, as a :class:`Setting`, in :mod:`gcfork.config`
or :mod:`gcfork.fleet_settings`; validation, the ``GCFORK_*`` variable and the
reference docs all come from that declaration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from gcfork.exceptions import ConfigError

__all__ = ["Setting"]

T = TypeVar("T")


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
