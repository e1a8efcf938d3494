"""gcfork.fork against real multiprocessing pools (fork and forkserver), with
maxtasksperchild so that replacement children are covered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

THRESHOLDS = [777, 7, 7]


Json = dict[str, Any]


def _run_pool(method: str, env: dict[str, str],
              go: Path) -> tuple[list[Json], Json, Json | None, str]:
    """Run tests/apps/pool_main.py; returns the task states, `gcfork report
    --json` of the template taken while the pool ran, what the app printed
    at the end (fork only) and its log."""
    app = subprocess.Popen(
        [sys.executable, "-m", "tests.apps.pool_main", method, str(go)], cwd=REPO,
        env={"PYTHONPATH": str(REPO), **env}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert app.stdout is not None
    try:
        line = app.stdout.readline()
        assert line, app.communicate(timeout=30)[1]
        states = json.loads(line)["states"]
        template = states[0]["ppid"]
        done = subprocess.run([sys.executable, "-m", "gcfork", "report", "--pid", str(template),
                               "--json"], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        go.touch()
        out, log = app.communicate(timeout=60)
    finally:
        if app.poll() is None:
            app.kill()
    assert app.returncode == 0, log
    end = json.loads(out) if out.strip() else None
    return states, report, end, log


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_every_pool_child_gets_the_policy(method: str, tmp_path: Path) -> None:
    states, report, end, log = _run_pool(method, {"GCFORK_THRESHOLDS": "777,7,7"},
                                         tmp_path / "go")
    template = states[0]["ppid"]
    # Replacements: 10 tasks, 2 children retired every 2 tasks.
    assert len({s["pid"] for s in states}) >= 4, states
    for state in states:
        assert state["ppid"] == template, state
        assert state["enabled"] is True and state["thresholds"] == THRESHOLDS, state
        # Made in the template right before this child's own fork, and frozen:
        # the freeze came after it, before that fork, for replacements too.
        assert state["marker_frozen"] is True and state["freeze_count"] > 0, state
    assert "ERROR" not in log and "Traceback" not in log, log
    assert "GC on, thresholds (777, 7, 7)" in log, log
    # The report names the template and its children, each with its own record.
    first = report["processes"][0]
    assert first["role"] == "template" and first["pid"] == template, report
    assert report["master"]["gc_enabled"] is False, report
    workers = [p for p in report["processes"] if p["role"] == "worker"]
    assert len(workers) == 2 and report["totals"]["workers"] == 2, report
    for row in workers:
        assert row["gc"] is not None, report  # published from inside the child
        assert row["gc"]["enabled"] is True and row["gc"]["thresholds"] == THRESHOLDS, row
    if method == "fork":
        assert end is not None and end["template_gc"] is False, end
        # The last two children ended with the pool; multiprocessing's exit
        # finalizers wrote their final records, with their USS.
        assert len(end["final"]) >= 2, end
        assert all(r["uss_at_exit"] and r["role"] == "worker" for r in end["final"]), end


def test_a_thresholds_callable_is_asked_per_fork(tmp_path: Path) -> None:
    # A pool has no slots gcfork sees: age is the template's fork number,
    # index the same from 0 (gcfork.fork.worker_info).
    states, _, _, log = _run_pool("forkserver", {"TEST_POOL_CALLABLE": "1"}, tmp_path / "go")
    for state in states:
        n = state["fork_number"]
        assert state["thresholds"] == [1000 + n, 5, 5 + n - 1], state
    assert "ERROR" not in log, log


@pytest.mark.parametrize(("settings", "named"), [
    ("mode='nope'", "'mode'"),
    ("warmup=['/']", "'warmup'"),
    ("thresholds=(1, 2, 3, 4)", "'thresholds'"),
])
def test_a_bad_setting_is_refused_in_one_line(settings: str, named: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import gcfork.fork; gcfork.fork.install({settings})"],
        capture_output=True, text=True, timeout=60, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gcfork: error: ") and named in lines[0], (
        done.stderr)
    assert "allowed:" in lines[0]


def test_a_template_loads_no_tool_and_no_other_adapter() -> None:
    # Code that runs in a server is paid for by every process of it.
    code = ("import sys, gcfork.fork; gcfork.fork.install(); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('gcfork', 'psutil', "
            "'gunicorn', 'celery')))), flush=True)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert "gcfork.pool" in loaded, loaded
    assert not [m for m in loaded if m.startswith(("gcfork.tools", "gcfork.gunicorn", "psutil",
                                                   "gunicorn", "celery", "gcfork.warmup"))], loaded
