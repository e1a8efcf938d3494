"""gunicorn's worker kinds under gcfork, each with a real server: sync,
gthread, gevent, gunicorn 27's own ``asgi`` worker and uvicorn's worker.

For every kind: the GC state read from inside every worker, the report's
request counts, the exit line of each worker (requests and private memory
measured as it exits), and a ``max_requests`` respawn with ``fast_exit``.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gcfork.tools.server import GunicornProcess
from tests.conftest import REPO, StartServer, wait_for, worker_states
from tests.test_gunicorn import assert_frozen_and_enabled, conf

WSGI_APP = "tests.apps.gcstate:app"
ASGI_APP = "tests.apps.gcstate_asgi:app"

# kind -> (worker_class, app, extra config)
KINDS = {
    "sync": ("sync", WSGI_APP, ""),
    "gthread": ("gthread", WSGI_APP, "threads = 2\n"),
    "gevent": ("gevent", WSGI_APP, ""),
    "asgi": ("asgi", ASGI_APP, ""),
    "uvicorn": ("uvicorn_worker.UvicornWorker", ASGI_APP, ""),
}

EXIT_LINE = re.compile(r"gcfork: worker (\d+) exited: age \S+, (\S+) requests?, "
                       r"(.+?) private (at exit|measured .+? before exit)")


def kind_conf(kind: str, settings: str, extra: str = "") -> tuple[str, str]:
    worker_class, app, more = KINDS[kind]
    if kind == "gevent":
        pytest.importorskip("gevent")
    if kind == "uvicorn":
        pytest.importorskip("uvicorn_worker")
    return conf(settings, after=f"worker_class = {worker_class!r}\n{more}{extra}"), app


def exit_lines(log: str) -> dict[int, tuple[str, str]]:
    """``{pid: (requests, when)}`` from the master's exit lines."""
    return {int(m[1]): (m[2], m[4]) for m in EXIT_LINE.finditer(log)}


def report_json(master: int) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "gcfork", "report", "--pid", str(master),
                           "--json"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    data: dict[str, object] = json.loads(done.stdout)
    return data


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_worker_collects_frozen_and_every_request_is_accounted_for(
    start_server: StartServer, kind: str
) -> None:
    text, app = kind_conf(kind, "thresholds=(1111, 11, 11)")
    server = start_server(text, workers=2, app=app)
    states = worker_states(server, 2)
    assert_frozen_and_enabled(states, [1111, 11, 11])
    assert {s["ppid"] for s in states.values()} == {server.pid}
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda _: server.get("/reference")[0], range(40)))
    assert statuses == [200] * 40
    # Workers publish every 2 s: wait until the report counts at least the
    # 40 just sent (worker_states sent more before).
    sent = 40

    def counted() -> dict[str, object] | None:
        data = report_json(server.pid)
        rows = [r for r in data["processes"] if r["role"] == "worker"]  # type: ignore[index,union-attr]
        total = sum(r["requests"] or 0 for r in rows)  # type: ignore[index]
        return data if len(rows) == 2 and total >= sent else None

    data = wait_for(counted, timeout=30, what="the report's request counts")
    workers = [r for r in data["processes"] if r["role"] == "worker"]
    assert all(r["requests"] > 0 for r in workers), workers
    published = {r["pid"]: r["requests"] for r in workers}
    server.stop()
    lines = exit_lines(server.log())
    assert set(lines) >= set(published), server.log()[-3000:]
    for pid, (requests, when) in lines.items():
        # Measured by the worker as it exited, with its own count (never 0 or stale).
        assert when == "at exit", lines
        assert int(requests) >= published[pid], (lines, published)


def state_of_a_respawned_worker(server: GunicornProcess) -> dict[str, Any]:
    """One worker's GC state, asked one request at a time: uvicorn's worker
    resets the connections it accepted but had not served when it reaches
    max_requests, so the concurrent requests of worker_states can fail there."""
    for _ in range(20):
        try:
            status, body = server.get("/gc")
        except ConnectionError:
            time.sleep(0.2)
            continue
        assert status == 200, body
        state: dict[str, Any] = json.loads(body)
        return state
    raise AssertionError(f"no answer from a respawned worker:\n{server.log()[-3000:]}")


