"""The gunicorn adapter against real gunicorn masters and forked sync workers."""

from __future__ import annotations

import gc
import json
import os
import re
import signal
from pathlib import Path

import pytest

from tests.conftest import StartServer, wait_for, worker_states

ONE_LINE = "import gcfork; gcfork.install(globals(){settings})\n"


# Appends a fresh tracked object to the test app's FORK_MARKERS in the master
# right before each fork, before gcfork's freeze (gcfork freezes last).
MARK_FORK = """
    import tests.apps.gcstate
    tests.apps.gcstate.FORK_MARKERS.append([worker.age])
"""


def conf(settings: str = "", before: str = "", after: str = "", preload: bool = True) -> str:
    line = ONE_LINE.format(settings=", " + settings if settings else "")
    if preload and "def pre_fork" not in before + after:
        after += "\ndef pre_fork(server, worker):" + MARK_FORK
    return f"{before}\n{line}preload_app = {preload}\n{after}\n"


def master_gc_probe(path: Path) -> str:
    """A user hook, defined after gcfork's line, that records the master's GC
    state at every fork: it runs in the master just before gcfork freezes.
    It marks the fork too (see MARK_FORK)."""
    return f"""
import gc, json, os
def pre_fork(server, worker):
    with open({str(path)!r}, "a") as f:
        f.write(json.dumps({{"pid": os.getpid(), "enabled": gc.isenabled()}}) + "\\n")
{MARK_FORK}"""


def read_probe(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_frozen_and_enabled(
    states: dict[int, dict], thresholds: list[int], preload: bool = True
) -> None:
    """Every worker: GC on with ``thresholds``, frozen right before its own fork
    (not merely inheriting an earlier freeze; with ``preload``, where the
    master forks a loaded app), and the app imported with the GC off."""
    for state in states.values():
        assert state["enabled"] is True, state
        if preload:
            assert state["own_fork_marker_frozen"] is True, state
        assert state["enabled_at_import"] is False, state
        assert state["thresholds"] == thresholds, state


def test_workers_collect_with_thresholds_and_master_stays_off(
    start_server: StartServer, tmp_path: Path
) -> None:
    probe = tmp_path / "master.jsonl"
    server = start_server(conf("thresholds=(1234, 11, 12)", after=master_gc_probe(probe)),
                          workers=3)
    states = worker_states(server, 3)
    assert_frozen_and_enabled(states, [1234, 11, 12])
    assert {s["ppid"] for s in states.values()} == {server.pid}
    forks = read_probe(probe)
    assert len(forks) == 3
    assert all(f["pid"] == server.pid and f["enabled"] is False for f in forks)
    log = server.log()
    assert "gcfork: mode=freeze" in log
    assert "worker thresholds=(1234, 11, 12) [install()]" in log
    assert log.count("GC on, thresholds (1234, 11, 12)") == 3


def test_callable_gives_each_slot_its_thresholds_and_respawns_reuse_the_slot(
    start_server: StartServer,
) -> None:
    server = start_server(conf("thresholds=lambda w: (1000 + w.index, 10, 10)"), workers=3)
    states = worker_states(server, 3)
    assert sorted(s["thresholds"][0] for s in states.values()) == [1000, 1001, 1002]
    victim = next(pid for pid, s in states.items() if s["thresholds"][0] == 1001)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == 3,
             what="a replacement worker")
    states = worker_states(server, 3)
    assert victim not in states
    assert sorted(s["thresholds"][0] for s in states.values()) == [1000, 1001, 1002]
    assert_frozen_and_enabled(
        {p: s for p, s in states.items() if s["thresholds"][0] == 1001}, [1001, 10, 10]
    )


def test_kill_9_respawn(start_server: StartServer, tmp_path: Path) -> None:
    probe = tmp_path / "master.jsonl"
    server = start_server(conf("thresholds=(900, 9, 9)", after=master_gc_probe(probe)))
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == 2,
             what="a replacement worker")
    assert_frozen_and_enabled(worker_states(server, 2), [900, 9, 9])
    assert [f["enabled"] for f in read_probe(probe)] == [False, False, False]


