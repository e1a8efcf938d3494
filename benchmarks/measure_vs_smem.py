"""How long gcfork takes to measure a cluster, against smem on the same pids.

Not a test: run it by hand, ``.venv/bin/python benchmarks/measure_vs_smem.py``.

Two kinds of cluster, each at 16, 32 and 64 processes, in one run:

- *real*: a gunicorn master of the repository's example apps (``flask``, the
  library; ``django``, the shop, its SQLite database made by ``setup_demo`` in
  a temporary directory) with ``preload_app`` and N - 1 sync workers, as their
  ``gunicorn.conf.py`` says (gcfork installed), after a few rounds of the
  example's ``paths.txt`` request mix. Python workers have hundreds of
  mappings (the interpreter, shared libraries, arenas): smem parses each of
  them from ``/proc/PID/smaps``, gcfork reads one ``smaps_rollup``;
- *synthetic*: a Python master holding a heap of dicts (about 90 MiB resident
  with the default ``--objects``) forks children that each write to their own
  part of it. Few mappings, many pages: the case least favourable to gcfork,
  since both tools then pay mostly for the kernel's page-table walk.

Both tools measure RSS, PSS and USS of the same pids, repetition by repetition
in turn (so a load that comes and goes hits both), and the median is printed:

- gcfork in 1 thread (what the master's sampling thread pays) and in
  ``min(CPUs, 4)`` threads (what ``gcfork report`` uses): ``memory.sample_many``
  and ``memory.totals`` over the pids, timed in-process;
- for the real clusters also ``report.collect``: ``gcfork report`` without its
  interpreter's start-up and the rendering (finds the workers, reads their GC
  statistics files, measures);
- smem as the command a person runs: ``smem -c "pid rss pss uss" -P TOKEN``,
  where TOKEN is a random string in the cluster's command lines (``--name`` for
  gunicorn), so that it measures exactly these processes. Its interpreter's
  start-up is measured apart and the ratio given without it too (a lower
  bound for smem, so the fair one to check a target against).

Then the cost per process, and a straight line fitted through the three counts
(intercept and slope): linear growth shows as a constant cost per process.

smem is the Debian/Ubuntu package; ``benchmarks/setup_smem.sh`` installs it
with apt-get when it is missing. Every process the benchmark starts is stopped
at the end, on an error, on Ctrl-C and on SIGTERM.

Targets: at most 60 ms for 64 processes, at least 5x faster than smem.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import NamedTuple

import psutil

from gcfork import memory, report
from gcfork.gunicorn.roles import members
from gcfork.tools.server import GunicornProcess

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
THREADS = min(os.cpu_count() or 1, 4)  # as gcfork report
MIB = 2**20

# The synthetic cluster: argv[1] is the process count, argv[2] the token smem
# filters on, argv[3] the number of dicts in the heap.
CLUSTER = """
import os, signal, sys
count, objects = int(sys.argv[1]), int(sys.argv[3])
heap = [{"id": i, "name": "item%d" % i, "tags": [i, str(i)]} for i in range(objects)]
for n in range(count - 1):
    if os.fork() == 0:
        part = objects // 100
        for obj in heap[n * part:(n + 1) * part]:  # each child dirties its own part
            obj["seen"] = True
        print("ready", flush=True)
        signal.pause()
        os._exit(0)
