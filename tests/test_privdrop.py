"""The stats directory against real gunicorn masters: privilege drop (``user`` and
``group``), a shared ``stats_dir``, and a stats directory swapped for a symlink
by another local user while the server runs."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gcfork.exceptions import CowProfileError
from gcfork.stats import TRIGGER_NAME, StatsDir, StatsRecord
from gcfork.tools.explain import request_profile
from gcfork.tools.server import GunicornProcess
from tests.conftest import StartServer, wait_for

CONF = "import gcfork; gcfork.install(globals(){settings})\npreload_app = True\n{extra}\n"


def conf(settings: str = "", extra: str = "") -> str:
    return CONF.format(settings=", " + settings if settings else "", extra=extra)


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the master drops privileges / the test makes local users")


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def stats_path(server: GunicornProcess) -> str:
    found = re.search(r"gcfork: GC statistics in (\S+);", server.log())
    assert found, server.log()[-3000:]
    return found.group(1)


def load(server: GunicornProcess, requests: int) -> None:
    """Concurrent slow requests, so that every sync worker serves some."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        for status, body in pool.map(lambda _: server.get("/gc?sleep=0.05"), range(requests)):
            assert status == 200, body


def worker_records(path: str, server: GunicornProcess) -> dict[int, StatsRecord]:
    live = set(server.worker_pids())
    return {r.pid: r for r in read(path) if r.role == "worker" and r.pid in live}


def read(path: str) -> list[StatsRecord]:
    sdir = StatsDir.open(path)  # by name: what is there now
    try:
        return list(sdir.read().records.values())
    finally:
        sdir.close()


def assert_clean(log: str) -> None:
    for bad in ("PermissionError", "Traceback", "hook failed", "cannot publish"):
        assert bad not in log, log[-3000:]


def test_workers_publish_after_dropping_privileges(start_server: StartServer) -> None:
    needs_root()
    if not user_exists("nobody"):
        pytest.skip("no user 'nobody'")
    try:
        grp.getgrnam("nogroup")
    except KeyError:
        pytest.skip("no group 'nogroup'")
    nobody = pwd.getpwnam("nobody").pw_uid
    server = start_server(conf(extra='user = "nobody"\ngroup = "nogroup"'), workers=2)
    path = stats_path(server)
    info = os.stat(path)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (nobody, 0o700)
    assert os.stat(os.path.join(path, TRIGGER_NAME)).st_uid == nobody

    def every_worker_counted() -> bool:
        load(server, 8)
        records = worker_records(path, server)
        return len(records) == 2 and all((r.requests or 0) > 0 for r in records.values())

    wait_for(every_worker_counted, timeout=30, what="records with requests from both workers")
    assert all(os.stat(pid_path).st_uid == nobody for pid_path in
               (os.path.join(path, f"{r.pid}-{r.start}.json")
                for r in worker_records(path, server).values()))
    # `gcfork explain` run by root reaches a worker that runs as nobody, and hears
    # back. (Its answer may be an error: after setuid the kernel makes the worker
    # non-dumpable, and its /proc/PID/pagemap root's.)
    worker = server.worker_pids()[0]
    try:
        assert request_profile(worker, timeout=30).pid == worker
    except CowProfileError as exc:
        assert "the worker reported" in str(exc) and "pagemap" in str(exc), exc
    server.stop()
    assert_clean(server.log())
    assert not os.path.exists(path)


def test_a_shared_stats_dir_keeps_its_mode(start_server: StartServer, tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    server = start_server(conf(), workers=1, env={"GCFORK_STATS_DIR": str(shared)})
    path = stats_path(server)
    assert os.path.dirname(path) == str(shared)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    wait_for(lambda: load(server, 2) or worker_records(path, server), timeout=30,
             what="a worker's record")
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
    server.stop()
    assert_clean(server.log())
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
    assert os.listdir(shared) == []  # the private subdirectory went at exit


@pytest.fixture
def two_users() -> Iterator[tuple[pwd.struct_passwd, pwd.struct_passwd]]:
    """An attacker and a victim, local users made for the test and removed after."""
    needs_root()
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("no useradd/userdel")
    names = [f"gcft{os.getpid() % 100000}{role}" for role in ("a", "v")]
    made = []
    try:
        for name in names:
            subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                            "--shell", "/usr/sbin/nologin", name], check=True,
                           capture_output=True)
            made.append(name)
        yield pwd.getpwnam(names[0]), pwd.getpwnam(names[1])
    finally:
        for name in made:
            # userdel refuses while a process of the user (a worker being reaped) lives.
            wait_for(lambda name=name: subprocess.run(["userdel", name], capture_output=True)
                     .returncode in (0, 6), timeout=10, what=f"userdel {name}")


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
            for p in sorted(directory.iterdir())}


def test_a_stats_dir_swapped_for_a_symlink_is_not_followed(
    two_users: tuple[pwd.struct_passwd, pwd.struct_passwd], start_server: StartServer
) -> None:  # two_users first: its teardown follows the servers' stop
    attacker, victim = two_users
    # Outside pytest's 0700 tmp_path: the attacker must reach the parent.
    root = Path(tempfile.mkdtemp(prefix="gcfork-swap-"))
    try:
        os.chmod(root, 0o755)
        parent, secrets = root / "parent", root / "victim"
        parent.mkdir()
        os.chmod(parent, 0o777)  # writable by everyone, not sticky
        secrets.mkdir(mode=0o700)
        # A record name of no live process, which the master's prune would delete.
        (secrets / "4000000-1.json").write_text('{"mine": true}')
        (secrets / "notes.txt").write_text("the victim's")
        for p in (secrets, *secrets.iterdir()):
            os.chown(p, victim.pw_uid, victim.pw_gid)
        before = snapshot(secrets)
        stats = parent / "stats"
        server = start_server(conf(f"stats_dir={str(stats)!r}",
                                   f'user = "{victim.pw_name}"\ngroup = "{victim.pw_name}"'),
                              workers=2)
        assert stats_path(server) == str(stats)
        wait_for(lambda: any(r.pid == server.pid for r in read(str(stats))),
                 timeout=30, what="the master's record")
        moved = parent / "moved"
        subprocess.run(["sh", "-c", 'mv "$1" "$2" && ln -s "$3" "$1"', "swap", str(stats),
                        str(moved), str(secrets)], check=True, user=attacker.pw_uid,
                       group=attacker.pw_gid, extra_groups=[])
        swapped = time.time()
        assert stats.is_symlink()
        # A new worker, forked after the swap, publishes too.
        os.kill(server.worker_pids()[0], signal.SIGKILL)
        wait_for(lambda: len(server.worker_pids()) == 2, what="a replacement worker")

        def all_published_after_the_swap_or_harm_done() -> bool:
            if snapshot(secrets) != before:
                return True  # followed the link: fails below, with the difference
            load(server, 4)
            fresh = {r.pid for r in read(str(moved)) if r.written > swapped + 0.5}
            return {server.pid, *server.worker_pids()} <= fresh

        wait_for(all_published_after_the_swap_or_harm_done, timeout=30,
                 what="the master and both workers publishing into the real directory")
        assert snapshot(secrets) == before
        server.stop()
        assert snapshot(secrets) == before  # nothing written, nothing pruned, no .explain
        assert stats.is_symlink()
        assert "Traceback" not in server.log() and "hook failed" not in server.log()
    finally:
        shutil.rmtree(root, ignore_errors=True)
