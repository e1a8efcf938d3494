"""The report against real gunicorn masters, checked against /proc read directly."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import threading
import time
from importlib.resources import files
from pathlib import Path

import jsonschema
import psutil
import pytest

from gcfork import memory, procfs
from gcfork.gunicorn.roles import members
from gcfork.report import (
    JSONRenderer,
    LogLineRenderer,
    MasterGone,
    Report,
    Sampler,
    TableRenderer,
    collect,
    format_age,
    format_bytes,
    plural,
    worker_exit_line,
)
from gcfork.stats import (
    MAX_RECORD_BYTES,
    GCCollector,
    GenStats,
    StatsDir,
    StatsRecord,
    advertised,
)
from gcfork.tools.server import GunicornProcess
from tests.conftest import StartServer, smaps_rollup, stopped, wait_for

CONF = """
import gcfork; gcfork.install(globals(), report_interval={interval})
preload_app = True
"""


def with_stats(server: GunicornProcess, workers: int) -> Report:
    """A report once ``workers`` workers have published their first record."""

    def ready() -> Report | None:
        report = collect(server.pid, members)
        published = [r for r in report.workers if r.stats is not None]
        return report if len(published) == workers == len(report.workers) else None

    report: Report = wait_for(ready, what=f"{workers} workers' records")
    return report


def within(value: int | float | None, low: float, high: float, rel: float = 0.01) -> bool:
    """``value`` within 1 % of the range of two direct reads."""
    return value is not None and low * (1 - rel) - 4096 <= value <= high * (1 + rel) + 4096


def test_every_figure_matches_smaps_rollup_within_1_percent(start_server: StartServer) -> None:
    server = start_server(CONF.format(interval=0.5), workers=4)
    for _ in range(12):
        server.get("/cycles?n=2000")
    with_stats(server, 4)
    wait_for(lambda: sum(r.requests or 0 for r in collect(server.pid, members).workers) == 12,
             what="the requests published")
    pids = [server.pid, *server.worker_pids()]
    with stopped(pids):
        before = {pid: smaps_rollup(pid) for pid in pids}
        report = collect(server.pid, members)
        after = {pid: smaps_rollup(pid) for pid in pids}
    assert [r.pid for r in report.rows] == pids
    assert [r.role for r in report.rows] == ["master"] + ["worker"] * 4
    sums = {k: [0, 0] for k in ("rss", "pss", "uss")}
    for row in report.rows:
        m, b, a = row.memory, before[row.pid], after[row.pid]
        direct = {
            "rss": (b["Rss"], a["Rss"]),
            "pss": (b["Pss"], a["Pss"]),
            "uss": (b["Private_Clean"] + b["Private_Dirty"],
                    a["Private_Clean"] + a["Private_Dirty"]),
            "swap": (b["Swap"], a["Swap"]),
        }
        direct["shared"] = (direct["rss"][0] - direct["uss"][0],
                            direct["rss"][1] - direct["uss"][1])
        for name, (x, y) in direct.items():
            got = getattr(m, name)
            assert within(got, min(x, y), max(x, y)), (row.role, row.pid, name, got, x, y)
            if name in sums:
                sums[name][0] += min(x, y)
                sums[name][1] += max(x, y)
        assert m.shared_percent == pytest.approx(100 * (m.rss - m.uss) / m.rss)
    t = report.totals
    assert within(t.sum_rss, *sums["rss"])
    assert within(t.sum_pss, *sums["pss"])
    assert within(t.sum_uss, *sums["uss"])
    assert t.savings == t.sum_rss - (t.sum_pss or 0)
    assert t.savings_percent == pytest.approx(100 * (t.savings or 0) / t.sum_rss)
    # gcfork at work: the master's collector is off, each worker's is on, and
    # copy-on-write keeps most of each worker's pages shared.
    assert report.template_gc_enabled is False
    assert all(r.stats and r.stats.gc_enabled and r.stats.freeze_count > 0
               for r in report.workers)
    assert sum(r.requests or 0 for r in report.workers) == 12
    assert sum(r.gc_collections or 0 for r in report.workers) > 0
    assert (t.savings_percent or 0) > 30 and (t.mean_worker_shared_percent or 0) > 50

    table = TableRenderer()(report)
    assert "copy-on-write saves" in table and "across 4 workers" in table
    assert table.startswith(f"cluster of master {server.pid}: 4 workers, 5 processes, "
                            "master GC off  (")
    assert re.search(rf"^master\s+{server.pid}\s", table, re.MULTILINE)
    assert LogLineRenderer()(report).startswith("gcfork: memory: 4 workers, sum RSS ")
    assert json.loads(JSONRenderer()(report))["totals"]["workers"] == 4

    # The master logs: the periodic line, a line per worker exit, the report at exit.
    wait_for(lambda: "gcfork: memory: 4 workers" in server.log(), what="the periodic line")
    victim = report.workers[0].pid
    os.kill(victim, signal.SIGTERM)
    wait_for(lambda: f"gcfork: worker {victim} exited: age " in server.log(),
             what="the exit line")
    exit_line = next(line for line in server.log().splitlines()
                     if f"worker {victim} exited" in line)
    assert "private at exit" in exit_line and "MiB private" in exit_line
    stats_dir = report.stats_dir
    assert stats_dir is not None
    wait_for(lambda: not any(n.startswith(f"{victim}-") for n in os.listdir(stats_dir)),
             what="the exited worker's record removed")
    start = report.template_start
    assert advertised(server.pid, start) == stats_dir
    server.stop()
    log = server.log()
    assert "gcfork: report at shutdown" in log
    assert "copy-on-write saves" in log.split("gcfork: report at shutdown")[1]
    assert "Traceback" not in log
    assert not os.path.exists(stats_dir)
    assert advertised(server.pid, start) is None


def test_workers_exiting_during_measurement_get_a_mark(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server(CONF.format(interval=0), workers=3)
    with_stats(server, 3)
    victim = server.worker_pids()[1]
    real_sample = memory.sample

    def sample_after_the_victim_exits(pid: int) -> memory.MemorySample:
        # The worker really exits (SIGKILL, reaped by its master) between the
        # moment collect() listed it and the moment it is measured.
        if pid == victim:
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: memory.process_start(victim) is None, what="the victim reaped")
        return real_sample(pid)

    monkeypatch.setattr(memory, "sample", sample_after_the_victim_exits)
    report = collect(server.pid, members)
    row = next(r for r in report.rows if r.pid == victim)
    assert row.memory.problem == memory.EXITED and row.memory.rss is None
    assert report.totals.unmeasured == 1 and report.totals.workers == 2
    table = TableRenderer()(report)
    assert "exited" in table and "(1 process not measured)" in table
    monkeypatch.undo()
    # Live churn: workers that keep exiting while being measured never break a report.
    for pid in server.worker_pids():
        os.kill(pid, signal.SIGKILL)
        TableRenderer()(collect(server.pid, members))


def test_unreadable_process_gets_a_mark(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server(CONF.format(interval=0), workers=2)
    denied = server.worker_pids()[0]
    real = procfs.memory

    def refuse_one(pid: int) -> procfs.Memory:
        # Fake: the tests run as root, who may read every /proc file, and the
        # report must run as the server's user (tests/test_memory.py has the
        # real refusal, for one process).
        if pid == denied:
            raise PermissionError(f"pid {pid}: access denied")
        return real(pid)

    monkeypatch.setattr(procfs, "memory", refuse_one)
    report = collect(server.pid, members)
    row = next(r for r in report.rows if r.pid == denied)
    assert row.memory.problem == memory.DENIED
    assert "access denied" in TableRenderer()(report)
    assert report.totals.unmeasured == 1


def test_master_gone(start_server: StartServer) -> None:
    server = start_server(CONF.format(interval=0), workers=1)
    pid = server.pid
    server.stop()
    with pytest.raises(MasterGone, match=f"process {pid} is not running"):
        collect(pid, members)


def test_tampered_stats_directory_gives_a_readable_report(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(CONF.format(interval=0), workers=2)
    report = with_stats(server, 2)
    assert report.stats_dir is not None
    d = Path(report.stats_dir)
    worker = report.workers[0]
    name = f"{worker.pid}-{worker.memory.start}.json"
    decoy = tmp_path / "decoy.json"
    decoy.write_text(json.dumps({**json.loads((d / name).read_text()), "requests": 999_999}))
    # Replace the worker's own record by a symlink to the decoy, then plant others.
    # The worker republishes every 2 s; stop it so the tampering stays in place.
    with stopped([worker.pid]):
        (d / name).unlink()
        (d / name).symlink_to(decoy)
        (d / "1-1.json").write_text("{broken")
        (d / "2-2.json").write_text("x" * (MAX_RECORD_BYTES * 4))
        other = d / "3-3.json"
        other.write_text("{}")
        os.chown(other, 65534, 65534)
        tampered = collect(server.pid, members)
        table = TableRenderer()(tampered)
    row = next(r for r in tampered.rows if r.pid == worker.pid)
    assert row.stats is None  # the symlinked record was not followed
    assert "999999" not in table and "999999" not in JSONRenderer()(tampered)
    notes = "\n".join(tampered.notes)
    assert "symlink, not followed" in notes and "not valid JSON" in notes
    assert "byte bound" in notes and "owned by uid 65534" in notes
    assert "copy-on-write saves" in table and "note: ignored" in table
    # A stats directory replaced by a symlink is refused as a whole.
    moved = tmp_path / "moved"
    os.rename(d, moved)
    os.symlink(moved, d)
    refused = collect(server.pid, members)
    assert all(r.stats is None for r in refused.rows)
    assert any("symlink" in n for n in refused.notes), refused.notes
    os.unlink(d)
    os.rename(moved, d)


# A worker that has a child of its own: the tree the old guess ("has children")
# took for gunicorn's dirty arbiter and its dirty workers.
WORKER_WITH_A_CHILD = """
import subprocess
def post_fork(server, worker):
    subprocess.Popen(["sleep", "120"])
