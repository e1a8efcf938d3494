"""The ``gcfork`` command, run as a user would, against real gunicorn masters."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

import jsonschema
import psutil
import pytest

from gcfork.config import settings_markdown
from gcfork.memory import process_start
from gcfork.stats import advertised, runtime_dirs
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
    assert lines[0].startswith(f"cluster of master {server.pid}: 2 workers")
    head = next(line for line in lines if line.startswith("ROLE"))
    for column in ("PID", "AGE", "REQS", "RSS", "PSS", "USS", "SHARED", "GC", "MAX PAUSE"):
        assert column in head
    assert sum(line.startswith("worker ") for line in lines) == 2
    assert any(line.startswith("copy-on-write saves") and "across 2 workers" in line
               for line in lines)
    by_file = gcfork("report", "--pidfile", str(pidfile), "--unit", "MB")
    assert by_file.returncode == 0, by_file.stderr
    assert f"cluster of master {server.pid}" in by_file.stdout and " MB " in by_file.stdout


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
    assert "gcfork masters are running; choose one with --pid" in done.stderr
    for server in servers:
        assert f"--pid {server.pid} " in done.stderr
    assert "Traceback" not in done.stderr


# Run in a new pid namespace as its pid 1: starts gunicorn (behind the wrapper
# given as more arguments, if any), waits for the master gcfork advertises, and
# prints what `gcfork report` said.
ALONE = """
import socket, subprocess, sys, time
import psutil
conf, log, wrapper = sys.argv[1], sys.argv[2], sys.argv[3:]
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(16)
with open(log, "ab") as out:
    top = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "gunicorn", "-c", conf, "--bind",
         f"fd://{sock.fileno()}", "tests.apps.gcstate:app"],
        pass_fds=(sock.fileno(),), stdout=out, stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "."})
deadline = time.monotonic() + 60
master = top.pid
while time.monotonic() < deadline:
    if wrapper:
        children = psutil.Process(top.pid).children()
        master = children[0].pid if children else 0
    text = open(log, errors="replace").read()
    if master and "gcfork: GC statistics in" in text and psutil.Process(master).children():
        break
    time.sleep(0.1)
done = subprocess.run([sys.executable, "-m", "gcfork", "report"], capture_output=True,
                      text=True)
print(master, top.pid, done.returncode)
print(done.stderr + done.stdout)
top.terminate()
top.wait(20)
"""


@pytest.mark.parametrize("wrapper", [[], ["timeout", "60"]], ids=["bare", "timeout"])
def test_the_only_master_is_found_on_its_own(tmp_path: Path, wrapper: list[str]) -> None:
    # Other gunicorn masters may run on this machine: this one runs alone in a
    # new pid namespace, where it is the only master there is. Behind a wrapper
    # whose command line also says gunicorn, the wrapper is not the master.
    conf = tmp_path / "conf.py"
    conf.write_text(CONF + "workers = 1\ncontrol_socket_disable = True\n")
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", ALONE,
             str(conf), str(tmp_path / "log"), *wrapper],
            capture_output=True, text=True, timeout=90, cwd=REPO,
        )
    except FileNotFoundError:
        pytest.skip("no unshare(1)")
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"cannot make a pid namespace: {done.stderr.strip()}")
    first, rest = done.stdout.split("\n", 1)
    pid, top, status = first.split()
    assert status == "0", done.stdout + done.stderr
    assert (pid == top) is not bool(wrapper)
    assert f"gcfork: reporting the cluster of {pid} (" in rest
    assert f"cluster of master {pid}: 1 worker, 2 processes" in rest
    assert "dirty" not in rest and "note:" not in rest and "across 1 worker." in rest


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


@contextmanager
def watching(*args: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """Run ``gcfork report --watch``; its stdout lines arrive in the list as
    they are printed, so a test waits for output instead of for time."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcfork", "report", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO, preexec_fn=like_a_terminal,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        yield proc, lines
        proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_watch_refreshes_until_interrupted_or_the_master_exits(
    start_server: StartServer,
) -> None:
    server = start_server(CONF, workers=1)
    with watching("--pid", str(server.pid), "--json", "--watch", "0.2") as (watch, lines):
        # Generous: a loaded 2-core CI machine may take seconds to start Python.
        wait_for(lambda: len(lines) >= 2, timeout=60, what="two JSON documents")
        watch.send_signal(signal.SIGINT)
    err = watch.stderr.read() if watch.stderr else ""
    assert watch.returncode == 0, err
    documents = [json.loads(line) for line in lines]
    assert len(documents) >= 2 and len({d["taken"] for d in documents}) == len(documents)

    with watching("--pid", str(server.pid), "--watch", "0.2") as (table, lines):
        wait_for(lambda: "".join(lines).count("copy-on-write saves") >= 2, timeout=60,
                 what="two tables")
        server.stop()
    out = "".join(lines)
    err = table.stderr.read() if table.stderr else ""
    assert table.returncode == 1
    assert out.count("copy-on-write saves") >= 2
    assert f"master {server.pid} exited; run `gcfork report` again" in err
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