print("ready", flush=True)
signal.pause()
"""


class Example(NamedTuple):
    name: str
    app: str  # module:callable, run in the example's directory
    directory: Path
    setup: list[str] | None  # command that makes its database, if any


EXAMPLE_APPS = {
    "flask": Example("flask", "wsgi:app", EXAMPLES / "flask_app", None),
    "django": Example("django", "shopsite.wsgi:application", EXAMPLES / "django_app",
                      [sys.executable, "manage.py", "setup_demo"]),
}


class Row(NamedTuple):
    """The medians for one cluster, in seconds, and the PSS each tool found."""

    processes: int
    one: float  # gcfork, 1 thread
    many: float  # gcfork, THREADS threads
    collect: float | None  # report.collect, THREADS threads (real clusters)
    smem: float
    one_cpu: float  # CPU time (user + system) of gcfork in 1 thread
    smem_cpu: float  # CPU time of the smem command
    gcfork_pss: int
    smem_pss: int
    mean_rss: float  # bytes: what the kernel walks for each process
    mean_maps: float  # mappings: what smem parses for each process


class Cluster(NamedTuple):
    pids: list[int]
    token: str  # in every process's command line
    master: int | None  # the gunicorn master, for report.collect


# -- the clusters --------------------------------------------------------------


@contextlib.contextmanager
def synthetic(count: int, objects: int) -> Iterator[Cluster]:
    """A master with a heap of ``objects`` dicts and ``count - 1`` forked children."""
    token = f"gcfork-bench-{secrets.token_hex(4)}"
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER, str(count), token, str(objects)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        for _ in range(count):
            if not proc.stdout.readline():
                raise RuntimeError(f"the synthetic cluster exited: status {proc.wait()}")
        pids = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children())]
        assert len(pids) == count, pids
        yield Cluster(pids, token, None)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: every child too
        proc.wait()


@contextlib.contextmanager
def served(example: Example, count: int, env: dict[str, str], logs: Path,
           rounds: int) -> Iterator[Cluster]:
    """The example's gunicorn master with ``count - 1`` sync workers, after
    ``rounds`` replays of its request mix."""
    token = f"gcfork-bench-{secrets.token_hex(4)}"
    log = logs / f"{example.name}-{count}.log"
    server = GunicornProcess(example.app, example.directory / "gunicorn.conf.py", log,
                             cwd=example.directory, env=env,
                             args=["--workers", str(count - 1), "--name", token])
    try:
        server.start()
        workers = server.wait_ready(count - 1, timeout=120)
        paths = (example.directory / "paths.txt").read_text().split()

        def get(path: str) -> None:
            status, _ = server.get(path, timeout=30)
            if status != 200:
                raise RuntimeError(f"{example.name}: GET {path} answered {status}")

        with ThreadPoolExecutor(8) as pool:  # spread over the workers
            list(pool.map(get, paths * rounds))
        time.sleep(2.5)  # every worker has published its GC statistics once
        pids = [server.pid, *workers]
        assert len(pids) == count and server.worker_pids() == workers, (pids, workers)
        yield Cluster(pids, token, server.pid)
    finally:
        server.stop()


# -- the timings ---------------------------------------------------------------


def measure_gcfork(pids: list[int], threads: int) -> memory.ClusterTotals:
    rows = [memory.RoleSample("worker", s) for s in memory.sample_many(pids, threads)]
    totals = memory.totals(rows)
    assert totals.unmeasured == 0, rows
    return totals


def measure_smem(cluster: Cluster) -> dict[int, tuple[int, int, int]]:
    """smem's RSS, PSS and USS in bytes by pid, for the cluster's pids."""
    out = subprocess.run(["smem", "-H", "-c", "pid rss pss uss", "-P", cluster.token],
                         capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        pid, rss, pss, uss = (int(field) for field in line.split())
        rows[pid] = (rss * 1024, pss * 1024, uss * 1024)
    # smem's own command line holds the token too: keep the cluster's pids.
    return {pid: v for pid, v in rows.items() if pid in cluster.pids}


def timed(run: Callable[[], object], children: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of ``run()``: of this process, or
    with ``children`` of the commands it ran and waited for."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    r0, t0 = resource.getrusage(who), time.perf_counter()
    run()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(who)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def measure(cluster: Cluster, repeat: int) -> Row:
    """The cluster measured ``repeat`` times by each tool in turn."""
    runs: dict[str, Callable[[], object]] = {
        "one": lambda: measure_gcfork(cluster.pids, 1),
        "many": lambda: measure_gcfork(cluster.pids, THREADS),
        "smem": lambda: measure_smem(cluster),
    }
    master = cluster.master
    if master is not None:
        runs["collect"] = lambda: report.collect(master, members, threads=THREADS)
    for run in runs.values():  # once untimed: caches warm for both tools
        run()
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            w, c = timed(run, children=name == "smem")
            wall[name].append(w)
            cpu[name].append(c)
    smem_rows = measure_smem(cluster)
    assert set(smem_rows) == set(cluster.pids), sorted(set(cluster.pids) ^ set(smem_rows))
    totals = measure_gcfork(cluster.pids, THREADS)
    if master is not None:
        collected = report.collect(master, members, threads=THREADS)
        assert collected.totals.processes == len(cluster.pids), collected.totals
    med = {name: statistics.median(t) for name, t in wall.items()}
    return Row(len(cluster.pids), med["one"], med["many"], med.get("collect"), med["smem"],
               statistics.median(cpu["one"]), statistics.median(cpu["smem"]),
               totals.sum_pss or 0, sum(pss for _, pss, _ in smem_rows.values()),
               totals.sum_rss / len(cluster.pids),
               statistics.fmean(mappings(pid) for pid in cluster.pids))


def mappings(pid: int) -> int:
    with open(f"/proc/{pid}/maps", "rb") as f:
        return f.read().count(b"\n")


def interpreter_start(repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds for smem's interpreter to start, import
    what smem imports and exit."""
    with open(shutil.which("smem") or "smem", "rb") as f:
        shebang = f.readline().decode().strip("#!\n ").split()
    command = [*shebang, "-c", "import re, os, sys, pwd, optparse, errno, tarfile"]
    runs = [timed(lambda: subprocess.run(command, check=True), children=True)
            for _ in range(repeat)]
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


