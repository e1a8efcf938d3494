"""``gcfork explain``: what it does with its options, and its exit status.

Runs in the ``gcfork`` command; the options are declared in
:mod:`gcfork.tools.cli` with every other command's.

.. versionadded:: 0.2
.. versionchanged:: 0.3
   ``explain_main(argv)`` became :func:`run`, given the parsed options.
"""

from __future__ import annotations

import argparse
import json
import sys

from gcfork.exceptions import CowProfileError
from gcfork.explain.model import read_profile
from gcfork.tools.explain.bypath import run_by_path
from gcfork.tools.explain.render import render_explain
from gcfork.tools.explain.request import request_profile

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """``gcfork explain``: profile a running worker, or render a saved profile.

    Args:
        args: the options (``pid`` or ``file``, ``dir``, ``timeout``, ``top``,
            ``json``, ``by_path``, ``stats_dir``) as
            :func:`gcfork.tools.cli.build_parser` parses them.

    Returns:
        The exit status: 0, 1 if the profile could not be had, 2 if neither
        ``--pid``, ``--file`` nor ``--by-path`` was given.

    .. versionchanged:: 0.4
       ``by_path`` (:func:`gcfork.tools.explain.bypath.run_by_path`) and ``stats_dir``.
    """
    if args.by_path:
        if args.file:
            print("gcfork explain: error: --by-path reads a running server, not --file",
                  file=sys.stderr)
            return 2
        return run_by_path(args)
    if args.pid is None and not args.file:
        print("gcfork explain: error: one of --pid, --file or --by-path is required",
              file=sys.stderr)
        return 2
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
