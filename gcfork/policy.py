"""The GC policy in force: validated settings, frozen, with the decisions they imply."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gcfork import actions, settle
from gcfork.attribution_settings import DEFAULT_EVERY
from gcfork.config import resolve, worker_thresholds
from gcfork.typing import Mode, Thresholds, ThresholdsSetting, WarmupSetting, WorkerInfo
from gcfork.units import format_bytes

__all__ = ["Policy"]

_MODE_MEANING: Mapping[Mode, str] = {
    "freeze": "GC off in the master, frozen before each fork, on in workers",
    "disable": "GC off in the master and in workers, frozen before each fork",
    "off": "gcfork leaves the GC alone",
}


@dataclass(frozen=True)
class Policy:
    """What gcfork does, decided once from the settings.

    Build it with :meth:`from_settings`; the adapters only ask it questions.
    """

    # One field per setting of gcfork.config, where each is declared with its
    # default (see defaults()); the order is the declarations'.
    mode: Mode
    thresholds: ThresholdsSetting
    collect_before_freeze: bool
    report_interval: float
    stats_dir: str | None
    warmup: WarmupSetting | None
    warmup_host: str
    immortalize: bool
    fast_exit: bool
    max_worker_private: int | None
    recycle_min_age: float
    metrics_bind: str | None
    metrics_allow_remote: bool
    metrics_textfile: str | None
    attribute_every: int
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def defaults(cls) -> Policy:
        """The policy of every setting's declared default, whatever the environment."""
        return cls.from_settings({}, environ={})

    @classmethod
    def from_settings(
        cls, given: Mapping[str, object], environ: Mapping[str, str] | None = None
    ) -> Policy:
        """Validate ``given`` (and ``GCFORK_*`` in ``environ``) into a policy.

        Raises:
            ConfigError: a value that a setting refuses.
        """
        resolved = resolve(given, environ)
        values: dict[str, Any] = {name: r.value for name, r in resolved.items()}
        return cls(**values, sources={name: r.source for name, r in resolved.items()})

    @property
    def changes_gc(self) -> bool:
        return self.mode != "off"

    @property
    def workers_collect(self) -> bool:
        return self.mode == "freeze"

    @property
    def settles(self) -> bool:
        """Whether each worker freezes its own heap once it has settled
        (``thresholds="auto"``, :mod:`gcfork.settle`)."""
        return self.workers_collect and self.thresholds == "auto"

    @property
    def warms_up(self) -> bool:
        return self.changes_gc and self.warmup is not None

    @property
    def immortalizes(self) -> bool:
        return self.changes_gc and self.immortalize

    @property
    def exits_fast(self) -> bool:
        return self.changes_gc and self.fast_exit

    @property
    def exports_metrics(self) -> bool:
        """Whether the template exports Prometheus metrics (endpoint or textfile)."""
        return self.metrics_bind is not None or self.metrics_textfile is not None

    @property
    def ignored(self) -> list[str]:
        """Settings of "Beyond freeze" that are set but ignored, because mode is ``off``."""
        if self.changes_gc:
            return []
        wanted = {"warmup": self.warmup is not None, "immortalize": self.immortalize,
                  "fast_exit": self.fast_exit}
        return [name for name, on in wanted.items() if on]

    def thresholds_for(self, worker: WorkerInfo) -> Thresholds | None:
        """The thresholds a worker must set, or None to leave the GC alone there.

        Raises:
            ConfigError: the thresholds callable failed or returned a bad value.
        """
        if not self.workers_collect:
            return None
        if self.thresholds is None:
            return actions.worker_default_thresholds()
        if self.thresholds == "auto":
            return settle.AUTO_THRESHOLDS
        if callable(self.thresholds):
            return worker_thresholds(self.thresholds, worker)
        thresholds: Thresholds = self.thresholds
        return thresholds

    def describe(self, preload: bool | None = None) -> str:
        """One line stating the policy, for the master's log at start.

        Settings at their default are left out, except the two every reader
        needs (mode and the workers' thresholds), to keep it short.
        """
        source = self.sources.get
        default = actions.default_thresholds()
        if self.mode == "off":
            workers = f"workers keep the interpreter's thresholds {default}; memory still measured"
        elif self.mode == "disable":
            workers = "workers: GC off"
        elif callable(self.thresholds):
            name = getattr(self.thresholds, "__qualname__", repr(self.thresholds))
            workers = f"worker thresholds=per worker from {name}() [{source('thresholds')}]"
        elif self.thresholds is None:
            workers = f"worker thresholds={actions.worker_default_thresholds()} [gcfork default]"
        elif self.thresholds == "auto":
            workers = (f"worker thresholds=auto: {settle.AUTO_THRESHOLDS}, each worker's heap "
                       f"frozen after {settle.SETTLE_AFTER} full collections "
                       f"[{source('thresholds')}]")
        else:
            workers = f"worker thresholds={self.thresholds} [{source('thresholds')}]"
        parts = [f"mode={self.mode} ({_MODE_MEANING[self.mode]}) [{source('mode')}]", workers]
        extras = [name for name, on in (("collect_before_freeze", self.collect_before_freeze),
                                        ("immortalize", self.immortalizes),
                                        ("fast_exit", self.exits_fast)) if on]
        if self.warms_up:
            extras.append(f"warmup={_warmup_words(self.warmup)}")
        if self.max_worker_private is not None:
            extras.append(f"max_worker_private={format_bytes(self.max_worker_private)} "
                          f"(workers older than {self.recycle_min_age:g}s)")
        if self.attribute_every != DEFAULT_EVERY:
            extras.append(f"attribute_every={self.attribute_every}"
                          + (" (off)" if not self.attribute_every else ""))
        if extras:
            parts.append("also " + ", ".join(extras))
        if preload is not None:
            parts.append(f"preload_app={preload}")
        parts.append(f"{_interpreter()} ({actions.gc_semantics()})")
        return "gcfork: " + "; ".join(parts)


def _interpreter() -> str:
    # What platform.python_implementation() and python_version() say, without
    # importing platform into the master.
    name = {"cpython": "CPython", "pypy": "PyPy"}.get(sys.implementation.name,
                                                     sys.implementation.name)
    return f"{name} {sys.version.split()[0]}"


def _warmup_words(warmup: WarmupSetting | None) -> str:
    if callable(warmup):
        return f"{getattr(warmup, '__qualname__', repr(warmup))}(app)"
    count = len(warmup or ())
    return f"{count} path{'s' if count != 1 else ''}"
