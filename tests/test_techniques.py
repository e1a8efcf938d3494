"""The settings of "Beyond freeze" (warmup, immortalize, fast_exit) and
``gcfork explain``, against real gunicorn masters and forked sync workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, StartServer, gunicorn_interpreter, uss, wait_for, worker_states
from tests.test_gunicorn import conf


def stopped(server: object) -> tuple[int, str]:
    """Wait for a master expected to stop on its own; its status and log."""
    proc = server.proc  # type: ignore[attr-defined]
    assert proc is not None
    return proc.wait(timeout=30), server.log()  # type: ignore[attr-defined]


# -- warmup -------------------------------------------------------------------


def test_warmup_runs_in_the_master_before_the_first_fork(start_server: StartServer) -> None:
    server = start_server(conf("warmup=['/gc', '/cycles?n=10']"), workers=1)
    log = server.log()
    line = next(x for x in log.splitlines() if "gcfork: warm-up in the master" in x)
    assert "2 requests in" in line and "closed: nothing" in line, line
    assert log.index("warm-up in the master") < log.index("Booting worker")
    assert "warmup=2 paths" in log
    assert worker_states(server, 1)


def test_the_master_frees_the_cycles_its_warmup_made(start_server: StartServer) -> None:
    # The master's collector is off: without a collection after the warm-up,
    # every cycle its requests made would be frozen into every worker's heap.
    server = start_server(conf("warmup=['/cycles?n=500&counted=1', '/gc']"), workers=1)
    (state,) = worker_states(server, 1).values()
    assert state["counted_cycles_alive"] == 0, state
    line = next(x for x in server.log().splitlines() if "gcfork: warm-up in the master" in x)
    freed = int(re.search(r"freed ([\d,]+) objects", line).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert freed >= 500, line
    # The cycles a worker makes are its own collector's business.
    status, body = server.get("/cycles?n=300&counted=1")
    assert status == 200 and json.loads(body)["counted_cycles_alive"] == 300


@pytest.mark.parametrize("mode", ["freeze", "off"])
def test_a_worker_gives_the_heap_pages_it_freed_back(start_server: StartServer,
                                                      mode: str) -> None:
    # What a worker frees in the middle of C malloc's heap stays resident (and
    # private) until malloc_trim; its gcfork thread calls it every 2 s, unless
    # gcfork is off (the baseline changes nothing).
    server = start_server(conf(f"mode={mode!r}"), workers=1)
    status, body = server.get("/heap-hole?mib=16")
    assert status == 200
    hole = json.loads(body)
    pid, after_free = hole["pid"], hole["uss_after_free"]

    def released() -> bool:
        return uss(pid) < after_free - 12 * 2**20

    if mode == "off":
        time.sleep(5)  # two and a half records
        assert not released(), (uss(pid) - after_free) / 2**20
    else:
        wait_for(released, timeout=6, what="the 16 MiB given back")


@pytest.mark.parametrize(("settings", "env"), [
    ("warmup=['/gc', '/missing']", {}),
    ("", {"GCFORK_WARMUP": "/gc,/missing"}),
])
def test_a_failing_warmup_path_stops_gunicorn_before_any_fork(
    start_server: StartServer, settings: str, env: dict[str, str]
) -> None:
    server = start_server(conf(settings), env=env, ready=False)
    status, log = stopped(server)
    assert status == 1, log
    errors = [line for line in log.splitlines() if "/missing" in line]
    assert errors == [
        "Error: gcfork: warm-up request GET /missing answered '404 Not Found'; warm-up paths "
        "must answer 2xx or 3xx"
    ], log
    assert "Booting worker" not in log and "Traceback" not in log


def test_warmup_without_preload_is_skipped_with_a_warning(start_server: StartServer) -> None:
    server = start_server(conf("warmup=['/missing']", preload=False), workers=1)
    assert "warm-up skipped: it needs preload_app = True" in server.log()
    assert worker_states(server, 1)


def test_mode_off_ignores_the_beyond_freeze_settings(start_server: StartServer) -> None:
    server = start_server(conf("warmup=['/missing'], fast_exit=True"), workers=1,
                          env={"GCFORK_MODE": "off"})
    assert "gcfork: mode=off: warmup, fast_exit ignored" in server.log()


# -- immortalize ----------------------------------------------------------------


def reader_uss_growth(start_server: StartServer, python: str, settings: str) -> int:
    """How much a worker's USS grows when it reads every record of REFERENCE."""
    server = start_server(conf(settings), python=python, workers=1)
    (pid,) = server.worker_pids()
    server.get("/gc")  # the first request's own allocations, out of the figure
    before = uss(pid)
    status, body = server.get("/reference")
    assert status == 200 and json.loads(body)["records"] == 20_000
    growth = uss(pid) - before
    server.stop()
    assert "hook failed" not in server.log(), server.log()
    return growth


@pytest.mark.parametrize("minor", ["3.12", "3.13", "3.14", "3.15"])
def test_immortal_heap_keeps_a_reading_worker_shared(
    start_server: StartServer, minor: str
) -> None:
    python = gunicorn_interpreter(minor)
    frozen = reader_uss_growth(start_server, python, "")
    immortal = reader_uss_growth(start_server, python, "immortalize=True")
    # 20,000 records of a dict, a list and strings: several MiB of pages that
    # reading copies when only frozen.
    assert frozen > 3 * 2**20, (frozen, immortal)
    assert immortal < frozen / 5, (frozen, immortal)


