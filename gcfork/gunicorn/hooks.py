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
from gcfork.gunicorn.attribution import REQUESTS

__all__ = ["HOOK_ARITY", "REQUEST_HOOK_ARITY", "chain_into", "chained"]

Hook = Callable[..., object]

HOOK_ARITY = {
    "on_starting": 1, "on_reload": 1, "when_ready": 1, "pre_fork": 2, "post_fork": 2,
    "post_worker_init": 1,
    "worker_exit": 2, "child_exit": 2, "on_exit": 1,
    # gunicorn 25+; an older gunicorn ignores a config name it does not know.
    "on_dirty_starting": 1, "dirty_worker_init": 1,
}
# Chained only while attribute_every is on (gcfork.gunicorn.attribution):
# they run on every request.
REQUEST_HOOK_ARITY = {"pre_request": 2, "post_request": 4}
_OURS_LAST = frozenset({"pre_fork"})
# gcfork steps that follow the user's hook of that name, even one that raised.
_THEN = {"worker_exit": "worker_exit_last"}



_SIGNATURES: dict[str, inspect.Signature] = {}
# The hooks the last chain_into() chained: those Config.set chains too.
_CHAINED: set[str] = set()


def _owner(name: str) -> object:
    return REQUESTS if name in REQUEST_HOOK_ARITY else ADAPTER


def _signature(name: str) -> inspect.Signature:
    # Made once per process: a HUP makes new chains, and anything they own
    # alone becomes the master's garbage, kept for its life once frozen
    # (docs/how-it-works.md, "What the master leaves behind").
    if name not in _SIGNATURES:
        _SIGNATURES[name] = inspect.signature(getattr(_owner(name), name))
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
            getattr(_owner(method), method)(*args)
        except StartupError:
            raise  # deliberate: gunicorn prints it and exits before any fork
        except Exception:
            log = getattr(args[0], "log", None)
            if log is None:
                raise
            log.exception("gcfork: %s hook failed; the server carries on without it", method)

    def __repr__(self) -> str:
        return f"<gcfork hook {self.name} chained with {self.theirs!r}>"


def chained(name: str) -> bool:
    """Whether the last :func:`chain_into` chained the hook ``name``."""
    return name in _CHAINED


def chain_into(namespace: MutableMapping[str, Any], per_request: bool = False) -> None:
    """Put gcfork's hooks into a config file's ``namespace``, chained with the
    hooks it already holds, and chain those it defines later.

    A hook of the user's that gunicorn would refuse (a wrong number of
    arguments, not callable, an import path that does not import) is left as
    it is, unchained: gunicorn then rejects it at load with its own message,
    as it would without gcfork, instead of gcfork's signature hiding it.

    Args:
        namespace: the config file's globals.
        per_request: chain ``pre_request`` and ``post_request`` too
            (``attribute_every`` on); with no such hook of the user's, the
            one chained is gunicorn's default (it logs the request at debug).
    """
    names = [*HOOK_ARITY, *(REQUEST_HOOK_ARITY if per_request else ())]
    _CHAINED.clear()
    _CHAINED.update(names)
    for name in names:
        current = namespace.get(name)
        if isinstance(current, _Chain):
            continue
        if current is None:
            namespace[name] = _Chain(name, _gunicorn_default(name))
            continue
        theirs = _accepted(name, current)
        if theirs is not None:
            namespace[name] = _Chain(name, theirs)
    _wrap_config_set()


def _accepted(name: str, value: object) -> Hook | None:
    """``value`` as gunicorn's own check of the hook ``name`` gives it back,
    or None if gunicorn would refuse it."""
    from gunicorn.config import validate_callable, validate_post_request

    try:
        if name == "post_request":  # arity 2, 3 or 4, adapted by gunicorn to 4
            hook: Hook = validate_post_request(value)
        else:
            hook = validate_callable({**HOOK_ARITY, **REQUEST_HOOK_ARITY}[name])(value)
    except TypeError:
        return None
    return hook


def _gunicorn_default(name: str) -> Hook | None:
    """gunicorn's own hook of that name where it does something (its
    ``pre_request`` logs the request at debug): kept under gcfork's chain."""
    if name != "pre_request":
        return None
    from gunicorn.config import PreRequest

    default: Hook = PreRequest.default
    return default


def _wrap_config_set() -> None:
    """Chain the user's hooks that gunicorn stores after ``install()`` ran;
    gunicorn has validated them by then."""
    from gunicorn.config import Config

    if getattr(Config.set, "_gcfork", False):
        return
    original = Config.set

    def set(self: Any, name: str, value: object) -> None:
        original(self, name, value)
        if name in _CHAINED and ADAPTER.installed:
            setting = self.settings[name]
            if not isinstance(setting.value, _Chain):
                setting.value = _Chain(name, setting.value)

    set._gcfork = True  # type: ignore[attr-defined]
    Config.set = set
