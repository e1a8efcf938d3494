"""The stats channel: GC counting, the private directory, tampered files."""

from __future__ import annotations

import gc
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gcfork.memory import process_start
from gcfork.stats import (
    MAX_RECORD_BYTES,
    SCHEMA_VERSION,
    GCCollector,
    Publisher,
    StatsDir,
    StatsDirError,
    StatsRecord,
    advertise,
    advertised,
    withdraw,
)
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


def test_directory_is_private_and_records_atomic(collector: GCCollector, tmp_path: Path) -> None:
    fresh = StatsDir.create(None)
    try:
        assert mode(fresh.path) == 0o700 and fresh.owned
    finally:
        fresh.destroy()
    assert not os.path.exists(fresh.path)
    given = tmp_path / "stats"
    given.mkdir(mode=0o755)
    sdir = StatsDir.create(str(given))
    assert mode(given) == 0o700
    record = collector.record("worker", 3)
    sdir.publish(record)
    sdir.publish(record._replace(requests=4))
    files = os.listdir(given)
    assert files == [f"{record.pid}-{record.start}.json"]  # no temporary left behind
    assert mode(given / files[0]) == 0o600
    read = StatsDir.open(str(given)).read()
    assert read.problems == {}
    assert read.records[(record.pid, record.start)].requests == 4
    assert sdir.find(record.pid) == read.records[(record.pid, record.start)]


def test_refuses_symlinked_foreign_or_open_directories(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(StatsDirError, match="symlink"):
        StatsDir.create(str(tmp_path / "link"))
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, NOBODY, NOBODY)
    with pytest.raises(StatsDirError, match=f"uid {NOBODY}"):
        StatsDir.create(str(foreign))
    with pytest.raises(StatsDirError, match=f"uid {NOBODY}"):
        StatsDir.open(str(foreign))
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(StatsDirError, match="0777"):
        StatsDir.open(str(shared))


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
