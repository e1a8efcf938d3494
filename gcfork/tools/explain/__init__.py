"""The ``gcfork explain`` command: ask a running worker for its copy-on-write
profile and print it.

Runs in the ``gcfork`` command, never in a server: the profile itself is
taken inside the worker by :mod:`gcfork.explain`.

- :mod:`gcfork.tools.explain.request`: :func:`request_profile`, asking a
  worker through the trigger directory;
- :mod:`gcfork.tools.explain.render`: :func:`render_explain`, the text;
- :mod:`gcfork.tools.explain.bypath`: ``--by-path``, the workers' USS growth
  by request path, added up over a running master's live workers;
- :mod:`gcfork.tools.explain.command`: :func:`run`, the options' effect and
  the exit status.

.. versionadded:: 0.3
   Split from :mod:`gcfork.explain`.
"""

from __future__ import annotations

from gcfork.tools.explain.command import run
from gcfork.tools.explain.render import render_explain
from gcfork.tools.explain.request import request_profile, trigger_dir, trigger_dir_of

__all__ = ["render_explain", "request_profile", "run", "trigger_dir", "trigger_dir_of"]
