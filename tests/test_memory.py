"""gcfork.memory against real processes and the kernel's own figures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from gcfork import memory, procfs
from gcfork.memory import EXITED, NO_PSS, MemorySample, RoleSample
from tests.conftest import smaps_rollup, wait_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def near(a: float, b: float, rel: float = 0.01) -> bool:
    return abs(a - b) <= rel * max(abs(b), 1)


def test_sample_of_a_live_process_matches_smaps_rollup() -> None:
    heap = [bytearray(4096) for _ in range(5000)]  # 20 MB of private pages
    direct = smaps_rollup(os.getpid())
    s = memory.sample(os.getpid())
    assert s.problem is None and heap
    assert s.start == memory.process_start(os.getpid())
    assert near(s.rss or 0, direct["Rss"])
    assert near(s.pss or 0, direct["Pss"])
    assert near(s.uss or 0, direct["Private_Clean"] + direct["Private_Dirty"])
    assert s.shared == (s.rss or 0) - (s.uss or 0)
    assert s.shared_percent is not None and 0 <= s.shared_percent <= 100


def test_exited_and_zombie_processes_get_a_mark_not_an_exception() -> None:
    reaped = subprocess.Popen(SLEEPER)
    reaped.kill()
    reaped.wait()
    zombie = subprocess.Popen(SLEEPER)
    zombie.send_signal(signal.SIGKILL)
    try:
        # Not reaped: /proc/PID stays, with no memory left.
        wait_for(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE,
                 what="a zombie")
        for pid in (reaped.pid, zombie.pid):
            s = memory.sample(pid)
            assert s.problem == EXITED, s
            assert s.rss is None and s.pss is None and s.shared is None
    finally:
        zombie.wait()
    assert memory.process_start(reaped.pid) is None


def test_access_denied_is_a_mark() -> None:
    # Real: another user's process may not be read (smaps_rollup needs ptrace
    # read access). Under root the check runs in a child that dropped to nobody.
    code = (
        "import os, sys\n"
        "from gcfork import memory\n"
        "if os.getuid() == 0:\n"
        "    os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "s = memory.sample(int(sys.argv[1]))\n"
        "t = memory.totals([memory.RoleSample('master', s)])\n"
        "print(s.problem, s.rss, t.processes, t.unmeasured, t.sum_pss)\n"
    )
    sleeper = subprocess.Popen(SLEEPER)
    try:
        done = subprocess.run([sys.executable, "-c", code, str(sleeper.pid)],
                              capture_output=True, text=True, timeout=30, cwd="/")
    finally:
        sleeper.kill()
        sleeper.wait()
    if os.getuid() != 0 and done.stdout.split()[:1] != [memory.DENIED.split()[0]]:
        pytest.skip("not root, and this user may read its own sleeper")
    assert done.stdout.split() == ["access", "denied", "None", "0", "1", "None"], done


def test_platform_without_pss_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fake: a kernel without smaps (CONFIG_PROC_PAGE_MONITOR off) cannot be had here.
    monkeypatch.setattr(procfs, "HAS_PSS", False)
    s = memory.sample(os.getpid())
    assert s.problem == NO_PSS and s.rss and s.pss is None and s.uss is None
    t = memory.totals([RoleSample("master", s), RoleSample("worker", s)])
    assert t.sum_rss == 2 * s.rss
    assert t.sum_pss is None and t.savings is None and t.savings_percent is None


def test_procfs_agrees_with_psutil() -> None:
    # psutil (a test dependency) reads the same files its own way: a second opinion.
    proc = psutil.Process()
    ours, theirs = procfs.memory(proc.pid), proc.memory_full_info()
    assert near(ours.rss, theirs.rss, 0.05) and near(ours.uss or 0, theirs.uss, 0.05)
    assert near(ours.pss or 0, theirs.pss, 0.05) and ours.swap == theirs.swap
    assert procfs.create_time(proc.pid) == pytest.approx(proc.create_time(), abs=0.011)
    assert procfs.boot_time() == pytest.approx(psutil.boot_time(), abs=1)
    family = [subprocess.Popen(SLEEPER) for _ in range(2)]
    try:
        expected = {p.pid: p.ppid() for p in proc.children(recursive=True)}
        assert procfs.descendants(proc.pid) == expected
        assert set(expected) >= {p.pid for p in family}
    finally:
        for child in family:
            child.kill()
            child.wait()
    with pytest.raises(ProcessLookupError):
        procfs.memory(family[0].pid)


def _sample(pid: int, rss: int, pss: int, uss: int, problem: str | None = None) -> MemorySample:
    return MemorySample(pid, 1, 0.0, rss, pss, uss, 0, problem)


def test_totals_formulas() -> None:
    mib = 1 << 20
    rows = [
        RoleSample("master", _sample(1, 100 * mib, 40 * mib, 10 * mib)),
        RoleSample("worker", _sample(2, 100 * mib, 30 * mib, 20 * mib)),
        RoleSample("worker", _sample(3, 100 * mib, 30 * mib, 40 * mib)),
        RoleSample("worker", MemorySample(4, None, None, None, None, None, None, EXITED)),
    ]
    t = memory.totals(rows)
    assert (t.processes, t.unmeasured, t.workers) == (3, 1, 2)
    assert t.sum_rss == 300 * mib and t.sum_pss == 100 * mib and t.sum_uss == 70 * mib
    assert t.savings == 200 * mib
    assert t.savings_percent == pytest.approx(200 / 3)
    assert t.mean_worker_uss == 30 * mib
    assert t.mean_worker_shared_percent == pytest.approx((80 + 60) / 2)


def test_sample_many_in_threads_keeps_the_order_and_marks_the_gone() -> None:
    sleepers = [subprocess.Popen(SLEEPER) for _ in range(5)]
    gone = subprocess.Popen(SLEEPER)
    gone.kill()
    gone.wait()
    try:
        pids = [os.getpid(), *(p.pid for p in sleepers[:2]), gone.pid,
                *(p.pid for p in sleepers[2:])]
        for threads in (1, 2, 3, 16):
            rows = memory.sample_many(pids, threads)
            assert [r.pid for r in rows] == pids
            assert rows[3].problem == EXITED and rows[3].rss is None
            for r in rows[:3] + rows[4:]:
                assert r.problem is None and r.rss and r.pss and r.uss
                assert r.start == memory.process_start(r.pid)
                # From the start ticks and one boot time: what psutil's create_time() says.
                assert r.started == pytest.approx(psutil.Process(r.pid).create_time(), abs=0.011)
        assert memory.sample_many([], 4) == []
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
