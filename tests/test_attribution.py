"""Which requests copy: per-path attribution of worker USS growth.

The engine (gcfork/attribution.py) with real USS reads of this process, the
record's by_path part, the setting, the hook chaining, and real gunicorn
clusters of the test app (tests/apps/gcstate.py): ``/leak`` keeps 1 MiB per
request in the worker, ``/gc`` keeps nothing.
"""

from __future__ import annotations

import json
import mmap
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gcfork.attribution import MAX_KEPT, OTHER, Attribution, merge, normalise_path, own_uss
from gcfork.config import resolve
from gcfork.exceptions import ConfigError
from gcfork.gunicorn.hooks import chain_into, chained
from gcfork.records import (
    MAX_PATH_CHARS,
    MAX_PATHS,
    MAX_RECORD_BYTES,
    ByPath,
    GCCollector,
    PathGrowth,
    StatsRecord,
)
from tests.conftest import REPO, StartServer, wait_for

MiB = 2**20
SCHEMA = json.loads((REPO / "gcfork" / "report.schema.json").read_text())


def _keep(mib: int) -> mmap.mmap:
    """Memory this process maps anew and writes: its own pages (USS). A fresh
    mapping, not the allocator's: free memory the heap already holds (after
    an earlier test freed a large heap) would not grow USS."""
    block = mmap.mmap(-1, mib * MiB)
    for offset in range(0, mib * MiB, 4096):
        block[offset] = 1
    return block


# -- paths ----------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "kept"), [
    ("/", "/"),
    ("", "/"),
    ("/search?q=secret&page=2", "/search"),
    ("/user/42/orders", "/user/:id/orders"),
    ("/o/550e8400-e29b-41d4-a716-446655440000/", "/o/:id/"),
    ("/blob/0123456789abcdef0123", "/blob/:id"),
    ("/catalog/c/audio-3/", "/catalog/c/audio-3/"),  # a slug is not an id
    ("/a b/\u00e9\n", "/a%20b/%C3%A9%0A"),
])
def test_paths_are_normalised(raw: str, kept: str) -> None:
    assert normalise_path(raw) == kept


def test_a_long_path_is_cut_and_stays_valid() -> None:
    path = normalise_path("/" + "\u00e9" * 500)
    assert len(path) == MAX_PATH_CHARS and path.endswith("...")
    ByPath.from_json(ByPath(1, 1, 0, (PathGrowth(path, 1, 0, 0),)).to_json())


# -- the engine, with real USS reads ----------------------------------------------

def test_growth_is_counted_for_the_path_of_the_sampled_request() -> None:
    attribution = Attribution(1)
    kept = []
    for i in range(3):
        attribution.begin(2 * i, "/leak?mib=4")
        kept.append(_keep(4))
        attribution.end(2 * i)
        attribution.begin(2 * i + 1, "/nothing")
        attribution.end(2 * i + 1)
    by_path = attribution.snapshot()
    assert by_path is not None and by_path.sampled == 6 and by_path.overlapped == 0
    rows = {r.path: r for r in by_path.paths}
    assert set(rows) == {"/leak", "/nothing"}
    assert rows["/leak"].samples == 3 and 3.9 * MiB < rows["/leak"].mean < 4.5 * MiB
    assert abs(rows["/nothing"].mean) < 0.1 * MiB
    assert by_path.paths[0].path == "/leak"  # the biggest growth first


def test_about_one_request_in_n_is_sampled() -> None:
    reads = []

    def read() -> int:
        reads.append(1)
        return 0

    attribution = Attribution(50, read_uss=read)
    for i in range(5000):
        attribution.begin(i, "/x")
        attribution.end(i)
    by_path = attribution.snapshot()
    assert by_path is not None and len(reads) == 2 * by_path.sampled
    assert 60 < by_path.sampled < 150  # 100 expected: gaps of 1 to 99, 50 on average


def test_off_reads_nothing_and_publishes_nothing() -> None:
    def read() -> int:
        raise AssertionError("attribution off read the USS")

    attribution = Attribution(0, read_uss=read)
    for i in range(1000):
        attribution.begin(i, "/x")
        attribution.end(i)
    assert attribution.snapshot() is None


def test_overlapping_requests_are_dropped_and_counted() -> None:
    attribution = Attribution(1)
    attribution.begin(1, "/a")  # sampled
    attribution.begin(2, "/b")  # starts while /a runs: not sampled, and /a is spoilt
    attribution.end(2)
    attribution.end(1)
    attribution.begin(3, "/c")  # sampled
    attribution.begin(4, "/d")  # /c runs
    attribution.end(3)
    attribution.end(4)
    attribution.begin(5, "/e")  # alone: counted
    attribution.end(5)
    by_path = attribution.snapshot()
    assert by_path is not None
    assert [r.path for r in by_path.paths] == ["/e"]
    assert by_path.sampled == 1 and by_path.overlapped == 4


