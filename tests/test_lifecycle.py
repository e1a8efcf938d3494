"""The fork lifecycle on os.register_at_fork, against real gunicorn masters:
forks that gunicorn makes without its pre_fork hook, and forks that make no
worker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from gcfork.gunicorn.roles import members
from gcfork.report import JSONRenderer, TableRenderer, collect
from tests.conftest import REPO, StartServer, wait_for
from tests.test_gunicorn import ONE_LINE

pytest.importorskip("gunicorn.dirty", reason="dirty apps need gunicorn 25 or later")


def _states(server: object, path: str, wanted: int) -> dict[int, dict[str, object]]:
    """GET ``path`` until ``wanted`` distinct pids answered: {pid: state}."""
    seen: dict[int, dict[str, object]] = {}

    def enough() -> bool:
        try:
            status, body = server.get(path)  # type: ignore[attr-defined]
        except ConnectionRefusedError:
            # A daemon writes its pidfile before on_starting and before it
            # listens: the test may knock in between.
            return False
        assert status == 200, body
        state = json.loads(body)
        seen[state["pid"]] = state
        return len(seen) >= wanted

    wait_for(enough, what=f"{wanted} processes answering {path}")
    return seen


def _stop_master(pid: int) -> None:
    """Stop a master the fixture did not start (it is not its child)."""
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not psutil.pid_exists(pid)
             or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
             what=f"master {pid}'s exit")


def test_dirty_arbiter_and_its_workers_get_the_policy(
    start_server: StartServer, tmp_path: Path
) -> None:
    # gunicorn forks its dirty arbiter without pre_fork, and the arbiter forks
    # the dirty workers itself: they used to inherit the master's GC, off.
    arbiter_log = tmp_path / "arbiter.jsonl"
    conf = (
        ONE_LINE.format(settings=", thresholds=(777, 7, 7)")
        + "preload_app = True\n"
        + "dirty_apps = ['tests.apps.dirty:GCProbe']\ndirty_workers = 2\n"
        + "import gc, json, os\n"
        + "def dirty_post_fork(arbiter, worker):\n"
        + f"    with open({str(arbiter_log)!r}, 'a') as f:\n"
        + "        f.write(json.dumps({'pid': os.getpid(), 'enabled': gc.isenabled(),"
        + " 'frozen': gc.get_freeze_count()}) + '\\n')\n"
    )
    server = start_server(conf, app="tests.apps.dirty:app", workers=1)
    dirty = _states(server, "/dirty", 2)
    arbiters = [json.loads(line) for line in arbiter_log.read_text().splitlines()]
    arbiter_pid = arbiters[0]["pid"]
    assert psutil.Process(arbiter_pid).ppid() == server.pid
    # The arbiter is a template of its own: GC off at each of its forks.
    assert all(a["pid"] == arbiter_pid and a["enabled"] is False for a in arbiters), arbiters
    for state in dirty.values():
        assert state["ppid"] == arbiter_pid, state
        assert state["enabled"] is True and state["thresholds"] == [777, 7, 7], state
        # Frozen by the arbiter right before its own fork.
        assert state["own_worker_object_young"] == 0 and state["freeze_count"] > 0, state
    (http,) = _states(server, "/gc", 1).values()
    assert http["enabled"] is True and http["thresholds"] == [777, 7, 7]
    # The report shows the arbiter and its dirty workers with their own GC
    # records, each published from inside the process.
    def dirty_rows() -> tuple[str, list[dict[str, Any]]] | None:
        report = collect(server.pid, members)
        rows = [p for p in json.loads(JSONRenderer()(report))["processes"]
                if p["role"] in ("dirty-arbiter", "dirty-worker")]
        return ((TableRenderer()(report), rows) if len(rows) == 3 and all(p["gc"] for p in rows)
                else None)

    table, rows = wait_for(dirty_rows, what="the dirty arbiter's and workers' records")
    arbiter, *workers = rows
    assert arbiter["role"] == "dirty-arbiter" and arbiter["pid"] == arbiter_pid, rows
    # A template: its collector off, the master's heap frozen in it and its own
    # frozen again before each of its forks.
    assert arbiter["gc"]["enabled"] is False and arbiter["gc"]["freeze_count"] > 0, arbiter
    assert arbiter["requests"] is None
    # Its collections, if any, are the young ones gcfork runs before a freeze.
    assert re.search(rf"^dirty-arbiter\s+{arbiter_pid}\s.*\s\d+ \(off\)\s", table,
                     re.MULTILINE), table
    for row in workers:
        assert row["role"] == "dirty-worker" and row["pid"] in dirty, row
        assert row["gc"]["enabled"] is True and row["gc"]["thresholds"] == [777, 7, 7], row
    # `gcfork report` names them by the same roles when given their pid.
    for pid, what in ((arbiter_pid, "the dirty arbiter"), (workers[0]["pid"], "a dirty worker")):
        done = subprocess.run([sys.executable, "-m", "gcfork", "report", "--pid", str(pid)],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode == 1, done.stdout
        assert f"pid {pid} is {what} of gcfork master {server.pid}" in done.stderr, done.stderr


FORKS = """
import gc, json, os, sys
gc.disable()
from gcfork.lifecycle import LIFECYCLE
from gcfork.policy import Policy