def test_ttin_adds_a_frozen_worker(start_server: StartServer) -> None:
    server = start_server(conf("thresholds=(800, 8, 8)"))
    server.signal(signal.SIGTTIN)
    wait_for(lambda: len(server.worker_pids()) == 3, what="TTIN's third worker")
    assert_frozen_and_enabled(worker_states(server, 3), [800, 8, 8])


def test_hup_reload_reruns_the_config_and_applies_new_settings(
    start_server: StartServer, tmp_path: Path
) -> None:
    probe = tmp_path / "master.jsonl"
    server = start_server(conf("thresholds=(700, 7, 7)", after=master_gc_probe(probe)))
    old = set(server.worker_pids())
    # gunicorn re-reads the config file on HUP: gcfork's line runs a second time.
    text = Path(server.config).read_text().replace("(700, 7, 7)", "(701, 7, 7)")
    Path(server.config).write_text(text)
    server.signal(signal.SIGHUP)
    wait_for(lambda: len(server.worker_pids()) == 2 and not old & set(server.worker_pids()),
             what="the reloaded workers")
    assert_frozen_and_enabled(worker_states(server, 2), [701, 7, 7])
    forks = read_probe(probe)
    assert len(forks) == 4, "the user's pre_fork ran once per fork, not twice after reload"
    assert all(f["enabled"] is False for f in forks)


def test_max_requests_respawn(start_server: StartServer) -> None:
    server = start_server(conf("thresholds=(600, 6, 6)", after="max_requests = 5\n"), workers=1)
    first = server.worker_pids()
    for _ in range(12):
        server.get("/gc")
    wait_for(lambda: server.worker_pids() and server.worker_pids() != first,
             what="a max_requests respawn")
    assert_frozen_and_enabled(worker_states(server, 1), [600, 6, 6])


