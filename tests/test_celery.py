"""gcfork.celery against a real Celery worker (prefork pool, billiard) and a
real Redis broker started on a free loopback port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, wait_for

celery = pytest.importorskip("celery", reason="gcfork.celery needs the celery extra")

THRESHOLDS = [777, 7, 7]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away redis-server on 127.0.0.1, no persistence; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = ("redis-server is not installed (Debian: apt-get install -y redis-server; "
                   "`make test` installs it when run as root)")
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(message + "; CI expects it here")
        pytest.skip(message)
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_for(answers, timeout=30, what=f"redis-server on port {port}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=30)


class Worker:
    """``celery -A tests.apps.celery_app worker`` with a prefork pool."""

    def __init__(self, broker: str, log: Path, env: dict[str, str], *args: str) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.apps.celery_app", "worker",
             "--pool", "prefork", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-n", f"gcfork-{os.getpid()}-{time.monotonic_ns()}@%h",
             *args],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO), "TEST_CELERY_BROKER": broker, **env})
        wait_for(lambda: "ready." in self.log() or self.proc.poll() is not None,
                 timeout=120, what="the Celery worker")
        assert self.proc.poll() is None, self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.log()


def _run_tasks(broker: str, count: int, delay: float) -> list[dict[str, Any]]:
    client = celery.Celery(broker=broker, backend=broker)
    try:
        results = [client.send_task("tests.apps.celery_app.gc_state", args=[delay])
                   for _ in range(count)]
        return [r.get(timeout=120) for r in results]
    finally:
        client.close()


def test_every_prefork_child_gets_the_policy(redis_url: str, tmp_path: Path) -> None:
    worker = Worker(redis_url, tmp_path / "worker.log",
                    {"GCFORK_THRESHOLDS": "777,7,7", "GCFORK_REPORT_INTERVAL": "1"},
                    "-c", "2", "--max-tasks-per-child", "2")
    try:
        states = _run_tasks(redis_url, 10, 0.1)
        parent = worker.proc.pid
        # Replacements: 10 tasks, each child retired after 2.
        assert len({s["pid"] for s in states}) >= 4, states
        for state in states:
            assert state["ppid"] == parent, state
            assert state["enabled"] is True and state["thresholds"] == THRESHOLDS, state
            # Made in the parent right before this child's own fork, and frozen.
            assert state["marker_frozen"] is True and state["freeze_count"] > 0, state
            # `celery worker` imported the app with the GC on; off from install().
            assert state["enabled_before_install"] is True, state
            assert state["enabled_at_import"] is False, state

        def full_report() -> dict[str, Any] | None:
            done = subprocess.run([sys.executable, "-m", "gcfork", "report", "--pid",
                                   str(parent), "--json"], capture_output=True, text=True,
                                  timeout=60, cwd=REPO)
            assert done.returncode == 0, done.stderr
            report: dict[str, Any] = json.loads(done.stdout)
            workers = [p for p in report["processes"] if p["role"] == "worker"]
            return report if len(workers) == 2 and all(p["gc"] for p in workers) else None

        report = wait_for(full_report, what="both pool children's records")
        # The periodic line, through Celery's logger in the parent.
        wait_for(lambda: "INFO/MainProcess] gcfork: memory: 2 workers" in worker.log(),
                 what="the periodic memory line")
        first = report["processes"][0]
        assert first["role"] == "celery-parent" and first["pid"] == parent, report
        assert report["master"]["gc_enabled"] is False, report
        for row in report["processes"][1:]:
            assert row["role"] == "worker", row
            assert row["gc"]["enabled"] is True and row["gc"]["thresholds"] == THRESHOLDS, row
    finally:
        log = worker.stop()
    assert "Traceback" not in log and "ERROR" not in log, log
    assert log.count("GC on, thresholds (777, 7, 7)") >= 4, log
    assert "gcfork: mode=freeze" in log and "report at exit" in log, log
    assert "cluster of celery-parent" in log, log


def test_a_thresholds_callable_gets_billiards_index(redis_url: str, tmp_path: Path) -> None:
    # GCFORK_* wins over install(): a callable cannot come from the environment,
    # so the app reads it from its own variable.
    worker = Worker(redis_url, tmp_path / "worker.log", {"TEST_CELERY_CALLABLE": "1"},
                    "-c", "2", "--max-tasks-per-child", "1")
    try:
        states = _run_tasks(redis_url, 6, 0.1)
    finally:
        log = worker.stop()
    indexes = set()
    for state in states:
        first, _, index = state["thresholds"]
        assert first > 1000 and index in (10, 11), state  # age = fork number; 10 + index
        indexes.add(index)
    assert indexes == {10, 11}, states
    assert "ERROR" not in log, log


def test_a_process_that_only_imports_the_app_keeps_its_gc(redis_url: str) -> None:
    # A web server or a script sending tasks imports the app too.
    done = subprocess.run(
        [sys.executable, "-c", "import gc, tests.apps.celery_app as a; "
         "print(a.ENABLED_AT_IMPORT, gc.isenabled())"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "TEST_CELERY_BROKER": redis_url})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"], done.stdout


def test_the_example_runs_under_load_and_reports(redis_url: str) -> None:
    pytest.importorskip("redis", reason="the example's broker client (extra 'celery')")
    done = subprocess.run(
        [sys.executable, "examples/celery_app/run.py", "--tasks", "200", "--concurrency", "2"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "SHOP_BROKER": redis_url})
    assert done.returncode == 0, done.stderr
    assert "cluster of celery-parent" in done.stdout, done.stdout
    assert "2 workers" in done.stdout and "200 tasks in" in done.stdout, done.stdout
