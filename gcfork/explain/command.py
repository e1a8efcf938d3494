"""``gcfork explain``: its options and what it prints.

Runs in the ``gcfork`` command; :mod:`gcfork.cli` hands it every word after
``explain``.

.. versionadded:: 0.2
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from gcfork.exceptions import CowProfileError
from gcfork.explain.model import read_profile
from gcfork.explain.render import render_explain
from gcfork.explain.request import request_profile

__all__ = ["explain_main"]


def explain_main(argv: Sequence[str]) -> int:
    """``gcfork explain``: profile a running worker, or render a saved profile.

    Args:
        argv: the arguments after ``explain``.

    Returns:
        The exit status: 0, 1 if the profile could not be had, 2 on bad usage.
    """
    # Imported here: a worker asked for a profile loads this package too.
    import argparse

    parser = argparse.ArgumentParser(
        prog="gcfork explain",
        description="Show where a gunicorn worker's private (copied) memory is and which "
        "Python types and modules live on it. Every worker of a gunicorn master running "
        "gcfork answers (gcfork starts the trigger in post_fork).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pid", type=int, help="the worker to profile")
    source.add_argument("--file", help="render a profile saved as JSON instead")
    parser.add_argument("--dir", help="trigger directory (default: .explain in the stats "
                        "directory the worker's master advertises)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    parser.add_argument("--top", type=int, default=15, help="rows per table")
    parser.add_argument("--json", action="store_true", help="print the profile as JSON")
    args = parser.parse_args(list(argv))
    try:
        if args.file:
            profile = read_profile(args.file)
        else:
            profile = request_profile(args.pid, args.dir, args.timeout)
    except (CowProfileError, OSError) as exc:
        print(f"gcfork explain: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(profile.to_json(), indent=1))
    else:
        print(render_explain(profile, top=args.top))
    return 0
