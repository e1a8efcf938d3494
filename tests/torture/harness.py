"""The churn soak and the report hammer, shared by the short tests and
``benchmarks/torture.py``.

A real gunicorn master (sync workers, ``preload_app``, gcfork with per-slot
thresholds, ``max_requests`` with jitter) serves steady bounded load on
127.0.0.1 while a chaos loop sends it HUP, TTIN and TTOU and kills workers
with SIGKILL and SIGTERM, and ``gcfork report --json`` runs over and over
beside it. The user hooks of :mod:`tests.torture.hooks` record every fork in
the master and every worker's GC state right after its fork; :func:`run_soak`
turns those records, the load's outcomes, the master's RSS and the log into
the figures of issue 8 (:class:`SoakResult`).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gcfork.tools.server import GunicornProcess

REPO = Path(__file__).resolve().parents[2]
APP = "tests.apps.gcstate:app"
# A mix with cyclic garbage (the workers' collector has work) and reads of the
# shared heap (reference counts written into inherited pages).
PATHS = ("/cycles?n=200", "/reference", "/gc", "/cycles?n=50", "/reference")
# A request that fails this soon after a SIGKILL of a worker may have been in
# that worker: it is counted apart, as the kill's expected casualty.
KILL_WINDOW = 2.0

_BOOTING = re.compile(r"Booting worker with pid: (\d+)")


# -- the server ----------------------------------------------------------------------


def soak_config(workers: int, max_requests: int, jitter: int, report_interval: float) -> str:
    """The soak's gunicorn config file."""
    return textwrap.dedent(f"""\
        workers = {workers}
        # gunicorn 24+ would share one control socket path between concurrent servers.
        control_socket_disable = True
        preload_app = True
        max_requests = {max_requests}
        max_requests_jitter = {jitter}
        timeout = 60
        graceful_timeout = 20
        from tests.torture.hooks import on_exit, post_fork, pre_fork, thresholds
        import gcfork; gcfork.install(globals(), thresholds=thresholds,
                                      report_interval={report_interval!r})
        """)


def start_server(
    workdir: Path,
    config: str,
    python: str = sys.executable,
    env: Mapping[str, str] | None = None,
    name: str = "gunicorn",
) -> GunicornProcess:
    """Write ``config`` into ``workdir`` and start gunicorn with it (not waiting)."""
    path = workdir / f"{name}.conf.py"
    path.write_text(config)
    server = GunicornProcess(
        APP, path, workdir / f"{name}.log", python=python, cwd=REPO,
        env={"PYTHONPATH": str(REPO), "TORTURE_DIR": str(workdir), **(env or {})},
    )
    return server.start()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a JSON-lines file (a line being written is skipped)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def rss_kib(pid: int) -> int | None:
    """A process's resident set size from ``/proc/PID/status``, in KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def log_problems(log: str) -> dict[str, int]:
    """What a server's log must not hold, by kind."""
    return {
        "tracebacks": log.count("Traceback"),
        "hook_failures": log.count("hook failed"),
        "sampling_failures": log.count("sampling failed"),
    }


# -- load ----------------------------------------------------------------------------


