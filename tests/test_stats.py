"""The stats channel: GC counting, the private directory, tampered files."""

from __future__ import annotations

import bisect
import contextlib
import gc
import json
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gcfork import files
from gcfork.exceptions import CowProfileError
from gcfork.memory import process_start
from gcfork.pauses import PAUSE_BUCKETS, pause_quantile
from gcfork.stats import (
    MAX_RECORD_BYTES,
    SCHEMA_VERSION,
    TRIGGER_NAME,
    GCCollector,
    Publisher,
    StatsDir,
    StatsDirError,
    StatsRecord,
    advertise,
    advertised,
    withdraw,
)
from gcfork.trigger import start_trigger
from tests.conftest import wait_for

NOBODY = 65534


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def collector() -> Iterator[GCCollector]:
    c = GCCollector()
    c.install()
    yield c
    c.uninstall()


def test_collector_counts_collections_and_pauses(collector: GCCollector) -> None:
    before = collector.snapshot()[2].collections
    for _ in range(3):
        node: dict[str, object] = {}
        node["self"] = node
        del node  # a cycle nothing references: each collection frees at least it
        gc.collect(2)
    gen2 = collector.snapshot()[2]
    assert gen2.collections == before + 3
    assert gen2.collected >= 3
    assert 0 < gen2.pause_max <= gen2.pause_total
    collector.reset()
    assert collector.snapshot()[2].collections == 0
    record = collector.record("worker", 7)
    assert (record.pid, record.start, record.requests) == (os.getpid(),
                                                           process_start(os.getpid()), 7)
    assert record.freeze_count == gc.get_freeze_count()
    assert record.to_json()["schema"] == SCHEMA_VERSION
    # The role is the adapter's word, kept as given; the record names no other process.
    arbiter = collector.record("dirty-arbiter", None)
    assert StatsRecord.loads(arbiter.dumps()) == arbiter
    assert "dirty_arbiter_pid" not in arbiter.to_json()


def test_pauses_are_kept_as_a_histogram(collector: GCCollector) -> None:
    gc.disable()  # only the collections below
    try:
        collector.reset()
        for _ in range(50):
            gc.collect(0)  # a young generation of a few objects: well under 1 ms
        # One long collection: a million tracked objects the collector must traverse.
        heap = [[] for _ in range(1_000_000)]
        gc.collect(2)
        del heap
        record = collector.record("worker", 1)
    finally:
        gc.enable()
    assert sum(record.pauses) == record.collections == 51
    assert len(record.pauses) == len(PAUSE_BUCKETS) + 1
    longest = record.pause_max
    assert longest > 0.005  # the traversal of a million objects, on any machine here
    # CPU time of the collecting thread: some, and never more than the wall time.
    assert 0 < record.pause_cpu_max <= longest + 0.001
    # Its bucket holds exactly the longest pause.
    bucket = bisect.bisect_left(PAUSE_BUCKETS, longest)
    assert record.pauses[bucket] >= 1
    assert record.pause_quantile(0.5) == PAUSE_BUCKETS[0]
    assert record.pause_quantile(1.0) == min((*PAUSE_BUCKETS, math.inf)[bucket], longest)
    assert StatsRecord.loads(record.dumps()) == record
    # A record from a writer that kept no histogram still reads, with none.
    older = record.to_json()
    del older["gc"]["pauses"]
    assert StatsRecord.from_json(older).pause_quantile(0.99) is None


def test_pause_quantiles_are_bucket_bounds_never_above_the_longest() -> None:
    counts = [90, 0, 0, 9, 0, 0, 0, 0, 0, 0, 1]  # 1 ms, 10 ms, over 1 s
    assert pause_quantile(counts, 0.5, 2.5) == 0.001
    assert pause_quantile(counts, 0.95, 2.5) == 0.01
    assert pause_quantile(counts, 0.999, 2.5) == 2.5
    assert pause_quantile([0, 3] + [0] * 9, 0.99, 0.0015) == 0.0015
    assert pause_quantile([0] * 11, 0.99, 0.0) is None


