"""What one object refers to, the same way for every walk over the heap.

Two walks use it: :mod:`gcfork.immortal` (in the master, making what it
reaches immortal) and :mod:`gcfork.explain.walk` (in a throw-away child,
counting what sits on copied pages). They must agree on what is reachable, or
``gcfork explain`` would blame objects that ``immortalize`` left out.

``gc.get_referents`` answers for objects the collector knows, through their
``tp_traverse``. Two gaps matter for a pre-fork heap:

- code objects are not GC objects, so it sees nothing in them; their
  constants, names and tables are reached through the plain members below
  (reading a member creates no object; properties such as ``co_varnames``,
  which build a new tuple on each read since 3.11, are left out);
- ``dict_traverse`` skips the keys of dicts whose keys are all strings
  (strings cannot form cycles), so the keys are added from the table itself.
"""

from __future__ import annotations

import gc
import operator
import types
from typing import Any

__all__ = ["referents"]

# Members of every supported version's code object (co_qualname and
# co_exceptiontable came in 3.11); each is a stored reference, not computed.
_CODE_MEMBERS = tuple(
    name
    for name in (
        "co_consts", "co_names", "co_filename", "co_name",
        "co_qualname", "co_linetable", "co_exceptiontable",
    )
    if hasattr(types.CodeType, name)
)
_code_members = operator.attrgetter(*_CODE_MEMBERS)
_get_referents = gc.get_referents
_dict_keys = dict.keys
_code_type = types.CodeType


def referents(obj: Any) -> list[Any]:
    """The objects ``obj`` holds references to, as a new list.

    ``type()`` rather than ``isinstance``: a proxy (Django's
    ``SimpleLazyObject``) claims its target's ``__class__``, and ``dict.keys``
    refuses it.
    """
    kind = type(obj)
    if kind is _code_type:
        return list(_code_members(obj))
    children = _get_referents(obj)
    if issubclass(kind, dict):
        children.extend(_dict_keys(obj))
    return children