@dataclass
class LoadStats:
    """What the load threads saw; failures keep their monotonic start and end."""

    requests: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[float, float, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client(host: str, port: int, paths: Sequence[str], stats: LoadStats,
            stop: threading.Event, offset: int) -> None:
    i = offset
    while not stop.is_set():
        path = paths[i % len(paths)]
        i += 1
        began = time.monotonic()
        error = ""
        try:
            conn = http.client.HTTPConnection(host, port, timeout=20)
            try:
                conn.request("GET", path, headers={"Connection": "close"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    error = f"HTTP {response.status}"
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as exc:
            error = repr(exc)
        with stats.lock:
            stats.requests[path] += 1
            if error:
                stats.failures.append((began, time.monotonic(), path, error))


# -- report hammer -------------------------------------------------------------------


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


@dataclass
class HammerStats:
    """``gcfork report --json`` runs against the soak's master."""

    runs: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    valid_json: int = 0
    right_master: int = 0
    tracebacks: int = 0
    examples: list[str] = field(default_factory=list)


def report_once(python: str, pid: int, env: Mapping[str, str] | None = None,
                timeout: float = 120.0) -> tuple[int, str, str]:
    """Run ``gcfork report --pid PID --json``; its status, stdout and stderr."""
    proc = subprocess.run(
        [python, "-m", "gcfork", "report", "--pid", str(pid), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    return proc.returncode, proc.stdout, proc.stderr


def check_report(pid: int, status: int, out: str) -> tuple[bool, bool]:
    """Whether a report's output is strict JSON, and whether it describes master
    ``pid``: its pid, its workers, and none of gunicorn's dirty processes."""
    try:
        obj = json.loads(out, parse_constant=_no_constants)
    except ValueError:
        return False, False
    try:
        roles = [p["role"] for p in obj["processes"]]
        right = (obj["master"]["pid"] == pid and roles[0] == "master"
                 and "worker" in roles and not any(r.startswith("dirty") for r in roles))
    except (KeyError, TypeError, IndexError):
        right = False
    return True, status == 0 and right


def _gist(out: str) -> str:
    """What a report said about its cluster, in one line: enough to tell why
    it was not the right master (the JSON's first lines are not)."""
    try:
        obj = json.loads(out)
        rows = [(p["role"], p["pid"]) for p in obj["processes"]]
        return f"master {obj['master']['pid']}, processes {rows}, notes {obj.get('notes')}"
    except (ValueError, KeyError, TypeError):
        return out[:300]


def _hammer(python: str, pid: int, stats: HammerStats, stop: threading.Event,
            pause: float) -> None:
    while not stop.is_set():
        try:
            status, out, err = report_once(python, pid)
        except subprocess.TimeoutExpired:
            status, out, err = -1, "", "timed out"
        valid, right = check_report(pid, status, out)
        stats.runs += 1
        stats.statuses[status] += 1
        stats.valid_json += valid
        stats.right_master += right
        if "Traceback" in err:
            stats.tracebacks += 1
        if not (valid and right and status == 0) and len(stats.examples) < 3:
            stats.examples.append(f"status {status}: {err.strip()[-600:] or _gist(out)}")
        stop.wait(pause)


# -- the soak ------------------------------------------------------------------------


@dataclass
class SoakOptions:
    """How long and how hard the soak runs."""

    seconds: float = 35.0
    workers: int = 3
    max_workers: int = 5
    max_requests: int = 60
    jitter: int = 30
    clients: int = 3
    chaos_pause: tuple[float, float] = (0.3, 1.2)
    hammer: bool = True
    hammer_pause: float = 0.5
    report_interval: float = 5.0
    python: str = sys.executable
    seed: int | None = None
    workdir: Path | None = None
    progress: Callable[[str], object] | None = None


@dataclass
class SoakResult:
    """The figures of one soak (``figures``) and what explains them."""

    figures: dict[str, Any]
    log: str
    bad_workers: list[dict[str, Any]]
    failures_outside: list[tuple[float, float, str, str]]
    hammer_examples: list[str]

    def explain(self) -> str:
        """The evidence behind a failed goal, for an assertion message."""
        return json.dumps({"figures": self.figures, "bad_workers": self.bad_workers[:5],
                           "failures_outside_kill_windows": self.failures_outside[:5],
                           "report_examples": self.hammer_examples,
                           "log_tail": self.log[-3000:]}, indent=1, default=str)


def _percent(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def run_soak(options: SoakOptions) -> SoakResult:
    """Run the churn soak with the report hammer; return its figures."""
    rng = random.Random(options.seed)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="gcfork-soak-"))
    say = options.progress or (lambda _msg: None)
    config = soak_config(options.workers, options.max_requests, options.jitter,
                         options.report_interval)
    server = start_server(workdir, config, python=options.python)
    stop = threading.Event()
    load = LoadStats()
    hammer = HammerStats()
    threads: list[threading.Thread] = []
    chaos: Counter[str] = Counter()
    kills: list[float] = []
    rss: list[tuple[float, int]] = []
    status: int | None = None
    try:
        server.wait_ready(options.workers, timeout=120)
        pid = server.pid
        for n in range(options.clients):
            threads.append(threading.Thread(
                target=_client, args=(server.host, server.port, PATHS, load, stop, n),
                daemon=True))
        if options.hammer:
            threads.append(threading.Thread(
                target=_hammer, args=(options.python, pid, hammer, stop,
                                      options.hammer_pause), daemon=True))
        for thread in threads:
            thread.start()
        began = time.monotonic()
        deadline = began + options.seconds
        num_workers = options.workers
        next_say = began + 60
        while time.monotonic() < deadline:
            kib = rss_kib(pid)
            if kib is not None:
                rss.append((time.monotonic() - began, kib))
            if server.proc is not None and server.proc.poll() is not None:
                break  # the master died: the figures say so
            num_workers = _chaos_step(server, rng, workdir, options, num_workers, chaos, kills)
            time.sleep(rng.uniform(*options.chaos_pause))
            if time.monotonic() >= next_say:
                next_say += 60
                say(f"soak: {time.monotonic() - began:.0f}s, {sum(load.requests.values())} "
                    f"requests, {sum(chaos.values())} chaos actions")
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
        # Let the last respawns finish before the graceful stop, so that the
        # workers booted are the workers that reported.
        _settle(server, workdir)
    finally:
        stop.set()
        status = server.stop(timeout=60)
    return _figures(server, workdir, options, load, hammer, chaos, kills, rss, status)


def _chaos_step(server: GunicornProcess, rng: random.Random, workdir: Path,
                options: SoakOptions, num_workers: int, chaos: Counter[str],
                kills: list[float]) -> int:
    action = rng.choices(("HUP", "BAD-HUP", "TTIN", "TTOU", "KILL", "TERM"),
                         weights=(1, 0.5, 2, 2, 3, 2))[0]
    if action == "HUP":
        server.signal(signal.SIGHUP)
        num_workers = options.workers  # the reloaded config says how many
    elif action == "BAD-HUP":
        _reload_with_a_bad_setting(server)
        num_workers = options.workers
    elif action == "TTIN":
        if num_workers >= options.max_workers:
            return num_workers
        server.signal(signal.SIGTTIN)
        num_workers += 1
    elif action == "TTOU":
        if num_workers <= 2:
            return num_workers
        server.signal(signal.SIGTTOU)
        num_workers -= 1
    else:
        # Only workers past their post_fork hook: one killed while booting
        # could not report, and the soak must account for every worker.
        reported = {r.get("pid") for r in read_jsonl(workdir / "workers.jsonl")}
        victims = [p for p in server.worker_pids() if p in reported]
        if not victims:
            return num_workers
        victim = rng.choice(victims)
        if action == "KILL":
            kills.append(time.monotonic())
        try:
            os.kill(victim, signal.SIGKILL if action == "KILL" else signal.SIGTERM)
        except ProcessLookupError:
            return num_workers
    chaos[action] += 1
    return num_workers


def _reload_with_a_bad_setting(server: GunicornProcess) -> None:
    """HUP with an invalid setting in the config file, which is then put back.

    The previous valid settings must stay in force for the workers forked
    after such a reload (issue 8, bug 1), so the soak's goals cover them too.
    """
    path = Path(server.config)
    good = path.read_text()
    mark = len(server.log())
    path.write_text(good.replace("thresholds=thresholds", "thresholds=(1, 2, 3, 4)"))
    try:
        server.signal(signal.SIGHUP)
        # gunicorn reads the file before it forks the new generation: once a
        # worker boots after the HUP, the good file can go back.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            fresh = server.log()[mark:]
            if "Hang up" in fresh and "Booting worker" in fresh.split("Hang up", 1)[1]:
                break
            time.sleep(0.05)
    finally:
        path.write_text(good)


def _settle(server: GunicornProcess, workdir: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        booted = set(map(int, _BOOTING.findall(server.log())))
        reported = {r.get("pid") for r in read_jsonl(workdir / "workers.jsonl")}
        if booted <= reported and server.worker_pids():
            return
        time.sleep(0.2)


def _figures(server: GunicornProcess, workdir: Path, options: SoakOptions, load: LoadStats,
             hammer: HammerStats, chaos: Counter[str], kills: list[float],
             rss: list[tuple[float, int]], status: int | None) -> SoakResult:
    log = server.log()
    booted = [int(p) for p in _BOOTING.findall(log)]
    forks = [r for r in read_jsonl(workdir / "master.jsonl") if "young" in r]
    records = {r["pid"]: r for r in read_jsonl(workdir / "workers.jsonl") if "pid" in r}
    ok_gc = ok_frozen = ok_thresholds = 0
    bad: list[dict[str, Any]] = []
    for pid in booted:
        record = records.get(pid)
        if record is None:
            bad.append({"pid": pid, "problem": "booted but never reported from post_fork"})
            continue
        gc_on = record.get("enabled") is True
        frozen = record.get("marker_frozen") is True
        slot = record.get("slot")
        configured = (record.get("expected") is not None
                      and record.get("thresholds") == record["expected"]
                      and isinstance(slot, int) and 0 <= slot < record.get("num_workers", 0))
        ok_gc += gc_on
        ok_frozen += frozen
        ok_thresholds += configured
        if not (gc_on and frozen and configured):
            bad.append(record)
    outside = [f for f in load.failures
               if not any(f[0] <= k + 0.2 and k - 0.2 <= f[1] <= k + KILL_WINDOW for k in kills)]
    young = [r["young"] for r in forks]
    frozen_counts = [r["frozen"] for r in forks]
    exit_records = read_jsonl(workdir / "exit.jsonl")
    problems = log_problems(log)
    figures: dict[str, Any] = {
        "seconds": options.seconds,
        "python": sys.version.split()[0],
        "chaos": dict(chaos),
        "workers_forked": len(forks),
        "workers_booted": len(booted),
        "workers_reported": sum(1 for p in booted if p in records),
        "gc_on_percent": _percent(ok_gc, len(booted)),
        "frozen_before_own_fork_percent": _percent(ok_frozen, len(booted)),
        "configured_thresholds_percent": _percent(ok_thresholds, len(booted)),
        "requests": sum(load.requests.values()),
        "requests_failed": len(load.failures),
        "requests_failed_in_kill_windows": len(load.failures) - len(outside),
        "requests_failed_outside_kill_windows": len(outside),
        "kill_9": len(kills),
        **_rss_figures(rss, options.seconds),
        "master_young_objects_first": young[0] if young else None,
        "master_young_objects_median": statistics.median(young) if young else None,
        "master_young_objects_last": young[-1] if young else None,
        "master_young_objects_max": max(young) if young else None,
        # Before the first freeze nothing is frozen; from the second fork on,
        # growth is what the master made and kept, garbage or not.
        "master_frozen_at_second_fork": frozen_counts[1] if len(frozen_counts) > 1 else None,
        "master_frozen_last": frozen_counts[-1] if frozen_counts else None,
        "master_gc_enabled_at_a_fork": any(r.get("gc_enabled") for r in forks),
        "unreachable_at_exit": exit_records[-1].get("unreachable") if exit_records else None,
        "report_runs": hammer.runs,
        "report_statuses": {str(k): v for k, v in hammer.statuses.items()},
        "report_valid_json": hammer.valid_json,
        "report_right_master": hammer.right_master,
        "report_tracebacks": hammer.tracebacks,
        "exit_status": status,
        "log_tracebacks": problems["tracebacks"],
        "log_hook_failures": problems["hook_failures"],
        "log_sampling_failures": problems["sampling_failures"],
    }
    return SoakResult(figures, log, bad, outside, hammer.examples)


def _rss_figures(rss: list[tuple[float, int]], seconds: float) -> dict[str, Any]:
    """First (after warm-up: a tenth of the run, at least 5 s) and last master RSS."""
    warm = [kib for t, kib in rss if t >= max(5.0, seconds / 10)]
    if len(warm) < 2:
        return {"master_rss_first_mib": None, "master_rss_last_mib": None,
                "master_rss_growth_mib": None, "master_rss_growth_mib_per_min": None}
    # The mean of a few samples at each end: one sample can catch a transient.
    first = statistics.mean(warm[:5]) / 1024
    last = statistics.mean(warm[-5:]) / 1024
    span = [t for t, _ in rss if t >= max(5.0, seconds / 10)]
    minutes = max((span[-1] - span[0]) / 60, 1e-9)
    return {"master_rss_first_mib": round(first, 2), "master_rss_last_mib": round(last, 2),
            "master_rss_growth_mib": round(last - first, 3),
            "master_rss_growth_mib_per_min": round((last - first) / minutes, 4)}