def test_directory_is_private_and_records_atomic(collector: GCCollector, tmp_path: Path) -> None:
    fresh = StatsDir.create(None)
    try:
        assert mode(fresh.path) == 0o700 and fresh.owned
        assert mode(os.path.join(fresh.path, TRIGGER_NAME)) == 0o700
    finally:
        fresh.destroy()
    assert not os.path.exists(fresh.path)
    given = tmp_path / "stats"  # missing: gcfork makes it, 0700, and keeps it (USR2)
    sdir = StatsDir.create(str(given))
    assert sdir.path == str(given) and not sdir.owned and mode(given) == 0o700
    record = collector.record("worker", 3)
    sdir.publish(record)
    sdir.publish(record._replace(requests=4))
    files = sorted(os.listdir(given))
    assert files == [TRIGGER_NAME, f"{record.pid}-{record.start}.json"]  # no temporary left
    assert mode(given / files[1]) == 0o600
    read = StatsDir.open(str(given)).read()
    assert read.problems == {}
    assert read.records[(record.pid, record.start)].requests == 4
    assert sdir.find(record.pid) == read.records[(record.pid, record.start)]
    again = StatsDir.create(str(given))  # ours and private: used as it is
    assert again.path == str(given) and not again.owned
    again.destroy()
    sdir.destroy()
    assert given.is_dir()


@pytest.mark.parametrize(("dir_mode", "uid"), [(0o1777, 0), (0o777, 0), (0o755, 0),
                                               (0o700, NOBODY)])
def test_a_directory_gcfork_did_not_make_keeps_its_mode_and_owner(
    collector: GCCollector, tmp_path: Path, dir_mode: int, uid: int
) -> None:
    if uid != os.geteuid() and os.geteuid() != 0:
        pytest.skip("making a directory in another user's needs root")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, dir_mode)
    os.chown(shared, uid, uid)
    (shared / "theirs").write_text("x")
    sdir = StatsDir.create(str(shared))
    assert os.path.dirname(sdir.path) == str(shared) and sdir.owned
    assert mode(sdir.path) == 0o700 and os.stat(sdir.path).st_uid == os.geteuid()
    sdir.publish(collector.record("worker", 1))
    sdir.destroy()
    assert (mode(shared), os.stat(shared).st_uid) == (dir_mode, uid)
    assert os.listdir(shared) == ["theirs"]


