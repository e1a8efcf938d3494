"""What gcfork does on a free-threaded (no-GIL) build: 3.13t, 3.14t, 3.15t.

No free-threaded build can be installed on the machines this suite runs on
(Debian ships none), so these tests make this interpreter *say* it is one, by
replacing :func:`gcfork.actions.free_threaded` or the build flag it reads: a
fake, for what cannot be provoked here. What they check is gcfork's decision;
how a real free-threaded collector behaves under it is untested
(docs/how-it-works.md says so).
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig

import pytest

from gcfork import actions, immortal
from gcfork.actions import FreezePlan
from gcfork.exceptions import ConfigError
from gcfork.policy import Policy
from tests.conftest import REPO


@pytest.mark.parametrize("collect_before_freeze", [False, True])
def test_the_freeze_plan_of_each_build(collect_before_freeze: bool) -> None:
    plan = actions.freeze_plan
    for free_threaded in (False, True):
        # The first fork freezes the freshly imported app on every build.
        assert plan(True, collect_before_freeze, free_threaded) == FreezePlan(
            freeze=True, collect_all=collect_before_freeze, collect_young=False)
    # Later forks: a GIL build frees the young cycles and freezes again...
    assert plan(False, collect_before_freeze, False) == FreezePlan(True, False, True)
    # ...a free-threaded build touches nothing: its freeze writes every header.
    assert plan(False, collect_before_freeze, True) == FreezePlan(False, False, False)


def test_the_build_flag_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    assert actions.free_threaded() is bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    monkeypatch.setattr(sys, "abiflags", "", raising=False)
    monkeypatch.setattr(sysconfig, "get_config_var",
                        lambda name: 1 if name == "Py_GIL_DISABLED" else None)
    assert actions.free_threaded() is True
    assert "free-threaded" in actions.gc_semantics()
    assert actions.freeze_plan(False, False) == FreezePlan(False, False, False)


def test_immortalize_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(actions, "free_threaded", lambda: True)
    monkeypatch.setattr(sys, "version_info", (3, 14, 10, "final", 0))
    reason = immortal.unsupported_reason()
    assert reason is not None and "free-threaded" in reason
    with pytest.raises(immortal.ImmortalizeUnsupported):
        immortal.immortalize_heap()
    with pytest.raises(ConfigError) as refused:
        Policy.from_settings({"immortalize": True}, environ={})
    assert "'immortalize'" in str(refused.value) and "free-threaded" in str(refused.value)
    assert "\n" not in str(refused.value)


# The template's side of two forks with the build flag faked: the first
# freezes, the second leaves the objects made in between young in the child.
FORKS = """
import gc, json, os
from gcfork import actions
from gcfork.lifecycle import LIFECYCLE
from gcfork.policy import Policy

actions.free_threaded = lambda: True  # the fake: this build has the GIL

def fork():
    marker = [object()]  # made right before this fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        young = any(o is marker for o in gc.get_objects())
        os.write(w, json.dumps({"frozen": gc.get_freeze_count(), "marker_young": young,
                                "enabled": gc.isenabled()}).encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 65536)
    os.waitpid(pid, 0)
    return json.loads(data)

gc.disable()
LIFECYCLE.arm(Policy.from_settings({}, environ={}))
first = fork()
after_first = gc.get_freeze_count()
made_between = [[i] for i in range(1000)]
second = fork()
print(json.dumps({"first": first, "second": second, "after_first": after_first,
                  "after_second": gc.get_freeze_count()}))
"""


def test_a_free_threaded_template_freezes_before_the_first_fork_only() -> None:
    done = subprocess.run([sys.executable, "-c", FORKS], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    first, second = result["first"], result["second"]
    assert first["frozen"] > 0 and first["marker_young"] is False and first["enabled"]
    # No second freeze: the template's count did not move and the new marker
    # is young in the second child.
    assert result["after_second"] == result["after_first"] > 0
    assert second["marker_young"] is True and second["enabled"]
