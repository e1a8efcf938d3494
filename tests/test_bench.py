"""``gcfork bench`` end to end on the small test app: real gunicorn servers,
real load, real measurements; and nothing left running afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import psutil
import pytest

from tests.conftest import REPO, like_a_terminal, wait_for

SCHEMA = json.loads((REPO / "gcfork" / "bench.schema.json").read_text())


_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_bench_outlives_its_test() -> Iterator[None]:
    """Kill any benchmark a failed test left running; its servers follow it
    (PR_SET_PDEATHSIG)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def bench(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    config = tmp_path / "gunicorn.conf.py"
    config.write_text("import gcfork; gcfork.install(globals())\npreload_app = True\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcfork", "bench", "--config", str(config), "--chdir", str(REPO),
         "--workers", "2", "--idle", "0", "--out", str(tmp_path / "out"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=like_a_terminal,
    )
    _STARTED.append(proc)
    return proc


def servers_of(tmp_path: Path) -> list[psutil.Process]:
    """Processes still running a config generated under ``tmp_path``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(tmp_path) in part for part in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def test_two_variants_side_by_side_with_json_and_chart(tmp_path: Path) -> None:
    proc = bench(tmp_path, "--app", "tests.apps.gcstate:app", "--checkpoints", "20,60",
                 "--path", "/gc", "--path", "/cycles?n=200", "--explain",
                 "--attribute-every", "2")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    for variant in ("off", "gcfork"):  # each variant's per-path table (attribute_every)
        assert f"gcfork explain --by-path: variant {variant!r} after the load" in out
    assert "Memory-sharing report of 'gcfork'" in out
    assert "copy-on-write saves" in out
    table = out[out.index("after 60 requests"):]
    header = table.splitlines()[0].split()
    assert header[-2:] == ["off", "gcfork"]
    for row in ("cluster PSS", "mean worker USS", "requests/s", "latency p99", "GC max pause"):
        assert row in table
    assert "x)" in table  # ratios to the baseline
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    jsonschema.validate(results, SCHEMA)
    assert [r["variant"] for r in results["runs"]] == ["off", "gcfork"]
    for run in results["runs"]:
        assert [c["requests"] for c in run["checkpoints"]] == [0, 20, 60, None]
        assert run["errors"] == 0 and run["requests_per_second"] > 0
        assert "Private memory by mapping" in run["explain"], run["explain"]
        assert run["by_path"]["every"] == 2 and run["by_path_table"], run["by_path"]
        assert {p["path"] for p in run["by_path"]["paths"]} <= {"/gc", "/cycles"}
        final = run["checkpoints"][-2]["measured"]
        assert final["workers"] == 2 and final["cluster_pss"] > 0
    # The same app ran under both variants: GC on in the baseline's master,
    # off and frozen in gcfork's.
    off, on = ({p["role"]: p for p in r["report"]["processes"]} for r in results["runs"])
    assert off["master"]["gc"]["enabled"] is True and off["master"]["gc"]["freeze_count"] == 0
    assert on["master"]["gc"]["enabled"] is False and on["master"]["gc"]["freeze_count"] > 0
    chart = tmp_path / "out" / "chart.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not servers_of(tmp_path)


def test_yardsticks_without_gcfork_run_the_apps_own_config(tmp_path: Path) -> None:
    # plain: the server as it is without gcfork; recipe: the hand-written
    # recipe. gcfork must not be imported by either server.
    proc = bench(tmp_path, "--app", "tests.apps.gcstate:app", "--checkpoints", "20",
                 "--path", "/gc", "--variants", "plain,recipe")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    for run in results["runs"]:
        final = run["checkpoints"][-2]["measured"]
        assert final["workers"] == 2 and final["cluster_pss"] > 0
        # Measured from outside: no process published gcfork's statistics.
        assert all(p["gc"] is None for p in run["report"]["processes"])
        assert run["by_path"] is None and run["by_path_table"] == ""
    for variant in ("plain", "recipe"):
        log = (tmp_path / "out" / f"{variant}-0" / "gunicorn.log").read_text()
        assert "gcfork" not in log.replace(str(tmp_path), ""), log


def test_an_app_that_fails_to_boot_is_named_and_nothing_is_left(tmp_path: Path) -> None:
    proc = bench(tmp_path, "--app", "tests.apps.no_such_module:app", "--path", "/",
                 "--checkpoints", "10")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1
    assert "did not boot under variant 'off'" in err
    assert "no_such_module" in err
    assert "Traceback (most recent call last)" not in err.split("gunicorn exited")[0]
    assert not servers_of(tmp_path)


def test_worker_class_and_warmup_paths_apart_from_a_mix_with_a_404(tmp_path: Path) -> None:
    # The mix holds a deliberate 404: warming up with the mix would stop the
    # warm-up variant, so it gets its own paths. Served by uvicorn's worker.
    pytest.importorskip("uvicorn_worker")
    proc = bench(tmp_path, "--app", "tests.apps.gcstate_asgi:app", "--checkpoints", "30",
                 "--path", "/gc", "--path", "/nowhere", "--warmup-path", "/reference",
                 "--worker-class", "uvicorn_worker.UvicornWorker", "--variants", "off,warmup")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    jsonschema.validate(results, SCHEMA)
    assert results["settings"]["worker_class"] == "uvicorn_worker.UvicornWorker"
    assert results["settings"]["warmup_paths"] == ["/reference"]
    log = (tmp_path / "out" / "warmup-0" / "gunicorn.log").read_text()
    assert "gcfork: warm-up in the master: 1 requests" in log
    assert "uvicorn_worker.UvicornWorker" in log
    workers = [p for p in results["runs"][1]["report"]["processes"] if p["role"] == "worker"]
    # uvicorn's worker keeps no request count; gcfork's counts every request.
    assert sum(w["requests"] for w in workers) >= 30, workers


def test_a_variant_that_fails_keeps_the_results_of_those_before(tmp_path: Path) -> None:
    proc = bench(tmp_path, "--app", "tests.apps.gcstate:app", "--checkpoints", "20",
                 "--path", "/gc", "--warmup-path", "/nowhere", "--variants", "off,warmup")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "did not boot under variant 'warmup'" in err
    assert "the results above are of the variants that finished" in err.lower()
    assert "Memory-sharing report of 'off'" in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    jsonschema.validate(results, SCHEMA)
    assert [r["variant"] for r in results["runs"]] == ["off"]
    assert list(results["summary"]) == ["off"] and "warmup" in results["failed"]
    assert not servers_of(tmp_path)


def test_usage_errors_exit_2_and_say_what_to_do(tmp_path: Path) -> None:
    proc = bench(tmp_path, "--app", "tests.apps.gcstate:app", "--path", "/gc",
                 "--variants", "off,fast")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "--variants 'off,fast'" in err and "snippet" in err
    proc = bench(tmp_path, "--app", "tests.apps.gcstate:app", "--path", "gc",
                 "--checkpoints", "10")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "starting with '/'" in err
    proc = bench(tmp_path, "--app", "tests.apps.gcstate:app", "--path", "/gc",
                 "--python", "no/such/python")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--python no/such/python: no such interpreter" in err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_or_killed_bench_leaves_no_server(tmp_path: Path, signum: int) -> None:
    proc = bench(tmp_path, "--app", "tests.apps.gcstate:app", "--path", "/gc?sleep=0.05",
                 "--checkpoints", "100000", "--concurrency", "2")
    deadline = time.monotonic() + 60
    while not any("gunicorn" in " ".join(p.info["cmdline"] or ()) for p in servers_of(tmp_path)):
        assert time.monotonic() < deadline, "the benchmark never started a server"
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    if signum == signal.SIGKILL:
        # No clean-up code runs: the servers go because Linux tells them their
        # parent died (PR_SET_PDEATHSIG), and shut down gracefully.
        wait_for(lambda: not servers_of(tmp_path), timeout=40, what="orphaned servers to stop")
    else:
        assert proc.returncode == 130, err
        assert "interrupted; every server it started is stopped" in err
        assert not servers_of(tmp_path)


def test_another_interpreter_imports_this_checkouts_gcfork() -> None:
    # It pointed at gcfork/ itself since the tools moved under gcfork/tools/,
    # so --python from a checkout failed with "No module named 'gcfork'".
    from gcfork.tools.bench.workload import checkout_pythonpath, examples_dir

    root = checkout_pythonpath()["PYTHONPATH"].split(os.pathsep)[0]
    assert Path(root) == REPO
    assert examples_dir() == REPO / "examples"