def test_directory_for_the_workers_user(collector: GCCollector, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    sdir = StatsDir.create(str(tmp_path / "stats"), owner=(NOBODY, NOBODY))
    for path in (sdir.path, os.path.join(sdir.path, TRIGGER_NAME)):
        info = os.stat(path)
        assert (info.st_uid, info.st_gid, mode(path)) == (NOBODY, NOBODY, 0o700)
    record = collector.record("worker", 1)
    for uid, pid in ((NOBODY, 2), (12345, 3), (os.geteuid(), 4)):
        name = Path(sdir.path, f"{pid}-5.json")
        name.write_text(json.dumps(record._replace(pid=pid, start=5).to_json()))
        os.chown(name, uid, uid)
    read = sdir.read()
    assert sorted(read.records) == [(2, 5), (4, 5)]  # the directory owner's, and ours
    assert "owned by uid 12345" in read.problems["3-5.json"]
    child = os.fork()
    if child == 0:  # a worker after gunicorn's setuid
        status = 1
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            sdir.publish(record._replace(pid=6, start=5))
            sdir.remove(2, 5)
            status = 0
        finally:
            os._exit(status)
    assert os.waitpid(child, 0)[1] == 0
    assert sorted(StatsDir.open(sdir.path).read().records) == [(4, 5), (6, 5)]


def test_a_swapped_directory_is_never_followed(collector: GCCollector, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    prey = victim / "4000000-1.json"  # a record name of no live process: prune's prey
    prey.write_text(json.dumps(collector.record("worker", 0)._replace(pid=4_000_000,
                                                                     start=1).to_json()))
    before = sorted(os.listdir(victim))
    parent = tmp_path / "parent"
    parent.mkdir()
    os.chmod(parent, 0o777)  # anyone may rename entries here
    sdir = StatsDir.create(str(parent))  # shared: a private subdirectory, owned
    sdir.publish(collector.record("worker", 1))
    moved = parent / "moved"
    os.rename(sdir.path, moved)
    os.symlink(victim, sdir.path)
    record = collector.record("worker", 2)
    sdir.publish(record)
    sdir.publish(record._replace(pid=4_000_000, start=2))
    assert sdir.prune() == 1
    assert sdir.read_one(record.pid, record.start) == record
    sdir.remove(record.pid, record.start)
    assert sorted(os.listdir(moved)) == [TRIGGER_NAME]
    sdir.publish(record)
    sdir.destroy()
    assert sorted(os.listdir(victim)) == before and os.path.islink(sdir.path)
    assert os.listdir(moved) == []  # emptied through the descriptor, not removed by name
    with pytest.raises(StatsDirError, match="symlink"):
        StatsDir.open(sdir.path)


def test_refuses_symlinked_or_open_directories(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(StatsDirError, match="symlink"):
        StatsDir.create(str(tmp_path / "link"))
    with pytest.raises(StatsDirError, match="symlink"):
        StatsDir.open(str(tmp_path / "link"))
    (tmp_path / "file").write_text("")
    with pytest.raises(StatsDirError, match="not a directory"):
        StatsDir.create(str(tmp_path / "file"))
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(StatsDirError, match="0777"):
        StatsDir.open(str(shared))
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, NOBODY, NOBODY)
    if os.geteuid() == 0:  # root reads the directory of its workers' user
        StatsDir.open(str(foreign)).close()
    else:
        with pytest.raises(StatsDirError, match=f"uid {NOBODY}"):
            StatsDir.open(str(foreign))


def test_a_planted_trigger_directory_is_refused_and_removed(tmp_path: Path) -> None:
    sdir = StatsDir.create(None)
    trigger = Path(sdir.path, TRIGGER_NAME)
    os.chown(trigger, 12345, 12345)  # another user's, as if planted
    (trigger / "explain-1.json").write_text("{}")
    with pytest.raises(CowProfileError, match=f"{trigger}.*uid 12345"):
        start_trigger(sdir)
    sdir.destroy()
    assert not os.path.exists(sdir.path)
    sdir = StatsDir.create(None)
    Path(sdir.path, TRIGGER_NAME).rmdir()
    os.symlink(tmp_path, Path(sdir.path, TRIGGER_NAME))
    with pytest.raises(CowProfileError, match="symlink"):
        start_trigger(sdir)
    sdir.destroy()
    assert not os.path.exists(sdir.path) and tmp_path.is_dir()


def test_tampered_files_are_ignored_with_a_reason_and_never_followed(
    collector: GCCollector, tmp_path: Path
) -> None:
    sdir = StatsDir.create(str(tmp_path / "stats"))
    good = collector.record("worker", 1)
    sdir.publish(good)
    d = Path(sdir.path)
    # A valid-looking record outside the directory, reachable only through a symlink.
    decoy = tmp_path / "decoy.json"
    decoy.write_text(json.dumps(good._replace(pid=1, requests=999_999).to_json()))
    (d / f"1-{process_start(1) or 0}.json").symlink_to(decoy)
    (d / "2-5.json").write_text("{not json")
    (d / "3-5.json").write_text(" " * (MAX_RECORD_BYTES + 1))
    foreign = d / "4-5.json"
    foreign.write_text(json.dumps(good._replace(pid=4, start=5).to_json()))
    os.chown(foreign, NOBODY, NOBODY)
    (d / "5-5.json").write_text(json.dumps({**good._replace(pid=5, start=5).to_json(),
                                            "schema": 99}))
    (d / "6-5.json").write_text(json.dumps(good.to_json()))  # names another process
    os.mkfifo(d / "7-5.json")  # would block a reader that opened it without O_NONBLOCK
    (d / "README").write_text("hello")
    read = sdir.read()
    assert list(read.records) == [(good.pid, good.start)]
    why = {name.split("-")[0].split(".")[0]: reason for name, reason in read.problems.items()}
    assert "symlink, not followed" in why["1"]
    assert "not valid JSON" in why["2"]
    assert "byte bound" in why["3"]
    assert f"owned by uid {NOBODY}" in why["4"]
    assert "schema 99" in why["5"]
    assert "names pid" in why["6"]
    assert "not a regular file" in why["7"]
    assert "not a record name" in why["README"]
    assert all("999999" not in reason for reason in read.problems.values())


def _with(record: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """``record`` with the field at dotted ``path`` set to ``value``."""
    copy = json.loads(json.dumps(record))
    *parents, last = path.split(".")
    node = copy
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return copy


BAD_FIELDS = [
    ("role", "dirty-arbiter\n"), ("role", 1), ("pid", 0), ("pid", -1), ("pid", 1 << 22 + 1),
    ("pid", True), ("pid", 1.5), ("start", -1), ("started", -1.0), ("written", "now"),
    ("requests", -3), ("requests", "7"), ("gc.enabled", 1), ("gc.thresholds", []),
    ("gc.thresholds", [700, 10, 10, 10]), ("gc.thresholds", "700"), ("gc.freeze_count", None),
    ("gc.generations", [{}]), ("gc.generations.0.pause_max", -0.5),
    ("gc.generations.0.collections", 2**63), ("final", "yes"), ("uss_at_exit", -1),
    ("role", ""), ("role", "Master"), ("role", "worker one"), ("role", "x" * 33),
    ("role", "worker\u200b"), ("gc", []), ("schema", True),
    ("gc.pause_cpu_max", -1.0), ("gc.pause_cpu_max", "1"), ("gc.pauses", [1, 2]),
    ("gc.pauses", "many"), ("gc.pauses", [-1] * 11),
]


@pytest.mark.parametrize(("path", "value"), BAD_FIELDS)
def test_records_are_checked_field_by_field(collector: GCCollector, path: str,
                                            value: object) -> None:
    good = collector.record("worker", 1).to_json()
    with pytest.raises(ValueError):
        StatsRecord.from_json(_with(good, path, value))


@pytest.mark.parametrize("text", [
    "[" * 8000 + "]" * 8000,  # under the size bound, over the C parser's recursion limit
    '{"a":' * 5000 + "1" + "}" * 5000,
    "NaN", "Infinity", "-Infinity", "1e999", "[1e999]",
])
def test_hostile_json_is_refused_in_words(text: str) -> None:
    with pytest.raises(ValueError):
        StatsRecord.loads(text.encode())


def test_hostile_records_never_crash_a_reader(collector: GCCollector, tmp_path: Path) -> None:
    sdir = StatsDir.create(str(tmp_path / "stats"))
    good = collector.record("worker", 1).to_json()
    d = Path(sdir.path)
    (d / "2-1.json").write_text("[" * 8000 + "]" * 8000)
    (d / "3-1.json").write_text(json.dumps(_with(good, "written", math.inf)))  # Infinity
    (d / "4-1.json").write_text(json.dumps(_with(good, "started", math.nan)))  # NaN
    compact = {"separators": (",", ":")}
    (d / "5-1.json").write_text(json.dumps(_with(good, "gc.generations.0.pause_max", 1),
                                           **compact)
                                .replace('"pause_max":1', '"pause_max":1e999'))
    (d / "6-1.json").write_text(json.dumps(_with(good, "pid", 7), **compact).replace(
        '"pid":7', '"pid":' + "9" * 5000))  # int() refuses it from 3.11; a bound after
    read = sdir.read()
    assert read.records == {}
    why = {name.split("-")[0]: reason for name, reason in read.problems.items()}
    # 3.13's parser nests deeper: the list is then refused as not a record.
    assert why["2"] in ("nested too deeply", "record is not a JSON object")
    assert "not a number" in why["3"] and "not a number" in why["4"]
    assert "out of a float's range" in why["5"]
    assert set(why) == {"2", "3", "4", "5", "6"}
    for pid in range(2, 7):
        assert sdir.read_one(pid, 1) is None and sdir.find(pid) is None


def test_nothing_a_reader_refuses_is_written(collector: GCCollector, tmp_path: Path) -> None:
    sdir = StatsDir.create(str(tmp_path / "stats"))
    record = collector.record("worker", 1)
    broken = record._replace(started=math.nan)
    with pytest.raises(ValueError):
        sdir.publish(broken)
    errors: list[str] = []
    Publisher(sdir, lambda: broken, on_error=errors.append).publish()
    assert len(errors) == 1 and "ValueError" in errors[0]
    assert os.listdir(sdir.path) == [TRIGGER_NAME]  # not even a temporary file


def test_write_private_replaces_what_is_planted(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("theirs")
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    (d / "name").symlink_to(target)
    fd = files.open_dir(str(d))
    try:
        files.write_private(fd, "name", b"ours")
    finally:
        os.close(fd)
    assert target.read_text() == "theirs" and (d / "name").read_bytes() == b"ours"
    assert os.listdir(d) == ["name"] and mode(d / "name") == 0o600


# Any JSON value a user could put in a file: a reader says ValueError, nothing else.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=6),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values, path=st.sampled_from([p for p, _ in BAD_FIELDS] + ["gc", "extra"]))
def test_any_json_in_any_field_is_a_record_or_a_value_error(value: object, path: str) -> None:
    good = GCCollector().record("worker", 1).to_json()
    try:
        record = StatsRecord.from_json(_with(good, path, value))
    except ValueError:
        return
    except (KeyError, IndexError, TypeError):  # the path itself is gone from the copy
        return
    # Accepted: then it must be writable again and read back the same.
    assert StatsRecord.loads(record.dumps()) == record


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_a_record_or_a_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        StatsRecord.loads(data)


def test_prune_removes_records_of_dead_processes(collector: GCCollector, tmp_path: Path) -> None:
    sdir = StatsDir.create(str(tmp_path / "stats"))
    mine = collector.record("worker", 0)
    sdir.publish(mine)
    sdir.publish(mine._replace(pid=4_000_000, start=1))  # no such pid (above pid_max)
    sdir.publish(mine._replace(start=mine.start + 1))  # this pid, another start: reused pid
    assert sdir.prune() == 2
    assert list(sdir.read().records) == [(mine.pid, mine.start)]


def test_advertisement_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = advertise(123, 456, "/some/stats")
    assert path == str(tmp_path / "gcfork" / "123-456.json")
    assert mode(tmp_path / "gcfork") == 0o700 and mode(path) == 0o600
    assert advertised(123, 456) == "/some/stats"
    assert advertised(123, 457) is None  # same pid, another process
    withdraw(123, 456)
    assert advertised(123, 456) is None
    # A planted symlink in the runtime directory is not followed.
    decoy = tmp_path / "decoy.json"
    decoy.write_text(json.dumps({"schema": 1, "pid": 9, "start": 9, "stats_dir": "/evil"}))
    (tmp_path / "gcfork" / "9-9.json").symlink_to(decoy)
    assert advertised(9, 9) is None


def test_publisher_publishes_periodically_and_reports_errors_once(
    collector: GCCollector, tmp_path: Path
) -> None:
    sdir = StatsDir.create(str(tmp_path / "stats"))
    calls: list[int] = []

    def build() -> StatsRecord:
        calls.append(1)
        return collector.record("worker", len(calls))

    publisher = Publisher(sdir, build, interval=0.05)
    publisher.start()
    wait_for(lambda: len(calls) >= 3, timeout=5, what="three records")
    publisher.stop()
    assert sdir.find(os.getpid()) is not None
    errors: list[str] = []
    broken = Publisher(StatsDir(str(tmp_path / "missing")), build, on_error=errors.append)
    broken.publish()
    broken.publish()
    assert len(errors) == 1 and "missing" in errors[0]


def test_a_runtime_directory_is_never_chmodded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "gcfork").mkdir(mode=0o755)
    os.chmod(tmp_path / "gcfork", 0o755)
    try:
        path = advertise(123, 789, "/some/stats")
        assert not path.startswith(str(tmp_path))  # the next candidate took it
        assert advertised(123, 789) == "/some/stats"
    except StatsDirError as exc:
        assert "mode 0755" in str(exc)
    finally:
        withdraw(123, 789)
    assert mode(tmp_path / "gcfork") == 0o755
