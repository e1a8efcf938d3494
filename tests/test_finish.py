"""gcfork.finish: hashes and type version tags before the fork, in real
CPython 3.10 to 3.15 subprocesses, read back through ctypes and /proc."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from gcfork import finish
from tests.conftest import REPO, require_python

ALL = ["3.10", "3.11", "3.12", "3.13", "3.14", "3.15"]
IMMORTAL = ["3.12", "3.13", "3.14", "3.15"]

# Shared by the child programs: a heap with what the walk must reach and finish.
# - strings and bytes built at run time (never hashed);
# - code objects loaded by marshal, as from a .pyc (their constants are not
#   hashed), held only by functions' __code__, with a string inside a tuple
#   inside the untracked tuple of constants, and one inside a frozenset;
# - classes never used, so without a version tag.
HEAP = """
import ctypes, gc, marshal, sys
gc.disable()
WORD = ctypes.sizeof(ctypes.c_void_p)

def cached_hash(obj):
    return ctypes.c_ssize_t.from_address(id(obj) + 3 * WORD).value

# tp_version_tag follows 45 words after the PyVarObject header on 3.10-3.15;
# tp_flags (18 words in) is checked against __flags__ to trust the offset.
def version_tag(kind):
    assert ctypes.c_ulong.from_address(id(kind) + 3 * WORD + 18 * WORD).value == kind.__flags__
    return ctypes.c_uint32.from_address(id(kind) + 3 * WORD + 45 * WORD).value

source = ("def held():\\n    return ('x', ('deep constant string!', 7))\\n"
          "def member(x):\\n    return x in {'in a frozenset!', 'y'}\\n")
module_code = marshal.loads(marshal.dumps(compile(source, "<probe>", "exec")))
namespace = {}
exec(module_code, namespace)
held, member = namespace["held"], namespace["member"]
del module_code, namespace["__builtins__"]


def constants():
    # (co_consts, the nested string, the frozenset's string), found afresh
    # each time: no global refers to them, so only held.__code__ reaches them.
    consts = held.__code__.co_consts
    deep = next(c for c in consts if isinstance(c, tuple))[1][0]
    in_set = next(s for c in member.__code__.co_consts if isinstance(c, frozenset)
                  for s in c if s.startswith("in a"))
    return consts, deep, in_set


strings = ["".join(["record ", str(i), " of the heap"]) for i in range(50000)]
blobs = [b"".join([b"blob ", str(i).encode()]) for i in range(2000)]
classes = [type("Unused%d" % i, (object,), {"attr%d" % i: i}) for i in range(2000)]
# (a frozenset's members are hashed when it is built; the others are not)
assert sum(cached_hash(s) == -1 for s in strings[:100] + [constants()[1]]) == 101, "unhashed"
assert cached_hash(blobs[0]) == -1
assert sum(version_tag(c) == 0 for c in classes) == len(classes), "classes start untagged"
# Collections untrack the constant tuples (as collect_before_freeze does), one
# level of nesting at a time at worst.
for _ in range(4):
    gc.collect()
outer = next(c for c in constants()[0] if isinstance(c, tuple))
assert not any(map(gc.is_tracked, (constants()[0], outer, outer[1]))), "untracked constants"
del outer
gc.freeze()
"""


def run(python: str, code: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-c", HEAP + textwrap.dedent(code)], capture_output=True, text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, cwd=REPO, timeout=timeout,
    )


@pytest.mark.parametrize("minor", ALL)
def test_finish_heap_hashes_and_tags_what_the_walk_reaches(minor: str) -> None:
    result = run(require_python(minor), """
        from gcfork.finish import finish_heap
        done = finish_heap()
        assert done.problems == (), done
        consts, deep, in_set = constants()
        assert all(cached_hash(s) == hash(s) for s in strings + [deep, in_set]), "hashes"
        assert all(cached_hash(b) == hash(b) for b in blobs), "bytes hashes"
        assert all(version_tag(c) != 0 for c in classes), "version tags"
        assert done.hashed >= 52001 and done.tagged >= 2000 and done.untagged == 0, done
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        print("ok", done.hashed, done.tagged)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok"), result.stdout