import gcfork; gcfork.install(globals(), report_interval=0)
preload_app = True
"""


def test_roles_come_from_records_never_from_guesses(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(WORKER_WITH_A_CHILD, workers=2)
    wait_for(lambda: len(psutil.Process(server.pid).children(recursive=True)) == 4,
             what="each worker's child")
    report = with_stats(server, 2)
    roles = sorted(r.role for r in report.rows)
    assert roles == ["child", "child", "master", "worker", "worker"], roles
    # No record at all (an empty stats directory): no process says it is the
    # dirty arbiter, so none is guessed; direct children are workers.
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    blind = collect(server.pid, members, str(empty))
    assert sorted(r.role for r in blind.rows) == roles
    assert any("has published no record yet" in n for n in blind.notes)
    # The dirty arbiter is the child whose own record says so, and only that one.
    named, other = report.workers
    assert named.stats is not None and other.stats is not None
    records = {named.pid: named.stats._replace(role="dirty-arbiter"), other.pid: other.stats}
    roles = {m.pid: m.role for m in members(server.pid, records)}
    assert roles[named.pid] == "dirty-arbiter" and roles[other.pid] == "worker"
    grandchildren = {c.pid: c.ppid() for c in psutil.Process(server.pid).children(True)
                     if c.ppid() != server.pid}
    assert sorted(roles[pid] for pid in grandchildren) == ["child", "dirty-worker"]
    # A record cannot make a grandchild a worker or a worker the master.
    liar = records[named.pid]._replace(role="master")
    roles = {m.pid: m.role for m in members(server.pid, {named.pid: liar,
                                                          **{p: liar for p in grandchildren}})}
    assert roles[named.pid] == "worker" and roles[server.pid] == "master"
    assert sorted(roles[pid] for pid in grandchildren) == ["child", "child"]


def test_figures_from_a_bad_record_never_crash_a_renderer(start_server: StartServer) -> None:
    server = start_server(CONF.format(interval=0), workers=1)
    report = with_stats(server, 1)
    row = report.workers[0]
    assert row.stats is not None
    inf, nan = float("inf"), float("nan")
    bad_stats = row.stats._replace(
        started=inf, written=nan, requests=10**5000,
        generations=(GenStats(10**5000, 1, 0, inf, inf), *row.stats.generations[1:]),
    )
    # Only the record is another process's writing; the memory row is the kernel's.
    bad_row = dataclasses.replace(row, stats=bad_stats)
    bad = dataclasses.replace(report, rows=(report.rows[0], bad_row), taken=report.taken)
    table = TableRenderer()(bad)
    assert "inf" not in table.lower() and "nan" not in table.lower()
    assert LogLineRenderer()(bad).startswith("gcfork: memory: 1 worker, ")

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    document = json.loads(JSONRenderer()(bad), parse_constant=refuse)
    schema = json.loads(files("gcfork").joinpath("report.schema.json").read_text())
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
    worker = document["processes"][1]
    assert worker["requests"] is None and worker["gc"] is None
    line = worker_exit_line(bad_row.pid, bad_stats, inf, nan)
    assert f"worker {bad_row.pid} exited: age -, - requests, - private at exit" in line
    for value in (inf, -inf, nan, 1e300, 10**5000, -5.0):
        assert format_age(value) == "-"
    for value in (inf, nan, 10**400, 2.0**64):
        assert format_bytes(value) == "-"


def test_counts_agree_with_their_nouns() -> None:
    record = GCCollector().record("worker", 1)
    one = record._replace(generations=(GenStats(1, 3, 0, 0.001, 0.001),))
    assert ", 1 request, " in worker_exit_line(1, one, 5.0, 4 * 1024 * 1024)
    assert "1 GC collection, max pause 1.0 ms" in worker_exit_line(1, one, 5.0, None)
    two = one._replace(requests=2, generations=(GenStats(2, 3, 0, 0.001, 0.001),))
    assert ", 2 requests, " in worker_exit_line(1, two, 5.0, None)
    assert "2 GC collections" in worker_exit_line(1, two, 5.0, None)
    assert [plural(n, "worker") for n in (0, 1, 2)] == ["0 workers", "1 worker", "2 workers"]
    assert plural(1, "process", "processes") == "1 process"


def test_sampler_stop_waits_for_the_thread_and_sample_now_is_fresh() -> None:
    stats = StatsDir.create(None)
    logged: list[str] = []
    inside = threading.Event()
    calls = 0

    def slow_master_record() -> StatsRecord:
        # The thread is caught mid-iteration, between making the record and
        # publishing it, when the master stops it and removes the directory.
        nonlocal calls
        calls += 1
        if calls == 2:
            inside.set()
            time.sleep(0.5)
        return GCCollector().record("master", None)

    sampler = Sampler(os.getpid(), stats, members, slow_master_record, logged.append, 0,
                      tick=0.05)
    sampler.start()
    wait_for(inside.is_set, what="the sampler mid-iteration")
    assert sampler.stop(timeout=10) is True
    stats.destroy()
    assert not os.path.exists(stats.path)
    assert not [line for line in logged if "sampling failed" in line], logged

    # Past its timeout the thread still logs nothing once stopped.
    stats = StatsDir.create(None)
    calls = 0
    inside.clear()
    sampler = Sampler(os.getpid(), stats, members, slow_master_record, logged.append, 0,
                      tick=0.05)
    sampler.start()
    wait_for(inside.is_set, what="the sampler mid-iteration")
    assert sampler.stop(timeout=0.01) is False
    stats.destroy()
    wait_for(lambda: sampler.stop(timeout=0.1), what="the thread to end")
    assert not [line for line in logged if "sampling failed" in line], logged

    # sample_now measures in the calling thread, now, and keeps the result.
    before = time.time()
    report = sampler.sample_now()
    assert report.taken >= before and sampler.last is report
    assert report.template_pid == os.getpid() and report.rows[0].role == "master"


class _PaceWatcher:
    """A watcher that asks for no pace until told, and keeps every report."""

    def __init__(self) -> None:
        self.pace: float | None = None
        self.reports: list[Report] = []

    def every(self) -> float | None:
        return self.pace

    def __call__(self, report: Report) -> None:
        self.reports.append(report)


def test_a_watcher_reads_every_report_and_can_quicken_the_pace_under_way() -> None:
    stats = StatsDir.create(None)
    watcher = _PaceWatcher()
    sampler = Sampler(os.getpid(), stats, members, lambda: GCCollector().record("master", None),
                      lambda line: None, 0, tick=0.05, watcher=watcher)
    try:
        assert sampler.sample_every == 30.0
        sampler.start()
        wait_for(lambda: watcher.reports, what="the first report")  # after one tick
        time.sleep(0.5)
        assert len(watcher.reports) == 1  # the next is 30 s away
        # As max_worker_private set by a HUP: the 30 s wait already under way is cut short.
        watcher.pace = 0.1
        assert sampler.sample_every == 0.1
        wait_for(lambda: len(watcher.reports) >= 4, timeout=10, what="the quicker pace")
        assert all(r.template_pid == os.getpid() for r in watcher.reports)
    finally:
        assert sampler.stop(timeout=10)
        stats.destroy()
