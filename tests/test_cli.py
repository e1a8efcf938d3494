"""The ``gcfork`` command, run as a user would, against real gunicorn masters."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest

from gcfork.config import settings_markdown
from tests.conftest import REPO, StartServer, like_a_terminal, wait_for

CONF = "import gcfork; gcfork.install(globals(), report_interval=0)\npreload_app = True\n"


def gcfork(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gcfork", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_report_by_pid_and_by_pidfile(start_server: StartServer, tmp_path: Path) -> None:
    pidfile = tmp_path / "gunicorn.pid"
    server = start_server(CONF + f"pidfile = {str(pidfile)!r}\n", workers=2)
    wait_for(pidfile.exists, what="the pidfile")
    by_pid = gcfork("report", "--pid", str(server.pid))
    assert by_pid.returncode == 0, by_pid.stderr
    lines = by_pid.stdout.splitlines()
    assert lines[0].startswith(f"gunicorn master {server.pid}: 2 workers")
    head = next(line for line in lines if line.startswith("ROLE"))
    for column in ("PID", "AGE", "REQS", "RSS", "PSS", "USS", "SHARED", "GC", "MAX PAUSE"):
        assert column in head
    assert sum(line.startswith("worker ") for line in lines) == 2
    assert any(line.startswith("copy-on-write saves") and "across 2 workers" in line
               for line in lines)
    by_file = gcfork("report", "--pidfile", str(pidfile), "--unit", "MB")
    assert by_file.returncode == 0, by_file.stderr
    assert f"gunicorn master {server.pid}" in by_file.stdout and " MB " in by_file.stdout


def test_json_follows_the_published_schema(start_server: StartServer) -> None:
    server = start_server(CONF, workers=2)
    wait_for(lambda: '"requests": 0' in gcfork("report", "--pid", str(server.pid),
                                               "--json").stdout, what="worker records")
    done = gcfork("report", "--pid", str(server.pid), "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    schema = json.loads(files("gcfork").joinpath("report.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
    assert document["schema"] == 1
    assert document["master"] == {"pid": server.pid, "start": document["master"]["start"],
                                  "gc_enabled": False}
    assert [p["role"] for p in document["processes"]] == ["master", "worker", "worker"]


def test_several_masters_are_listed(start_server: StartServer) -> None:
    servers = [start_server(CONF, workers=1), start_server(CONF, workers=1)]
    done = gcfork("report")
    assert done.returncode == 1
    assert "gunicorn masters are running; choose one with --pid" in done.stderr
    for server in servers:
        assert f"--pid {server.pid} " in done.stderr
    assert "Traceback" not in done.stderr


ALONE = """
import subprocess, sys
from gcfork.server import GunicornProcess
server = GunicornProcess("tests.apps.gcstate:app", sys.argv[1], sys.argv[2], cwd=".",
                         env={"PYTHONPATH": "."})
with server:
    server.wait_ready(1)
    done = subprocess.run([sys.executable, "-m", "gcfork", "report"], capture_output=True,
                          text=True)
    print(server.pid, done.returncode)
    print(done.stderr + done.stdout)
"""


def test_the_only_master_is_found_on_its_own(tmp_path: Path) -> None:
    # Other gunicorn masters may run on this machine: this one runs alone in a
    # new pid namespace, where it is the only master there is.
    conf = tmp_path / "conf.py"
    conf.write_text(CONF + "workers = 1\ncontrol_socket_disable = True\n")
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", ALONE,
             str(conf), str(tmp_path / "log")],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )
    except FileNotFoundError:
        pytest.skip("no unshare(1)")
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"cannot make a pid namespace: {done.stderr.strip()}")
    first, rest = done.stdout.split("\n", 1)
    pid, status = first.split()
    assert status == "0", done.stdout + done.stderr
    assert f"gcfork: reporting gunicorn master {pid} (" in rest
    assert f"gunicorn master {pid}: 1 workers" in rest


def test_master_gone_and_usage_errors(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(CONF, workers=1)
    pid = server.pid
    server.stop()
    gone = gcfork("report", "--pid", str(pid))
    assert gone.returncode == 1
    assert f"no process {pid} is running" in gone.stderr and "Traceback" not in gone.stderr
    missing = gcfork("report", "--pidfile", str(tmp_path / "nope.pid"))
    assert missing.returncode == 1 and "is gunicorn running with --pidfile" in missing.stderr
    for bad in (["report", "--pid", "0"], ["report", "--watch", "-1"],
                ["report", "--pid", "1", "--pidfile", "x"], ["nonsense"], []):
        done = gcfork(*bad)
        assert done.returncode == 2, (bad, done.stderr)
        assert "usage: gcfork" in done.stderr


def test_watch_refreshes_until_interrupted_or_the_master_exits(
    start_server: StartServer,
) -> None:
    server = start_server(CONF, workers=1)
    watch = subprocess.Popen(
        [sys.executable, "-m", "gcfork", "report", "--pid", str(server.pid), "--json",
         "--watch", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        preexec_fn=like_a_terminal,
    )
    time.sleep(1.5)
    watch.send_signal(signal.SIGINT)
    try:
        out, err = watch.communicate(timeout=10)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, err
    documents = [json.loads(line) for line in out.splitlines()]
    assert len(documents) >= 2 and len({d["taken"] for d in documents}) == len(documents)

    table = subprocess.Popen(
        [sys.executable, "-m", "gcfork", "report", "--pid", str(server.pid), "--watch", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    time.sleep(1.0)
    server.stop()
    try:
        out, err = table.communicate(timeout=10)
    finally:
        if table.poll() is None:
            table.kill()
    assert table.returncode == 1
    assert out.count("copy-on-write saves") >= 2
    assert f"master {server.pid}" in err and "run `gcfork report` again" in err
    assert "Traceback" not in err


def test_settings_markdown_and_check(tmp_path: Path) -> None:
    done = gcfork("settings", "--markdown")
    assert done.returncode == 0 and done.stdout == settings_markdown()
    assert gcfork("settings", "--check", str(REPO / "docs" / "configuration.md")).returncode == 0
    stale = tmp_path / "configuration.md"
    stale.write_text(settings_markdown().replace("Default", "Dflt"))
    done = gcfork("settings", "--check", str(stale))
    assert done.returncode == 1
    assert "out of date" in done.stderr and "settings --markdown >" in done.stderr
    assert gcfork("settings", "--check", str(tmp_path / "none.md")).returncode == 1
