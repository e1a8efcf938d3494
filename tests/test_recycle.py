"""Recycling workers on private memory: the setting, the engine's decision, and
real gunicorn clusters whose workers leak (tests/apps/gcstate.py, ``/leak``).

The test app's worker has a USS of about 10.5 MiB after its first requests
(measured on Python 3.11, gunicorn 27, sync workers, preload: 10.5 and 10.7 MiB
after 100 requests), so the bound of 60 MiB is crossed after about 50 leaked MiB
and a worker that does not leak stays far below it.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gcfork.config import resolve
from gcfork.exceptions import ConfigError
from gcfork.recycle import (
    CONFIRM_AFTER,
    LOOK_AHEAD_MIN,
    PRIVATE_MEMORY,
    SAMPLE_EVERY,
    Candidate,
    Recycle,
    Recycler,
)
from gcfork.tools.server import GunicornProcess
from tests.conftest import StartServer, uss, wait_for

MiB = 2**20

# -- the setting ----------------------------------------------------------------


@pytest.mark.parametrize(("given_value", "size"), [
    ("300MiB", 300 * MiB), ("1.5GiB", 3 * 2**29), ("500MB", 500_000_000),
    ("64 mib", 64 * MiB), ("4096", 4096), (4096, 4096), ("2KB", 2000), (None, None),
])
def test_sizes_are_read_in_bytes(given_value: object, size: int | None) -> None:
    assert resolve({"max_worker_private": given_value}, {})["max_worker_private"].value == size


@pytest.mark.parametrize("bad", ["lots", "12XB", "-1MiB", "0", 0, -5, True, 1.5, "1e3MiB",
                                 "9" * 30, "10" * 300 + ".5MiB", "9" * 5000])
def test_a_bad_size_is_refused_in_one_line_naming_the_setting(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        resolve({"max_worker_private": bad}, {})
    message = str(info.value)
    assert "'max_worker_private'" in message and "allowed:" in message and "\n" not in message


def test_an_int_subclass_becomes_a_plain_int() -> None:
    class Bytes(int):
        pass

    value = resolve({"max_worker_private": Bytes(5)}, {})["max_worker_private"].value
    assert type(value) is int and value == 5


def test_the_environment_sets_and_clears_the_bound() -> None:
    env = {"GCFORK_MAX_WORKER_PRIVATE": "300MiB", "GCFORK_RECYCLE_MIN_AGE": "5"}
    resolved = resolve({}, env)
    assert resolved["max_worker_private"].value == 300 * MiB
    assert resolved["recycle_min_age"].value == 5.0
    cleared = resolve({"max_worker_private": "1GiB"}, {"GCFORK_MAX_WORKER_PRIVATE": "none"})
    assert cleared["max_worker_private"].value is None
    with pytest.raises(ConfigError, match="GCFORK_MAX_WORKER_PRIVATE"):
        resolve({}, {"GCFORK_MAX_WORKER_PRIVATE": "big"})


def test_a_bad_bound_stops_gunicorn_before_any_fork(start_server: StartServer) -> None:
    server = start_server(_conf("'60 parsecs'"), ready=False, expect_errors=True)
    assert server.proc is not None
    assert server.proc.wait(60) != 0
    assert "'max_worker_private'" in server.log() and "unknown unit 'parsecs'" in server.log()
    assert not server.worker_pids()


# -- the decision -----------------------------------------------------------------

BOUND = 60 * MiB


def _w(pid: int, uss_mib: float, age: float = 100.0, start: int = 1) -> Candidate:
    return Candidate(pid, start, age, int(uss_mib * MiB))


def test_two_consecutive_samples_above_recycle_the_largest() -> None:
    r = Recycler()
    assert r.decide([_w(1, 70), _w(2, 80)], BOUND, 60) is None  # one sample is a peak
    decision = r.decide([_w(1, 71, age=100.5), _w(2, 90, age=100.5)], BOUND, 60)
    assert decision == Recycle(2, 1, PRIVATE_MEMORY, 80 * MiB, 90 * MiB, BOUND, 0.5)
    assert not r.recycles  # counted once it was asked to stop
    r.started(decision)
    assert r.recycles == {PRIVATE_MEMORY: 1}


def test_a_dip_below_the_bound_breaks_the_streak() -> None:
    r = Recycler()
    for uss_mib in (70, 50, 70):
        assert r.decide([_w(1, uss_mib)], BOUND, 60) is None
    assert r.decide([_w(1, 70)], BOUND, 60) is not None


def test_a_reused_pid_is_another_worker() -> None:
    r = Recycler()
    r.decide([_w(1, 70, start=10)], BOUND, 60)
    assert r.decide([_w(1, 70, start=11)], BOUND, 60) is None


def test_a_young_worker_is_never_recycled_until_old_enough() -> None:
    r = Recycler()
    assert r.decide([_w(1, 70, age=10)], BOUND, 60) is None
    assert r.decide([_w(1, 75, age=12)], BOUND, 60) is None
    assert r.decide([_w(1, 80, age=60)], BOUND, 60) is not None


def test_one_worker_in_recycle_at_a_time() -> None:
    r = Recycler()
    r.decide([_w(1, 70), _w(2, 80)], BOUND, 60)
    first = r.decide([_w(1, 70), _w(2, 80)], BOUND, 60)
    assert first is not None and first.pid == 2
    r.started(first)
    # Worker 2 still stopping: worker 1 waits, however long it stays above.
    assert r.decide([_w(1, 75), _w(2, 80)], BOUND, 60) is None
    assert r.decide([_w(1, 78), _w(2, 81)], BOUND, 60) is None
    assert r.in_recycle == (2, 1)
    second = r.decide([_w(1, 79), _w(3, 11, age=1)], BOUND, 60)
    assert second is not None and second.pid == 1 and r.in_recycle is None


def test_the_pace_is_regular_while_no_worker_nears_the_bound() -> None:
    r = Recycler()
    r.decide([_w(1, 20, age=100), _w(2, 30, age=100)], BOUND, 60)
    assert r.next_sample_in() == SAMPLE_EVERY
    r.decide([_w(1, 21, age=102), _w(2, 29, age=102)], BOUND, 60)  # 0.5 MiB/s: 20 s away
    assert r.next_sample_in() == SAMPLE_EVERY


def test_a_worker_about_to_cross_is_measured_when_it_should() -> None:
    r = Recycler()
    r.decide([_w(1, 40, age=100)], BOUND, 60)
    r.decide([_w(1, 50, age=102)], BOUND, 60)  # 5 MiB/s, 10 MiB to go: in 2 s
    assert r.next_sample_in() == pytest.approx(2.0)
    r.decide([_w(1, 58, age=104)], BOUND, 60)  # 4 MiB/s, 2 MiB to go
    assert r.next_sample_in() == pytest.approx(0.5)
    r.decide([_w(1, 59.9, age=104.5)], BOUND, 60)  # never sooner than the minimum
    assert r.next_sample_in() == LOOK_AHEAD_MIN


def test_a_worker_above_is_confirmed_soon_and_only_when_old_enough() -> None:
    r = Recycler()
    r.decide([_w(1, 70, age=100)], BOUND, 60)
    assert r.next_sample_in() == CONFIRM_AFTER
    decision = r.decide([_w(1, 72, age=100.5)], BOUND, 60)
    assert decision is not None and decision.apart == pytest.approx(0.5)
    r.started(decision)
    assert r.next_sample_in() == SAMPLE_EVERY  # no hurry while it stops
    young = Recycler()
    young.decide([_w(1, 70, age=10)], BOUND, 60)
    assert young.next_sample_in() == SAMPLE_EVERY  # 50 s from its minimum age
    young.decide([_w(1, 70, age=59)], BOUND, 60)
    assert young.next_sample_in() == pytest.approx(1.0)  # when it becomes old enough


def test_no_bound_forgets_everything() -> None:
    r = Recycler()
    r.decide([_w(1, 70)], BOUND, 60)
    assert r.decide([_w(1, 70)], None, 60) is None
    assert r.next_sample_in() is None
    assert r.decide([_w(1, 70)], BOUND, 60) is None


samples = st.lists(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 120),
                                      st.floats(0, 200)), max_size=4), max_size=12)


@given(samples, st.floats(0, 100))
def test_every_decision_keeps_the_rules(seq: Sequence[Sequence[tuple[int, int, float]]],
                                        min_age: float) -> None:
    r = Recycler()
    previous: dict[int, int] = {}
    stopping: int | None = None
    for sample in seq:
        workers = list({pid: _w(pid, mib, age) for pid, mib, age in sample}.values())
        decision = r.decide(workers, BOUND, min_age)
        now = {w.pid: w.uss for w in workers}
        if stopping is not None and stopping not in now:
            stopping = None
        pace = r.next_sample_in()
        assert pace is not None and LOOK_AHEAD_MIN <= pace <= SAMPLE_EVERY
        if decision is not None:
            assert stopping is None  # never a second one while the first is seen
            assert now[decision.pid] > BOUND and previous.get(decision.pid, 0) > BOUND
            assert next(w for w in workers if w.pid == decision.pid).age >= min_age
            r.started(decision)
            stopping = decision.pid
        previous = now
    assert sum(r.recycles.values()) <= len(seq)


# -- real gunicorn clusters -------------------------------------------------------

# Reads the count of recycles where it is kept, in the master, as each worker
# exits (after gcfork's own child_exit): what the metrics will read.
COUNT_HOOK = """
def child_exit(server, worker):
    from gcfork.gunicorn.adapter import ADAPTER
    server.log.info("test: recycles=%s", dict(ADAPTER.recycler.engine.recycles))
