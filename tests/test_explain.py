"""gcfork.explain: a real worker (forked from a real master) profiles itself;
gcfork.tools.explain asks it and prints the profile."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gcfork import explain
from gcfork.exceptions import CowProfileError
from gcfork.tools import cli
from gcfork.tools.explain import render_explain
from gcfork.trigger import start_trigger
from tests.conftest import REPO, StartServer, wait_for

MASTER = """
    import gc, json, os, sys, time
    from gcfork import explain, trigger
    from gcfork.tools.explain import request_profile

    class Touched:
        def __init__(self, i):
            self.i = i

    class Untouched:
        def __init__(self, i):
            self.i = i

    gc.disable()
    # Allocated in separate runs so that the two kinds sit on different pages.
    touched = [Touched(i) for i in range(30000)]
    untouched = [Untouched(i) for i in range(30000)]
    gc.freeze()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        gc.enable()
        for obj in touched:
            obj.i  # a reference taken: the refcount is written, the page copied
        mode = sys.argv[1]
        if mode == "direct":
            profile = explain.profile_self()
            os.write(write_end, json.dumps(profile.to_json()).encode())
        else:
            trigger.start_trigger(mode, interval=0.1)
            time.sleep(30)
        os._exit(0)
    os.close(write_end)
    if sys.argv[1] == "direct":
        chunks = []
        while chunk := os.read(read_end, 1 << 16):
            chunks.append(chunk)
        sys.stdout.write(b"".join(chunks).decode())
    else:
        deadline = time.monotonic() + 10
        while not os.path.isdir(sys.argv[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        profile = request_profile(pid, sys.argv[1], timeout=20)
        os.kill(pid, 9)
        sys.stdout.write(json.dumps(profile.to_json()))
    os.waitpid(pid, 0)
"""


def profile_of_worker(mode: str) -> explain.CowProfile:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MASTER), mode], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return explain.CowProfile.from_json(json.loads(out.stdout))


def check(profile: explain.CowProfile) -> None:
    inherited = [r for r in profile.by_type if r.origin == "inherited"]
    top = [r.key for r in inherited[:3]]
    assert "__main__.Touched" in top, inherited[:5]
    pages = {r.key: r.pages for r in inherited}
    # 30,000 objects of 48+ bytes: at least 300 pages copied for the touched ones.
    assert pages["__main__.Touched"] > 300
    assert pages.get("__main__.Untouched", 0) < pages["__main__.Touched"] / 10
    modules = {r.key: r.pages for r in profile.by_module if r.origin == "inherited"}
    assert modules["__main__"] >= pages["__main__.Touched"]
    anon = [m for m in profile.mappings if m.group in ("[anon]", "[heap]")]
    assert sum(m.private_dirty for m in anon) > 300 * profile.page_size
    assert profile.exclusive >= profile.with_objects > 0
    text = render_explain(profile)
    assert "__main__.Touched" in text and "[anon]" in text


def test_profile_self_puts_touched_objects_on_top() -> None:
    check(profile_of_worker("direct"))


def test_file_trigger_and_explain_cli(tmp_path: Path) -> None:
    directory = tmp_path / "explain"
    profile = profile_of_worker(str(directory))
    check(profile)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    (result,) = directory.glob("explain-*.json")
    assert stat.S_IMODE(result.stat().st_mode) == 0o600
    assert cli.main(["explain", "--file", str(result), "--top", "5"]) == 0


def test_explain_reports_a_missing_worker(tmp_path: Path) -> None:
    assert cli.main(["explain", "--pid", "999999999", "--dir", str(tmp_path)]) == 1


def test_write_profile_is_private_and_round_trips(tmp_path: Path) -> None:
    profile = explain.CowProfile(
        pid=1, started=2, ppid=0, taken=0.0, seconds=0.1, python="3.12.1", page_size=4096,
        frozen=0, scanned=0, exclusive=0, with_objects=0,
        by_type=[explain.ObjectRow("dict", "inherited", 3, 300, 2)],
    )
    path = tmp_path / "p.json"
    explain.write_profile(profile, str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert explain.read_profile(str(path)) == profile


def test_start_trigger_refuses_a_directory_others_may_enter(tmp_path: Path) -> None:
    directory = tmp_path / "explain"
    directory.mkdir()
    directory.chmod(0o755)
    with pytest.raises(CowProfileError, match=re.escape(f"refusing directory {directory}: ")
                       + ".*mode 0755"):
        start_trigger(str(directory))


def test_the_server_side_loads_no_profiler_and_no_tool() -> None:
    # The worker's poll and start_trigger live in gcfork.trigger: the profiler
    # is loaded only when a request comes. What the server imports is paid by
    # the whole cluster (docs/benchmarks.md): no psutil on Linux, no hashlib,
    # and nothing of the tools a person runs.
    heavy = ("gcfork.explain", "gcfork.tools", "gcfork.gunicorn.discover", "psutil", "secrets",
             "hashlib", "platform", "concurrent.futures", "argparse")
    code = ("import sys, gcfork, gcfork.gunicorn, gcfork.trigger; "
            f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=60,
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_a_running_server_has_loaded_no_tool(start_server: StartServer) -> None:
    # The same, in a real server after gcfork did its work: the master has
    # sampled the cluster (its periodic line is logged) before it forks the
    # second worker, which inherits whatever the master loaded by then.
    heavy = ("gcfork.explain", "gcfork.tools", "gcfork.gunicorn.discover", "psutil")
    server = start_server("import gcfork; gcfork.install(globals(), report_interval=0.2)\n"
                          "preload_app = True\n", workers=1)
    wait_for(lambda: "gcfork: memory: 1 worker" in server.log(), what="a sampled report")
    server.signal(signal.SIGTTIN)
    wait_for(lambda: len(server.worker_pids()) == 2, what="the second worker")
    loaded: dict[int, list[str]] = {}

    def both() -> bool:
        status, body = server.get("/modules")
        answer = json.loads(body)
        loaded[answer["pid"]] = [m for m in answer["modules"] if m.startswith(heavy)]
        return status == 200 and len(loaded) == 2

    wait_for(both, what="both workers' modules")
    assert all(names == [] for names in loaded.values()), loaded