@pytest.mark.parametrize("kind", list(KINDS))
def test_max_requests_respawns_a_frozen_worker_and_fast_exit_skips_finalization(
    start_server: StartServer, kind: str, tmp_path: Path
) -> None:
    marks = tmp_path / "atexit"
    hook = f"""
import atexit, os
def post_worker_init(worker):
    atexit.register(lambda: open({str(marks)!r}, "a").write(f"{{os.getpid()}}\\n"))
"""
    text, app = kind_conf(kind, "thresholds=(2222, 22, 22), fast_exit=True",
                          "max_requests = 5\n" + hook)
    server = start_server(text, workers=1, app=app)
    first = server.worker_pids()
    for _ in range(12):
        server.get("/gc")
    wait_for(lambda: server.worker_pids() and server.worker_pids() != first,
             what="a max_requests respawn")
    state = state_of_a_respawned_worker(server)
    assert state["pid"] not in first
    assert_frozen_and_enabled({state["pid"]: state}, [2222, 22, 22])
    wait_for(lambda: first[0] in exit_lines(server.log()), what="the exit line")
    requests, when = exit_lines(server.log())[first[0]]
    assert when == "at exit" and int(requests) >= 5, server.log()[-3000:]
    assert not marks.exists(), "the worker finalized: atexit ran"


def test_uvicorn_ends_by_sigterm_after_publishing_its_final_record(
    start_server: StartServer,
) -> None:
    # The bug: worker_exit never runs in uvicorn's worker, so its exit line
    # said 0 requests and a master sample up to 30 s old; REQS stayed 0.
    text, app = kind_conf("uvicorn", "report_interval=30, fast_exit=True")
    server = start_server(text, workers=2, app=app)
    for _ in range(30):
        assert server.get("/reference")[0] == 200
    # One worker may have taken all 30: concurrent slow requests reach both,
    # so whichever the master stops has served some.
    worker_states(server, 2)
    victim = server.worker_pids()[0]
    server.signal(signal.SIGTTOU)  # the master stops one worker with SIGTERM
    wait_for(lambda: victim in exit_lines(server.log()), what="the victim's exit line")
    requests, when = exit_lines(server.log())[victim]
    assert when == "at exit"
    assert int(requests) > 0
    log = server.log()
    assert f"Worker (pid:{victim}) was sent SIGTERM!" in log
    assert "gcfork: worker_class uvicorn_worker.UvicornWorker: gcfork counts its HTTP " \
           "requests" in log
    assert "fast_exit applies to its other exits (max_requests)" in log


def test_a_killed_worker_says_how_old_its_last_sample_is(start_server: StartServer) -> None:
    # SIGKILL leaves no final record and a dead process cannot be measured:
    # the master's last sample of it is used, and called what it is.
    text, app = kind_conf("sync", "report_interval=3")
    server = start_server(text, workers=2, app=app)
    victim = server.worker_pids()[0]
    wait_for(lambda: "gcfork: memory: " in server.log(),
             timeout=30, what="the master's first sample")
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim in exit_lines(server.log()), what="the victim's exit line")
    _, when = exit_lines(server.log())[victim]
    assert re.fullmatch(r"measured \S+ before exit", when), server.log()[-2000:]


@pytest.mark.parametrize("kind", ["asgi", "uvicorn"])
def test_asgi_warm_up_runs_in_the_master_over_asgi_before_the_fork(
    start_server: StartServer, kind: str
) -> None:
    text, app = kind_conf(kind, "warmup=['/gc', '/reference']")
    server = start_server(text, workers=1, app=app)
    assert "gcfork: warm-up in the master: 2 requests" in server.log()
    status, body = server.get("/lifespan")
    assert status == 200
    # The worker inherited the master's list: its startup and shutdown, run
    # by the warm-up before the fork; then the worker's own startup.
    assert json.loads(body)["lifespan"] == ["lifespan.startup", "lifespan.shutdown",
                                            "lifespan.startup"]


