"""Run the shop example under load and print its memory-sharing report.

    python examples/celery_app/run.py [--tasks 3000] [--concurrency 4] [--mode off]

Starts a throw-away redis-server on a free loopback port (or uses
``SHOP_BROKER``), a ``celery worker`` with the prefork pool on ``shop.py``,
sends the task mix, then prints ``gcfork report`` of the worker's parent and
stops everything. ``--mode off`` runs plain Celery (gcfork still measures).
:func:`run` is what ``benchmarks/celery_bench.py`` calls per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"run.py: timed out waiting for {what}")


@contextmanager
def broker() -> Iterator[str]:
    """``SHOP_BROKER`` if set, else a redis-server of our own, no persistence."""
    if os.environ.get("SHOP_BROKER"):
        yield os.environ["SHOP_BROKER"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("run.py: redis-server not found (Debian: apt-get install -y "
                         "redis-server), or set SHOP_BROKER=redis://HOST:PORT/0")
    port = _free_port()
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--dir", workdir],
                                  stdout=subprocess.DEVNULL)

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False

        try:
            _wait(up, 30, "redis-server")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(timeout=30)


def _mix(count: int) -> list[tuple[str, list[Any]]]:
    """The task mix: 60 % baskets, 25 % category reports, 15 % tag searches."""
    rng = random.Random(5)
    tasks: list[tuple[str, list[Any]]] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.60:
            tasks.append(("shop.quote", [[rng.randrange(60_000) for _ in range(8)]]))
        elif roll < 0.85:
            tasks.append(("shop.category_report", [f"category-{rng.randrange(40)}"]))
        else:
            tasks.append(("shop.tag_search", [f"tag-{rng.randrange(300)}"]))
    return tasks


def _report(pid: int, as_json: bool) -> str:
    args = [sys.executable, "-m", "gcfork", "report", "--pid", str(pid)]
    done = subprocess.run(args + (["--json"] if as_json else []), capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"run.py: gcfork report failed: {done.stderr.strip()}")
    return done.stdout


def run(url: str, mode: str, tasks: int, concurrency: int, python: str = sys.executable,
        log: Path | None = None) -> dict[str, Any]:
    """One worker with ``mode``, ``tasks`` tasks through it; the figures, the
    report's table and JSON, and the worker's log."""
    from celery import Celery

    workdir = Path(tempfile.mkdtemp(prefix="shop-"))
    log = log or workdir / "worker.log"
    env = {**os.environ, "SHOP_BROKER": url, "GCFORK_MODE": mode,
           "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)])}
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [python, "-m", "celery", "-A", "shop", "worker", "--pool", "prefork",
             "-c", str(concurrency), "--loglevel", "INFO", "--without-gossip",
             "--without-mingle", "--without-heartbeat", "-n", f"shop-{mode}-{os.getpid()}@%h"],
            cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: "ready." in log.read_text(errors="replace") or worker.poll() is not None,
              180, "the Celery worker")
        if worker.poll() is not None:
            raise SystemExit(f"run.py: the worker exited:\n{log.read_text()[-3000:]}")
        client = Celery(broker=url, backend=url)
        started = time.perf_counter()
        batch = 400  # in flight at once: enough to keep every child busy
        mix = _mix(tasks)
        for i in range(0, len(mix), batch):
            results = [client.send_task(name, args=args) for name, args in mix[i:i + batch]]
            for result in results:
                result.get(timeout=300)
        seconds = time.perf_counter() - started
        client.close()
        time.sleep(2.5)  # every child publishes its record every 2 s
        report = json.loads(_report(worker.pid, True))
        table = _report(worker.pid, False)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    totals = report["totals"]
    return {"mode": mode, "tasks": tasks, "concurrency": concurrency, "seconds": seconds,
            "tasks_per_second": tasks / seconds, "sum_pss": totals["sum_pss"],
            "sum_rss": totals["sum_rss"], "mean_worker_uss": totals["mean_worker_uss"],
            "savings_percent": totals["savings_percent"], "table": table, "report": report,
            "log": str(log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--mode", choices=("freeze", "disable", "off"), default="freeze")
    args = parser.parse_args()
    with broker() as url:
        result = run(url, args.mode, args.tasks, args.concurrency)
    print(result["table"])
    print(f"{args.tasks} tasks in {result['seconds']:.1f}s "
          f"({result['tasks_per_second']:.0f}/s); worker log: {result['log']}")


if __name__ == "__main__":
    main()
