"""Fleet exports against real gunicorn clusters: /metrics, the textfile, statsd."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gcfork.config import resolve
from gcfork.exceptions import ConfigError
from gcfork.fleet import series
from gcfork.memory import ClusterTotals, MemorySample
from gcfork.report import ProcessRow, Report
from gcfork.tools.server import GunicornProcess
from tests.conftest import StartServer, smaps_rollup, stopped, wait_for
from tests.test_fork import _run_pool

CONF = """
import gcfork; gcfork.install(globals(), report_interval=0.5, {settings})
preload_app = True
"""
URL = re.compile(r"gcfork: metrics at (http://\S+/metrics)")

Scrape = dict[str, list[Sample]]


def scrape(url: str) -> Scrape:
    """Every sample of ``url``, by family name, parsed by prometheus_client."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def metrics_url(server: GunicornProcess) -> str:
    match: re.Match[str] = wait_for(lambda: URL.search(server.log()), what="the metrics line")
    return match.group(1)


def memory_of(families: Scrape, role: str, slot: int) -> dict[str, float]:
    return {s.labels["kind"]: s.value for s in families["gcfork_process_memory_bytes"]
            if s.labels["role"] == role and s.labels["slot"] == str(slot)}


def test_scraped_figures_match_smaps_rollup_within_2_percent(start_server: StartServer) -> None:
    server = start_server(CONF.format(settings="metrics_bind='127.0.0.1:0'"), workers=3)
    url = metrics_url(server)
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/metrics")

    def every_worker_published() -> Scrape | None:
        families = scrape(url)
        slots = {s.labels["slot"] for s in families.get("gcfork_gc_frozen_objects", [])
                 if s.labels["role"] == "worker"}
        return families if slots == {"0", "1", "2"} else None

    families = wait_for(every_worker_published, what="the three workers' series")
    info = families["gcfork_info"][0]
    assert info.name == "gcfork_info" and info.value == 1
    assert info.labels["mode"] == "freeze" and info.labels["python"].count(".") == 2
    assert families["gcfork_worker_recycles"] == []  # no recycling on this branch
    assert {s.labels["generation"] for s in families["gcfork_gc_collections"]} == {"0", "1", "2"}
    assert all(s.name == "gcfork_gc_collections_total" for s in families["gcfork_gc_collections"])

    # Workers stopped, then a sample taken after they were: their figures
    # cannot move between the sampler's read, the scrape and ours.
    workers = server.worker_pids()
    with stopped(workers):
        since = time.time()

        def fresh() -> Scrape | None:
            got = scrape(url)
            taken = got["gcfork_sample_timestamp_seconds"][0].value
            return got if taken > since + 0.1 else None

        before = {pid: smaps_rollup(pid) for pid in [server.pid, *workers]}
        families = wait_for(fresh, what="a sample of the stopped workers")
        after = {pid: smaps_rollup(pid) for pid in [server.pid, *workers]}
    seen = {}
    for pid in [server.pid, *workers]:
        role = "master" if pid == server.pid else "worker"
        candidates = [slot for slot in range(3) if memory_of(families, role, slot)]
        # The worker whose figures match this pid's: slots are not pids.
        direct = {"pss": [before[pid]["Pss"], after[pid]["Pss"]],
                  "uss": [before[pid]["Private_Clean"] + before[pid]["Private_Dirty"],
                          after[pid]["Private_Clean"] + after[pid]["Private_Dirty"]]}

        def close(slot: int, role: str = role, direct: dict[str, list[int]] = direct) -> bool:
            got = memory_of(families, role, slot)
            return all(min(d) * 0.98 <= got[k] <= max(d) * 1.02 for k, d in direct.items())

        matching = [slot for slot in candidates if close(slot) and (role, slot) not in seen]
        assert matching, (role, pid, direct, [memory_of(families, role, s) for s in candidates])
        seen[(role, matching[0])] = pid
    assert sorted(seen) == [("master", 0), ("worker", 0), ("worker", 1), ("worker", 2)]
    kinds = {s.labels["kind"]: s.value for s in families["gcfork_cluster_memory_bytes"]}
    saved = families["gcfork_cluster_cow_saved_bytes"][0].value
    assert saved == pytest.approx(kinds["rss"] - kinds["pss"])
    assert kinds["pss"] < kinds["rss"] and saved > 0


def test_a_respawned_worker_takes_its_slot(start_server: StartServer) -> None:
    server = start_server(CONF.format(settings="metrics_bind='127.0.0.1:0'"), workers=2)
    url = metrics_url(server)
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == 2,
             what="the replacement worker")
    since = time.time()

    def after_the_respawn() -> Scrape | None:
        got = scrape(url)
        taken = got.get("gcfork_sample_timestamp_seconds", [])
        return got if taken and taken[0].value > since else None

    families = wait_for(after_the_respawn, what="a sample after the respawn")
    slots = sorted(s.labels["slot"] for s in families["gcfork_process_memory_bytes"]
                   if s.labels["role"] == "worker" and s.labels["kind"] == "rss")
    assert slots == ["0", "1"]  # the new worker took slot 0 back: no third series


