"""benchmarks.holes: pymalloc's own statistics, read in this and other interpreters."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from benchmarks import holes
from tests.conftest import REPO, require_python

# Captured from CPython 3.9.18 (4 KiB pools, 256 KiB arenas, no arena map),
# trimmed to a few rows; the class rows add up to the available bytes.
TEXT_39 = """\
Small block threshold = 512, in 32 size classes.

class   size   num pools   blocks in use  avail blocks
-----   ----   ---------   -------------  ------------
    0     16           1             200            53
    1     32          12            1480            20
    5     96          76            3164            28

# arenas allocated total           =                    6
# arenas reclaimed                 =                    0
# arenas highwater mark            =                    6
# arenas allocated current         =                    6
6 arenas * 262144 bytes/arena      =            1,572,864

# bytes in allocated blocks        =            1,290,336
# bytes in available blocks        =                4,176
47 unused pools * 4096 bytes       =              192,512
# bytes lost to pool headers       =               16,176
# bytes lost to quantization       =               14,944
# bytes lost to arena alignment    =                    0
Total                              =            1,572,864

           12 free PyDictObjects * 48 bytes each =                  576
          4 free PyFrameObjects * 368 bytes each =                1,472
   9 free 1-sized PyTupleObjects * 32 bytes each =                  288
"""


def test_parses_a_39_capture() -> None:
    stats = holes.parse_debugmallocstats(TEXT_39, python="3.9.18")
    assert stats.pool_size == 4096 and stats.arena_size == 262144 and stats.arenas == 6
    assert [c.size for c in stats.classes] == [16, 32, 96]
    assert stats.free_blocks == 53 + 20 + 28 and stats.available == 4176
    assert stats.free_pools == 47 and stats.allocated == 1290336
    assert ("1-sized PyTupleObjects", 9, 32) in stats.free_lists


def test_refuses_text_it_does_not_understand() -> None:
    with pytest.raises(holes.PoolStatsUnavailable, match="no pymalloc section"):
        holes.parse_debugmallocstats("7 free PyDictObjects * 48 bytes each = 336\n")
    broken = TEXT_39.replace("# bytes in available blocks", "# bytes somewhere")
    with pytest.raises(holes.PoolStatsUnavailable, match="available"):
        holes.parse_debugmallocstats(broken)
    wrong_sum = TEXT_39.replace("4,176", "4,177")
    with pytest.raises(holes.PoolStatsUnavailable, match="add up"):
        holes.parse_debugmallocstats(wrong_sum)


def test_reads_this_interpreter_and_leaves_stderr_alone(capfd: pytest.CaptureFixture[str]) -> None:
    stats = holes.read_pool_stats()
    assert capfd.readouterr().err == ""
    assert stats.python == sys.version.split()[0]
    assert stats.pool_size in (4096, 16384) and stats.arenas > 0
    assert stats.allocated > 1_000_000
    assert stats.available == sum(c.free_bytes for c in stats.classes)
    assert all(c.size % 16 == 0 and c.size <= 512 for c in stats.classes)


COUNTS = """
import gc, json, sys
gc.disable()
from benchmarks import holes
size = 96
length = size - sys.getsizeof(b"")  # bytes(63): exactly a 96-byte block
before = holes.read_pool_stats().by_size()[size]
kept = [bytes(length) for _ in range(20_000)]
after = holes.read_pool_stats().by_size()[size]
del kept[::2]  # about 10,000 holes in pools that stay in use
holed = holes.read_pool_stats().by_size()[size]
print(json.dumps({"used": after.used - before.used, "freed": holed.free - after.free,
                  "pools": [after.pools, holed.pools]}))
"""


def test_counts_follow_allocations() -> None:
    # In a child of its own: in the test process, other allocations of the same
    # size class (pytest's, a thread's) ran meanwhile and moved the counts.
    counts = _run(sys.executable, COUNTS)
    assert 19_900 <= counts["used"] <= 20_100, counts
    assert 9_900 <= counts["freed"] <= 10_100, counts
    pools = counts["pools"]
    assert isinstance(pools, list) and pools[0] == pools[1], counts


CHILD = """
import gc, json, sys
gc.disable()
from benchmarks import holes
length = 96 - sys.getsizeof(b"")
kept = [bytes(length) for _ in range(20_000)]
del kept[::2]
stats = holes.read_pool_stats()
filled = holes.fill_holes()
after = filled.after  # read right after the fill, before anything else runs
capacity = (stats.pool_size - 48) // 96
print(json.dumps({
    "before": stats.by_size()[96].free, "after": after.by_size()[96].free,
    "capacity": capacity, "objects": filled.objects, "kept": holes.filled_objects(),
    "per_class": filled.per_class, "total_before": stats.free_blocks,
    "total_after": after.free_blocks, "python": stats.python,
}))
"""


def _run(python: str, code: str, env: dict[str, str] | None = None) -> dict[str, object]:
    out = subprocess.run(
        [python, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **(env or {})},
        cwd=REPO, timeout=30,
    )  # fmt: skip
    figures: dict[str, object] = json.loads(out.stdout)
    return figures


def _check_fill(figures: dict[str, object]) -> None:
    before, after = int(str(figures["before"])), int(str(figures["after"]))
    assert before >= 9_900
    # A few slots taken by the fill's own bookkeeping, at most.
    assert after < min(100, int(str(figures["capacity"]))), figures
    assert figures["kept"] == figures["objects"]
    assert int(str(figures["total_after"])) < int(str(figures["total_before"])) // 4


def test_fill_uses_up_the_free_blocks() -> None:
    _check_fill(_run(sys.executable, CHILD))


def _interpreter(minor: str) -> str:
    # No venv: benchmarks.holes needs only the standard library.
    return require_python(minor)


@pytest.mark.parametrize("minor", ["3.10", "3.12", "3.13"])
def test_reads_and_fills_in_other_versions(minor: str) -> None:
    figures = _run(_interpreter(minor), CHILD)
    assert str(figures["python"]).startswith(minor + ".")
    _check_fill(figures)


def test_plain_malloc_degrades_to_none_with_a_reason() -> None:
    figures = _run(sys.executable, """
        import json
        from benchmarks import holes
        try:
            holes.read_pool_stats()
            reason = None
        except holes.PoolStatsUnavailable as exc:
            reason = str(exc)
        print(json.dumps({"none": holes.pool_stats() is None, "reason": reason}))
    """, env={"PYTHONMALLOC": "malloc"})  # fmt: skip
    assert figures["none"] is True
    assert "pymalloc is not in use" in str(figures["reason"])


def test_release_fill_drops_the_objects() -> None:
    result = holes.fill_holes(max_bytes=1 << 20)
    try:
        assert holes.filled_objects() >= result.objects
        assert result.after is not None and result.seconds >= 0
    finally:
        holes.release_fill()
    assert holes.filled_objects() == 0
