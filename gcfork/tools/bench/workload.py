"""What every variant of ``gcfork bench`` gets alike: the app, its request mix
and the load.

The app is an :class:`Example` (one of a source checkout's examples, or the
user's own given by options); the load is a :class:`Settings`, whose defaults
are also the defaults of the command's options.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gcfork.exceptions import BenchError

__all__ = [
    "EXAMPLES",
    "Example",
    "Settings",
    "check_paths",
    "checkout_pythonpath",
    "example",
    "examples_dir",
    "read_paths",
    "setup_target",
]

EXAMPLES = ("django", "flask", "fastapi")

# Where a source checkout has its pyproject.toml and examples/: above gcfork/
# (this file is gcfork/tools/bench/workload.py).
_CHECKOUT = Path(__file__).resolve().parents[3]

# The last checkpoint is the total number of requests: one declaration for both.
_CHECKPOINTS = (100, 1_000, 5_000, 20_000)


@dataclass(frozen=True)
class Example:
    """An app to benchmark: where it lives and how to run it."""

    name: str
    app: str
    directory: Path
    config: Path
    paths: Path
    setup: Sequence[Sequence[str]] = ()


@dataclass(frozen=True)
class Settings:
    """How to load the app: the same for every variant."""

    workers: int = 4
    requests: int = _CHECKPOINTS[-1]
    checkpoints: Sequence[int] = _CHECKPOINTS
    concurrency: int = 8
    idle: float = 5.0
    repeat: int = 1
    seed: int = 0
    python: str = sys.executable
    explain: bool = False
    # gunicorn's --worker-class for every variant; None keeps the config's.
    worker_class: str | None = None
    # What the warm-up variants warm up with; None: the distinct paths of the mix.
    warmup_paths: Sequence[str] | None = None
    # attribute_every of every variant's server; None keeps the setting's default.
    attribute_every: int | None = None


def examples_dir() -> Path:
    """The examples of a source checkout: beside the package, or under the cwd."""
    for base in (_CHECKOUT, Path.cwd()):
        if (base / "examples").is_dir():
            return base / "examples"
    raise BenchError("no examples/ directory: run gcfork bench from a gcfork source checkout, "
                     "or give --app, --config and --paths for your own app")


def example(name: str) -> Example:
    """The example app called ``name`` (one of :data:`EXAMPLES`)."""
    root = examples_dir()
    if name == "django":
        d = root / "django_app"
        return Example("django", "shopsite.wsgi:application", d, d / "gunicorn.conf.py",
                       d / "paths.txt", setup=[[sys.executable, "manage.py", "setup_demo"]])
    if name == "flask":
        d = root / "flask_app"
        return Example("flask", "wsgi:app", d, d / "gunicorn.conf.py", d / "paths.txt")
    if name == "fastapi":
        # Its config runs it under uvicorn's worker (the uvicorn extra).
        d = root / "fastapi_app"
        return Example("fastapi", "parts.app:app", d, d / "gunicorn.conf.py", d / "paths.txt")
    raise BenchError(f"unknown example {name!r}: choose {' or '.join(EXAMPLES)}")


def check_paths(paths: Sequence[str], where: object) -> list[str]:
    """The request mix, refused unless every path starts with '/'."""
    bad = [p for p in paths if not p.startswith("/")]
    if bad or not paths:
        raise BenchError(f"{where}: expected request paths, each starting with '/'"
                         + (f"; got {bad[0]!r}" if bad else "; there are none"))
    return list(paths)


def read_paths(path: Path) -> list[str]:
    """The request mix: one path per line; blank lines and # comments skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise BenchError(f"cannot read the request mix {path}: {exc.strerror}") from exc
    return check_paths(
        [line.strip() for line in lines if line.strip() and not line.startswith("#")], path
    )


def setup_target(target: Example, python: str, stream: TextIO) -> None:
    """Run the example's own set-up step (e.g. create and fill its database)."""
    for command in target.setup:
        argv = [python, *command[1:]] if command[0] == sys.executable else list(command)
        stream.write(f"set-up: {' '.join(argv)}\n")
        done = subprocess.run(argv, cwd=target.directory, capture_output=True, text=True)
        if done.returncode:
            raise BenchError(f"set-up step {' '.join(argv)} failed in {target.directory}:\n"
                             f"{done.stdout[-2000:]}{done.stderr[-2000:]}")


def checkout_pythonpath() -> dict[str, str]:
    """For another interpreter (``--python``): make this gcfork importable
    when it runs from a source checkout; an installed gcfork must be installed
    in that interpreter too, with gunicorn and psutil."""
    if not (_CHECKOUT / "pyproject.toml").is_file():
        return {}
    current = os.environ.get("PYTHONPATH")
    root = str(_CHECKOUT)
    return {"PYTHONPATH": root if not current else f"{root}{os.pathsep}{current}"}