@pytest.mark.parametrize("how", ["install", "env"])
def test_a_remote_bind_is_refused_at_start_in_one_line(start_server: StartServer,
                                                       how: str) -> None:
    settings = "metrics_bind='0.0.0.0:0'" if how == "install" else ""
    env = {"GCFORK_METRICS_BIND": "0.0.0.0:0"} if how == "env" else None
    server = start_server(CONF.format(settings=settings), env=env, ready=False,
                          expect_errors=True)
    assert server.proc is not None
    assert server.proc.wait(timeout=60) != 0
    log = server.log()
    errors = [line for line in log.splitlines() if line.startswith("gcfork: error:")]
    assert len(errors) == 1, log
    assert "'metrics_bind'" in errors[0] and "0.0.0.0 is not a loopback address" in errors[0]
    assert "metrics_allow_remote" in errors[0]
    assert "Booting worker" not in log and "Traceback" not in log


def test_bind_settings_allowed_and_refused() -> None:
    assert resolve({"metrics_bind": "localhost:9464"}, {})["metrics_bind"].value == (
        "localhost:9464")
    assert resolve({"metrics_bind": "[::1]:0"}, {})["metrics_bind"].value == "[::1]:0"
    allowed = resolve({"metrics_bind": "0.0.0.0:9464", "metrics_allow_remote": True}, {})
    assert allowed["metrics_bind"].value == "0.0.0.0:9464"
    env = {"GCFORK_METRICS_BIND": "10.1.2.3:9464", "GCFORK_METRICS_ALLOW_REMOTE": "yes"}
    assert resolve({}, env)["metrics_bind"].value == "10.1.2.3:9464"
    for bad in ("9464", "127.0.0.1:99999", "::1:9464", "example.com:9464", ":9464", 9464):
        with pytest.raises(ConfigError) as refused:
            resolve({"metrics_bind": bad}, {})
        assert "\n" not in str(refused.value) and "metrics_bind" in str(refused.value)


def test_textfile_setting_is_checked_at_start(tmp_path: Path) -> None:
    good = str(tmp_path / "gcfork.prom")
    assert resolve({"metrics_textfile": good}, {})["metrics_textfile"].value == good
    for bad in ("gcfork.prom", str(tmp_path / "gcfork.txt"), str(tmp_path / "no" / "x.prom")):
        with pytest.raises(ConfigError, match="metrics_textfile"):
            resolve({"metrics_textfile": bad}, {})


def test_the_textfile_is_replaced_atomically(start_server: StartServer, tmp_path: Path) -> None:
    path = tmp_path / "gcfork.prom"
    server = start_server(CONF.format(settings=f"metrics_textfile={str(path)!r}")
                          .replace("0.5", "0.1"), workers=2)
    wait_for(path.exists, what="the textfile")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    seen: list[str] = []
    problems: list[str] = []
    done = threading.Event()

    def read_in_a_loop() -> None:
        while not done.is_set():
            text = path.read_text()
            try:
                names = {f.name for f in text_string_to_metric_families(text)}
            except Exception as exc:  # a torn file is what this looks for
                problems.append(f"{exc!r}: {text[-200:]!r}")
                continue
            if not {"gcfork_info", "gcfork_process_memory_bytes", "gcfork_cluster_memory_bytes",
                    "gcfork_gc_frozen_objects"} <= names:
                problems.append(f"families missing: {sorted(names)}")
            if not seen or seen[-1] != text:
                seen.append(text)

    reader = threading.Thread(target=read_in_a_loop)
    reader.start()
    try:
        wait_for(lambda: len(seen) >= 15, what="15 distinct samples read")
    finally:
        done.set()
        reader.join()
    assert problems == []
    # Nothing of the temporary files is left (they start with a dot, not *.prom).
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".prom")] == ["gcfork.prom"]
    server.stop()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gcfork.prom.")]