# -- the output ----------------------------------------------------------------

MS = 1000


def wall_table(results: Sequence[tuple[str, Row]], start: float) -> list[str]:
    lines = [f"{'wall time, median':<24} {'procs':>5}  {'gcfork 1 thr':>12}  "
             f"{f'gcfork {THREADS} thr':>12}  {'report':>8}  {'smem':>8}  {'smem/gcfork':>11}  "
             f"{'w/o start':>9}  {'ms/process':>10}  {'sum PSS gcfork/smem':>19}"]
    for label, r in results:
        collect = f"{r.collect * MS:6.1f}ms" if r.collect is not None else f"{'-':>8}"
        lines.append(
            f"{label:<24} {r.processes:5d}  {r.one * MS:10.1f}ms  {r.many * MS:10.1f}ms  "
            f"{collect}  {r.smem * MS:6.1f}ms  {r.smem / r.many:10.1f}x  "
            f"{(r.smem - start) / r.many:8.1f}x  {r.many * MS / r.processes:10.2f}  "
            f"{r.gcfork_pss / MIB:8.1f}/{r.smem_pss / MIB:.1f} MiB")
    return lines


def cpu_table(results: Sequence[tuple[str, Row]], start: float) -> list[str]:
    lines = [f"{'CPU time, median':<24} {'procs':>5}  {'gcfork 1 thr':>12}  {'smem':>8}  "
             f"{'smem/gcfork':>11}  {'w/o start':>9}  {'ms/process':>10}  {'mean RSS':>9}  "
             f"{'mappings':>8}"]
    for label, r in results:
        lines.append(
            f"{label:<24} {r.processes:5d}  {r.one_cpu * MS:10.1f}ms  {r.smem_cpu * MS:6.1f}ms  "
            f"{r.smem_cpu / r.one_cpu:10.1f}x  {(r.smem_cpu - start) / r.one_cpu:8.1f}x  "
            f"{r.one_cpu * MS / r.processes:10.2f}  {r.mean_rss / MIB:5.1f} MiB  "
            f"{r.mean_maps:8.0f}")
    return lines