@pytest.mark.parametrize(("kind", "app", "says"), [
    ("sync", ASGI_APP, "is an ASGI app"),
    ("uvicorn", WSGI_APP, "is not an ASGI 3 app"),
])
def test_an_app_the_kind_cannot_warm_up_stops_the_server_with_one_line(
    start_server: StartServer, kind: str, app: str, says: str
) -> None:
    # It used to stop the server with FastAPI's own TypeError ("missing 1
    # required positional argument: 'send'"), which said nothing of why.
    text, _ = kind_conf(kind, "warmup=['/gc']")
    server = start_server(text, app=app, ready=False, expect_errors=True)
    assert server.proc is not None
    assert server.proc.wait(timeout=60) != 0
    log = server.log()
    errors = [line for line in log.splitlines() if "gcfork: warm-up impossible" in line]
    assert len(errors) == 1 and says in errors[0], log
    assert f"(worker_class {KINDS[kind][0]})" in errors[0]
    assert "Booting worker" not in log and "Traceback" not in log


def test_quick_shutdown_of_uvicorns_workers_keeps_the_masters_sample(
    start_server: StartServer,
) -> None:
    # SIGQUIT to the master: uvicorn-worker 0.4 does not end on the SIGQUIT
    # the master sends on (with or without gcfork), so the master kills it
    # after graceful_timeout. The shutdown sample was taken a second time
    # then, of dead workers: the exit lines said "- private".
    text, app = kind_conf("uvicorn", "", "graceful_timeout = 2\n")
    server = start_server(text, workers=2, app=app, expect_errors=True)
    workers = server.worker_pids()
    server.signal(signal.SIGQUIT)
    assert server.proc is not None
    server.proc.wait(timeout=60)
    lines = exit_lines(server.log())
    assert set(lines) == set(workers), server.log()[-3000:]
    for _, when in lines.values():
        assert re.fullmatch(r"measured \S+ before exit", when), server.log()[-3000:]


def test_gevent_patched_in_the_config_leaves_the_masters_sampler_in_the_master(
    start_server: StartServer,
) -> None:
    # With threading patched in the master, gcfork's sampler there is a
    # greenlet, and a greenlet is forked with the process: every worker ran
    # the master's sampler too, logging its lines and publishing the master's
    # record under its own pid.
    pytest.importorskip("gevent")
    text = conf("report_interval=1", before="from gevent import monkey; monkey.patch_all()\n",
                after="worker_class = 'gevent'\n")
    server = start_server(text, workers=2)
    assert_frozen_and_enabled(worker_states(server, 2), list(gc.get_threshold()))
    wait_for(lambda: server.log().count("gcfork: memory: ") >= 3, timeout=30,
             what="three periodic lines")
    loggers = set(re.findall(r"\[(\d+)\] \[INFO\] gcfork: memory: ", server.log()))
    assert loggers == {str(server.pid)}, server.log()[-3000:]
    roles = sorted(r["role"] for r in report_json(server.pid)["processes"])  # type: ignore[union-attr,index]
    assert roles == ["master", "worker", "worker"]


def test_gevent_publishes_beside_the_apps_monkey_patched_threads(
    start_server: StartServer,
) -> None:
    text, app = kind_conf("gevent", "")
    server = start_server(text, workers=1, app=app)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: server.get("/thread"), range(40)))
    assert all(status == 200 for status, _ in answers)
    body = json.loads(answers[0][1])
    assert body["ran"] == [1]
    # The app's threads and sleeps are gevent's: it patched them in the worker.
    assert "gevent" in body["thread_module"], body
    # gcfork's own thread (not gevent's) went on publishing meanwhile.
    wait_for(lambda: sum(r["requests"] or 0 for r in report_json(server.pid)["processes"]  # type: ignore[union-attr,index]
                         if r["role"] == "worker") >= 40, timeout=30,
             what="the report to count the 40 requests")
