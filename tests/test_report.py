"""The report against real gunicorn masters, checked against /proc read directly."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from gcfork import memory
from gcfork.report import (
    JSONRenderer,
    LogLineRenderer,
    MasterGone,
    Report,
    TableRenderer,
    collect,
)
from gcfork.server import GunicornProcess
from gcfork.stats import MAX_RECORD_BYTES, advertised
from tests.conftest import StartServer, wait_for
from tests.test_memory import smaps_rollup

CONF = """
import gcfork; gcfork.install(globals(), report_interval={interval})
preload_app = True
"""


def with_stats(server: GunicornProcess, workers: int) -> Report:
    """A report once ``workers`` workers have published their first record."""

    def ready() -> Report | None:
        report = collect(server.pid)
        published = [r for r in report.workers if r.stats is not None]
        return report if len(published) == workers == len(report.workers) else None

    report: Report = wait_for(ready, what=f"{workers} workers' records")
    return report


@contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """Freeze the processes so that their figures cannot move."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def within(value: int | float | None, low: float, high: float, rel: float = 0.01) -> bool:
    """``value`` within 1 % of the range of two direct reads."""
    return value is not None and low * (1 - rel) - 4096 <= value <= high * (1 + rel) + 4096


def test_every_figure_matches_smaps_rollup_within_1_percent(start_server: StartServer) -> None:
    server = start_server(CONF.format(interval=0.5), workers=4)
    for _ in range(12):
        server.get("/cycles?n=2000")
    with_stats(server, 4)
    wait_for(lambda: sum(r.requests or 0 for r in collect(server.pid).workers) == 12,
             what="the requests published")
    pids = [server.pid, *server.worker_pids()]
    with stopped(pids):
        before = {pid: smaps_rollup(pid) for pid in pids}
        report = collect(server.pid)
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
    assert report.master_gc_enabled is False
    assert all(r.stats and r.stats.gc_enabled and r.stats.freeze_count > 0
               for r in report.workers)
    assert sum(r.requests or 0 for r in report.workers) == 12
    assert sum(r.gc_collections or 0 for r in report.workers) > 0
    assert (t.savings_percent or 0) > 30 and (t.mean_worker_shared_percent or 0) > 50

    table = TableRenderer()(report)
    assert "copy-on-write saves" in table and "across 4 workers" in table
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
    start = report.master_start
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
    report = collect(server.pid)
    row = next(r for r in report.rows if r.pid == victim)
    assert row.memory.problem == memory.EXITED and row.memory.rss is None
    assert report.totals.unmeasured == 1 and report.totals.workers == 2
    table = TableRenderer()(report)
    assert "exited" in table and "(1 process not measured)" in table
    monkeypatch.undo()
    # Live churn: workers that keep exiting while being measured never break a report.
    for pid in server.worker_pids():
        os.kill(pid, signal.SIGKILL)
        TableRenderer()(collect(server.pid))


def test_unreadable_process_gets_a_mark(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server(CONF.format(interval=0), workers=2)
    denied = server.worker_pids()[0]
    real = psutil.Process.memory_full_info

    def refuse_one(self: psutil.Process) -> object:
        # Fake: as root every /proc file is readable, so the refusal is simulated.
        if self.pid == denied:
            raise psutil.AccessDenied(self.pid)
        return real(self)

    monkeypatch.setattr(psutil.Process, "memory_full_info", refuse_one)
    report = collect(server.pid)
    row = next(r for r in report.rows if r.pid == denied)
    assert row.memory.problem == memory.DENIED
    assert "access denied" in TableRenderer()(report)
    assert report.totals.unmeasured == 1


def test_master_gone(start_server: StartServer) -> None:
    server = start_server(CONF.format(interval=0), workers=1)
    pid = server.pid
    server.stop()
    with pytest.raises(MasterGone, match=f"master {pid} is not running"):
        collect(pid)


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
        tampered = collect(server.pid)
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
    refused = collect(server.pid)
    assert all(r.stats is None for r in refused.rows)
    assert any("symlink" in n for n in refused.notes)
    os.unlink(d)
    os.rename(moved, d)
