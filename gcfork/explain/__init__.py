"""The profile behind ``gcfork explain``, taken in a worker: where its private pages are.

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
  forking the child and waiting for it.

This package is what runs inside a server, and only when someone asks: the
worker's side of a request, :mod:`gcfork.trigger` (the poll, and
:func:`gcfork.trigger.start_trigger` for servers other than gunicorn),
imports it only then, so a worker that is never explained never loads it.
The ``gcfork explain`` command (asking a worker, the text, the options) is
a tool: :mod:`gcfork.tools.explain`.

.. versionadded:: 0.2
.. versionchanged:: 0.3
   A package (it was the module ``gcfork.cowprof``); ``start_trigger`` moved
   to :mod:`gcfork.trigger`; ``request_profile``, ``trigger_dir``,
   ``trigger_dir_of`` and ``render_explain`` moved to :mod:`gcfork.tools.explain`,
   and ``explain_main`` became its ``run``.
"""

from __future__ import annotations

from gcfork.exceptions import CowProfileError
from gcfork.explain.capture import profile_self
from gcfork.explain.model import CowProfile, MappingRow, ObjectRow, read_profile, write_profile

__all__ = [
    "CowProfile",
    "CowProfileError",
    "MappingRow",
    "ObjectRow",
    "profile_self",
    "read_profile",
    "write_profile",
]