"""


def _conf(bound: str, min_age: float = 1.0) -> str:
    return (f"import gcfork; gcfork.install(globals(), max_worker_private={bound}, "
            f"recycle_min_age={min_age}, report_interval=0)\npreload_app = True\n{COUNT_HOOK}")


RECYCLED = re.compile(r"gcfork: recycling worker pid=(\d+) slot=(\d+|None): USS ([\d.,]+) MiB "
                      r"then ([\d.,]+) MiB in two samples ([\d.]+)s apart, above "
                      r"max_worker_private=60\.0 MiB")


def _recycles(log: str) -> list[tuple[int, float, float]]:
    return [(int(m[1]), float(m[3].replace(",", "")), float(m[4].replace(",", "")))
            for m in RECYCLED.finditer(log)]


def _exit_uss_mib(log: str, pid: int) -> float:
    match = re.search(rf"gcfork: worker {pid} exited: .*?, ([\d.,]+) MiB private", log)
    assert match, log[-3000:]
    return float(match[1].replace(",", ""))


class Load:
    """Sequential requests from the test, every status kept; the MiB each
    worker reports leaked, with the time, to know one sample's growth."""

    def __init__(self, server: GunicornProcess) -> None:
        self.server = server
        self.statuses: list[int] = []
        self.leaked: dict[int, list[tuple[float, int]]] = {}

    def leak(self, query: str = "") -> None:
        status, body = self.server.get("/leak" + query, timeout=30)
        self.statuses.append(status)
        if status == 200:
            answer = json.loads(body)
            self.leaked.setdefault(answer["pid"], []).append(
                (time.monotonic(), answer["leaked_mib"]))
        time.sleep(0.05)  # ~10 MiB per worker per sample: a leak, not a flood

    def growth_per_sample(self) -> float:
        """The most MiB any worker leaked within SAMPLE_EVERY seconds."""
        most = 0
        for points in self.leaked.values():
            for t0, m0 in points:
                most = max([most] + [m - m0 for t, m in points if t0 <= t <= t0 + SAMPLE_EVERY])
        return float(most)


