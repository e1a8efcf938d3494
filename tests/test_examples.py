"""The example apps: set up, served by gunicorn with their own config (gcfork's
one line included), and every path of their ``paths.txt`` answered."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import gunicorn
import psutil
import pytest

from gcfork.tools.server import GunicornProcess
from tests.conftest import REPO, wait_for

EXAMPLES = REPO / "examples"
DJANGO = EXAMPLES / "django_app"
FLASK = EXAMPLES / "flask_app"
FASTAPI = EXAMPLES / "fastapi_app"
WORKERS = 2
# What gcfork logs in each worker right after the fork.
WORKER_LINE = re.compile(r"gcfork: worker slot=\d+ age=\d+ pid=(\d+): GC (on|off), "
                         r"thresholds \([\d, ]+\), (\d+) objects frozen")
# Both apps build more reference data than this at import; far fewer frozen
# objects would mean the app was not imported before the fork.
MIN_FROZEN = 50_000


def _paths(example: Path) -> list[str]:
    lines = (example / "paths.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip()]


def _serve(
    example: Path, app: str, log: Path, env: Mapping[str, str] | None = None
) -> GunicornProcess:
    # Started from the repository root: the config's chdir must find the app.
    args = ["--workers", str(WORKERS)]
    if gunicorn.version_info >= (25,):
        # Concurrent test servers would otherwise share one control socket path.
        args.append("--no-control-socket")
    return GunicornProcess(app, example / "gunicorn.conf.py", log, cwd=REPO, env=env, args=args)


def _check_serves(server: GunicornProcess, paths: list[str]) -> None:
    workers = server.wait_ready(WORKERS)
    for path in paths:
        status, body = server.get(path)
        assert status == 200, f"GET {path}: {status}\n{body[:500]!r}\n{server.log()[-2000:]}"
    # No worker died or was replaced while serving the mix.
    assert server.worker_pids() == workers, server.log()[-2000:]
    _check_worker_gc(server, workers)


def _check_worker_gc(server: GunicornProcess, workers: list[int]) -> None:
    states = {int(m[1]): (m[2], int(m[3])) for m in WORKER_LINE.finditer(server.log())}
    for pid in workers:
        assert pid in states, f"no gcfork line for worker {pid}:\n{server.log()[-2000:]}"
        enabled, frozen = states[pid]
        assert enabled == "on"
        assert frozen >= MIN_FROZEN, f"worker {pid}: only {frozen} objects frozen"


# -- Django -----------------------------------------------------------------


def _setup_demo(db: Path) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", "setup_demo"], cwd=DJANGO,
        env={**os.environ, "DJANGO_APP_DB": str(db)},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def django_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    pytest.importorskip("django", reason="the Django example needs django (extra 'examples')")
    db = tmp_path_factory.mktemp("django") / "shop.sqlite3"
    assert "demo data created" in _setup_demo(db)
    yield db


def test_django_setup_is_idempotent(django_db: Path) -> None:
    size = django_db.stat().st_size
    assert "nothing to do" in _setup_demo(django_db)
    assert django_db.stat().st_size == size


def test_django_example_serves_its_paths(django_db: Path, tmp_path: Path) -> None:
    paths = _paths(DJANGO)
    assert "/admin/login/?next=/admin/" in paths and any(p.startswith("/cycles/") for p in paths)
    server = _serve(DJANGO, "shopsite.wsgi:application", tmp_path / "gunicorn.log",
                    env={"DJANGO_APP_DB": str(django_db)})
    with server:
        _check_serves(server, paths)
        # The app queried the database while preloading; the config's pre_fork
        # hook must have closed that connection, so the master holds no handle.
        held = [f.path for f in psutil.Process(server.pid).open_files()]
        assert not [p for p in held if p.startswith(str(django_db))], held


# -- Flask ------------------------------------------------------------------


def test_flask_example_serves_its_paths(tmp_path: Path) -> None:
    pytest.importorskip("flask", reason="the Flask example needs flask (extra 'examples')")
    paths = _paths(FLASK)
    assert any(p.startswith("/api/cycles") for p in paths)
    with _serve(FLASK, "wsgi:app", tmp_path / "gunicorn.log") as server:
        _check_serves(server, paths)


# -- FastAPI ----------------------------------------------------------------


def test_fastapi_example_serves_its_paths_under_uvicorns_worker_warmed_up(
    tmp_path: Path,
) -> None:
    pytest.importorskip("fastapi", reason="the FastAPI example needs fastapi (extra 'examples')")
    pytest.importorskip("uvicorn_worker", reason="its config runs uvicorn's worker (extra "
                        "'uvicorn')")
    paths = _paths(FASTAPI)
    assert any(p.startswith("/suppliers/") for p in paths)  # a def endpoint: a thread pool
    # Warmed up with the mix: FastAPI's lifespan and thread pool run in the master.
    env = {"GCFORK_WARMUP": ",".join(dict.fromkeys(paths))}
    with _serve(FASTAPI, "parts.app:app", tmp_path / "gunicorn.log", env=env) as server:
        server.wait_ready(WORKERS)
        # uvicorn's workers answer before the second has logged its GC line.
        wait_for(lambda: len(WORKER_LINE.findall(server.log())) >= WORKERS,
                 what="every worker's gcfork line")
        _check_serves(server, paths)
        status, body = server.get("/health")
        # Each worker ran its own lifespan startup after the master's shutdown.
        assert status == 200 and b'"inventory":true' in body.replace(b" ", b"")
        log = server.log()
        assert f"gcfork: warm-up in the master: {len(set(paths))} requests" in log
        assert "left threads running" not in log
        assert "worker_class uvicorn_worker.UvicornWorker" in log
