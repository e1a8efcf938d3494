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
from gcfork.tools.explain.render import render_explain
from gcfork.tools.explain.request import request_profile

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """``gcfork explain``: profile a running worker, or render a saved profile.

    Args:
        args: the options (``pid`` or ``file``, ``dir``, ``timeout``, ``top``,
            ``json``) as :func:`gcfork.tools.cli.build_parser` parses them.

    Returns:
        The exit status: 0, or 1 if the profile could not be had.
    """
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
