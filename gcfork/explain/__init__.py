"""``gcfork explain``: where a worker's private pages are, and what lives on them.

Linux only. A profile has two views:

- **by mapping**, from ``/proc/self/smaps``: private clean and dirty bytes of
  the heap, the anonymous mappings (pymalloc arenas, large allocations),
  the stack and each library, grouped by name;
- **by Python object**, by matching the addresses of live objects with the
  pages ``/proc/self/pagemap`` marks as *exclusively mapped*: rows per type
  and per module, for objects the worker inherited (frozen when it was forked)
  and objects it made since.

One module per concern, each saying in which process it runs:

- :mod:`gcfork.explain.model`: the profile (:class:`CowProfile`, its rows)
  and its JSON file;
- :mod:`gcfork.explain.pages`: reading ``smaps`` and ``pagemap`` (worker),
  parsing them (throw-away child);
- :mod:`gcfork.explain.walk`: the object walk (throw-away child);
- :mod:`gcfork.explain.capture`: :func:`profile_self`, the worker reading,
  forking the child and waiting for it;
- :mod:`gcfork.explain.request`: :func:`request_profile`, asking a running
  worker through the trigger directory (``gcfork`` command);
- :mod:`gcfork.explain.render`: :func:`render_explain`, the text (``gcfork``
  command);
- :mod:`gcfork.explain.command`: :func:`explain_main`, the options.

The worker's side of a request is not here: :mod:`gcfork.trigger` (the poll,
and :func:`gcfork.trigger.start_trigger` for servers other than gunicorn)
imports this package only when a request comes, so a worker that is never
explained never loads it.

.. versionadded:: 0.2
.. versionchanged:: 0.3
   A package (it was the module ``gcfork.cowprof``); ``start_trigger`` moved
   to :mod:`gcfork.trigger`.
"""

from __future__ import annotations

from gcfork.exceptions import CowProfileError
from gcfork.explain.capture import profile_self
from gcfork.explain.command import explain_main
from gcfork.explain.model import CowProfile, MappingRow, ObjectRow, read_profile, write_profile
from gcfork.explain.render import render_explain
from gcfork.explain.request import request_profile, trigger_dir, trigger_dir_of

__all__ = [
    "CowProfile",
    "CowProfileError",
    "MappingRow",
    "ObjectRow",
    "explain_main",
    "profile_self",
    "read_profile",
    "render_explain",
    "request_profile",
    "trigger_dir",
    "trigger_dir_of",
    "write_profile",
]