def test_immortalize_logs_once_and_respawned_workers_serve(start_server: StartServer) -> None:
    server = start_server(conf("immortalize=True"), python=gunicorn_interpreter("3.12"), workers=2)
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == 2,
             what="a replacement worker")
    assert all(s["enabled"] for s in worker_states(server, 2).values())
    log = server.log()
    assert log.count("objects of the master immortal") == 1, log
    assert "also immortalize" in log
    # The same walk hashed strings and tagged types (gcfork.finish), and said so.
    assert re.search(r"immortal .* in [\d.]+s; hashed [1-9]\d* str and bytes objects, "
                     r"[1-9]\d* types have a version tag", log), log
    assert "no type version tags" not in log and "no precomputed hashes" not in log, log


# The interpreter without PyUnstable_Type_AssignVersionTag (hidden from ctypes).
NO_TAG_SYMBOL = """
import ctypes

class _Hidden:
    def __init__(self, api):
        self._api = api

    def __getattr__(self, name):
        if name == "PyUnstable_Type_AssignVersionTag":
            raise AttributeError(name)
        return getattr(self._api, name)

ctypes.pythonapi = _Hidden(ctypes.pythonapi)
"""


def test_a_missing_version_tag_symbol_is_a_warning_and_the_rest_goes_on(
    start_server: StartServer,
) -> None:
    server = start_server(conf("immortalize=True", before=NO_TAG_SYMBOL),
                          python=gunicorn_interpreter("3.12"), workers=1)
    assert worker_states(server, 1)
    log = server.log()
    warning = [line for line in log.splitlines() if "no type version tags" in line]
    assert len(warning) == 1 and "[WARNING]" in warning[0], log
    assert "PyUnstable_Type_AssignVersionTag" in warning[0], log
    # Made immortal and hashed all the same; no type has been tagged by gcfork.
    assert re.search(r"immortal .*; hashed [1-9]\d* str and bytes objects, 0 types", log), log


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="checks the refusal before 3.12")
def test_immortalize_is_refused_before_312_with_the_reason(start_server: StartServer) -> None:
    server = start_server(conf("immortalize=True"), ready=False)
    status, log = stopped(server)
    assert status != 0
    errors = [line for line in log.splitlines() if line.startswith("gcfork: error:")]
    assert len(errors) == 1, log
    assert "'immortalize'" in errors[0]
    assert "no immortal objects (PEP 683 came in 3.12)" in errors[0]
    assert "Booting worker" not in log and "Traceback" not in log


# -- fast_exit ----------------------------------------------------------------


def exit_probe(marks: Path, stats: Path) -> str:
    """User hooks: post_fork registers an atexit handler (which fast exit
    skips); worker_exit, which runs after gcfork's final publish, records that
    record and then raises (gunicorn logs it; the fast exit still happens)."""
    return f"""
import atexit, glob, os
def post_fork(server, worker):
    atexit.register(lambda: open({str(marks)!r}, "a").write("atexit\\n"))
def worker_exit(server, worker):
    (record,) = glob.glob(os.path.join({str(stats)!r}, f"{{os.getpid()}}-*.json"))
    open({str(marks)!r}, "a").write(open(record).read() + "\\n")
    raise ValueError("the user's hook failed")
"""


def test_fast_exit_after_the_users_hook_and_the_final_record(
    start_server: StartServer, tmp_path: Path
) -> None:
    marks, stats = tmp_path / "marks", tmp_path / "stats"
    server = start_server(conf("fast_exit=True", after=exit_probe(marks, stats)), workers=1,
                          env={"GCFORK_STATS_DIR": str(stats)}, expect_errors=True)
    (victim,) = server.worker_pids()
    for _ in range(3):
        server.get("/gc")
    os.kill(victim, signal.SIGTERM)
    wait_for(lambda: f"gcfork: worker {victim} exited" in server.log(), what="the exit line")
    (record,) = [json.loads(line) for line in marks.read_text().splitlines()]
    assert record["final"] is True and record["requests"] == 3
    log = server.log()
    assert "ValueError: the user's hook failed" in log
    assert f"Worker (pid:{victim}) exited with code" not in log, "the status 0 was lost"
    assert "fast_exit" in log.split("also ", 1)[1].splitlines()[0]


@pytest.mark.parametrize(("app", "status", "reason"), [
    ("tests.apps.gcstate:no_such_app", 4, "App failed to load."),
    ("tests.apps.no_such_module:app", 3, "Worker failed to boot."),
])
def test_fast_exit_keeps_gunicorns_boot_failure_status(
    start_server: StartServer, tmp_path: Path, app: str, status: int, reason: str
) -> None:
    marks = tmp_path / "marks"
    hooks = f"""
import atexit
def post_fork(server, worker):
    atexit.register(lambda: open({str(marks)!r}, "a").write("atexit\\n"))
"""
    server = start_server(conf("fast_exit=True", after=hooks, preload=False), app=app,
                          workers=1, ready=False, expect_errors=True)
    code, log = stopped(server)
    assert code == status, log
    assert f"Reason: {reason}" in log
    assert not marks.exists(), "the worker finalized: atexit ran"


# -- gcfork explain -------------------------------------------------------------


def test_explain_profiles_a_running_worker(start_server: StartServer) -> None:
    server = start_server(conf(), workers=1)
    (pid,) = server.worker_pids()
    assert server.get("/reference")[0] == 200
    done = subprocess.run(
        [sys.executable, "-m", "gcfork", "explain", "--pid", str(pid), "--top", "5"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert done.returncode == 0, done.stderr + server.log()[-2000:]
    out = done.stdout
    assert out.startswith(f"gcfork explain: worker {pid} (parent {server.pid})"), out
    assert "Private memory by mapping" in out
    assert "Top types on exclusive pages, objects inherited from the master" in out
    assert "Top modules on exclusive pages" in out
    inherited = out.split("objects inherited from the master")[1].split("\n\n")[0]
    assert "dict" in inherited, out
