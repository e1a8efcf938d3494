"""gcfork's hooks in a gunicorn config, chained with the user's.

A config file can define the same hooks as gcfork, before or after gcfork's
line. A hook already in the namespace when ``install()`` runs is chained at
once; one defined later is chained when gunicorn stores it (gcfork wraps
``gunicorn.config.Config.set`` for the hook settings it uses, once per
process). The user's hook runs as it would without gcfork; gcfork's part runs
before it, except in ``pre_fork``, where the freeze must be the last thing
before the fork, and the fast exit, which follows the user's ``worker_exit``
even if it raised.
"""

from __future__ import annotations

import inspect
from collections.abc import MutableMapping
from typing import Any, Callable

from gcfork.exceptions import StartupError
from gcfork.gunicorn.adapter import ADAPTER

__all__ = ["HOOK_ARITY", "chain_into"]

Hook = Callable[..., object]

HOOK_ARITY = {
    "on_starting": 1, "on_reload": 1, "when_ready": 1, "pre_fork": 2, "post_fork": 2,
    "post_worker_init": 1,
    "worker_exit": 2, "child_exit": 2, "on_exit": 1,
    # gunicorn 25+; an older gunicorn ignores a config name it does not know.
    "on_dirty_starting": 1, "dirty_worker_init": 1,
}
_OURS_LAST = frozenset({"pre_fork"})
# gcfork steps that follow the user's hook of that name, even one that raised.
_THEN = {"worker_exit": "worker_exit_last"}



_SIGNATURES: dict[str, inspect.Signature] = {}


def _signature(name: str) -> inspect.Signature:
    # Made once per process: a HUP makes new chains, and anything they own
    # alone becomes the master's garbage, kept for its life once frozen
    # (docs/how-it-works.md, "What the master leaves behind").
    if name not in _SIGNATURES:
        _SIGNATURES[name] = inspect.signature(getattr(ADAPTER, name))
    return _SIGNATURES[name]


class _Chain:
    """A gunicorn hook that runs gcfork's part and the user's, in that order
    (reversed for ``pre_fork``; a second gcfork step follows the user's
    ``worker_exit``). gcfork's part raises nothing but :class:`StartupError`."""

    def __init__(self, name: str, theirs: Hook | None) -> None:
        self.name = name
        self.theirs = theirs
        # gunicorn checks a hook's arity; give it the one of gcfork's method.
        self.__signature__ = _signature(name)

    def __call__(self, *args: Any) -> None:
        if self.name in _OURS_LAST:
            self._call_theirs(*args)
            self._call_ours(self.name, *args)
            return
        self._call_ours(self.name, *args)
        then = _THEN.get(self.name)
        if then is None:
            self._call_theirs(*args)
            return
        try:
            self._call_theirs(*args)
        finally:
            self._call_ours(then, *args)

    def _call_theirs(self, *args: Any) -> None:
        if self.theirs is not None:
            self.theirs(*args)

    def _call_ours(self, method: str, *args: Any) -> None:
        try:
            getattr(ADAPTER, method)(*args)
        except StartupError:
            raise  # deliberate: gunicorn prints it and exits before any fork
        except Exception:
            log = getattr(args[0], "log", None)
            if log is None:
                raise
            log.exception("gcfork: %s hook failed; the server carries on without it", method)

    def __repr__(self) -> str:
        return f"<gcfork hook {self.name} chained with {self.theirs!r}>"


def chain_into(namespace: MutableMapping[str, Any]) -> None:
    """Put gcfork's hooks into a config file's ``namespace``, chained with the
    hooks it already holds, and chain those it defines later.

    A hook of the user's that gunicorn would refuse (a wrong number of
    arguments, not callable, an import path that does not import) is left as
    it is, unchained: gunicorn then rejects it at load with its own message,
    as it would without gcfork, instead of gcfork's signature hiding it.
    """
    for name in HOOK_ARITY:
        current = namespace.get(name)
        if isinstance(current, _Chain):
            continue
        if current is None:
            namespace[name] = _Chain(name, None)
            continue
        theirs = _accepted(name, current)
        if theirs is not None:
            namespace[name] = _Chain(name, theirs)
    _wrap_config_set()


def _accepted(name: str, value: object) -> Hook | None:
    """``value`` as gunicorn's own check of the hook ``name`` gives it back,
    or None if gunicorn would refuse it."""
    from gunicorn.config import validate_callable

    try:
        hook: Hook = validate_callable(HOOK_ARITY[name])(value)
    except TypeError:
        return None
    return hook


def _wrap_config_set() -> None:
    """Chain the user's hooks that gunicorn stores after ``install()`` ran;
    gunicorn has validated them by then."""
    from gunicorn.config import Config

    if getattr(Config.set, "_gcfork", False):
        return
    original = Config.set

    def set(self: Any, name: str, value: object) -> None:
        original(self, name, value)
        if name in HOOK_ARITY and ADAPTER.installed:
            setting = self.settings[name]
            if not isinstance(setting.value, _Chain):
                setting.value = _Chain(name, setting.value)

    set._gcfork = True  # type: ignore[attr-defined]
    Config.set = set
