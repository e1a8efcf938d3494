"""Render the dashboard's panels (examples/grafana/gcfork.json) from a real run.

``python -m benchmarks.fleet_panels --out docs/fleet-panels.png``: starts a
gunicorn cluster of the test app with ``metrics_bind`` and ``max_requests``
(so that workers are replaced under load), drives requests for ``--seconds``,
scrapes ``/metrics`` every second, parses each scrape with
``prometheus_client.parser`` and draws the dashboard's panels with
matplotlib. Grafana is not needed: the figures are the same series the
dashboard queries. ``--data PATH`` keeps the scrapes as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gcfork.tools.server import GunicornProcess

REPO = Path(__file__).resolve().parent.parent
CONF = """\
import gcfork; gcfork.install(globals(), report_interval=1, metrics_bind="127.0.0.1:0")
preload_app = True
workers = 3
max_requests = 400
max_requests_jitter = 100
control_socket_disable = True
"""


def scrape(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append({"labels": s.labels, "value": s.value})
    return out


def run(seconds: float) -> list[dict[str, Any]]:
    """Scrapes of a loaded cluster, one a second, each with its time."""
    tmp = Path(tempfile.mkdtemp(prefix="gcfork-fleet-"))
    (tmp / "gunicorn.conf.py").write_text(CONF)
    server = GunicornProcess("tests.apps.gcstate:app", tmp / "gunicorn.conf.py", tmp / "log",
                             cwd=REPO, env={"PYTHONPATH": str(REPO)})
    server.start()
    server.wait_ready(3, timeout=120)
    match = None
    while match is None:
        match = re.search(r"gcfork: metrics at (http://\S+/metrics)", server.log())
        time.sleep(0.2)
    url = match.group(1)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            server.get("/cycles?n=300")
            server.get("/reference")

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    scrapes = []
    start = time.time()
    try:
        while time.time() - start < seconds:
            scrapes.append({"t": time.time() - start, "metrics": scrape(url)})
            time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    return scrapes


def values(scrapes: list[dict[str, Any]], name: str,
           **labels: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for s in scrapes:
        for sample in s["metrics"].get(name, []):
            if all(sample["labels"].get(k) == v for k, v in labels.items()):
                xs.append(s["t"])
                ys.append(sample["value"])
    return xs, ys


def render(scrapes: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mib = 2**20
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    ax = axes[0][0]
    for kind, label in (("rss", "sum of RSS (what ps adds up)"), ("pss", "cluster PSS (real)")):
        xs, ys = values(scrapes, "gcfork_cluster_memory_bytes", kind=kind)
        ax.plot(xs, [y / mib for y in ys], label=label)
    ax.set_title("Cluster memory: PSS vs sum of RSS")
    ax.set_ylabel("MiB")
    ax.legend()
    ax = axes[0][1]
    xs, ys = values(scrapes, "gcfork_cluster_cow_saved_bytes")
    ax.plot(xs, [y / mib for y in ys], color="tab:green")
    ax.set_title("Saved by copy-on-write (gcfork_cluster_cow_saved_bytes)")
    ax.set_ylabel("MiB")
    ax = axes[1][0]
    for slot in ("0", "1", "2"):
        xs, ys = values(scrapes, "gcfork_process_memory_bytes", role="worker", slot=slot,
                        kind="uss")
        ax.plot(xs, [y / mib for y in ys], label=f"worker slot {slot}")
    ax.set_title("Private memory (USS) per worker slot; drops are respawns")
    ax.set_ylabel("MiB")
    ax.set_xlabel("seconds")
    ax.legend()
    ax = axes[1][1]
    for slot in ("0", "1", "2"):
        xs, ys = values(scrapes, "gcfork_gc_pause_seconds_max", role="worker", slot=slot)
        ax.plot(xs, [y * 1000 for y in ys], label=f"worker slot {slot}")
    ax.set_title("Longest GC pause per worker slot")
    ax.set_ylabel("ms")
    ax.set_xlabel("seconds")
    ax.legend()
    fig.suptitle("gcfork: 3 sync workers, max_requests=400, scraped every second "
                 "(recycles panel omitted: no recycling in this build)")
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/fleet-panels.png"))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    scrapes = run(args.seconds)
    if args.data is not None:
        args.data.write_text(json.dumps(scrapes))
    render(scrapes, args.out)
    print(f"{len(scrapes)} scrapes; {args.out}")


if __name__ == "__main__":
    main()