def fork(announce=False):
    # The child reports its GC state, and that of its own child, on a pipe.
    r, w = os.pipe()
    if announce:
        LIFECYCLE.announce()
    pid = os.fork()
    if pid == 0:
        state = {"enabled": gc.isenabled(), "thresholds": list(gc.get_threshold()),
                 "frozen": gc.get_freeze_count()}
        gc.disable()
        inner = os.fork()  # a fork in a child: left alone
        if inner == 0:
            os._exit(0 if gc.get_freeze_count() == state["frozen"] else 1)
        state["inner_ok"] = os.waitpid(inner, 0)[1] == 0
        os.write(w, json.dumps(state).encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 65536)
    os.waitpid(pid, 0)
    return json.loads(data)

before = fork()                      # not armed yet: like gunicorn's daemon forks
LIFECYCLE.arm(Policy.from_settings({"thresholds": (4321, 4, 4)}, environ={}))
plain = fork()                       # a fork no hook announced
announced = fork(announce=True)      # the adapter finishes this one itself
print(json.dumps({"before": before, "plain": plain, "announced": announced,
                  "master_enabled": gc.isenabled(), "master_frozen": gc.get_freeze_count()}))
"""


def test_the_lifecycle_tells_forks_apart() -> None:
    done = subprocess.run([sys.executable, "-c", FORKS], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["before"]["enabled"] is False and result["before"]["frozen"] == 0
    plain = result["plain"]
    assert plain["enabled"] is True and plain["thresholds"] == [4321, 4, 4]
    assert plain["frozen"] > 0 and plain["inner_ok"] is True
    announced = result["announced"]
    assert announced["enabled"] is False and announced["frozen"] >= plain["frozen"]
    assert result["master_enabled"] is False


def test_usr2_upgrade_forks_a_new_master_whose_workers_get_the_policy(
    start_server: StartServer,
) -> None:
    # USR2: the master forks a child that execs a new master. That fork makes
    # no worker (the child's GC steps are discarded by the exec); the new
    # master installs gcfork from its own config and freezes for its workers.
    conf = ONE_LINE.format(settings=", thresholds=(654, 6, 6)") + "preload_app = True\n"
    server = start_server(conf, workers=2, inherit_socket=False)
    old = set(server.worker_pids())
    server.signal(signal.SIGUSR2)

    def new_master() -> int | None:
        for child in psutil.Process(server.pid).children():
            if child.pid not in old and len(child.children()) >= 2:
                return child.pid
        return None

    upgraded = wait_for(new_master, what="a new master with its workers")
    try:
        new_workers = {c.pid for c in psutil.Process(upgraded).children()}
        states = _states(server, "/gc", 4)
        assert set(states) == old | new_workers
        for state in states.values():
            assert state["enabled"] is True and state["thresholds"] == [654, 6, 6], state
            assert state["enabled_at_import"] is False, state
    finally:
        _stop_master(upgraded)


def test_daemon_mode_forks_before_the_lifecycle_is_armed(
    start_server: StartServer, tmp_path: Path
) -> None:
    # daemon = True: gunicorn forks twice before on_starting, and the last
    # child becomes the master. Those forks make no worker: the master-to-be
    # must keep its GC off while it imports the app.
    pidfile = tmp_path / "master.pid"
    conf = (ONE_LINE.format(settings=", thresholds=(543, 5, 5)")
            + f"preload_app = True\ndaemon = True\npidfile = {str(pidfile)!r}\n")
    server = start_server(conf, workers=2, ready=False, inherit_socket=False)

    def master_pid() -> int | None:
        try:
            return int(pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return None

    master = wait_for(master_pid, what="the daemon's pidfile")
    try:
        assert master != server.pid
        states = _states(server, "/gc", 2)
        for state in states.values():
            assert state["ppid"] == master, state
            assert state["enabled"] is True and state["thresholds"] == [543, 5, 5], state
            assert state["enabled_at_import"] is False, state
    finally:
        _stop_master(master)


FAILING = """
import gc, json, os
gc.disable()
from gcfork.lifecycle import LIFECYCLE
from gcfork.policy import Policy

def child_failure():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, json.dumps(LIFECYCLE.failure).encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 65536)
    os.waitpid(pid, 0)
    return json.loads(data)

def boom():
    raise RuntimeError("immortalize went wrong")

LIFECYCLE.on_first_freeze = boom  # the step that runs inside the first fork
LIFECYCLE.arm(Policy.from_settings({}, environ={}))
print(json.dumps([child_failure(), child_failure()]))
"""


def test_a_failure_inside_fork_reaches_that_child_only() -> None:
    # The handlers may not raise or log inside os.fork(): the child that was
    # forked carries the reason (the adapter logs it at ERROR), the next does not.
    done = subprocess.run([sys.executable, "-c", FAILING], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    first, second = json.loads(done.stdout)
    assert first is not None and "immortalize went wrong" in first
    assert second is None