def fit(rows: Sequence[Row], pick: Callable[[Row], float]) -> tuple[float, float]:
    """Least squares ``seconds = a + b * processes``: (a, b)."""
    xs, ys = [r.processes for r in rows], [pick(r) for r in rows]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def summary(label: str, rows: Sequence[Row], start: float, start_cpu: float) -> list[str]:
    lines = []
    if len(rows) >= 2:
        parts = []
        for what, pick in ((f"gcfork {THREADS} threads wall", lambda r: r.many),
                           ("gcfork 1 thread CPU", lambda r: r.one_cpu),
                           ("smem CPU", lambda r: r.smem_cpu)):
            a, b = fit(rows, pick)
            parts.append(f"{what} {a * MS:+.1f} ms + {b * MS:.3f} ms/process")
        lines.append(f"{label}: {'; '.join(parts)}")
    last = max(rows, key=lambda r: r.processes)
    if last.processes == 64:
        ratio = (last.smem - start) / last.many
        cpu_ratio = (last.smem_cpu - start_cpu) / last.one_cpu
        met = last.many <= 0.060 and ratio >= 5
        lines.append(f"{label}: target at 64 processes (<= 60 ms, >= 5x smem without its "
                     f"start-up): {last.many * MS:.1f} ms, {ratio:.1f}x: "
                     f"{'met' if met else 'MISSED'} (in CPU time: {cpu_ratio:.1f}x)")
    return lines


# -- main ----------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: clusters stopped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (median)")
    parser.add_argument("--counts", default="16,32,64",
                        help="processes per cluster, master included (16,32,64)")
    parser.add_argument("--apps", default="flask,django",
                        help="real clusters: flask, django, both (flask,django) or none")
    parser.add_argument("--objects", type=int, default=200_000,
                        help="dicts in the synthetic master's heap (200000: about 90 MiB RSS a "
                             "process); 0 skips the synthetic clusters")
    parser.add_argument("--rounds", type=int, default=5,
                        help="replays of the example's paths.txt before measuring")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    apps = [EXAMPLE_APPS[a] for a in args.apps.split(",") if a and a != "none"]
    signal.signal(signal.SIGTERM, _terminate)
    if shutil.which("smem") is None:
        subprocess.run(["sh", str(HERE / "setup_smem.sh")], check=True)

    start, start_cpu = interpreter_start(args.repeat)
    load = os.getloadavg()[0]
    results: list[tuple[str, Row]] = []
    summaries: list[str] = []

    def run(label: str, clusters: Callable[[int], contextlib.AbstractContextManager[Cluster]]
            ) -> None:
        rows = []
        for count in counts:
            print(f"measuring {label}, {count} processes", file=sys.stderr, flush=True)
            with clusters(count) as cluster:
                rows.append(measure(cluster, args.repeat))
            results.append((label, rows[-1]))
        summaries.extend(summary(label, rows, start, start_cpu))

    with tempfile.TemporaryDirectory(prefix="gcfork-bench-") as tmp:
        for example in apps:
            env: dict[str, str] = {}
            if example.setup is not None:
                env["DJANGO_APP_DB"] = os.path.join(tmp, f"{example.name}.sqlite3")
                subprocess.run(example.setup, cwd=example.directory, check=True,
                               env={**os.environ, **env}, stdout=subprocess.DEVNULL)
            run(f"{example.name} (gunicorn)", functools.partial(
                served, example, env=env, logs=Path(tmp), rounds=args.rounds))
        if args.objects:
            run(f"synthetic ({args.objects // 1000}k dicts)",
                lambda count: synthetic(count, args.objects))

    print(f"gcfork (psutil {psutil.__version__}, Python {sys.version.split()[0]}) against smem "
          f"({shutil.which('smem')}) on the same processes; {os.cpu_count()} CPUs; load "
          f"{load:.2f} at start, {os.getloadavg()[0]:.2f} at the end; median of {args.repeat} "
          f"runs each, the tools in turn.")
    print(f"smem/gcfork: against gcfork in {THREADS} threads (wall) or 1 thread (CPU); "
          f"'w/o start' leaves out smem's interpreter start-up ({start * MS:.0f} ms wall, "
          f"{start_cpu * MS:.0f} ms CPU); 'report' is report.collect() in {THREADS} threads; "
          f"ms/process is gcfork's.\n")
    print("\n".join(wall_table(results, start)))
    print()
    print("\n".join(cpu_table(results, start_cpu)))
    print()
    print("\n".join(summaries))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the clusters were stopped on the way out
        print("interrupted: every process the benchmark started is stopped", file=sys.stderr)
        sys.exit(130)