def test_help_shows_percent_signs_as_typed() -> None:
    done = gcfork("report", "--help")
    assert done.returncode == 0
    assert "shared %," in done.stdout and "%%" not in done.stdout


@contextmanager
def wrapped_master(tmp_path: Path, *wrapper: str) -> Iterator[tuple[int, int]]:
    """A gcfork master with 2 workers started behind ``wrapper`` (a process
    that forks it and waits, as ``timeout`` does); yields (wrapper, master)."""
    conf = tmp_path / "wrapped.conf.py"
    conf.write_text(CONF + "workers = 2\ncontrol_socket_disable = True\n")
    log = tmp_path / "wrapped.log"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    with open(log, "ab") as out:
        top = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "gunicorn", "-c", str(conf), "--bind",
             f"fd://{sock.fileno()}", "tests.apps.gcstate:app"],
            pass_fds=(sock.fileno(),), stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    family: list[psutil.Process] = []
    try:
        def ready() -> int:
            children = psutil.Process(top.pid).children()
            master = children[0].pid if children else 0
            start = process_start(master) if master else None
            if start is None or advertised(master, start) is None:
                return 0
            return master if len(psutil.Process(master).children()) == 2 else 0

        master = wait_for(ready, timeout=60, what=f"the master behind {wrapper}: "
                          f"{log.read_text(errors='replace')[-2000:]}")
        family = psutil.Process(top.pid).children(recursive=True)
        yield top.pid, master
    finally:
        top.terminate()  # timeout(1) passes SIGTERM on to the master
        try:
            top.wait(20)
        except subprocess.TimeoutExpired:
            top.kill()
            top.wait()
        for proc in family:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        sock.close()


def test_only_an_advertised_master_is_reported(tmp_path: Path) -> None:
    with wrapped_master(tmp_path, "timeout", "60") as (wrapper, master):
        workers = [c.pid for c in psutil.Process(master).children()]
        # The wrapper's command line says gunicorn; it is not the master.
        done = gcfork("report", "--pid", str(wrapper))
        assert done.returncode == 1, done.stdout
        assert (f"pid {wrapper} (timeout) is not a gcfork master; it started gcfork master "
                f"{master}") in done.stderr
        assert f"run gcfork report --pid {master}" in done.stderr and not done.stdout
        # A worker, by --pid or through a pidfile, points at its master.
        done = gcfork("report", "--pid", str(workers[0]))
        assert done.returncode == 1 and not done.stdout
        assert (f"gcfork: error: pid {workers[0]} is a worker of gcfork master {master}: "
                f"run gcfork report --pid {master}") in done.stderr
        pidfile = tmp_path / "worker.pid"
        pidfile.write_text(f"{workers[1]}\n")
        done = gcfork("report", "--pidfile", str(pidfile))
        assert done.returncode == 1
        assert f"pid {workers[1]} is a worker of gcfork master {master}" in done.stderr
        # pid 1 is neither a master nor gunicorn.
        done = gcfork("report", "--pid", "1")
        assert done.returncode == 1 and not done.stdout
        assert "gcfork: error: pid 1 (" in done.stderr
        assert "is not a gcfork master" in done.stderr and "Traceback" not in done.stderr
        # The real master, behind its wrapper, with its two workers as workers.
        done = gcfork("report", "--pid", str(master))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"cluster of master {master}: 2 workers, 3 processes, "
                                      "master GC off")
        assert sum(line.startswith("worker ") for line in done.stdout.splitlines()) == 2
        assert "dirty" not in done.stdout and "note:" not in done.stdout


NO_GCFORK = "preload_app = True\n"


def test_gunicorn_without_gcfork_is_refused(start_server: StartServer) -> None:
    server = start_server(NO_GCFORK, workers=1)
    for pid in (server.pid, server.worker_pids()[0]):
        done = gcfork("report", "--pid", str(pid))
        assert done.returncode == 1 and not done.stdout
        assert (f"pid {pid} runs gunicorn but advertises no gcfork stats (gcfork not "
                "installed in its config?)") in done.stderr


def test_a_master_that_could_not_advertise_needs_its_stats_dir(
    start_server: StartServer,
) -> None:
    server = start_server(CONF, workers=1)
    start = process_start(server.pid)
    assert start is not None
    stats_dir = advertised(server.pid, start)
    assert stats_dir is not None
    # As when no runtime directory was writable: the master logged its --stats-dir.
    for directory in runtime_dirs():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, f"{server.pid}-{start}.json"))
    done = gcfork("report", "--pid", str(server.pid))
    assert done.returncode == 1 and "advertises no gcfork stats" in done.stderr
    wait_for(lambda: f"{server.pid}-{start}.json" in os.listdir(stats_dir),
             what="the master's record")
    done = gcfork("report", "--pid", str(server.pid), "--stats-dir", stats_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"cluster of master {server.pid}: 1 worker, ")
    # The stats directory vouches for its master only, not for a worker.
    worker = server.worker_pids()[0]
    done = gcfork("report", "--pid", str(worker), "--stats-dir", stats_dir)
    assert done.returncode == 1 and f"pid {worker} runs gunicorn" in done.stderr
