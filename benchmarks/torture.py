"""The long torture run of issue 8 (``make torture``): prints its figures as a
table and writes them as JSON.

    .venv/bin/python benchmarks/torture.py --minutes 30 --out torture.json

Parts, in order: the churn soak with the report hammer beside it (most of the
time), the stats-directory attacks between two local users (root only;
skipped otherwise), the settings fuzzing (``--examples`` per setting and
path, random unless ``--seed``) and real starts with bad settings. The exit
status is 1 if any goal is missed, so the run can gate a release.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, given, settings  # noqa: E402 - after the path

from gcfork.config import SETTINGS  # noqa: E402
from tests.torture import attacks, fuzz  # noqa: E402
from tests.torture.harness import SoakOptions, run_soak  # noqa: E402


def fuzz_all(examples: int, seed: int | None) -> dict[str, Any]:
    """Every setting through install() and its variable, and wrong-case
    variables; outcomes counted instead of asserted."""
    tally = fuzz.Tally()
    hyp = settings(max_examples=examples, database=None, deadline=None,
                   derandomize=seed is not None, suppress_health_check=list(HealthCheck),
                   print_blob=False)
    for name in fuzz.NAMES:
        for run in _fuzzers(name, hyp, tally):
            run()
    rejected_badly = tally.kinds[fuzz.BAD_MESSAGE]
    return {
        "fuzz_tried": tally.tried,
        "fuzz_accepted": tally.kinds[fuzz.ACCEPTED],
        "fuzz_rejected_one_line": tally.kinds[fuzz.REJECTED],
        "fuzz_rejected_without_one_line_naming_the_setting": rejected_badly,
        "fuzz_accepted_but_refused_by_the_interpreter": tally.kinds[fuzz.BAD_ACCEPT],
        "fuzz_ignored": tally.kinds[fuzz.IGNORED],
        "fuzz_tracebacks": tally.kinds[fuzz.TRACEBACK],
        "fuzz_examples": tally.examples,
    }


def _fuzzers(name: str, hyp: settings, tally: fuzz.Tally) -> list[Callable[[], None]]:
    """The three fuzzing runs of one setting (a function, so that each run's
    closure holds its own setting name)."""
    variable = SETTINGS[name].env

    @hyp
    @given(value=fuzz.ANY | fuzz.SPECIFIC[name])
    def install(value: object) -> None:
        tally.add(fuzz.check({name: value}, {}, (name,)), f"install({name}=...)")

    @hyp
    @given(text=fuzz.ENV_TEXT)
    def environment(text: str) -> None:
        tally.add(fuzz.check({}, {variable: text}, (variable, name)), f"{variable}=...")

    @settings(hyp, max_examples=max(hyp.max_examples // 5, 10))
    @given(variable=fuzz.wrong_case(name))
    def wrong_case(variable: str) -> None:
        tally.add(fuzz.check_wrong_case(name, variable), variable)

    return [install, environment, wrong_case]


def bad_starts(workdir: Path) -> dict[str, Any]:
    verdicts = [fuzz.bad_start(workdir, case, i) for i, case in enumerate(fuzz.BAD_STARTS)]
    return {
        "bad_starts_tried": len(verdicts),
        "bad_starts_refused_with_one_line": sum(v.ok for v in verdicts),
        "bad_starts_problems": {fuzz.setting_of(c): v.problem
                                for c, v in zip(fuzz.BAD_STARTS, verdicts) if not v.ok},
    }


def run_attacks() -> dict[str, Any]:
    reason = attacks.cannot_attack()
    if reason is not None:
        return {"attacks_skipped": reason}
    results = attacks.run_attacks()
    return {
        "attacks_tried": len(results),
        "attacks_refused": sum(a.refused for a in results),
        "attacks_not_refused": [f"{a.scenario}: {a.name}: {a.detail[:300]}"
                                for a in results if not a.refused],
    }


# (figure, goal as text, check) for the table; a check of None is informative.
GOALS: list[tuple[str, str, Any]] = [
    ("workers_booted", "", None),
    ("gc_on_percent", "100", lambda v: v == 100.0),
    ("frozen_before_own_fork_percent", "100", lambda v: v == 100.0),
    ("configured_thresholds_percent", "100", lambda v: v == 100.0),
    ("master_gc_enabled_at_a_fork", "False", lambda v: v is False),
    ("master_rss_first_mib", "", None),
    ("master_rss_last_mib", "", None),
    ("master_rss_growth_mib", "< 1", lambda v: v is not None and v < 1.0),
    ("master_young_objects_median", "", None),
    ("master_young_objects_max", "", None),
    ("master_frozen_at_second_fork", "", None),
    ("master_frozen_last", "", None),
    ("unreachable_at_exit", "flat (< 1000)", lambda v: v is not None and v < 1000),
    ("requests", "", None),
    ("requests_failed_in_kill_windows", "", None),
    ("requests_failed_outside_kill_windows", "0", lambda v: v == 0),
    ("report_runs", "", None),
    ("report_valid_json", "= runs", None),
    ("report_right_master", "= runs", None),
    ("report_tracebacks", "0", lambda v: v == 0),
    ("exit_status", "0", lambda v: v == 0),
    ("log_tracebacks", "0", lambda v: v == 0),
    ("log_hook_failures", "0", lambda v: v == 0),
    ("fuzz_tried", "", None),
    ("fuzz_rejected_one_line", "", None),
    ("fuzz_rejected_without_one_line_naming_the_setting", "0", lambda v: v == 0),
    ("fuzz_accepted_but_refused_by_the_interpreter", "0", lambda v: v == 0),
    ("fuzz_ignored", "0", lambda v: v == 0),
    ("fuzz_tracebacks", "0", lambda v: v == 0),
    ("bad_starts_tried", "", None),
    ("bad_starts_refused_with_one_line", "= tried", None),
    ("attacks_tried", "", None),
    ("attacks_refused", "= tried", None),
]


def missed(figures: dict[str, Any]) -> list[str]:
    """The goals the figures miss."""
    out = [name for name, _, ok in GOALS if ok is not None and name in figures
           and not ok(figures[name])]
    for figure, whole in (("report_valid_json", "report_runs"),
                          ("report_right_master", "report_runs"),
                          ("bad_starts_refused_with_one_line", "bad_starts_tried"),
                          ("attacks_refused", "attacks_tried")):
        if figure in figures and figures[figure] != figures.get(whole):
            out.append(figure)
    return out


def table(figures: dict[str, Any]) -> str:
    misses = set(missed(figures))
    rows = [(name, str(figures.get(name, "-")), goal, "MISSED" if name in misses else "")
            for name, goal, _ in GOALS]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{'figure':<{width[0]}}  {'value':>{width[1]}}  {'goal':<{width[2]}}", ""]
    lines += [f"{a:<{width[0]}}  {b:>{width[1]}}  {c:<{width[2]}}  {d}".rstrip()
              for a, b, c, d in rows]
    lines.append(f"chaos actions: {json.dumps(figures.get('chaos', {}))}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="soak length (default 30)")
    parser.add_argument("--examples", type=int, default=1000,
                        help="fuzzed examples per setting and path (default 1000)")
    parser.add_argument("--seed", type=int, help="chaos seed; also derandomizes the fuzzing")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--workdir", type=Path, help="keep the soak's logs and records here")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    figures: dict[str, Any] = {"command": " ".join(sys.argv)}
    say(f"soak: {args.minutes:g} minutes of churn with the report hammer")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    soak = run_soak(SoakOptions(seconds=args.minutes * 60, seed=args.seed,
                                chaos_pause=(0.5, 2.0), workdir=args.workdir, progress=say))
    figures.update(soak.figures)
    figures["workers_not_ok_examples"] = soak.bad_workers[:5]
    figures["failures_outside_examples"] = [list(f) for f in soak.failures_outside[:5]]
    figures["report_examples"] = soak.hammer_examples
    say("attacks between two local users")
    figures.update(run_attacks())
    say(f"fuzzing: {args.examples} examples per setting and path")
    figures.update(fuzz_all(args.examples, args.seed))
    say("real starts with bad settings")
    figures.update(bad_starts(args.workdir or Path(tempfile.mkdtemp(prefix="gcfork-bad-"))))
    print(table(figures))
    for key in ("attacks_not_refused", "fuzz_examples", "bad_starts_problems",
                "workers_not_ok_examples", "failures_outside_examples", "report_examples"):
        if figures.get(key):
            print(f"\n{key}:\n{json.dumps(figures[key], indent=1, default=str)}")
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=1, default=str) + "\n")
        say(f"figures written to {args.out}")
    return 1 if missed(figures) else 0


if __name__ == "__main__":
    sys.exit(main())
