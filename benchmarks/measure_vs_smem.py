"""How long gcfork takes to measure a cluster, against smem on the same pids.

Not a test: run it by hand, ``python benchmarks/measure_vs_smem.py``.

A master holding some heap forks children that write to a part of it (as
workers do), so every process has shared and private pages. The master's
command line carries a random token: ``smem -P TOKEN`` selects exactly these
processes. Both tools measure RSS, PSS and USS of the same pids in the same
run; gcfork is timed in-process (what ``gcfork report`` and the master's
sampling thread pay), smem as the command a person runs. smem's time is also
shown without the start-up of its interpreter, as a lower bound, and the ratio
is given against both. Then gcfork's cost at 16, 32 and 64 processes, to show
it grows linearly.

smem is the Debian/Ubuntu package; ``benchmarks/setup_smem.sh`` installs it
with apt-get when it is missing.

Targets: at most 60 ms for 64 processes, at least 5x faster than smem.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from gcfork import memory

HERE = Path(__file__).resolve().parent

# The cluster: argv[1] is the process count, argv[2] the token smem filters on.
CLUSTER = """
import os, signal, sys
count, objects = int(sys.argv[1]), int(sys.argv[3])
heap = [{"id": i, "name": "item%d" % i, "tags": [i, str(i)]} for i in range(objects)]
children = []
for n in range(count - 1):
    pid = os.fork()
    if pid == 0:
        part = objects // 100
        for obj in heap[n * part:(n + 1) * part]:  # each child dirties its own part
            obj["seen"] = True
        print("ready", flush=True)
        signal.pause()
        os._exit(0)
    children.append(pid)
print("ready", flush=True)
signal.pause()
"""


def start_cluster(count: int, token: str, objects: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER, str(count), token, str(objects)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    for _ in range(count):
        proc.stdout.readline()
    return proc


def cluster_pids(proc: subprocess.Popen[str]) -> list[int]:
    return [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children())]


def stop_cluster(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def time_gcfork(pids: list[int], repeat: int,
                threads: int = 1) -> tuple[float, memory.ClusterTotals]:
    """Median seconds to measure every pid and add up the cluster."""
    times = []
    totals = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = [memory.RoleSample("worker", s) for s in memory.sample_many(pids, threads)]
        totals = memory.totals(rows)
        times.append(time.perf_counter() - t0)
    assert totals is not None
    return statistics.median(times), totals


def time_smem(pids: list[int], token: str, repeat: int) -> tuple[float, dict[int, int]]:
    """Median wall seconds of ``smem -P TOKEN``, and the PSS it gives by pid."""
    times = []
    pss: dict[int, int] = {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = subprocess.run(["smem", "-H", "-c", "pid pss", "-P", token],
                             capture_output=True, text=True, check=True).stdout
        times.append(time.perf_counter() - t0)
        pss = {int(p): int(k) * 1024 for p, k in (line.split() for line in out.splitlines())}
    # smem's own command line holds the token too: keep the cluster's pids.
    pss = {pid: v for pid, v in pss.items() if pid in set(pids)}
    return statistics.median(times), pss


def interpreter_start(repeat: int) -> float:
    """Median seconds for smem's interpreter to start and exit doing nothing."""
    with open(shutil.which("smem") or "smem", "rb") as f:
        shebang = f.readline().decode().strip("#!\n ").split()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([*shebang, "-c", "import sys, os, re, pwd"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--objects", type=int, default=200_000,
                        help="dicts in the master's heap (200000: about 90 MiB RSS a process)")
    args = parser.parse_args()
    if shutil.which("smem") is None:
        subprocess.run(["sh", str(HERE / "setup_smem.sh")], check=True)

    threads = min(os.cpu_count() or 1, 4)
    print(f"gcfork measurement cost (psutil {psutil.__version__}, {os.cpu_count()} CPUs, "
          f"{args.objects} objects in the heap, median of {args.repeat})")
    for count in (16, 32, 64):
        token = f"gcfork-bench-{secrets.token_hex(4)}"
        proc = start_cluster(count, token, args.objects)
        try:
            pids = cluster_pids(proc)
            assert len(pids) == count, pids
            one, totals = time_gcfork(pids, args.repeat)
            seconds, _ = time_gcfork(pids, args.repeat, threads)
            line = (f"  {count:3d} processes: gcfork {one * 1000:6.1f} ms in 1 thread "
                    f"({one * 1e6 / count:.0f} us/process), {seconds * 1000:6.1f} ms in "
                    f"{threads} (as `gcfork report`); sum RSS "
                    f"{totals.sum_rss / 2**20:.0f} MiB, sum PSS {(totals.sum_pss or 0) / 2**20:.0f}"
                    f" MiB")
            if count == 64:
                smem_s, smem_pss = time_smem(pids, token, args.repeat)
                start_s = interpreter_start(args.repeat)
                assert set(smem_pss) == set(pids), sorted(set(pids) - set(smem_pss))
                print(line)
                print(f"  {count:3d} processes: smem   {smem_s * 1000:6.1f} ms "
                      f"(of which {start_s * 1000:.0f} ms starting its interpreter)")
                print(f"  smem / gcfork: {smem_s / seconds:.1f}x; without smem's start-up: "
                      f"{(smem_s - start_s) / seconds:.1f}x; against gcfork in 1 thread: "
                      f"{smem_s / one:.1f}x")
                print(f"  sum PSS: gcfork {(totals.sum_pss or 0) / 2**20:.1f} MiB, "
                      f"smem {sum(smem_pss.values()) / 2**20:.1f} MiB")
                met = seconds <= 0.060 and (smem_s - start_s) / seconds >= 5
                target = "met" if met else "MISSED"
                print(f"  target (<= 60 ms for 64 processes, >= 5x smem): {target}")
            else:
                print(line)
        finally:
            stop_cluster(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
