"""Stats-directory attacks between two local users, against a root master.

The master runs as root, as masters bound to port 80 do, which makes it the
confused deputy: root passes every permission check, so whatever gcfork
follows or deletes on an attacker's say-so, it can. The suite creates two
users with ``useradd``: an *attacker*, who plants files and swaps
directories where the file system lets them, and a *victim*, whose files the
attacker points gcfork at. Both are removed at the end.

An attack is *refused* when the server keeps serving, ``gcfork report`` keeps
working (strict JSON about the right master, no traceback), the server's log
gains no traceback or hook failure, nothing outside the real stats directory
is written or deleted, and a shared directory keeps its mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from gcfork.memory import process_start
from gcfork.tools.server import GunicornProcess
from tests.torture.harness import check_report, log_problems, report_once, start_server


class Attack(NamedTuple):
    """One attack and its verdict."""

    scenario: str
    name: str
    refused: bool
    detail: str


class User(NamedTuple):
    name: str
    uid: int
    gid: int


def cannot_attack() -> str | None:
    """Why the attacks cannot run here, or None."""
    if os.geteuid() != 0:
        return "the attacks need root: they create two users with useradd"
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        return "useradd/userdel are not installed"
    return None


@contextlib.contextmanager
def two_users() -> Iterator[tuple[User, User]]:
    """An attacker and a victim, created now and removed on the way out."""
    made: list[str] = []
    try:
        users = []
        for role in ("a", "v"):
            # The pid keeps concurrent runs apart; useradd allows 32 characters.
            name = f"gcft{role}{os.getpid()}"
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                            "/usr/sbin/nologin", "--user-group", name],
                           check=True, capture_output=True)
            made.append(name)
            entry = pwd.getpwnam(name)
            users.append(User(name, entry.pw_uid, entry.pw_gid))
        yield users[0], users[1]
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)
            subprocess.run(["groupdel", name], capture_output=True)


def as_user(user: User, script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script as ``user`` (coreutils only: the venv is root's)."""
    return subprocess.run(["/bin/sh", "-euc", script], user=user.uid, group=user.gid,
                          extra_groups=[], capture_output=True, text=True, cwd="/")


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` with its type, owner, mode and content, not
    following symlinks: two equal snapshots mean nothing was written or deleted."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content: Any = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = Path(path).read_bytes()
            else:
                content = None
            out[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode),
                                                stat.S_IMODE(st.st_mode), st.st_uid, content)
    st = os.lstat(root)
    out["."] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, None)
    return out


def _diff(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = [f"{what}: {', '.join(names[:4])}" for what, names in
             (("added", added), ("deleted", removed), ("changed", changed)) if names]
    return "; ".join(parts)


def record_text(pid: int, start: int, /, **overrides: str) -> str:
    """A stats record as a worker writes it, with fields replaced by raw JSON text
    (so that values json.dumps cannot write, such as 5,000-digit ints, fit)."""
    now = time.time()
    fields = {
        "schema": "1", "role": '"worker"', "pid": str(pid), "start": str(start),
        "started": repr(now - 10), "written": repr(now), "requests": "3",
        "gc": ('{"enabled":true,"thresholds":[700,10,10],"freeze_count":5,"generations":['
               + ",".join(['{"collections":1,"collected":0,"uncollectable":0,'
                           '"pause_total":0.001,"pause_max":0.001}'] * 3) + "]}"),
        "final": "false", "uss_at_exit": "null",
    }
    fields.update(overrides)
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


class _Server:
    """A root gunicorn master with gcfork for one scenario, and its checks."""

    def __init__(self, workdir: Path, name: str, settings: str = "",
                 env: dict[str, str] | None = None) -> None:
        self.env = env or {}
        config = ("workers = 2\ncontrol_socket_disable = True\npreload_app = True\n"
                  "import gcfork; gcfork.install(globals(), report_interval=1"
                  f"{', ' + settings if settings else ''})\n")
        self.server: GunicornProcess = start_server(workdir, config, env=self.env, name=name)
        self.seen = 0  # log characters already judged

    def ready(self) -> str:
        """'' once two workers serve; else why not (the master refused to start)."""
        try:
            self.server.wait_ready(2, timeout=90)
        except Exception as exc:
            return str(exc)[:300]
        return ""

    def report(self) -> tuple[int, dict[str, Any] | None, str]:
        status, out, err = report_once(sys.executable, self.server.pid, env=self.env)
        valid, right = check_report(self.server.pid, status, out)
        problem = ""
        if "Traceback" in err:
            problem = f"gcfork report traceback: {err.strip()[-300:]}"
        elif not valid:
            problem = f"gcfork report: status {status}, not strict JSON: {err.strip()[-200:]}"
        elif not right:
            problem = f"gcfork report: status {status}, not about master {self.server.pid}"
        obj = json.loads(out) if valid else None
        return status, obj, problem

    def health(self) -> str:
        """'' if the server serves, the report works and the log is clean since
        the last call; else what is wrong."""
        problems = []
        try:
            status, _ = self.server.get("/gc", timeout=30)
            if status != 200:
                problems.append(f"GET /gc: HTTP {status}")
        except OSError as exc:
            problems.append(f"GET /gc: {exc!r}")
        _, _, report_problem = self.report()
        if report_problem:
            problems.append(report_problem)
        problems.append(self.new_log_problems())
        return "; ".join(p for p in problems if p)

    def new_log_problems(self) -> str:
        log = self.server.log()
        fresh, self.seen = log[self.seen:], len(log)
        found = {k: v for k, v in log_problems(fresh).items() if v and k != "sampling_failures"}
        if not found:
            return ""
        where = fresh.find("Traceback") if "Traceback" in fresh else fresh.find("hook failed")
        return f"log: {found}: {fresh[max(where - 200, 0):where + 600]!r}"

    def stop(self) -> tuple[int | None, str]:
        status = self.server.stop(timeout=30)
        return status, self.new_log_problems()


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


# -- scenario 1: records planted in the real stats directory -------------------------


def planted_records(base: Path, attacker: User, victim: User) -> list[Attack]:
    """Records that the server's own user (or a compromised worker) writes into
    the stats directory, and files of another owner, one at a time."""
    scenario = "planted records"
    victim_dir = _victim_dir(base, victim)
    before = snapshot(victim_dir)
    srv = _Server(base, "planted")
    problem = srv.ready()
    if problem:
        return [Attack(scenario, "start", False, problem)]
    _, obj, problem = srv.report()
    stats = Path(obj["stats_dir"]) if obj and obj.get("stats_dir") else None
    if stats is None:
        srv.stop()
        return [Attack(scenario, "start", False, f"no stats directory: {problem}")]
    start1 = process_start(1) or 1
    key = stats / f"1-{start1}.json"  # pid 1 runs: the master's prune keeps the file
    master_key = stats / f"{srv.server.pid}-{process_start(srv.server.pid) or 0}.json"
    secret = victim_dir / "secret.json"

    def write(path: Path, text: str, owner: User | None = None) -> Path:
        path.write_text(text)
        if owner is not None:
            os.chown(path, owner.uid, owner.gid)
        return path

    def make(path: Path, how: Callable[[Path], object]) -> Path:
        how(path)
        return path

    big = stats / f"{'9' * 30}-1.json"
    master_start = process_start(srv.server.pid) or 0
    plants: list[tuple[str, Callable[[], Path]]] = [
        ("nested JSON 8000 deep", lambda: write(key, "[" * 8000 + "]" * 8000)),
        ("record with Infinity and NaN", lambda: write(key, record_text(
            1, start1, started="-Infinity", written="NaN", requests="1e999"))),
        ("record with 4000-digit and 5000-digit ints", lambda: write(key, record_text(
            1, start1, requests="9" * 4000, start="9" * 5000))),
        ("record named with a 30-digit pid", lambda: write(big, record_text(10**30 - 1, 1))),
        ("record with wrong types", lambda: write(key, record_text(
            1, start1, role="5", requests='"many"',
            gc='{"enabled":"yes","thresholds":["a"],"freeze_count":[],'
               '"generations":[{"collections":"x"}]}'))),
        ("oversized record", lambda: write(key, " " * 17000 + record_text(1, start1))),
        ("symlink record to the victim's file", lambda: make(key, lambda p: p.symlink_to(secret))),
        ("FIFO at a record name", lambda: make(key, os.mkfifo)),
        ("directory at a record name", lambda: make(key, os.mkdir)),
        ("record owned by the attacker", lambda: write(key, record_text(1, start1),
                                                       owner=attacker)),
        ("master's own record with infinite times", lambda: write(master_key, record_text(
            srv.server.pid, master_start, role='"master"', requests="null",
            started="-Infinity", written="Infinity"))),
    ]
    results = []
    for name, plant in plants:
        path = plant()
        problem = srv.health()
        _remove(path)
        results.append(Attack(scenario, name, not problem, problem))
    results.append(_infinite_age_then_kill(srv, stats, scenario))
    status, log_problem = srv.stop()
    after = _diff(before, snapshot(victim_dir))
    if status != 0 or log_problem or after:
        results.append(Attack(scenario, "clean exit after the plants", False,
                              f"exit status {status}; {log_problem}; victim's files: {after}"))
    return results


def _infinite_age_then_kill(srv: _Server, stats: Path, scenario: str) -> Attack:
    """A live worker's record replaced by one with an infinite age, then the
    worker killed: the master's child_exit hook reads that record."""
    name = "worker record with infinite age, then kill -9"
    workers = srv.server.worker_pids()
    if not workers:
        return Attack(scenario, name, False, "no worker")
    victim = workers[0]
    start = process_start(victim) or 0
    path = stats / f"{victim}-{start}.json"
    path.write_text(record_text(victim, start, started="-Infinity"))
    os.kill(victim, signal.SIGKILL)
    # gcfork logs a line about every worker that exits; wait for it, or a failure.
    _wait_for(lambda: f"worker {victim} exited" in srv.server.log()
              or "hook failed" in srv.server.log()[srv.seen:], timeout=30)
    _wait_for(lambda: len(srv.server.worker_pids()) == 2, timeout=30)
    problem = srv.health()
    return Attack(scenario, name, not problem, problem)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


def _victim_dir(base: Path, victim: User) -> Path:
    victim_dir = base / "victim"
    if not victim_dir.exists():
        victim_dir.mkdir(mode=0o755)
        # A name of the stats-record form: a prune that follows the attacker
        # here would delete it, since no process 12345 started at tick 1.
        (victim_dir / "12345-1.json").write_text('{"victim": "data"}')
        (victim_dir / "secret.json").write_text('{"victim": "secret"}')
        for path in (victim_dir, *victim_dir.iterdir()):
            os.chown(path, victim.uid, victim.gid)
    return victim_dir


# -- scenario 2: stats_dir is a shared sticky directory ------------------------------


def shared_sticky_dir(base: Path, attacker: User, victim: User) -> list[Attack]:
    """``stats_dir`` pointing at an existing 1777 directory in which the
    attacker has planted an ``.explain`` directory, a record and a symlink."""
    scenario = "shared 1777 stats_dir"
    victim_dir = _victim_dir(base, victim)
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    start1 = process_start(1) or 1
    done = as_user(attacker, f"""
        mkdir -m 777 {shared}/.explain
        printf '%s' '{record_text(1, start1, requests="1000000")}' > {shared}/1-{start1}.json
        ln -s {victim_dir}/secret.json {shared}/{os.getpid()}-{process_start(os.getpid())}.json
        ln -s {victim_dir}/12345-1.json {shared}/12345-1.json
    """)
    if done.returncode != 0:
        return [Attack(scenario, "setup", False, done.stderr)]
    planted = snapshot(shared)
    victim_before = snapshot(victim_dir)
    srv = _Server(base, "shared", settings=f"stats_dir={str(shared)!r}")
    problem = srv.ready()
    if not problem:
        problem = srv.health()
    status, log_problem = srv.stop()
    started = "Booting worker" in srv.server.log()
    if not started:
        # Refusing the directory at start is a refusal, if it is a clean one.
        problem = log_problem if status not in (0, None) else f"exit status {status}"
    elif status != 0 or log_problem:
        problem = "; ".join(p for p in (problem, log_problem, f"exit status {status}") if p)
    mode = stat.S_IMODE(os.lstat(shared).st_mode)
    now = snapshot(shared)
    theirs = {k: v for k, v in now.items() if k in planted and k != "."}
    explain = {k: v for k, v in now.items() if k.startswith(".explain")}
    planted_explain = {k: v for k, v in planted.items() if k.startswith(".explain")}
    results = [
        Attack(scenario, "mode of the shared directory kept (1777)",
               mode == 0o1777 and not problem, problem or f"mode is now {mode:04o}"),
        Attack(scenario, ".explain pre-created by the attacker",
               explain == planted_explain and not problem,
               problem or _diff(planted_explain, explain) or "unchanged"),
        Attack(scenario, "attacker's record and symlinks in the shared directory kept",
               theirs == {k: v for k, v in planted.items() if k != "."} and not problem,
               problem or _diff({k: v for k, v in planted.items() if k != "."}, theirs)),
        Attack(scenario, "victim's files behind the attacker's symlinks",
               snapshot(victim_dir) == victim_before and not problem,
               problem or _diff(victim_before, snapshot(victim_dir))),
    ]
    return results


# -- scenario 3: the stats directory swapped for a symlink ---------------------------


def symlink_swap(base: Path, attacker: User, victim: User) -> list[Attack]:
    """The stats directory lives in a world-writable, non-sticky parent: once
    the master checked it, the attacker renames it away and puts a symlink to
    the victim's directory in its place. The attacker also squats the
    master's advertisement directory (``$XDG_RUNTIME_DIR/gcfork``) with a
    symlink to the same place."""
    scenario = "symlink swap"
    victim_dir = _victim_dir(base, victim)
    parent = base / "open"
    parent.mkdir()
    parent.chmod(0o777)
    xdg = base / "xdg"
    xdg.mkdir()
    xdg.chmod(0o1777)
    squat = as_user(attacker, f"ln -s {victim_dir} {xdg}/gcfork")
    if squat.returncode != 0:
        return [Attack(scenario, "setup", False, squat.stderr)]
    before = snapshot(victim_dir)
    stats = parent / "stats"
    srv = _Server(base, "swap", settings=f"stats_dir={str(stats)!r}",
                  env={"XDG_RUNTIME_DIR": str(xdg)})
    problem = srv.ready()
    results: list[Attack] = []
    if problem:
        status, log_problem = srv.stop()
        clean = status not in (0, None) and not log_problem
        detail = "refused at start" if clean else f"{problem}; {log_problem}"
        changed = _diff(before, snapshot(victim_dir))
        for name in ("stats directory swapped for a symlink", "advertisement directory squatted"):
            results.append(Attack(scenario, name, clean and not changed, changed or detail))
        return results
    squat_problem = srv.health()
    results.append(Attack(
        scenario, "advertisement directory squatted",
        not squat_problem and not _diff(before, snapshot(victim_dir)),
        squat_problem or _diff(before, snapshot(victim_dir)) or "refused"))
    swapped_at = time.time()
    swap = as_user(attacker, f"mv {stats} {parent}/stats.moved && ln -s {victim_dir} {stats}")
    if swap.returncode != 0:
        srv.stop()
        results.append(Attack(scenario, "stats directory swapped for a symlink",
                              _diff(before, snapshot(victim_dir)) == "",
                              f"the attacker could not swap it: {swap.stderr.strip()}"))
        return results
    # Churn, so that workers publish, exit (child_exit removes a record) and the
    # master prunes; then wait until the master has written a record since the
    # swap, wherever it writes (the directory it opened, or the symlink's target).
    workers = srv.server.worker_pids()
    if workers:
        os.kill(workers[0], signal.SIGKILL)
    _wait_for(lambda: len(srv.server.worker_pids()) == 2, timeout=30)
    _wait_for(lambda: _written_since(parent / "stats.moved", swapped_at)
              or _written_since(victim_dir, swapped_at), timeout=20)
    _wait_for(lambda: _written_since(parent / "stats.moved", swapped_at + 2)
              or _written_since(victim_dir, swapped_at + 2), timeout=20)
    status, _obj, report_problem = srv.report()
    served = srv.server.get("/gc", timeout=30)[0] == 200
    status, log_problem = srv.stop()
    changed = _diff(before, snapshot(victim_dir))
    problems = [p for p in (changed and f"victim's directory: {changed}",
                            report_problem if "Traceback" in report_problem else "",
                            "" if served else "the server stopped serving",
                            log_problem, "" if status == 0 else f"exit status {status}") if p]
    results.append(Attack(scenario, "stats directory swapped for a symlink", not problems,
                          "; ".join(problems) or "refused"))
    return results


def _written_since(directory: Path, since: float) -> bool:
    try:
        return any(e.stat(follow_symlinks=False).st_mtime > since
                   for e in os.scandir(directory) if e.name.endswith(".json"))
    except OSError:
        return False


SCENARIOS: dict[str, Callable[[Path, User, User], list[Attack]]] = {
    "planted": planted_records,
    "shared": shared_sticky_dir,
    "swap": symlink_swap,
}


def run_attacks(names: tuple[str, ...] = tuple(SCENARIOS)) -> list[Attack]:
    """Create the users, run the scenarios, remove everything; the verdicts."""
    results: list[Attack] = []
    with two_users() as (attacker, victim):
        for name in names:
            base = Path(tempfile.mkdtemp(prefix=f"gcfork-attack-{name}-"))
            base.chmod(0o755)  # the two users must reach what is inside
            try:
                results += SCENARIOS[name](base, attacker, victim)
            finally:
                shutil.rmtree(base, ignore_errors=True)
    return results
