"""The adapter for any fork-based pool: ``gcfork.fork.install()`` in the template.

Call it in the process that will fork the children (the *template*), as early
as possible, before the app is imported::

    import gcfork.fork; gcfork.fork.install(thresholds=(50_000, 20, 20))

For ``multiprocessing``'s forkserver, the template is the forkserver process:
put the line in a module that also imports the app, and preload it::

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["myapp.gcfork_preload"])

What happens, in which process:

=======================  ==========  ============================================
when                     process     what gcfork does
=======================  ==========  ============================================
``install()``            template    refuse a bad setting (one line, exit 1); GC
                                     off; stats directory, advertisement, the
                                     template's record and sampling thread (log
                                     line through ``logging.getLogger("gcfork")``)
every fork of it         template    young collection and ``gc.freeze()`` as the
                                     last step before the fork (the lifecycle)
right after that fork    child       GC on with the thresholds; a callable gets
                                     ``WorkerInfo(index=N - 1, age=N)`` for the
                                     template's N-th fork since ``install()``
multiprocessing's        child       log the GC state (ERROR if the policy could
bootstrap (after-fork                not be applied), start publishing the
callbacks)                           child's record every 2 s
multiprocessing's exit   child       the final record, with the child's USS
finalizers
exit                     template    the report in the log; stats removed
=======================  ==========  ============================================

A child forked by ``os.fork()`` directly (not through multiprocessing) starts
publishing right in the fork, and writes its final record at exit only if it
exits through the interpreter (``sys.exit``), not ``os._exit``. A child
killed by a signal (``Pool.terminate()``, which ``with Pool()`` calls) writes
no final record. Children's own forks are left alone. See ``docs/pools.md``.

.. versionadded:: 0.4
"""

from __future__ import annotations

import atexit
import os
import sys
from types import FrameType
from typing import Any

from gcfork import actions
from gcfork.exceptions import ConfigError
from gcfork.lifecycle import LIFECYCLE
from gcfork.policy import Policy
from gcfork.pool import TEMPLATE, PoolRuntime, refuse_server_only
from gcfork.typing import WorkerInfo

__all__ = ["RUNTIME", "install", "worker_info"]

RUNTIME = PoolRuntime(TEMPLATE)
"""This process's pool runtime: made at import, inherited by every child."""

# The files whose os.fork() makes a multiprocessing child; its bootstrap then
# runs the after-fork callbacks and, at exit, the finalizers.
_MULTIPROCESSING_FORKERS = (
    os.path.join("multiprocessing", "popen_fork.py"),
    os.path.join("multiprocessing", "forkserver.py"),
)


def worker_info(fork_number: int) -> WorkerInfo:
    """The WorkerInfo a thresholds callable gets for the template's
    ``fork_number``-th fork since :func:`install` (1 for the first).

    A generic pool has no slots gcfork could see, so both count forks:
    ``age`` is the fork's number (never reused) and ``index`` the same from 0,
    not bounded by the pool's size (use ``index % size`` for a slot-like value).
    """
    return WorkerInfo(index=fork_number - 1, age=fork_number)


def install(**settings: Any) -> Policy:
    """Make this process a gcfork template; every later fork of it gets the policy.

    Args:
        **settings: gcfork's settings (``docs/configuration.md``); ``GCFORK_*``
            environment variables override them. ``warmup`` is refused (a
            pool has no WSGI app); ``fast_exit`` does nothing here, since
            multiprocessing's children already end with ``os._exit``.

    Returns:
        The policy in force.

    Exits:
        With status 1 and one line on stderr naming the setting, the value
        and what is allowed, if a setting is invalid.
    """
    if LIFECYCLE.armed:
        RUNTIME.log.warning("gcfork: gcfork.fork.install() ran again in pid %s; the "
                            "first call's settings stay", os.getpid())
        return RUNTIME.policy
    try:
        policy = Policy.from_settings(settings)
        refuse_server_only(policy, "gcfork.fork")
    except ConfigError as exc:
        print(f"gcfork: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if policy.changes_gc:
        actions.disable_in_master()
    RUNTIME.log.info("%s", policy.describe())
    if policy.ignored:
        RUNTIME.log.info("gcfork: mode=off: %s ignored", ", ".join(policy.ignored))
    RUNTIME.start_template(policy, worker_info, on_child=_child_forked)
    atexit.register(RUNTIME.stop_template)
    return policy


def _child_forked() -> None:
    """Child, inside os.fork(): schedule the child's publishing."""
    RUNTIME.child_forked()
    if _forked_by_multiprocessing(sys._getframe(1)):
        # Its bootstrap clears the finalizers it inherited, then runs these
        # callbacks: the exit finalizer is registered from there.
        import multiprocessing.util  # already loaded: it is forking us

        multiprocessing.util.register_after_fork(RUNTIME, _multiprocessing_child)
    else:
        RUNTIME.start_child(f"child {LIFECYCLE.forks} pid={os.getpid()}")
        atexit.register(_plain_child_exit, os.getpid())


def _forked_by_multiprocessing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.endswith(_MULTIPROCESSING_FORKERS):
            return True
        frame = frame.f_back
    return False


def _multiprocessing_child(runtime: PoolRuntime) -> None:
    """Child, in multiprocessing's bootstrap, before the target runs."""
    import multiprocessing
    import multiprocessing.util

    name = multiprocessing.current_process().name
    runtime.start_child(f"{name} (fork {LIFECYCLE.forks}) pid={os.getpid()}")
    # Run by the bootstrap's exit function, after the target returned (a pool
    # worker that reached maxtasksperchild, or a Process that ended);
    # exitpriority below the pool's own finalizers so that it runs last.
    multiprocessing.util.Finalize(None, runtime.finish_child, exitpriority=-100)


def _plain_child_exit(pid: int) -> None:
    if os.getpid() == pid:  # registered in this child; its own children inherit it
        RUNTIME.finish_child()
