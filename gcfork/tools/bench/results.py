"""What a ``gcfork bench`` run measured, and ``results.json``, which keeps it.

The file's shape is versioned and described by ``gcfork/bench.schema.json``;
``gcfork bench --results`` reads it back to print the table again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gcfork.tools.bench.workload import Example, Settings

__all__ = ["SCHEMA_VERSION", "Checkpoint", "Run", "python_version", "results_json",
           "write_results"]

SCHEMA_VERSION = 1


@dataclass
class Checkpoint:
    """The cluster measured after ``requests`` requests (None: after the idle wait)."""

    requests: int | None
    measured: dict[str, Any]


@dataclass
class Run:
    """One variant served once: its checkpoints and its load figures."""

    variant: str
    repeat: int
    checkpoints: list[Checkpoint] = field(default_factory=list)
    requests_per_second: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    report: dict[str, Any] = field(default_factory=dict)
    report_table: str = ""
    explain: str = ""
    # The workers' USS growth by request path (gcfork/report.schema.json's
    # $defs/by_path), added up; None when no worker published any.
    by_path: dict[str, Any] | None = None
    by_path_table: str = ""


def results_json(runs: Sequence[Run], summary_: Mapping[str, Any], settings: Settings,
                 target: Example, failed: Exception | None = None) -> dict[str, Any]:
    """The raw results, versioned (see ``gcfork/bench.schema.json``); with
    ``failed``, those of the variants that finished before that error."""
    data: dict[str, Any] = {
        "schema": "gcfork.bench",
        "version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "server_python": python_version(settings.python),
        "target": {"name": target.name, "app": target.app, "config": str(target.config)},
        "settings": {**asdict(settings), "checkpoints": list(settings.checkpoints),
                     "warmup_paths": (None if settings.warmup_paths is None
                                      else list(settings.warmup_paths))},
        "summary": summary_,
        "runs": [asdict(run) for run in runs],
    }
    if failed is not None:
        data["failed"] = str(failed)
    return data


def write_results(runs: Sequence[Run], summary_: Mapping[str, Any], settings: Settings,
                  target: Example, out_dir: Path, failed: Exception | None = None) -> Path:
    """Write ``results.json`` into ``out_dir``; returns its path."""
    data = results_json(runs, summary_, settings, target, failed)
    path = out_dir / "results.json"
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def python_version(python: str) -> str:
    """The version of the interpreter that runs the servers."""
    if python == sys.executable:
        return sys.version.split()[0]
    done = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"