def test_the_leaking_worker_is_replaced_and_the_other_is_not(
        start_server: StartServer) -> None:
    server = start_server(_conf("'60MiB'"), workers=2)
    target, other = server.worker_pids()
    load = Load(server)
    deadline = time.monotonic() + 120
    while target in server.worker_pids() and time.monotonic() < deadline:
        load.leak(f"?pid={target}")
    assert target not in server.worker_pids(), "the leaking worker was not recycled"
    wait_for(lambda: len(server.worker_pids()) == 2, what="the replacement worker")
    for _ in range(20):  # the replacement serves
        load.leak(f"?pid={target}")
    log = wait_for(lambda: "test: recycles=" in server.log() and server.log())
    assert set(load.statuses) == {200}, load.statuses
    # The worker under the bound (about 11 MiB) is never recycled.
    assert other in server.worker_pids()
    assert [pid for pid, _, _ in _recycles(log)] == [target]
    assert "test: recycles={'private_memory': 1}" in log
    assert "also max_worker_private=60.0 MiB (workers older than 1s)" in log  # the start line
    # Measured as it crossed, confirmed soon after, stopped: it ends within
    # one regular sample's growth above the bound (+1 MiB: the request in flight).
    growth = load.growth_per_sample()
    (_, first, second), = _recycles(log)
    assert 60 < first <= second <= 60 + growth + 1, (first, second, growth)
    assert _exit_uss_mib(log, target) <= 60 + growth + 1, growth
    assert all(uss(pid) <= 60 * MiB for pid in server.worker_pids())


