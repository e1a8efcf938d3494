"""``gcfork bench``: baseline and gcfork side by side, on any WSGI app.

Each configuration ("variant") of the same app runs in turn under gunicorn on
127.0.0.1 with the same worker count, the same request mix and the same load.
After set request counts (the checkpoints) the load pauses and the whole
cluster is measured; at the end the variants are compared metric by metric,
each as a ratio to the baseline (the first variant, ``off`` by default).

The app's own gunicorn config runs unchanged inside a small generated config
that makes sure gcfork is installed (so that an app without gcfork's line can
be measured too) and sets ``GCFORK_MODE`` per variant through the environment.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gcfork.exceptions import BenchError, GcforkError, ServerError
from gcfork.explain import render_explain, request_profile, trigger_dir
from gcfork.load import LoadResult, run_load
from gcfork.report import Report, TableRenderer, collect
from gcfork.server import GunicornProcess
from gcfork.stats import PUBLISH_INTERVAL

__all__ = ["BenchError", "Example", "Variant", "add_arguments", "run", "run_bench"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Variant:
    """One configuration of the app under test.

    Attributes:
        name: label in the table, the JSON and the chart.
        env: environment variables of this variant's server.
        snippet: add the hand-copied recipe that gcfork replaces (disable at
            the top of the config, freeze once in ``when_ready``, enable in
            ``post_fork``), with gcfork itself in mode ``off``.
        recipe: no gcfork in the server at all: the config's gcfork line is
            replaced by the hand-written recipe (``gc.disable()`` there,
            ``gc.freeze()`` in ``pre_fork``, ``gc.enable()`` in
            ``post_fork``); the yardstick of what gcfork itself costs.
        plain: no gcfork and no recipe: the server as it is without gcfork,
            the yardstick of what mode ``off`` (measuring only) costs.
        doc: one line for ``--help``.
        warmup: warm the app up in the master with the distinct paths of the
            request mix (gcfork's ``warmup`` setting).
    """

    name: str
    env: Mapping[str, str]
    doc: str
    snippet: bool = False
    warmup: bool = False
    recipe: bool = False
    plain: bool = False

    def environ(self, paths: Sequence[str]) -> dict[str, str]:
        env = dict(self.env)
        if self.warmup:
            env["GCFORK_WARMUP"] = ",".join(dict.fromkeys(paths))
        return env


VARIANTS: Mapping[str, Variant] = {
    v.name: v
    for v in (
        Variant("off", {"GCFORK_MODE": "off"}, "baseline: gcfork installed in mode off"),
        Variant("gcfork", {}, "gcfork as the app's config sets it up"),
        Variant("snippet", {"GCFORK_MODE": "off"}, "the common when_ready/post_fork snippet",
                snippet=True),
        Variant("recipe", {}, "no gcfork in the server: the hand-written disable/freeze in "
                "pre_fork/enable in post_fork", recipe=True),
        Variant("plain", {}, "no gcfork and no recipe in the server: what mode off is "
                "measured against", plain=True),
        Variant("disable", {"GCFORK_MODE": "disable"}, "gcfork in mode disable"),
        Variant("warmup", {}, "gcfork, the request mix run once in the master first",
                warmup=True),
        Variant("immortal", {"GCFORK_IMMORTALIZE": "1"},
                "gcfork, the frozen heap made immortal (CPython 3.12+)"),
        Variant("fastexit", {"GCFORK_FAST_EXIT": "1"}, "gcfork, workers end without "
                "interpreter finalization"),
        Variant("beyond", {"GCFORK_IMMORTALIZE": "1", "GCFORK_FAST_EXIT": "1"},
                "gcfork with warm-up, immortal heap and fast exit", warmup=True),
    )
}


@dataclass(frozen=True)
class Example:
    """An app to benchmark: where it lives and how to run it."""

    name: str
    app: str
    directory: Path
    config: Path
    paths: Path
    setup: Sequence[Sequence[str]] = ()


def examples_dir() -> Path:
    """The examples of a source checkout: beside the package, or under the cwd."""
    for base in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (base / "examples").is_dir():
            return base / "examples"
    raise BenchError("no examples/ directory: run gcfork bench from a gcfork source checkout, "
                     "or give --app, --config and --paths for your own app")


def example(name: str) -> Example:
    """The example app called ``name`` (``django`` or ``flask``)."""
    root = examples_dir()
    if name == "django":
        d = root / "django_app"
        return Example("django", "shopsite.wsgi:application", d, d / "gunicorn.conf.py",
                       d / "paths.txt", setup=[[sys.executable, "manage.py", "setup_demo"]])
    if name == "flask":
        d = root / "flask_app"
        return Example("flask", "wsgi:app", d, d / "gunicorn.conf.py", d / "paths.txt")
    raise BenchError(f"unknown example {name!r}: choose django or flask")


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

    def final(self) -> dict[str, Any]:
        return self.checkpoints[-1].measured if self.checkpoints else {}


@dataclass(frozen=True)
class Settings:
    """How to load the app: the same for every variant."""

    workers: int = 4
    requests: int = 20_000
    checkpoints: Sequence[int] = (100, 1_000, 5_000, 20_000)
    concurrency: int = 8
    idle: float = 5.0
    repeat: int = 1
    seed: int = 0
    python: str = sys.executable
    explain: bool = False


# -- running one variant -------------------------------------------------------

WRAPPER = '''\
# Generated by gcfork bench for the variant {variant!r}: runs the app's own
# gunicorn config, then makes sure gcfork is installed; GCFORK_MODE in the
# environment chooses what it does.
import gcfork.gunicorn as _gcfork_gunicorn
__file__ = {config!r}
with open(__file__) as _f:
    exec(compile(_f.read(), __file__, "exec"))
if not _gcfork_gunicorn.is_installed():
    _gcfork_gunicorn.install(globals())
control_socket_disable = True
'''

SNIPPET = '''
# The recipe gcfork replaces, as it is usually copied: it freezes only once.
import gc as _gc
_gc.disable()
def when_ready(server):
    _gc.freeze()
def post_fork(server, worker):
    _gc.enable()
'''


_STAND_IN = '''\
# Generated by gcfork bench for the variant {variant!r}: the app's own gunicorn
# config {what}.
# gcfork is never imported: a stand-in module takes its name, so that the
# config's line runs.
import gc as _gc
import sys as _sys
import types as _types
_stand_in = _types.ModuleType("gcfork")
_stand_in.install = lambda namespace, **settings: {install}
_sys.modules["gcfork"] = _stand_in
__file__ = {config!r}
with open(__file__) as _f:
    exec(compile(_f.read(), __file__, "exec"))
del _sys.modules["gcfork"]
'''

RECIPE = _STAND_IN.replace("{what}", "with the hand-written recipe in place of gcfork").replace(
    "{install}", "_gc.disable()") + '''\
_app_pre_fork = globals().get("pre_fork")
def pre_fork(server, worker):
    if _app_pre_fork is not None:
        _app_pre_fork(server, worker)
    _gc.freeze()
def post_fork(server, worker):
    _gc.enable()
control_socket_disable = True
'''

PLAIN = _STAND_IN.replace("{what}", "with nothing in place of gcfork").replace(
    "{install}", "None") + "control_socket_disable = True\n"


def _write_config(target: Example, variant: Variant, directory: Path) -> Path:
    template = RECIPE if variant.recipe else PLAIN if variant.plain else WRAPPER
    text = template.format(variant=variant.name, config=str(target.config))
    if variant.snippet:
        text += SNIPPET
    path = directory / "gunicorn.conf.py"
    path.write_text(text)
    return path


class Progress:
    """One status line on a terminal, one line per checkpoint otherwise."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.done = 0
        self.label = ""
        self._tty = stream.isatty()
        self._last = 0.0

    def start(self, label: str) -> None:
        self.label = label
        self.done = 0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self._tty and (now - self._last > 0.1 or self.done == self.total):
            self._last = now
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            self.stream.write(f"\r{self.label:<24} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.done:>7,}/{self.total:,} requests")
            self.stream.flush()

    def note(self, text: str) -> None:
        if self._tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(f"{self.label}: {text}\n")
        self.stream.flush()


@contextmanager
def _serving(target: Example, variant: Variant, settings: Settings, directory: Path,
             env: Mapping[str, str], paths: Sequence[str]) -> Iterator[GunicornProcess]:
    config = _write_config(target, variant, directory)
    server = GunicornProcess(
        target.app, config, directory / "gunicorn.log", python=settings.python,
        cwd=target.directory,
        env={**env, **variant.environ(paths), "GCFORK_STATS_DIR": str(directory / "stats")},
        args=["--workers", str(settings.workers), "--preload"],
    )
    try:
        server.start()
        try:
            server.wait_ready(settings.workers, timeout=120)
        except ServerError as exc:
            raise BenchError(f"the app did not boot under variant {variant.name!r}: {exc}") from exc
        yield server
    finally:
        server.stop()


def run_variant(
    target: Example,
    variant: Variant,
    settings: Settings,
    paths: Sequence[str],
    directory: Path,
    progress: Progress,
    repeat: int = 0,
    env: Mapping[str, str] | None = None,
) -> Run:
    """Serve ``target`` under ``variant``, load it, and measure at each checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    run = Run(variant.name, repeat)
    load = LoadResult()
    stats_dir = str(directory / "stats")
    with _serving(target, variant, settings, directory, env or {}, paths) as server:
        run.checkpoints.append(Checkpoint(0, figures(_sample(server.pid, stats_dir))))
        sent = 0
        for mark in settings.checkpoints:
            stretch = run_load(server.host, server.port, paths, mark - sent, start=sent,
                               concurrency=settings.concurrency, progress=progress.advance)
            sent = mark
            load.extend(stretch)
            if stretch.errors:
                raise BenchError(
                    f"variant {variant.name!r}: {stretch.errors} of {stretch.requests} requests "
                    f"failed, e.g. {'; '.join(stretch.failures)}; see {server.log_path}"
                )
            run.checkpoints.append(Checkpoint(mark, figures(_sample(server.pid, stats_dir))))
            progress.note(f"{mark:,} requests: {_checkpoint_line(run.checkpoints[-1])}")
        time.sleep(settings.idle)
        final = _sample(server.pid, stats_dir)
        run.checkpoints.append(Checkpoint(None, figures(final)))
        run.report = final.to_dict()
        run.report_table = TableRenderer()(final)
        if settings.explain and final.workers:
            run.explain = _explain(final.workers[0].pid, stats_dir, directory)
    run.requests_per_second = load.requests / load.elapsed if load.elapsed else 0.0
    run.p50_ms = load.percentile(0.50) * 1000
    run.p99_ms = load.percentile(0.99) * 1000
    run.errors = load.errors
    return run


def _explain(worker: int, stats_dir: str, directory: Path) -> str:
    """What one worker copied, by mapping, type and module (``gcfork explain``);
    also written to ``explain.txt`` beside the run's log."""
    try:
        text = render_explain(request_profile(worker, trigger_dir(stats_dir)))
    except GcforkError as exc:
        text = f"gcfork explain --pid {worker} failed: {exc}"
    (directory / "explain.txt").write_text(text + "\n")
    return text


def _sample(master_pid: int, stats_dir: str) -> Report:
    # Workers publish their GC statistics every PUBLISH_INTERVAL seconds: wait
    # for one round so the figures belong to this checkpoint.
    time.sleep(PUBLISH_INTERVAL + 0.3)
    return collect(master_pid, stats_dir)


def figures(report: Report) -> dict[str, Any]:
    """The cluster figures the benchmark compares, from one report."""
    totals = report.totals
    collections = [w.gc_collections for w in report.workers if w.gc_collections is not None]
    pauses = [w.gc_max_pause for w in report.workers if w.gc_max_pause is not None]
    return {
        "workers": totals.workers,
        "cluster_pss": totals.sum_pss,
        "sum_rss": totals.sum_rss,
        "savings_pct": totals.savings_percent,
        "mean_worker_uss": totals.mean_worker_uss,
        "mean_worker_shared_pct": totals.mean_worker_shared_percent,
        "master_rss": report.master.memory.rss,
        "gc_collections": sum(collections) if collections else None,
        "gc_max_pause": max(pauses) if pauses else None,
    }


def _checkpoint_line(checkpoint: Checkpoint) -> str:
    m = checkpoint.measured
    return (f"cluster PSS {_mb(m.get('cluster_pss'))}, mean worker USS "
            f"{_mb(m.get('mean_worker_uss'))}, shared {_pct(m.get('mean_worker_shared_pct'))}")


# -- comparing -----------------------------------------------------------------


def _mb(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value / 2**20:,.1f} MiB"


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1f} %"


