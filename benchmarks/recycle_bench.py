"""max_requests against max_worker_private, on an app whose some requests leak.

Runs the test app (tests/apps/gcstate.py) under gunicorn with two sync
workers, preload and gcfork, twice over the same load: one request in
``--leak-every`` leaks 1 MiB (``/leak``), the others read the shared data
(``/reference``). Both variants hold a worker's private memory under the same
bound (``--bound-mib``):

- ``max_requests``: gunicorn restarts a worker after N requests; with no way
  to know which requests leak, N must assume they all do: bound minus the
  worker's USS at rest, in MiB (``--rest-mib``);
- ``max_worker_private``: gcfork recycles a worker whose USS stays above the
  bound (``recycle_min_age`` 1 s).

Prints, per variant: worker restarts, peak cluster PSS and peak worker USS
(sampled every 0.25 s from ``/proc/PID/smaps_rollup``), failed requests.
Requests are paced (``--rate``, 50 a second by default).

    .venv/bin/python benchmarks/recycle_bench.py --requests 1500
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gcfork.tools.server import GunicornProcess  # noqa: E402  (after the path)


def _rollup(pid: int) -> dict[str, int]:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            lines = f.read().splitlines()[1:]
    except OSError:  # exited meanwhile
        return {}
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines}


def run(variant: str, conf: str, requests: int, leak_every: int, rate: float,
        workdir: Path) -> dict[str, float]:
    config = workdir / f"{variant}.conf.py"
    config.write_text(conf)
    server = GunicornProcess("tests.apps.gcstate:app", config, workdir / f"{variant}.log",
                             cwd=REPO, env={"PYTHONPATH": str(REPO)})
    peaks = {"pss": 0, "uss": 0}
    seen: set[int] = set()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            pids = [server.pid, *server.worker_pids()]
            seen.update(pids[1:])
            rollups = [_rollup(pid) for pid in pids]
            peaks["pss"] = max(peaks["pss"], sum(r.get("Pss", 0) for r in rollups))
            peaks["uss"] = max([peaks["uss"]] + [r.get("Private_Clean", 0) + r.get(
                "Private_Dirty", 0) for r in rollups[1:]])

    with server:
        server.wait_ready(2, timeout=120)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        failed = 0
        start = time.monotonic()
        for i in range(requests):
            # Paced: the sampler reacts within about a second, so the leak's speed decides
            # the overshoot; unpaced, this load leaks ~40 MiB/s per worker.
            time.sleep(max(start + i / rate - time.monotonic(), 0.0))
            status, _ = server.get("/leak" if i % leak_every == 0 else "/reference", timeout=30)
            failed += status != 200
        done.set()
        sampler.join()
    return {"restarts": len(seen) - 2, "peak_pss_mib": peaks["pss"] / 2**20,
            "peak_worker_uss_mib": peaks["uss"] / 2**20, "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--leak-every", type=int, default=5)
    parser.add_argument("--bound-mib", type=int, default=60)
    parser.add_argument("--rest-mib", type=int, default=11)
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    args = parser.parse_args()
    head = "workers = 2\ncontrol_socket_disable = True\npreload_app = True\n"
    max_requests = args.bound_mib - args.rest_mib
    variants = {
        f"max_requests={max_requests}": head + "import gcfork; gcfork.install(globals())\n"
        f"max_requests = {max_requests}\n",
        f"max_worker_private={args.bound_mib}MiB": head + "import gcfork; gcfork.install("
        f"globals(), max_worker_private='{args.bound_mib}MiB', recycle_min_age=1)\n",
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, conf in variants.items():
            result = run(name.split("=")[0], conf, args.requests, args.leak_every, args.rate,
                         Path(tmp))
            print(f"{name}: {result['restarts']} restarts, peak cluster PSS "
                  f"{result['peak_pss_mib']:.1f} MiB, peak worker USS "
                  f"{result['peak_worker_uss_mib']:.1f} MiB, {result['failed']} failed requests",
                  flush=True)


if __name__ == "__main__":
    main()