def test_two_leaking_workers_are_recycled_one_at_a_time(start_server: StartServer) -> None:
    server = start_server(_conf("'60MiB'"), workers=2)
    first_pair = set(server.worker_pids())
    load = Load(server)
    deadline = time.monotonic() + 180
    while first_pair & set(server.worker_pids()) and time.monotonic() < deadline:
        load.leak()
    assert not first_pair & set(server.worker_pids()), "not both workers were recycled"
    log = wait_for(lambda: server.log().count("test: recycles=") >= 2 and server.log())
    assert set(load.statuses) == {200}
    recycled = [pid for pid, _, _ in _recycles(log)]
    assert set(recycled[:2]) == first_pair
    # One at a time: the second was asked to stop only after the first had exited.
    first_exit = log.index(f"gcfork: worker {recycled[0]} exited")
    second_recycle = log.index(f"gcfork: recycling worker pid={recycled[1]} ")
    assert first_exit < second_recycle
    assert "'private_memory': 2" in log


def _reload(server: GunicornProcess, old: str, new: str) -> None:
    """Rewrite the config and HUP the master; wait for the new generation."""
    path = Path(server.config)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    before = set(server.worker_pids())
    server.signal(signal.SIGHUP)
    wait_for(lambda: len(server.worker_pids()) == 2 and not before & set(server.worker_pids()),
             what="the workers of the reloaded config")


def test_a_hup_refuses_a_bad_bound_in_one_line_then_sets_a_good_one(
        start_server: StartServer) -> None:
    server = start_server(_conf("None"), workers=2, expect_errors=True)
    _reload(server, "max_worker_private=None", "max_worker_private='60 parsecs'")
    errors = [line for line in server.log().splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "'max_worker_private'" in errors[0], errors
    assert "workers keep the previous settings" in errors[0]
    # Still off (None kept), then 60 MiB: the sampler's 30 s pace turns to 2 s at once.
    _reload(server, "'60 parsecs'", "'60MiB'")
    target = server.worker_pids()[0]
    load = Load(server)
    deadline = time.monotonic() + 120
    while target in server.worker_pids() and time.monotonic() < deadline:
        load.leak(f"?pid={target}")
    assert target not in server.worker_pids(), "the leaking worker was not recycled"
    assert set(load.statuses) == {200}
    assert [pid for pid, _, _ in _recycles(server.log())] == [target]


@pytest.mark.parametrize("kind", ["gthread", "gevent"])
def test_recycling_is_graceful_in_the_kinds_that_serve_several_requests(
        start_server: StartServer, kind: str) -> None:
    """SIGTERM is gunicorn's graceful stop for every kind: a worker serving
    several requests at once finishes them before it exits; none fails."""
    settings = f'worker_class = "{kind}"\nthreads = 4\nworker_connections = 50\n'
    server = start_server(_conf("'60MiB'") + settings, workers=2)
    target = server.worker_pids()[0]
    statuses: list[int] = []

    def client() -> None:
        while target in server.worker_pids():
            statuses.append(server.get(f"/leak?pid={target}", timeout=30)[0])
            statuses.append(server.get("/gc?sleep=0.05", timeout=30)[0])

    clients = [threading.Thread(target=client) for _ in range(3)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(120)
    assert target not in server.worker_pids(), "the leaking worker was not recycled"
    assert statuses and set(statuses) == {200}, statuses
    assert [pid for pid, _, _ in _recycles(server.log())] == [target]
    wait_for(lambda: f"gcfork: worker {target} exited" in server.log(), what="its exit line")