def test_statsd_gauges_go_out_under_gunicorns_prefix(start_server: StartServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(1.0)
        port = listener.getsockname()[1]
        conf = (CONF.format(settings="") +
                f"statsd_host = '127.0.0.1:{port}'\nstatsd_prefix = 'shop'\n")
        server = start_server(conf, workers=2)
        gauges: dict[str, float] = {}

        def received() -> bool:
            try:
                data = listener.recv(65536).decode()
            except socket.timeout:
                return False
            for packet in data.splitlines():
                name, _, rest = packet.partition(":")
                value, _, kind = rest.partition("|")
                if kind == "g" and name.startswith("shop.gcfork."):
                    gauges[name] = float(value)
            wanted = {"shop.gcfork.cluster.pss", "shop.gcfork.cluster.cow_saved",
                      "shop.gcfork.master.0.rss", "shop.gcfork.worker.0.uss",
                      "shop.gcfork.worker.1.pss", "shop.gcfork.worker.1.gc_frozen_objects"}
            return wanted <= set(gauges)

        wait_for(received, what="gcfork's gauges from statsd")
        server.stop()
    assert gauges["shop.gcfork.cluster.pss"] < gauges["shop.gcfork.cluster.rss"]
    assert gauges["shop.gcfork.worker.0.uss"] > 0


def test_a_server_without_metrics_never_imports_prometheus_client(
    start_server: StartServer,
) -> None:
    # statsd on too: its gauges need no prometheus_client.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        server = start_server(CONF.format(settings="") + f"statsd_host = '127.0.0.1:{port}'\n",
                              workers=1)
        wait_for(lambda: "gcfork: memory: 1 worker" in server.log(), what="a sampled report")
        status, body = server.get("/modules")
        server.stop()  # while statsd listens: a refused send is logged with a traceback
    assert status == 200
    loaded = [m for m in json.loads(body)["modules"] if m.startswith(("prometheus_client",
                                                                       "gcfork.prometheus"))]
    assert loaded == []


def test_an_address_in_use_is_logged_and_the_server_goes_on(start_server: StartServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_server(CONF.format(settings=f"metrics_bind='127.0.0.1:{port}'"),
                              workers=1, expect_errors=True)
        wait_for(lambda: "cannot serve metrics" in server.log(), what="the error line")
        assert server.get("/gc")[0] == 200
    errors = [line for line in server.log().splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0], errors


def test_a_hup_moves_the_endpoint_and_the_textfile(start_server: StartServer,
                                                  tmp_path: Path) -> None:
    first, second = tmp_path / "first.prom", tmp_path / "second.prom"
    server = start_server(CONF.format(settings="metrics_bind=None"), workers=1)
    config = Path(server.config)

    def reload(old: str, new: str) -> None:
        text = config.read_text()
        assert old in text
        config.write_text(text.replace(old, new))
        server.signal(signal.SIGHUP)

    # Nothing exported, then both, without a restart.
    reload("metrics_bind=None", f"metrics_bind='127.0.0.1:0', metrics_textfile={str(first)!r}")
    url = metrics_url(server)
    wait_for(lambda: "gcfork_process_memory_bytes" in scrape(url), what="a scrape")
    wait_for(first.exists, what="the first textfile")
    # The endpoint closed and the textfile moved: the first file is no longer written.
    reload(f"metrics_bind='127.0.0.1:0', metrics_textfile={str(first)!r}",
           f"metrics_bind=None, metrics_textfile={str(second)!r}")
    wait_for(second.exists, what="the second textfile")
    wait_for(lambda: "metrics endpoint 127.0.0.1:0 closed (reload)" in server.log(),
             what="the closing line")
    with pytest.raises(OSError):
        scrape(url)
    written = first.stat().st_mtime_ns
    time.sleep(1.5)  # three samples at report_interval=0.5
    assert first.stat().st_mtime_ns == written
    assert second.stat().st_mtime_ns > written
    assert server.get("/gc")[0] == 200


def test_a_multiprocessing_pool_template_writes_the_textfile(tmp_path: Path) -> None:
    path = tmp_path / "pool.prom"
    env = {"GCFORK_METRICS_TEXTFILE": str(path), "GCFORK_REPORT_INTERVAL": "0.1"}
    _, report, _, log = _run_pool("fork", env, tmp_path / "go")
    assert "ERROR" not in log, log
    families = {f.name: f.samples for f in text_string_to_metric_families(path.read_text())}
    roles = {(s.labels["role"], s.labels["slot"]) for s in families["gcfork_gc_frozen_objects"]}
    assert ("template", "0") in roles and ("worker", "0") in roles, roles
    assert report["master"]["pid"] > 0


def test_labels_stay_bounded_and_unique() -> None:
    # Master unslotted; workers 10 and 11 hold slot 0 during a HUP (the
    # younger is shown); 13 was sampled before gunicorn's table listed it, so
    # it has no slot yet and takes a free number, not slot 0 or 1.
    def row(role: str, pid: int) -> ProcessRow:
        return ProcessRow(role, MemorySample(pid, 1, float(pid), 1, 1, 1, 0), None)

    rows = (row("master", 1), row("worker", 10), row("worker", 11), row("worker", 12),
            row("worker", 13))
    report = Report(1, 1, 0.0, None, rows, ClusterTotals(5, 0, 4, 5, 5, 5, 1.0, 0.0))
    labels = [(s.role, s.slot, s.row.pid) for s in series(report, {10: 0, 11: 0, 12: 1}.get)]
    assert labels == [("master", 0, 1), ("worker", 0, 11), ("worker", 1, 12), ("worker", 2, 13)]