def test_threads_never_break_the_counts() -> None:
    attribution = Attribution(3, read_uss=lambda: 0)

    def serve(base: int) -> None:
        for i in range(2000):
            attribution.begin(base + i, f"/t{base}")
            attribution.end(base + i)

    threads = [threading.Thread(target=serve, args=(k * 10_000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_path = attribution.snapshot()
    assert by_path is not None and by_path.sampled + by_path.overlapped > 0
    # Every request ended (no count left astray): the next ones alone are counted.
    before = by_path.sampled
    for i in range(10):
        attribution.begin(i, "/alone")
        attribution.end(i)
    after = attribution.snapshot()
    assert after is not None and after.sampled > before


def test_a_failed_read_switches_off_once_and_never_raises() -> None:
    told: list[str] = []
    calls: list[int] = []

    def read() -> int:
        calls.append(1)
        raise PermissionError("smaps_rollup: access denied")

    attribution = Attribution(1, read_uss=read, on_error=told.append)
    for i in range(100):
        attribution.begin(i, "/x")
        attribution.end(i)
    assert len(calls) == 1 and len(told) == 1 and "access denied" in told[0]
    by_path = attribution.snapshot()
    assert by_path is not None and by_path.every == 0 and by_path.sampled == 0


def test_paths_are_bounded_with_the_rest_as_other() -> None:
    attribution = Attribution(1, read_uss=iter(range(0, 10**9, 7)).__next__)
    for i in range(3 * MAX_KEPT):
        attribution.begin(i, f"/p{i:03d}x")
        attribution.end(i)
    by_path = attribution.snapshot()
    assert by_path is not None and len(by_path.paths) == MAX_PATHS + 1
    assert by_path.paths[-1].path == OTHER
    assert sum(r.samples for r in by_path.paths) == 3 * MAX_KEPT
    long = ByPath(1, 1, 0, tuple(PathGrowth("/" + "x" * (MAX_PATH_CHARS - 1), 2**40, -(2**61),
                                            2**61) for _ in range(MAX_PATHS + 1)))
    record = GCCollector().record("worker", 7, by_path=long)
    assert len(record.dumps()) < MAX_RECORD_BYTES
    assert StatsRecord.loads(record.dumps()) == record


def test_own_uss_reads_this_process() -> None:
    before = own_uss()
    kept = _keep(8)
    assert own_uss() - before > 7 * MiB and kept


# -- the record -------------------------------------------------------------------

def _record_with(by_path: Any) -> bytes:
    data = GCCollector().record("worker", 1).to_json()
    data["by_path"] = by_path
    return json.dumps(data).encode()


@pytest.mark.parametrize("bad", [
    {"every": 1, "sampled": 1, "overlapped": 0, "paths": [{"path": "/a\x1b[2J", "samples": 1,
                                                           "total": 0, "max": 0}]},
    {"every": 1, "sampled": 1, "overlapped": 0, "paths": [{"path": "/a b", "samples": 1,
                                                           "total": 0, "max": 0}]},
    {"every": 1, "sampled": 1, "overlapped": 0, "paths": [{"path": "/" * 121, "samples": 1,
                                                           "total": 0, "max": 0}]},
    {"every": 1, "sampled": 1, "overlapped": 0, "paths": [{"path": "/a", "samples": 0,
                                                           "total": 0, "max": 0}]},
    {"every": 1, "sampled": 1, "overlapped": 0, "paths": [{"path": "/a", "samples": 1,
                                                           "total": 2**70, "max": 0}]},
    {"every": -1, "sampled": 1, "overlapped": 0, "paths": []},
    {"every": 1, "sampled": 1, "overlapped": 0,
     "paths": [{"path": f"/{i}", "samples": 1, "total": 0, "max": 0}
               for i in range(MAX_PATHS + 2)]},
    {"every": 1, "sampled": 1, "paths": []},
    [1, 2],
])
def test_a_bad_by_path_makes_the_record_invalid(bad: object) -> None:
    with pytest.raises(ValueError):
        StatsRecord.loads(_record_with(bad))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
_GOOD = {"every": 10, "sampled": 1, "overlapped": 0,
         "paths": [{"path": "/a", "samples": 1, "total": 5, "max": 5}]}


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["every", "sampled", "overlapped", "paths", "path", "samples",
                              "total", "max"]), value=_JSON)
def test_any_json_in_by_path_is_a_record_or_a_value_error(field: str, value: object) -> None:
    by_path: dict[str, Any] = json.loads(json.dumps(_GOOD))
    if field in by_path:
        by_path[field] = value
    else:
        by_path["paths"][0][field] = value
    try:
        record = StatsRecord.loads(_record_with(by_path))
    except ValueError:
        return
    assert StatsRecord.loads(record.dumps()) == record  # accepted: written back the same


def test_a_record_without_by_path_still_reads() -> None:
    data = GCCollector().record("worker", 1).to_json()
    del data["by_path"]
    assert StatsRecord.loads(json.dumps(data).encode()).by_path is None


def test_merge_adds_workers_up_path_by_path() -> None:
    one = ByPath(100, 3, 1, (PathGrowth("/a", 2, 4 * MiB, 3 * MiB), PathGrowth("/b", 1, 0, 0)))
    two = ByPath(100, 2, 0, (PathGrowth("/a", 1, MiB, MiB), PathGrowth(OTHER, 1, 5 * MiB,
                                                                         5 * MiB)))
    merged = merge([one, two])
    assert merged is not None
    assert merged.sampled == 5 and merged.overlapped == 1 and merged.every == 100
    assert merged.paths == (PathGrowth("/a", 3, 5 * MiB, 3 * MiB), PathGrowth("/b", 1, 0, 0),
                            PathGrowth(OTHER, 1, 5 * MiB, 5 * MiB))
    assert merge([]) is None
    jsonschema.validate(merged.to_json(), {**SCHEMA["$defs"]["by_path"], "$defs": SCHEMA["$defs"]})


# -- the setting -------------------------------------------------------------------

def test_the_setting_defaults_to_one_in_1000_and_reads_the_environment() -> None:
    assert resolve({}, {})["attribute_every"].value == 1000
    assert resolve({}, {"GCFORK_ATTRIBUTE_EVERY": "0"})["attribute_every"].value == 0
    assert resolve({"attribute_every": 5}, {})["attribute_every"].value == 5


@pytest.mark.parametrize(("given", "env"), [
    ({"attribute_every": -1}, {}), ({"attribute_every": "10"}, {}),
    ({"attribute_every": True}, {}), ({"attribute_every": 2.5}, {}),
    ({"attribute_every": 10**10}, {}),
    ({}, {"GCFORK_ATTRIBUTE_EVERY": "often"}), ({}, {"GCFORK_ATTRIBUTE_EVERY": "-3"}),
])
def test_a_bad_value_is_refused_in_one_line(given: dict[str, object], env: dict[str, str]
                                            ) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(given, env)
    message = str(info.value)
    assert "'attribute_every'" in message and "from 0 (off) to 1" in message
    assert "\n" not in message


def test_the_request_hooks_are_chained_only_when_on() -> None:
    calls: list[str] = []

    def post_request(worker: object, req: object) -> None:  # gunicorn accepts arity 2
        calls.append("theirs")

    off: dict[str, Any] = {"post_request": post_request}
    chain_into(off, per_request=False)
    assert "pre_request" not in off and off["post_request"] is post_request
    assert not chained("pre_request")
    on: dict[str, Any] = {"post_request": post_request}
    chain_into(on, per_request=True)
    assert chained("pre_request") and chained("post_request")
    on["post_request"](None, None, {}, None)  # gcfork's part (no worker here), then theirs
    assert calls == ["theirs"]
    chain_into({}, per_request=False)  # as the process was


# -- real gunicorn clusters ---------------------------------------------------------

USER_HOOKS = """
def pre_request(worker, req):
    worker.log.info("user pre_request %s", req.path)

def post_request(worker, req):
    worker.log.info("user post_request %s", req.path)
"""


def _gcfork(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gcfork", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def _cluster_by_path(master: int, samples: int) -> dict[str, Any]:
    """``gcfork explain --by-path --json`` once the workers published ``samples``."""
    def published() -> dict[str, Any] | None:
        done = _gcfork("explain", "--by-path", "--pid", str(master), "--json")
        assert done.returncode == 0, done.stderr
        data: dict[str, Any] = json.loads(done.stdout)
        by_path = data["by_path"]
        return data if by_path is not None and by_path["sampled"] >= samples else None

    found: dict[str, Any] = wait_for(published, timeout=30, what=f"{samples} samples published")
    return found


def test_the_leaking_path_is_attributed_its_growth(start_server: StartServer) -> None:
    server = start_server("import gcfork; gcfork.install(globals(), attribute_every=1)\n"
                          "preload_app = True\n" + USER_HOOKS, workers=2)
    for i in range(12):
        assert server.get("/leak")[0] == 200
        assert server.get(f"/gc?n={i}")[0] == 200
    data = _cluster_by_path(server.pid, 24)
    jsonschema.validate(data["by_path"], {**SCHEMA["$defs"]["by_path"], "$defs": SCHEMA["$defs"]})
    rows = {r["path"]: r for r in data["by_path"]["paths"]}
    assert data["workers"] == 2 and set(rows) == {"/leak", "/gc"}
    leak, quiet = rows["/leak"], rows["/gc"]
    assert leak["samples"] == 12 and quiet["samples"] == 12  # sync workers: none overlaps
    assert 0.9 * MiB < leak["total"] / 12 < 1.3 * MiB, leak
    assert abs(quiet["total"] / 12) < 0.1 * MiB, quiet  # nothing kept: noise only
    text = _gcfork("explain", "--by-path", "--pid", str(server.pid))
    assert text.returncode == 0, text.stderr
    first = next(line for line in text.stdout.splitlines() if line.startswith("  /"))
    assert first.split()[:2] == ["/leak", "12"] and "MiB" in first
    log = server.log()
    # The user's hooks of the same names still run, arity 2 included.
    assert log.count("user pre_request /leak") == 12 and log.count("user post_request /gc") == 12
    report = json.loads(_gcfork("report", "--pid", str(server.pid), "--json").stdout)
    jsonschema.validate(report, SCHEMA)
    assert sum(p["by_path"] is not None for p in report["processes"]) == 2


def test_off_chains_no_request_hook_and_publishes_nothing(start_server: StartServer) -> None:
    server = start_server("import gcfork; gcfork.install(globals(), attribute_every=0)\n"
                          "preload_app = True\n"
                          "raw_env = ['GCFORK_ATTRIBUTE_EVERY=5']\n", workers=1)
    for _ in range(5):
        assert server.get("/leak")[0] == 200

    def published() -> dict[str, Any] | None:
        done = _gcfork("report", "--pid", str(server.pid), "--json")
        data: dict[str, Any] = json.loads(done.stdout)
        workers = [p for p in data["processes"] if p["role"] == "worker"]
        return data if workers and workers[0]["requests"] == 5 else None

    report = wait_for(published, timeout=30, what="the worker's record after 5 requests")
    assert all(p["by_path"] is None for p in report["processes"])
    text = _gcfork("explain", "--by-path", "--pid", str(server.pid))
    assert text.returncode == 0 and "attribution is off" in text.stdout
    # raw_env comes after install() chained the hooks: said, not silently ignored.
    assert "attribute_every=5 [env GCFORK_ATTRIBUTE_EVERY] is not applied" in (
        server.log())


def test_gthread_drops_the_samples_of_overlapping_requests(start_server: StartServer) -> None:
    server = start_server("import gcfork; gcfork.install(globals(), attribute_every=1)\n"
                          "preload_app = True\nworker_class = 'gthread'\nthreads = 4\n",
                          workers=1)
    results: list[int] = []

    def slow() -> None:
        results.append(server.get("/gc?sleep=0.3")[0])

    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 4
    for _ in range(3):
        assert server.get("/leak")[0] == 200  # one at a time: counted
        # The client has the response before the worker's thread has run
        # post_request and read the USS: a request sent at once would overlap.
        time.sleep(0.3)
    data = _cluster_by_path(server.pid, 3)
    by_path = data["by_path"]
    assert by_path["overlapped"] >= 3, by_path  # at least three of four overlapped the others
    rows = {r["path"]: r for r in by_path["paths"]}
    assert rows["/leak"]["samples"] == 3 and rows["/leak"]["total"] > 2.7 * MiB


def test_the_cli_needs_a_target(tmp_path: Path) -> None:
    done = _gcfork("explain")
    assert done.returncode == 2 and "--by-path" in done.stderr
    done = _gcfork("explain", "--by-path", "--file", str(tmp_path / "x.json"))
    assert done.returncode == 2


@pytest.mark.parametrize(("worker_class", "attributed"), [
    ("asgi", True),  # gunicorn 27's own: calls the request hooks
    ("uvicorn_worker.UvicornWorker", False),  # calls none: no figures, not empty ones
])
def test_asgi_kinds(start_server: StartServer, worker_class: str, attributed: bool) -> None:
    if worker_class == "asgi":
        pytest.importorskip("gunicorn.workers.gasgi")
    else:
        pytest.importorskip("uvicorn_worker")
    server = start_server("import gcfork; gcfork.install(globals(), attribute_every=1)\n"
                          f"preload_app = True\nworker_class = {worker_class!r}\n",
                          workers=1, app="tests.apps.gcstate_asgi:app")
    for i in range(4):
        assert server.get(f"/gc?n={i}")[0] == 200
    if attributed:
        rows = {r["path"]: r for r in _cluster_by_path(server.pid, 4)["by_path"]["paths"]}
        assert rows["/gc"]["samples"] == 4
        return

    def workers_published() -> list[dict[str, Any]]:
        done = _gcfork("report", "--pid", str(server.pid), "--json")
        workers = [p for p in json.loads(done.stdout)["processes"] if p["role"] == "worker"]
        return [p for p in workers if p["requests"] == 4]

    workers = wait_for(workers_published, timeout=30, what="the worker's record")
    assert workers[0]["by_path"] is None
