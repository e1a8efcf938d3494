"""Running ``gcfork bench``: each variant served in turn, loaded, and measured.

A variant's server runs under gunicorn on 127.0.0.1. After each checkpoint
(a set number of requests) the load pauses and the whole cluster is measured
with :func:`gcfork.report.collect`; after the last, the load stops for the
idle wait and the cluster is measured once more.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from gcfork.attribution_settings import ATTRIBUTE_EVERY
from gcfork.config import STATS_DIR
from gcfork.exceptions import BenchError, GcforkError, ServerError
from gcfork.gunicorn.roles import members
from gcfork.pauses import PAUSE_BUCKETS, pause_quantile
from gcfork.report import Report, TableRenderer, collect
from gcfork.stats import PUBLISH_INTERVAL
from gcfork.tools.bench.results import Checkpoint, Run
from gcfork.tools.bench.table import checkpoint_line, summary
from gcfork.tools.bench.variants import VARIANTS, Variant, write_config
from gcfork.tools.bench.workload import Example, Settings, checkout_pythonpath
from gcfork.tools.explain import render_explain, request_profile, trigger_dir
from gcfork.tools.explain.bypath import cluster_by_path, render_by_path
from gcfork.tools.load import LoadResult, run_load
from gcfork.tools.server import GunicornProcess

__all__ = ["Progress", "figures", "run_bench", "run_variant"]


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
    config = write_config(target, variant, directory)
    args = ["--workers", str(settings.workers), "--preload"]
    if settings.worker_class is not None:
        args += ["--worker-class", settings.worker_class]
    warmup_paths = paths if settings.warmup_paths is None else settings.warmup_paths
    if settings.attribute_every is not None:
        env = {**env, ATTRIBUTE_EVERY.env: str(settings.attribute_every)}
    server = GunicornProcess(
        target.app, config, directory / "gunicorn.log", python=settings.python,
        cwd=target.directory,
        env={**env, **variant.environ(warmup_paths), STATS_DIR.env: str(directory / "stats")},
        args=args,
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
            progress.note(f"{mark:,} requests: {checkpoint_line(run.checkpoints[-1])}")
        time.sleep(settings.idle)
        final = _sample(server.pid, stats_dir)
        run.checkpoints.append(Checkpoint(None, figures(final)))
        run.report = final.to_dict()
        run.report_table = TableRenderer()(final)
        merged, workers = cluster_by_path(final)
        if merged is not None:  # none from the recipe and plain variants (no gcfork)
            run.by_path = merged.to_json()
            run.by_path_table = render_by_path(merged, workers,
                                               title=f"variant {variant.name!r} after the load")
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
    return collect(master_pid, members, stats_dir)


def figures(report: Report) -> dict[str, Any]:
    """The cluster figures the benchmark compares, from one report."""
    totals = report.totals
    collections = [w.gc_collections for w in report.workers if w.gc_collections is not None]
    pauses = [w.gc_max_pause for w in report.workers if w.gc_max_pause is not None]
    # The workers' histograms add up: their buckets are the same.
    histograms = [w.stats.pauses for w in report.workers if w.stats is not None and w.stats.pauses]
    merged = [sum(column) for column in zip(*histograms)]
    return {
        "workers": totals.workers,
        "cluster_pss": totals.sum_pss,
        "sum_rss": totals.sum_rss,
        "savings_pct": totals.savings_percent,
        "mean_worker_uss": totals.mean_worker_uss,
        "mean_worker_shared_pct": totals.mean_worker_shared_percent,
        "master_rss": report.template.memory.rss,
        "gc_collections": sum(collections) if collections else None,
        "gc_max_pause": max(pauses) if pauses else None,
        "gc_pause_p50": pause_quantile(merged, 0.5, max(pauses)) if merged and pauses else None,
        "gc_pause_p99": pause_quantile(merged, 0.99, max(pauses)) if merged and pauses else None,
        "gc_max_pause_cpu": max((w.stats.pause_cpu_max for w in report.workers
                                 if w.stats is not None), default=None),
        "gc_pauses_over_20ms": sum(merged[PAUSE_BUCKETS.index(0.02) + 1:]) if merged else None,
    }


def run_bench(
    target: Example,
    variants: Sequence[str],
    settings: Settings,
    out_dir: Path,
    paths: Sequence[str],
    stream: TextIO = sys.stderr,
) -> tuple[list[Run], dict[str, dict[str, Any]], BenchError | None]:
    """Run every variant ``settings.repeat`` times, interleaved, and summarise.

    The mix is shuffled once with ``settings.seed`` so that every variant gets
    the same sequence of requests.

    Returns:
        The runs that finished, their summary, and the error that stopped
        the benchmark, if one did: the runs before it are kept.
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
            try:
                runs.append(run_variant(target, VARIANTS[name], settings, mix, directory,
                                        progress, repeat, env))
            except BenchError as exc:
                done = [v for v in variants if any(r.variant == v for r in runs)]
                return runs, summary(runs, done), exc
    return runs, summary(runs, variants), None