@pytest.mark.parametrize("minor", IMMORTAL)
def test_immortal_walk_finishes_and_reaches_untracked_constants(minor: str) -> None:
    """With immortalize the same walk does both; the strings inside a code
    object's nested constant tuples and frozenset, reached only through a
    function's __code__, are made immortal and hashed."""
    result = run(require_python(minor), """
        from gcfork.finish import Finisher
        from gcfork.immortal import immortalize_heap, is_immortal
        assert not gc.is_tracked(held.__code__) and not is_immortal(constants()[1])
        finisher = Finisher()
        immortalize_heap(finish=finisher)
        done = finisher.result()
        consts, deep, in_set = constants()
        assert done.problems == () and done.untagged == 0, done
        for name, obj in [("deep", deep), ("in_set", in_set), ("consts", consts),
                          ("code", held.__code__), ("a string", strings[7])]:
            assert is_immortal(obj), name + " was not made immortal"
        assert cached_hash(deep) == hash(deep) and cached_hash(in_set) == hash(in_set)
        assert all(cached_hash(s) == hash(s) for s in strings)
        assert all(version_tag(c) != 0 for c in classes)
        print("ok", done.hashed, done.tagged)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok"), result.stdout


CHILD_COPIES = """
import os
from gcfork.immortal import immortalize_heap
from gcfork.finish import Finisher
immortalize_heap(finish=Finisher() if FINISH else None)

def private():
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(l.split()[1]) * 1024 for l in f if l.startswith("Private_"))

copied = {}
for work in ("hash", "lookup"):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        before = private()
        if work == "hash":
            for s in strings:
                hash(s)
        else:
            for c in classes:
                getattr(c, "missing", None)
        os.write(write_end, str(private() - before).encode())
        os._exit(0)
    os.close(write_end)
    copied[work] = int(os.read(read_end, 64))
    os.waitpid(pid, 0)
print(copied["hash"], copied["lookup"])
"""


@pytest.mark.slow
@pytest.mark.parametrize("minor", IMMORTAL)
def test_a_child_hashing_and_looking_up_inherited_objects_copies_nothing(minor: str) -> None:
    """Without the finisher, a child hashing 50,000 inherited strings and
    looking an attribute up on 2,000 inherited classes writes the hash and
    the version tag into them (MiBs of copied pages); with it, next to none."""
    python = require_python(minor)
    figures = {}
    for on in (False, True):
        result = run(python, f"FINISH = {on}\n" + CHILD_COPIES)
        assert result.returncode == 0, result.stderr
        figures[on] = [int(x) for x in result.stdout.split()]
    (hash_off, lookup_off), (hash_on, lookup_on) = figures[False], figures[True]
    assert hash_off > 2 * 2**20 and lookup_off > 1 * 2**20, figures  # the control copies
    # (the lookups raise and drop 2,000 AttributeErrors: some 200 KiB of their own)
    assert hash_on < 512 * 1024 and lookup_on < 512 * 1024, figures


def test_a_missing_symbol_is_reported_not_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    class NoSymbols:
        def __getattr__(self, name: str) -> object:
            raise AttributeError(name)

    monkeypatch.setattr(ctypes, "pythonapi", NoSymbols())
    symbol = "PyUnstable_Type_AssignVersionTag" if sys.version_info >= (3, 12) else "_PyType_Lookup"
    with pytest.raises(finish.FinishUnsupported, match=symbol):
        finish.version_tagger()
    finisher = finish.Finisher()
    assert len(finisher.problems) == 1 and symbol in finisher.problems[0]
    assert finisher.problems[0].startswith("no type version tags")
    finisher(type("Fresh", (), {}))  # no tag without the symbol, and no error either
    finisher("".join(["still", "hashed"]))
    result = finisher.result()
    assert result.hashed == 1 and result.tagged == 0 and result.problems == tuple(finisher.problems)


def test_only_exact_str_and_bytes_are_hashed() -> None:
    calls = []

    class Key(str):
        def __hash__(self) -> int:
            calls.append(self)
            return 1

    finisher = finish.Finisher(type_tags=False)
    finisher(Key("".join(["sub", "class"])))
    finisher((Key("in"), "a tuple"))
    assert calls == [] and finisher.result().hashed == 0
