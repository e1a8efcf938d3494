"""thresholds="auto": each worker freezes its own heap after its third full
collection (gcfork.settle), on every supported CPython and in a real gunicorn."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from gcfork.config import resolve
from gcfork.exceptions import ConfigError
from gcfork.policy import Policy
from gcfork.settle import AUTO_THRESHOLDS, SETTLE_AFTER
from gcfork.typing import WorkerInfo
from tests.conftest import REPO, StartServer, require_python, wait_for

MINORS = ["3.10", "3.11", "3.12", "3.13", "3.14", "3.15"]


def test_auto_is_a_value_of_thresholds_from_install_and_the_environment() -> None:
    assert resolve({"thresholds": "auto"}, {})["thresholds"].value == "auto"
    assert resolve({}, {"GCFORK_THRESHOLDS": "auto"})["thresholds"].value == "auto"
    policy = Policy.from_settings({"thresholds": "auto"})
    assert policy.settles and policy.thresholds_for(WorkerInfo(0, 1)) == AUTO_THRESHOLDS
    assert "thresholds=auto" in policy.describe()
    # Only where workers collect: mode disable and off leave the GC alone.
    for mode in ("disable", "off"):
        assert not Policy.from_settings({"thresholds": "auto", "mode": mode}).settles
    assert not Policy.from_settings({}).settles
    for bad in ("Auto", "automatic", "fast"):
        with pytest.raises(ConfigError) as info:
            resolve({"thresholds": bad}, {})
        assert "'thresholds'" in str(info.value) and "'auto'" in str(info.value)


# Run as a worker would: the inherited heap frozen, the GC enabled by gcfork
# with settling on; then cyclic garbage, live objects and collections.
SETTLING = """
import gc, json
from gcfork import actions, settle

gc.disable()
gc.freeze()
inherited = gc.get_freeze_count()
actions.enable_in_worker(settle.AUTO_THRESHOLDS, settles=True)
kept = []
fulls = []
gc.callbacks.append(lambda phase, info: phase == "stop" and info["generation"] == 2
                    and fulls.append(gc.get_freeze_count()))
for round in range(10):
    kept.append([[i] for i in range(1000)])      # live: the worker's own heap
    for i in range(2000):                        # garbage: cycles only the GC frees
        node = {}
        node["self"] = node
    gc.collect()
print(json.dumps({"inherited": inherited, "fulls": fulls[:5], "settled": settle.settled(),
                  "thresholds": gc.get_threshold(), "enabled": gc.isenabled(),
                  "young": len(gc.get_objects()), "garbage": len(gc.garbage)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("minor", MINORS)
def test_a_worker_freezes_its_heap_after_its_third_full_collection(minor: str) -> None:
    result = subprocess.run(
        [require_python(minor), "-c", textwrap.dedent(SETTLING)], capture_output=True,
        text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, cwd=REPO, timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr
    out = json.loads(result.stdout)
    assert out["settled"] and out["enabled"] and out["garbage"] == 0
    fulls = out["fulls"]
    # Before the third full collection only the inherited heap is frozen; from
    # it on, the worker's own objects too (the live lists, about 1,000 each).
    # (a frozen object freed by its reference count leaves it: a few either way).
    assert all(abs(n - out["inherited"]) < 100 for n in fulls[:SETTLE_AFTER - 1]), out
    assert fulls[SETTLE_AFTER - 1] >= out["inherited"] + SETTLE_AFTER * 1000, out
    assert all(abs(n - fulls[SETTLE_AFTER - 1]) < 100 for n in fulls[SETTLE_AFTER:]), out
    # What the later rounds keep stays with the young generations: 7 rounds
    # of 1,001 lists, and none of the frozen ones.
    assert 7 * 1001 <= out["young"] < 7 * 1001 + 2000, out


CONF = """
import gcfork; gcfork.install(globals(), thresholds="auto", report_interval=0)
preload_app = True
"""


def test_gunicorn_workers_settle_and_show_it(start_server: StartServer) -> None:
    server = start_server(CONF, workers=1)
    status, body = server.get("/gc")
    assert status == 200, body
    first = json.loads(body)
    assert first["thresholds"] == list(AUTO_THRESHOLDS) and first["enabled"]
    assert "worker thresholds=auto: (700, 1, 1)" in server.log()

    def settled() -> dict[str, object] | None:
        server.get("/cycles?n=5000")  # cyclic garbage: full collections follow
        state = json.loads(server.get("/gc")[1])
        return state if state["freeze_count"] > first["freeze_count"] else None

    state = wait_for(settled, what="the worker's own heap frozen")
    assert state["pid"] == first["pid"] and state["enabled"]
