"""Named types passed between gcfork's modules."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Literal, Union

__all__ = [
    "Mode",
    "Thresholds",
    "ThresholdsFn",
    "ThresholdsSetting",
    "WSGIApp",
    "WarmupSetting",
    "WorkerInfo",
]

Mode = Literal["freeze", "disable", "off"]
"""What gcfork does to the collector; see the ``mode`` setting."""

Thresholds = tuple[int, ...]
"""One to three non-negative ints, as :func:`gc.set_threshold` takes them."""


@dataclass(frozen=True)
class WorkerInfo:
    """The worker a thresholds callable is asked about.

    Attributes:
        index: the worker's slot, from 0 to workers - 1. A worker that replaces
            one that exited takes the lowest free slot, so slots stay dense.
        age: gunicorn's spawn counter: 1 for the first worker ever forked,
            growing by one with every fork, never reused.
    """

    index: int
    age: int


ThresholdsFn = Callable[[WorkerInfo], Thresholds]
"""A callable that chooses a worker's thresholds from its :class:`WorkerInfo`."""

ThresholdsSetting = Union[None, Thresholds, ThresholdsFn, Literal["auto"]]
"""What the ``thresholds`` setting holds: None is gcfork's worker default,
``"auto"`` short pauses (:mod:`gcfork.settle`)."""

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
"""A WSGI application callable."""

# The callable gets the app the server serves: WSGI, or ASGI (gcfork.warmup).
WarmupSetting = Union[Sequence[str], Callable[[Any], object]]
"""What the ``warmup`` setting holds: request paths, or a callable given the app."""