def _median(values: Sequence[float | None]) -> float:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else float("nan")


ROWS: Sequence[tuple[str, str, Callable[[float], str]]] = (
    ("cluster PSS", "cluster_pss", _mb),
    ("sum of RSS", "sum_rss", _mb),
    ("mean worker USS", "mean_worker_uss", _mb),
    ("mean worker shared", "mean_worker_shared_pct", _pct),
    ("master RSS", "master_rss", _mb),
    ("GC collections (workers)", "gc_collections", lambda v: f"{v:,.0f}"),
    ("GC max pause", "gc_max_pause", lambda v: f"{v * 1000:.1f} ms"),
)


def summary(runs: Sequence[Run], variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per variant: the median over repeats of each final figure, and the
    spread of throughput."""
    out: dict[str, dict[str, Any]] = {}
    for name in variants:
        mine = [r for r in runs if r.variant == name]
        last_mark = [next((c for c in reversed(r.checkpoints) if c.requests), None) for r in mine]
        figures = {key: _median([c.measured.get(key) if c else None for c in last_mark])
                   for _, key, _ in ROWS}
        rps = [r.requests_per_second for r in mine]
        figures.update(
            requests_per_second=_median(rps), rps_min=min(rps), rps_max=max(rps),
            p50_ms=_median([r.p50_ms for r in mine]), p99_ms=_median([r.p99_ms for r in mine]),
        )
        out[name] = figures
    return out


def render_table(summary_: Mapping[str, Mapping[str, Any]], settings: Settings,
                 baseline: str | None = None) -> str:
    """The side-by-side table: one column per variant, the baseline first,
    every other variant's figures with their ratio to the baseline's.

    Args:
        summary_: per variant, as :func:`summary` makes it.
        settings: the load the figures come from.
        baseline: the variant to compare with; the first one when None.
    """
    names = list(summary_)
    if baseline is not None:
        names.remove(baseline)
        names.insert(0, baseline)
    base = summary_[names[0]]
    rows: list[tuple[str, ...]] = [
        (f"after {settings.checkpoints[-1]:,} requests", *names),
    ]

    def cell(name: str, key: str, fmt: Callable[[float], str]) -> str:
        value = summary_[name][key]
        if value is None or math.isnan(value):
            return "n/a"
        text = fmt(value)
        if name != names[0] and base[key] and not math.isnan(base[key]):
            text += f" ({value / base[key]:.2f}x)"
        return text

    for label, key, fmt in ROWS:
        rows.append((label, *(cell(n, key, fmt) for n in names)))
    rows.append(("requests/s", *(
        cell(n, "requests_per_second", lambda v: f"{v:,.0f}")
        + ("" if settings.repeat == 1 else
           f" [{summary_[n]['rps_min']:,.0f}-{summary_[n]['rps_max']:,.0f}]")
        for n in names)))
    rows.append(("latency p50", *(cell(n, "p50_ms", lambda v: f"{v:.1f} ms") for n in names)))
    rows.append(("latency p99", *(cell(n, "p99_ms", lambda v: f"{v:.1f} ms") for n in names)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_chart(runs: Sequence[Run], path: Path) -> Path:
    """Cluster PSS and mean worker shared % against requests served, one line
    per variant (its first repeat), as PNG."""
    import matplotlib  # heavy: only the benchmark needs it (the bench extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_pss, ax_shared) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        if run.repeat:
            continue
        points = [(c.requests, c.measured) for c in run.checkpoints if c.requests is not None]
        xs = [max(x, 1) for x, _ in points]
        ax_pss.plot(xs, [(m.get("cluster_pss") or 0) / 2**20 for _, m in points], marker="o",
                    label=run.variant)
        ax_shared.plot(xs, [m.get("mean_worker_shared_pct") or 0 for _, m in points], marker="o",
                       label=run.variant)
    for ax, title, unit in ((ax_pss, "cluster PSS", "MiB"),
                            (ax_shared, "mean worker shared", "% of RSS")):
        ax.set_xscale("log")
        ax.set_xlabel("requests served (log scale; 1 = after boot)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def results_json(runs: Sequence[Run], summary_: Mapping[str, Any], settings: Settings,
                 target: Example) -> dict[str, Any]:
    """The raw results, versioned (see ``gcfork/bench.schema.json``)."""
    return {
        "schema": "gcfork.bench",
        "version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "server_python": python_version(settings.python),
        "target": {"name": target.name, "app": target.app, "config": str(target.config)},
        "settings": {**asdict(settings), "checkpoints": list(settings.checkpoints)},
        "summary": summary_,
        "runs": [asdict(run) for run in runs],
    }


def check_paths(paths: Sequence[str], where: object) -> list[str]:
    """The request mix, refused unless every path starts with '/'."""
    bad = [p for p in paths if not p.startswith("/")]
    if bad or not paths:
        raise BenchError(f"{where}: expected request paths, each starting with '/'"
                         + (f"; got {bad[0]!r}" if bad else "; there are none"))
    return list(paths)


def python_version(python: str) -> str:
    """The version of the interpreter that runs the servers."""
    if python == sys.executable:
        return sys.version.split()[0]
    done = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


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


def run_bench(
    target: Example,
    variants: Sequence[str],
    settings: Settings,
    out_dir: Path,
    paths: Sequence[str],
    stream: TextIO = sys.stderr,
) -> tuple[list[Run], dict[str, dict[str, Any]]]:
    """Run every variant ``settings.repeat`` times, interleaved, and summarise.

    The mix is shuffled once with ``settings.seed`` so that every variant gets
    the same sequence of requests.
    """
    mix = list(paths)
    random.Random(settings.seed).shuffle(mix)
    progress = Progress(stream, settings.checkpoints[-1])
    env = checkout_pythonpath() if settings.python != sys.executable else {}
    runs: list[Run] = []
    total = settings.repeat * len(variants)
    for repeat in range(settings.repeat):
        for name in variants:
            progress.start(f"[{len(runs) + 1}/{total}] {name}")
            directory = out_dir / f"{name}-{repeat}"
            runs.append(run_variant(target, VARIANTS[name], settings, mix, directory, progress,
                                    repeat, env))
    return runs, summary(runs, variants)


def write_results(runs: Sequence[Run], summary_: Mapping[str, Any], settings: Settings,
                  target: Example, out_dir: Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``chart.png`` into ``out_dir``."""
    data = results_json(runs, summary_, settings, target)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return json_path, write_chart(runs, out_dir / "chart.png")


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def default_out_dir() -> Path:
    return Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")


def checkout_pythonpath() -> dict[str, str]:
    """For another interpreter (``--python``): make this gcfork importable
    when it runs from a source checkout; an installed gcfork must be installed
    in that interpreter too, with gunicorn and psutil."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        return {}
    current = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(root) if not current else f"{root}{os.pathsep}{current}"}


# -- command line --------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gcfork bench`` (and of ``gcfork demo``, which presets them)."""
    what = parser.add_argument_group("what to run")
    what.add_argument("--example", choices=("django", "flask"),
                      help="one of the example apps of a gcfork checkout")
    what.add_argument("--app", help="WSGI target, module:callable (instead of --example)")
    what.add_argument("--config", type=Path, help="the app's gunicorn config file")
    what.add_argument("--chdir", type=Path, help="directory to run the app from "
                      "(default: the config file's directory)")
    what.add_argument("--paths", type=Path, help="request mix: a file of paths, one per line")
    what.add_argument("--path", action="append", default=[], dest="path_list",
                      help="a request path (repeatable; instead of --paths)")
    what.add_argument("--python", default=sys.executable,
                      help="interpreter to run gunicorn with (default: this one)")
    how = parser.add_argument_group("how")
    how.add_argument("--variants", default="off,gcfork",
                     help="comma-separated, the first is the baseline; from: "
                     + ", ".join(f"{v.name} ({v.doc})" for v in VARIANTS.values()))
    how.add_argument("--workers", type=int, default=4)
    how.add_argument("--checkpoints", default="100,1000,5000,20000",
                     help="request counts at which to measure; the last is the total")
    how.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    how.add_argument("--idle", type=float, default=5.0,
                     help="seconds to wait after the load before the idle measurement")
    how.add_argument("--repeat", type=int, default=1, help="runs per variant, interleaved")
    how.add_argument("--out", type=Path, help="results directory (default bench-results/DATE)")
    how.add_argument("--explain", action="store_true",
                     help="after the load, profile one worker per variant with gcfork explain "
                     "(what it copied, by mapping, type and module)")
    how.add_argument("--baseline", help="variant the ratios compare with (default: the first)")
    how.add_argument("--results", type=Path, metavar="RESULTS_JSON",
                     help="print the table of an earlier run's results.json instead of running")


def settings_from(args: argparse.Namespace) -> tuple[Example, Settings, list[str], list[str]]:
    """Check the options; returns the target, settings, variants and request mix.

    Raises:
        BenchError: a bad option, naming it and what is allowed.
    """
    if args.example:
        target = example(args.example)
    elif args.app and args.config:
        config = args.config.resolve()
        target = Example("app", args.app, (args.chdir or config.parent).resolve(), config,
                         (args.paths or Path("-")).resolve())
    else:
        raise BenchError("say what to run: --example django|flask, or --app MODULE:CALLABLE "
                         "with --config gunicorn.conf.py and --paths FILE (or --path /x ...)")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or len(variants) < 2 or len(set(variants)) != len(variants):
        raise BenchError(f"--variants {args.variants!r}: give two or more distinct names from "
                         f"{', '.join(VARIANTS)}, the baseline first")
    try:
        marks = sorted({int(x) for x in args.checkpoints.split(",")})
    except ValueError:
        raise BenchError(f"--checkpoints {args.checkpoints!r}: comma-separated request counts"
                         ) from None
    if not marks or marks[0] <= 0:
        raise BenchError("--checkpoints: request counts must be positive")
    for name in ("workers", "concurrency", "repeat"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name} must be 1 or more")
    if args.idle < 0:
        raise BenchError("--idle must be >= 0")
    if args.path_list:
        paths = check_paths(args.path_list, "--path")
    elif args.paths or args.example:
        paths = read_paths(args.paths or target.paths)
    else:
        raise BenchError("give the request mix: --paths FILE or --path /x (repeatable)")
    if not target.config.is_file():
        raise BenchError(f"--config {target.config}: no such file")
    # Resolved now: the servers run in the app's directory, not in this one.
    python = shutil.which(args.python)
    if python is None:
        raise BenchError(f"--python {args.python}: no such interpreter")
    settings = Settings(workers=args.workers, requests=marks[-1], checkpoints=tuple(marks),
                        concurrency=args.concurrency, idle=args.idle, repeat=args.repeat,
                        python=os.path.abspath(python), explain=args.explain)
    return target, settings, variants, paths


def run(args: argparse.Namespace, stream: TextIO = sys.stdout) -> int:
    """``gcfork bench``, with the options of :func:`add_arguments` parsed.

    Returns the exit status: 0 done, 1 failed, 2 bad options, 130 interrupted.
    """
    if args.results is not None:
        return rerender(args.results, args.baseline, stream)
    try:
        target, settings, variants, paths = settings_from(args)
        if args.baseline is not None and args.baseline not in variants:
            raise BenchError(f"--baseline {args.baseline}: not one of --variants {args.variants}")
    except BenchError as exc:
        sys.stderr.write(f"gcfork bench: error: {exc}\n")
        return 2
    out_dir = (args.out or default_out_dir()).resolve()
    # A polite kill gets the same clean-up as Ctrl-C: every server stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        setup_target(target, settings.python, sys.stderr)
        runs, summary_ = run_bench(target, variants, settings, out_dir, paths)
        json_path, chart_path = write_results(runs, summary_, settings, target, out_dir)
    except BenchError as exc:
        sys.stderr.write(f"gcfork bench: error: {exc}\nEvery server it started is stopped.\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("\ngcfork bench: interrupted; every server it started is stopped.\n")
        return 130
    last = next(r for r in reversed(runs) if r.variant == variants[-1])
    stream.write(f"\nMemory-sharing report of {last.variant!r} after the load "
                 f"({target.name}, {settings.workers} workers):\n\n{last.report_table}\n\n")
    stream.write(render_table(summary_, settings, args.baseline) + "\n\n")
    stream.write(f"results: {json_path}\nchart:   {chart_path}\n")
    for run_ in runs:
        if run_.explain:
            stream.write(f"explain: {out_dir / f'{run_.variant}-{run_.repeat}' / 'explain.txt'}\n")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def rerender(path: Path, baseline: str | None, stream: TextIO) -> int:
    """``gcfork bench --results FILE``: the table of an earlier run, again,
    against any of its variants as the baseline."""
    try:
        data = json.loads(path.read_text())
        fields = {k: v for k, v in data["settings"].items() if k in Settings.__dataclass_fields__}
        settings = Settings(**{**fields, "checkpoints": tuple(fields["checkpoints"])})
        summary_ = data["summary"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.stderr.write(f"gcfork bench: error: {path} is not a gcfork bench results.json: "
                         f"{exc}\n")
        return 2
    if baseline is not None and baseline not in summary_:
        sys.stderr.write(f"gcfork bench: error: --baseline {baseline}: the run has "
                         f"{', '.join(summary_)}\n")
        return 2
    # JSON has no NaN: figures that could not be measured come back as None.
    clean = {name: {k: (float("nan") if v is None else v) for k, v in figures.items()}
             for name, figures in summary_.items()}
    stream.write(f"{data['target']['name']} on CPython {data.get('server_python', '?')}, "
                 f"{settings.workers} workers, {data['created']}\n\n")
    stream.write(render_table(clean, settings, baseline) + "\n")
    return 0
