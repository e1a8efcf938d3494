"""gcfork.immortal: real forks in CPython 3.12 to 3.15 subprocesses, real /proc reads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from gcfork import immortal
from gcfork.exceptions import GcforkError
from tests.conftest import REPO, gunicorn_interpreter, require_python

PROBE = REPO / "benchmarks" / "immortal_probe.py"


def run(python: str, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, cwd=REPO, timeout=timeout,
    )


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="checks the refusal before 3.12")
def test_refuses_before_312_with_a_clear_message() -> None:
    reason = immortal.unsupported_reason()
    assert reason is not None and "3.12" in reason
    with pytest.raises(immortal.ImmortalizeUnsupported) as info:
        immortal.immortalize_heap()
    message = str(info.value)
    assert "cannot make the heap immortal" in message and "no immortal objects" in message
    assert isinstance(info.value, GcforkError)


def test_unverified_layout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "version_info", (3, 16, 0, "final", 0))
    monkeypatch.delattr(sys, "gettotalrefcount", raising=False)
    reason = immortal.unsupported_reason()
    assert reason is not None and "3.16" in reason and "not been verified" in reason
    assert "3.15" in reason  # and it says which versions it knows


@pytest.mark.slow
@pytest.mark.parametrize("minor", ["3.14", "3.15"])
def test_the_interpreter_agrees_on_every_object_made_immortal(minor: str) -> None:
    """sys._is_immortal (the interpreter's own _Py_IsImmortal) against gcfork,
    on every mortal object of a heap and the untracked objects they hold, and
    the count stays where a worker's Py_INCREF does not write it."""
    result = run(require_python(minor), """
        import ctypes, gc, sys
        from gcfork.immortal import immortalize_heap, is_immortal
        from gcfork.referents import referents

        gc.disable()
        import email.parser, decimal, http.client, json
        heap = {f"k{i}": [f"v{i}", i * 1000, (i, str(i))] for i in range(20000)}
        gc.freeze()
        gc.unfreeze()
        tracked = gc.get_objects()
        gc.freeze()
        sample = [o for o in tracked if not is_immortal(o)]
        sample += [c for o in sample[:5000] for c in referents(o)
                   if not gc.is_tracked(c) and not is_immortal(c)]
        result = immortalize_heap()
        disagree = sum(sys._is_immortal(o) != is_immortal(o) for o in sample)
        made = [o for o in sample if sys._is_immortal(o)]
        low = [ctypes.c_uint32.from_address(id(o)).value for o in made]
        print(len(sample), len(made), disagree, min(low) >= 3 << 30, result.skipped)
    """)
    assert result.returncode == 0, result.stderr
    sampled, made, disagree, above_initial, skipped = result.stdout.split()
    assert int(sampled) >= 10_000 and disagree == "0", result.stdout
    assert int(made) >= int(sampled) - int(skipped), result.stdout
    assert above_initial == "True", result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("minor", ["3.12", "3.13", "3.14", "3.15"])
def test_reader_child_copies_far_less_when_immortal(minor: str) -> None:
    python = gunicorn_interpreter(minor)
    figures = {}
    for mode in ("freeze", "immortal"):
        out = subprocess.run(
            [python, str(PROBE), "--one", mode, "--records", "100000"],
            capture_output=True, text=True, env={"PYTHONPATH": str(REPO)}, check=True, timeout=60,
        )
        figures[mode] = json.loads(out.stdout)
    frozen = figures["freeze"]["child_copied"]
    immortal_copied = figures["immortal"]["child_copied"]
    assert frozen > 10 * 2**20, figures  # the probe does copy with freeze alone
    assert immortal_copied < 0.25 * frozen, figures
    assert figures["immortal"]["objects"] > 300_000, figures


@pytest.mark.slow
@pytest.mark.parametrize("minor", ["3.12", "3.13", "3.14", "3.15"])
def test_safety_rules_and_finalization(minor: str) -> None:
    """Finalizer objects and frames stay mortal; gc state is restored; a child
    that interns strings made immortal and a parent both finalize cleanly."""
    python = gunicorn_interpreter(minor)
    result = run(python, """
        import gc, io, os, sys
        from gcfork.immortal import immortalize_heap, is_immortal

        class Closing:
            def __del__(self):
                pass

        gc.disable()
        plain = {"k%d" % i: ["v%d" % i, i * 1000] for i in range(2000)}
        interned = [sys.intern("name_%d" % i) for i in range(2000)]
        mortal_finalizer = Closing()
        stream = io.BytesIO()
        frame = sys._getframe()
        gc.freeze()
        frozen = gc.get_freeze_count()
        result = immortalize_heap()
        assert result.objects > 4000, result
        assert gc.get_freeze_count() >= frozen and not gc.isenabled()
        assert is_immortal(plain) and is_immortal(plain["k5"]) and is_immortal(plain["k5"][0])
        assert all(is_immortal(k) for k in plain), "str keys must be reached"
        assert is_immortal(interned[7])
        assert not is_immortal(mortal_finalizer) and not is_immortal(frame)
        # io objects have a C finalizer (BytesIO, files, sockets).
        assert hasattr(type(stream), "__del__") == (not is_immortal(stream))
        for fast in (False, True):
            pid = os.fork()
            if pid == 0:
                gc.enable()
                again = [sys.intern("".join(["name_", str(i)])) for i in range(2000)]
                keys = [sys.intern(k) for k in plain]
                plain.clear()
                del interned[:]
                gc.collect()
                if fast:
                    os._exit(0)  # what fast_exit ends a worker with
                sys.exit(0)  # a normal exit: full finalization in the child
            _, status = os.waitpid(pid, 0)
            assert status == 0, (fast, status)
        print("ok", result.objects)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok"), result.stdout
    assert result.stderr == ""
