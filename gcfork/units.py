"""Figures as text, one convention for every output of gcfork.

The report (:mod:`gcfork.render`), ``gcfork explain`` and ``gcfork bench``
print sizes, percentages, pauses, ages and counts through these functions,
so a figure reads the same wherever it appears:

- a figure that is missing, not finite (NaN, an infinity) or absurdly large
  is :data:`MISSING`, ``-``: figures can come from a record another process
  wrote (a bug, a tamperer), so no formatter may raise on one, overflow
  (``int(inf)``) or hit the int-to-str digit limit (3.11+);
- a figure with a unit has one decimal (``12.3 MiB``, ``85.0 %``,
  ``0.4 ms``); counts have none; both group thousands (``1,234``).

Standard library only: the server's template formats its log lines with it.

.. versionadded:: 0.3
"""

from __future__ import annotations

import math

__all__ = [
    "MAX_BYTES",
    "MISSING",
    "finite",
    "format_age",
    "format_bytes",
    "format_count",
    "format_ms",
    "format_percent",
    "format_size",
    "plural",
]

MISSING = "-"
"""What a missing or untrustworthy figure is shown as."""

MAX_BYTES = 2**63
"""Sizes beyond this are not a machine's: shown as :data:`MISSING`."""
_MAX_SECONDS = 1000 * 365 * 86400.0
_MAX_COUNT = 10**18
_MAX_PERCENT = 1e6
_UNITS = {"MiB": 2**20, "MB": 1_000_000}


def finite(value: float | None, bound: float) -> float | None:
    """``value`` as a float if it is a finite number within ``bound``, else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return number if math.isfinite(number) and abs(number) <= bound else None


def format_count(n: float | None) -> str:
    """A whole number with thousands grouped (``1,234``); a float is rounded."""
    value = finite(n, _MAX_COUNT)
    return MISSING if value is None else f"{value:,.0f}"


def plural(n: int | None, word: str, many: str | None = None) -> str:
    """``1 worker``, ``2 workers``; ``many`` for an irregular plural."""
    return f"{format_count(n)} {word if n == 1 else many or word + 's'}"


def format_bytes(n: float | None, unit: str = "MiB") -> str:
    """``n`` bytes in ``unit``, ``MiB`` or ``MB`` (``12.3 MiB``).

    Raises:
        ValueError: another unit.
    """
    if unit not in _UNITS:
        raise ValueError(f"unit must be 'MiB' or 'MB', not {unit!r}")
    value = finite(n, MAX_BYTES)
    return MISSING if value is None else f"{value / _UNITS[unit]:,.1f} {unit}"


def format_size(n: float | None) -> str:
    """``n`` bytes in the largest of KiB, MiB and GiB that keeps it at 1 or
    more (KiB below 1 KiB): ``4.0 KiB``, ``1.5 MiB``; for rows of very
    different sizes, such as ``gcfork explain``'s mappings."""
    value = finite(n, MAX_BYTES)
    if value is None:
        return MISSING
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if abs(value) >= scale:
            return f"{value / scale:,.1f} {unit}"
    return f"{value / 1024:,.1f} KiB"


def format_percent(value: float | None) -> str:
    """A percentage, 0 to 100: ``85.3 %``."""
    clean = finite(value, _MAX_PERCENT)
    return MISSING if clean is None else f"{clean:,.1f} %"


def format_ms(seconds: float | None) -> str:
    """A pause or a latency given in seconds, in milliseconds: ``0.4 ms``."""
    value = finite(seconds, _MAX_SECONDS)
    return MISSING if value is None else f"{value * 1000:,.1f} ms"


def format_age(seconds: float | None) -> str:
    """A duration in its two largest units: ``45s``, ``5m02s``, ``3h04m``,
    ``2d03h``; :data:`MISSING` for a negative one or one beyond 1000 years."""
    value = finite(seconds, _MAX_SECONDS)
    if value is None or value < 0:
        return MISSING
    s = int(value)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