def test_user_hooks_before_and_after_the_line_both_run(
    start_server: StartServer, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    before = f"""
def post_fork(server, worker):
    open({str(marks)!r}, "a").write("before:post_fork\\n")
def on_starting(server):
    open({str(marks)!r}, "a").write("before:on_starting\\n")
"""
    after = f"""
def post_worker_init(worker):
    open({str(marks)!r}, "a").write("after:post_worker_init\\n")
def pre_fork(server, worker):
    open({str(marks)!r}, "a").write("after:pre_fork\\n")
{MARK_FORK}"""
    server = start_server(conf("thresholds=(555, 5, 5)", before=before, after=after))
    assert_frozen_and_enabled(worker_states(server, 2), [555, 5, 5])
    lines = marks.read_text().splitlines()
    assert lines.count("before:on_starting") == 1
    for mark in ("before:post_fork", "after:post_worker_init", "after:pre_fork"):
        assert lines.count(mark) == 2, lines


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_user_hook_gunicorn_would_refuse_is_refused_at_load(
    start_server: StartServer, where: str
) -> None:
    # gcfork's chain carries its own signature: it must not hide the user's.
    wrong = "def post_fork(server):\n    pass\n"
    text = conf(before=wrong) if where == "before" else conf(after=wrong)
    server = start_server(text, ready=False, expect_errors=True)
    assert server.proc is not None
    assert server.proc.wait(timeout=60) != 0
    log = server.log()
    assert "Invalid value for post_fork" in log, log
    assert "Booting worker" not in log


def test_a_hook_given_as_an_import_path_before_the_line_runs(
    start_server: StartServer, tmp_path: Path
) -> None:
    # gunicorn accepts "module.function" for a hook; gcfork used to drop it.
    (tmp_path / "user_hooks.py").write_text(
        "import os\n"
        "def post_fork(server, worker):\n"
        f"    open({str(tmp_path / 'marks')!r}, 'a').write('ran\\n')\n"
    )
    before = (f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n"
              "post_fork = 'user_hooks.post_fork'\n")
    server = start_server(conf("thresholds=(321, 3, 3)", before=before))
    assert_frozen_and_enabled(worker_states(server, 2), [321, 3, 3])
    assert (tmp_path / "marks").read_text().splitlines() == ["ran", "ran"]


def test_a_fork_inside_a_worker_is_left_alone(start_server: StartServer) -> None:
    server = start_server(conf("thresholds=(444, 4, 4)"), workers=1)
    status, body = server.get("/fork")
    assert status == 200
    report = json.loads(body)
    assert report["after"]["freeze_count"] <= report["before"]["freeze_count"], (
        "the worker froze its own objects when it forked"
    )
    child = report["child"]
    assert child["enabled"] is True and child["thresholds"] == [444, 4, 4]
    assert child["freeze_count"] == report["before"]["freeze_count"]


def test_without_preload_warns_and_freezes_after_import(start_server: StartServer) -> None:
    server = start_server(conf("thresholds=(333, 3, 3)", preload=False))
    states = worker_states(server, 2)
    assert_frozen_and_enabled(states, [333, 3, 3], preload=False)
    # The test app's 20,000-record table was imported by the worker and frozen there.
    assert min(s["freeze_count"] for s in states.values()) > 20_000
    assert "preload_app is False" in server.log()
    assert "set preload_app = True" in server.log()


def test_mode_disable_keeps_workers_off_and_warns(start_server: StartServer) -> None:
    server = start_server(conf("mode='disable'"))
    for state in worker_states(server, 2).values():
        assert state["enabled"] is False and state["freeze_count"] > 0
    assert "reference cycles" in server.log()


def test_mode_off_changes_nothing(start_server: StartServer, tmp_path: Path) -> None:
    probe = tmp_path / "master.jsonl"
    server = start_server(conf(after=master_gc_probe(probe)), env={"GCFORK_MODE": "off"})
    for state in worker_states(server, 2).values():
        assert state["enabled"] is True and state["freeze_count"] == 0
    assert all(f["enabled"] is True for f in read_probe(probe))
    log = server.log()
    assert "mode=off (gcfork leaves the GC alone) [env GCFORK_MODE]" in log
    # It used to say "no collections in workers" while they collected normally.
    assert f"workers keep the interpreter's thresholds {gc.get_threshold()}" in log
    assert "no collections" not in log


def test_env_thresholds_override_install(start_server: StartServer) -> None:
    server = start_server(conf("thresholds=(100, 1, 1)"), env={"GCFORK_THRESHOLDS": "222,2"})
    for state in worker_states(server, 2).values():
        assert state["thresholds"][:2] == [222, 2]


def test_a_failing_thresholds_callable_is_logged_and_the_worker_still_serves(
    start_server: StartServer,
) -> None:
    # Valid for the start-up probe (slot 0), raises for slot 1 at run time.
    fn = "lambda w: (1500, 10, 10) if w.index == 0 else 1 / 0"
    server = start_server(conf(f"thresholds={fn}"), expect_errors=True)
    states = worker_states(server, 2)
    by_slot = slots_of(server.log())
    assert states[by_slot[0]]["thresholds"] == [1500, 10, 10]
    assert states[by_slot[1]]["thresholds"] == list(gc.get_threshold())
    assert all(s["enabled"] for s in states.values())
    assert "ZeroDivisionError" in server.log()
    assert "keeps the interpreter's thresholds" in server.log()


def slots_of(log: str) -> dict[int, int]:
    """``{slot: pid}`` of the workers, from gcfork's line in each worker."""
    found = re.findall(r"gcfork: worker slot=(-?\d+) age=\d+ pid=(\d+)", log)
    return {int(slot): int(pid) for slot, pid in found}


BAD_SETTINGS = [
    ("mode='sometimes'", {}, "'mode'"),
    ("mode=3", {}, "'mode'"),
    ("thresholds=(1, 2, 3, 4)", {}, "'thresholds'"),
    ("thresholds=(700, -1)", {}, "'thresholds'"),
    ("thresholds=()", {}, "'thresholds'"),
    ("thresholds='700,10,10'", {}, "'thresholds'"),
    ("thresholds=(700.5, 10)", {}, "'thresholds'"),
    ("thresholds=lambda a, b: (1,)", {}, "'thresholds'"),
    ("thresholds=lambda w: (1, 2, 3, 4)", {}, "'thresholds'"),
    ("collect_before_freeze='yes'", {}, "'collect_before_freeze'"),
    ("report_interval=-5", {}, "'report_interval'"),
    ("stats_dir='relative/dir'", {}, "'stats_dir'"),
    ("colour='blue'", {}, "'colour'"),
    ("", {"GCFORK_THRESHOLDS": "700,ten"}, "GCFORK_THRESHOLDS"),
    ("", {"GCFORK_MODE": "FREEZE!"}, "GCFORK_MODE"),
    ("", {"GCFORK_COLLECT_BEFORE_FREEZE": "maybe"}, "GCFORK_COLLECT_BEFORE_FREEZE"),
    ("", {"GCFORK_TRESHOLDS": "700"}, "GCFORK_TRESHOLDS"),
    ("warmup='/'", {}, "'warmup'"),
    ("warmup=['/ok', 'no-slash']", {}, "'warmup'"),
    ("warmup=lambda: None", {}, "'warmup'"),
    ("warmup_host='http://example.com'", {}, "'warmup_host'"),
    ("fast_exit=1", {}, "'fast_exit'"),
    ("immortalize='yes'", {}, "'immortalize'"),
    ("", {"GCFORK_FAST_EXIT": "soon"}, "GCFORK_FAST_EXIT"),
    ("", {"GCFORK_WARMUP": "/a,b"}, "GCFORK_WARMUP"),
    # Over the C int that gc.set_threshold takes: accepted once, then every
    # worker ran with its GC off.
    ("thresholds=(2**31,)", {}, "'thresholds'"),
    ("", {"GCFORK_THRESHOLDS": "2147483648"}, "'thresholds'"),
    ("thresholds=lambda w: (2**40,)", {}, "'thresholds'"),
    # Values whose error message used to fail in turn, or fail later.
    ("collect_before_freeze=10**5000", {}, "'collect_before_freeze'"),
    ("report_interval=10**400", {}, "'report_interval'"),
    ("report_interval=1e300", {}, "'report_interval'"),
    ("stats_dir='/tmp/a\\0b'", {}, "'stats_dir'"),
    # Found by the torture suite's fuzzing: a RecursionError inside the error
    # message, and a path accepted that no file system call can encode.
    ("thresholds=__import__('functools').reduce(lambda a, _: [a], range(50000), [])", {},
     "'thresholds'"),
    ("warmup=__import__('functools').reduce(lambda a, _: [a], range(50000), [])", {}, "'warmup'"),
    ("stats_dir='/\\ud800'", {}, "'stats_dir'"),
    # Wrong case: was silently ignored.
    ("", {"GCFORK_Mode": "off"}, "GCFORK_Mode"),
    ("", {"gcfork_mode": "disable"}, "gcfork_mode"),
]


@pytest.mark.parametrize(("settings", "env", "named"), BAD_SETTINGS)
def test_bad_setting_stops_gunicorn_before_any_fork(
    start_server: StartServer, settings: str, env: dict[str, str], named: str
) -> None:
    server = start_server(conf(settings), env=env, ready=False)
    assert server.proc is not None
    status = server.proc.wait(timeout=20)
    log = server.log()
    assert status != 0
    errors = [line for line in log.splitlines() if line.startswith("gcfork: error:")]
    assert len(errors) == 1, log
    assert named in errors[0] and "allowed:" in errors[0]
    assert "Booting worker" not in log
    assert "Traceback" not in log
