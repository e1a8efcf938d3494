"""The GC-state checks on every CPython 3.9-3.13 the machine has, and on an old gunicorn.

Each interpreter gets a cached virtual environment under ``.venvs/`` with
gunicorn and psutil; gcfork itself comes from the source tree (PYTHONPATH).
An interpreter that pyenv does not hold is skipped, naming it.
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.conftest import StartServer, gunicorn_interpreter, wait_for, worker_states

CONF = """
import gcfork; gcfork.install(globals(), thresholds=lambda w: (3000 + w.index, 10, 10))
preload_app = True
"""


def check_cluster(start_server: StartServer, python: str) -> str:
    server = start_server(CONF, python=python, workers=2)
    states = worker_states(server, 2)
    assert sorted(s["thresholds"] for s in states.values()) == [[3000, 10, 10], [3001, 10, 10]]
    assert all(s["enabled"] and s["freeze_count"] > 0 for s in states.values())
    server.signal(signal.SIGTTIN)
    wait_for(lambda: len(server.worker_pids()) == 3, what="TTIN")
    states = worker_states(server, 3)
    assert sorted(s["thresholds"][0] for s in states.values()) == [3000, 3001, 3002]
    old = set(server.worker_pids())
    # The reload re-reads the config file, and with it workers = 2.
    server.signal(signal.SIGHUP)
    wait_for(lambda: len(server.worker_pids()) == 2 and not old & set(server.worker_pids()),
             what="HUP's new workers")
    states = worker_states(server, 2)
    assert sorted(s["thresholds"][0] for s in states.values()) == [3000, 3001]
    assert all(s["enabled"] and s["freeze_count"] > 0 for s in states.values())
    status, body = server.get("/fork")
    assert status == 200 and json.loads(body)["child"]["enabled"] is True
    return server.log()


@pytest.mark.slow
@pytest.mark.parametrize("minor", ["3.9", "3.10", "3.11", "3.12", "3.13"])
def test_every_supported_python(start_server: StartServer, minor: str) -> None:
    log = check_cluster(start_server, gunicorn_interpreter(minor))
    assert f"CPython {minor}." in log


@pytest.mark.slow
def test_oldest_supported_gunicorn(start_server: StartServer) -> None:
    log = check_cluster(start_server, gunicorn_interpreter("3.10", "gunicorn==20.1.0"))
    assert "Starting gunicorn 20.1.0" in log
