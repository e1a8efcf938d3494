"""Fixtures that start real gunicorn masters with real forked workers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gcfork.tools.server import GunicornProcess

REPO = Path(__file__).resolve().parent.parent
VENVS = REPO / ".venvs"
# How long a test waits for a server to boot before failing (see start_server).
BOOT_CAP = 120.0

StartServer = Callable[..., GunicornProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start a gunicorn master whose config file is ``conf``; stopped at teardown.

    ``conf`` is the config file's text (dedented); ``ready`` waits for that many
    workers. The test app and gcfork are importable through PYTHONPATH.
    """
    servers: list[tuple[GunicornProcess, bool]] = []

    def start(
        conf: str,
        workers: int = 2,
        app: str = "tests.apps.gcstate:app",
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        ready: bool = True,
        args: Sequence[str] = (),
        expect_errors: bool = False,
        inherit_socket: bool = True,
    ) -> GunicornProcess:
        n = len(servers)
        config = tmp_path / f"gunicorn_{n}.conf.py"
        # control_socket_disable: gunicorn 24+ would share one control socket path
        # between concurrent test servers; older versions ignore the unknown name.
        header = f"workers = {workers}\ncontrol_socket_disable = True\n"
        config.write_text(header + textwrap.dedent(conf))
        server = GunicornProcess(
            app, config, tmp_path / f"gunicorn_{n}.log", python=python, cwd=REPO,
            env={"PYTHONPATH": str(REPO), **(env or {})}, args=args,
            inherit_socket=inherit_socket,
        )
        servers.append((server, expect_errors))
        server.start()
        if ready:
            # A cap for a server that never comes up, not a timing assumption:
            # a preloaded Django boot on a loaded 2-core machine can take 20 s.
            server.wait_ready(workers, timeout=BOOT_CAP)
        return server

    yield start
    for server, _ in servers:
        server.stop()
    for server, expect_errors in servers:
        if not expect_errors:
            assert_clean_log(server.log())


# What a server's log must not hold unless a test provokes it: gcfork logs its
# own failures and carries on, so a test that does not read the log would pass
# with a broken hook.
LOG_FAILURES = ("Traceback", "hook failed", "[ERROR] gcfork", "[CRITICAL]")


def assert_clean_log(log: str) -> None:
    bad = [line for line in log.splitlines() if any(f in line for f in LOG_FAILURES)]
    assert not bad, "the server's log holds failures:\n" + "\n".join(bad[:20]) + (
        "\n--- log tail ---\n" + log[-3000:])


def worker_states(server: GunicornProcess, count: int, timeout: float = 60.0) -> dict[int, Any]:
    """Ask every live worker for its GC state: ``{pid: state}`` for ``count`` workers.

    Concurrent slow requests spread over the sync workers; only answers from
    pids that are the master's children now are kept.
    """
    deadline = time.monotonic() + timeout
    states: dict[int, Any] = {}
    with ThreadPoolExecutor(max_workers=count * 2) as pool:
        while time.monotonic() < deadline:
            live = set(server.worker_pids())
            states = {pid: s for pid, s in states.items() if pid in live}
            if len(states) >= count and len(live) == count:
                return states
            answers = pool.map(lambda _: server.get("/gc?sleep=0.15"), range(count * 2))
            for status, body in answers:
                assert status == 200, body
                state = json.loads(body)
                if state["pid"] in live:
                    states[state["pid"]] = state
    raise AssertionError(f"saw {sorted(states)} of {count} workers:\n{server.log()[-2000:]}")


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def like_a_terminal() -> None:
    """``preexec_fn`` for a command that a test stops with SIGINT, as Ctrl-C.

    A shell that runs the test suite in the background makes its jobs ignore
    SIGINT, and the children inherit that: Python then installs no Ctrl-C
    handler. A terminal's foreground job has the default disposition; so does
    the child started with this.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def pyenv_python(minor: str) -> str | None:
    """The newest pyenv CPython ``3.<minor>.x`` on this machine, or None."""
    try:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        root = os.path.expanduser("~/.pyenv")
    versions = Path(root, "versions")
    found = sorted(
        (p for p in versions.glob(f"{minor}.*") if p.name.replace(".", "").isdigit()),
        key=lambda p: tuple(int(x) for x in p.name.split(".")),
    ) if versions.is_dir() else []
    for candidate in reversed(found):
        python = candidate / "bin" / "python"
        if python.exists():
            return str(python)
    return None


def venv_with(python: str, name: str, *requirements: str) -> str:
    """A cached virtual environment made by ``python`` with ``requirements``;
    returns its interpreter. Built once under ``.venvs/`` (ignored by git)."""
    target = VENVS / name
    bin_python = target / "bin" / "python"
    marker = target / ".complete"
    wanted = " ".join([python, *requirements])
    if not marker.exists() or marker.read_text() != wanted:
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(target)], check=True)
        subprocess.run([str(bin_python), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check",
                        *requirements], check=True)
        marker.write_text(wanted)
    return str(bin_python)


def find_python(minor: str) -> str | None:
    """CPython ``3.<minor>`` on this machine, or None.

    Looked for, in order: ``TEST_PYTHONS`` (``3.14=/path/python3.14``
    pairs separated by spaces or commas, for interpreters installed anywhere),
    pyenv, then the interpreter installer that ``make test`` runs
    (``TEST_PYTHONS_INSTALLER``, asked with ``--print-path``).
    """
    for pair in os.environ.get("TEST_PYTHONS", "").replace(",", " ").split():
        version, _, path = pair.partition("=")
        if version == minor and Path(path).exists():
            return path
    python = pyenv_python(minor)
    installer = os.environ.get("TEST_PYTHONS_INSTALLER")
    if python is None and installer:
        found = subprocess.run(["bash", installer, "--print-path", minor],
                               capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip():
            python = found.stdout.strip()
    return python


def require_python(minor: str) -> str:
    """:func:`find_python` or skip, naming what is missing; under ``CI`` an
    interpreter the machine should have (``TEST_PYTHONS_EXPECTED``, set by the
    Makefile) fails the test instead of skipping it."""
    python = find_python(minor)
    if python is not None:
        return python
    expected = os.environ.get("TEST_PYTHONS_EXPECTED", "").split()
    message = (f"CPython {minor} is not on this machine (pyenv versions --bare, "
               "TEST_PYTHONS, TEST_PYTHONS_INSTALLER)")
    if os.environ.get("CI") and minor in expected:
        pytest.fail(message + "; CI expects it here")
    pytest.skip(message)


def gunicorn_interpreter(minor: str, gunicorn: str = "gunicorn") -> str:
    """CPython ``3.<minor>`` in a cached venv with ``gunicorn`` (a requirement,
    e.g. ``gunicorn==23.0.0``) and psutil (gcfork's tools); see
    :func:`require_python` for where it comes from."""
    python = require_python(minor)
    return venv_with(python, f"py{minor}-{gunicorn.replace('==', '-')}", gunicorn, "psutil")


def smaps_rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in bytes, read directly (not through gcfork)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        lines = f.read().splitlines()[1:]
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines}


def uss(pid: int) -> int:
    """Bytes only this process maps: private clean + private dirty."""
    fields = smaps_rollup(pid)
    return fields["Private_Clean"] + fields["Private_Dirty"]


@contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """Freeze the processes (SIGSTOP) so that their figures cannot move while read."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
