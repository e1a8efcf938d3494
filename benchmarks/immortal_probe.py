"""The dict-read probe: how much a forked child copies by reading the parent's heap.

A parent builds a dict of 100,000 records, freezes the collector's view of it
(``gc.freeze()``), optionally makes every object immortal
(:func:`gcfork.immortal.immortalize_heap`), and forks a child that reads every
record. The child's private memory growth is what reading alone copied.

Usage::

    python benchmarks/immortal_probe.py            # 3.12 and 3.13 side by side
    python benchmarks/immortal_probe.py --python /path/to/python3.12 --records 100000
    python benchmarks/immortal_probe.py --one immortal   # one run in this interpreter, JSON

Each run is a fresh interpreter (``PYTHONPATH`` points at this checkout).
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ("freeze", "immortal")


def _private(pid: int) -> int:
    """Private_Clean + Private_Dirty of ``pid``, in bytes (its USS)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Private_"))


def one_run(mode: str, records: int) -> dict[str, object]:
    """Build, freeze (and immortalize), fork a reader; return the figures."""
    gc.disable()
    data = {
        f"key{i}": {"id": i, "name": f"name{i}", "tags": [i, str(i)], "score": i * 0.5}
        for i in range(records)
    }
    gc.freeze()
    result: dict[str, object] = {"python": sys.version.split()[0], "mode": mode}
    if mode == "immortal":
        from gcfork.immortal import immortalize_heap

        outcome = immortalize_heap()
        result.update(
            objects=outcome.objects,
            seconds=round(outcome.seconds, 3),
            master_rss_growth=outcome.rss_after - outcome.rss_before,
        )
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        gc.enable()  # as a gcfork worker does
        before = _private(os.getpid())
        total = 0.0
        for key, record in data.items():
            total += record["id"] + len(record["name"]) + len(record["tags"]) + record["score"]
            total += len(key)
        os.write(write_end, str(_private(os.getpid()) - before).encode())
        os._exit(0)
    os.close(write_end)
    copied = int(os.read(read_end, 64))
    os.waitpid(child, 0)
    result["child_copied"] = copied
    return result


def _pythons() -> list[str]:
    """3.12 to 3.15: the test suite's cached venvs (gcfork imports psutil), else pyenv's."""
    found = []
    for minor in ("3.12", "3.13", "3.14", "3.15"):
        venv = REPO / ".venvs" / f"py{minor}-gunicorn" / "bin" / "python"
        pyenv = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{minor}.*/bin/python")))
        if venv.exists():
            found.append(str(venv))
        elif pyenv:
            found.append(pyenv[-1])
    return found


def _run_in(python: str, mode: str, records: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [python, __file__, "--one", mode, "--records", str(records)],
        capture_output=True, text=True, env=env, check=True,
    )
    figures: dict[str, object] = json.loads(out.stdout)
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", help="interpreter(s) to measure")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_run(args.one, args.records)))
        return 0
    pythons = args.python or _pythons()
    if not pythons:
        print("no CPython 3.12 to 3.15 found; pass --python", file=sys.stderr)
        return 1
    mib = 1024 * 1024
    print(f"dict-read probe: {args.records} records; child reads every record after fork")
    print(f"{'python':<9} {'freeze only':>12} {'+ immortal':>11} {'ratio':>7} "
          f"{'objects':>9} {'walk s':>7} {'master RSS +':>13}")
    for python in pythons:
        frozen = _run_in(python, "freeze", args.records)
        immortal = _run_in(python, "immortal", args.records)
        a = int(str(frozen["child_copied"]))
        b = int(str(immortal["child_copied"]))
        growth = int(str(immortal["master_rss_growth"]))
        print(f"{frozen['python']!s:<9} {a / mib:>8.1f} MiB {b / mib:>7.2f} MiB "
              f"{b / a if a else 0:>7.1%} {immortal['objects']!s:>9} {immortal['seconds']!s:>7} "
              f"{growth / mib:>9.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
