"""The Celery adapter: ``gcfork.celery.install(app)`` where the app is defined.

In the module that defines the Celery app, right after it::

    app = Celery("proj")
    import gcfork.celery; gcfork.celery.install(app, thresholds=(50_000, 20, 20))

The worker's parent (Celery's MainProcess) is the template; the prefork
pool's children (billiard's ``ForkPoolWorker-N``) are forked from it, with
``os.fork()``, at start, after ``worker_max_tasks_per_child`` and when
autoscale grows the pool. What happens, in which process:

==========================  =======  =========================================
when                        process  what gcfork does
==========================  =======  =========================================
``install(app)``            any      refuse a bad setting (one line, exit 1);
                                     connect the signals below; GC off at once
                                     if this process runs ``celery worker``
``worker_init``             parent   for a prefork pool of this app: GC off
                                     (if not yet), the policy in the log,
                                     stats directory, the parent's record,
                                     the sampler (log line through Celery's
                                     logger), the lifecycle armed; any other
                                     pool forks nothing: the GC is left on
``worker_ready``            parent   the lines above logged, now that Celery
                                     has set its logging up
every fork of the parent    parent   young collection and ``gc.freeze()``
                                     right before it (the lifecycle)
right after that fork       child    GC on with the thresholds
``worker_process_init``     child    a thresholds callable asked with
                                     ``WorkerInfo(index=billiard's process
                                     index, age=fork number)``; the GC state
                                     logged (ERROR if not the policy's); the
                                     child's record published every 2 s
``task_postrun``            child    one more task in the child's count
``worker_process_shutdown`` child    the final record, with the child's USS
``worker_shutting_down``    parent   the cluster measured, children alive
``worker_shutdown``         parent   the report in the log; stats removed
==========================  =======  =========================================

A process that only imports the app (a web server sending tasks, ``celery
beat``) keeps its GC: ``worker_init`` never comes there. A child killed by a
signal (``--time-limit``, a cold shutdown) writes no final record. See
``docs/pools.md``.

.. versionadded:: 0.4
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from gcfork import actions
from gcfork.exceptions import ConfigError
from gcfork.lifecycle import LIFECYCLE
from gcfork.policy import Policy
from gcfork.pool import PoolRuntime, refuse_server_only
from gcfork.typing import WorkerInfo

__all__ = ["PARENT", "RUNTIME", "install"]

PARENT = "celery-parent"
"""The role of Celery's MainProcess in the report; its pool children are ``worker``."""

RUNTIME = PoolRuntime(PARENT)
"""This process's pool runtime: made at import, inherited by every child."""

_state: dict[str, Any] = {"app": None, "tasks": 0}


class _Held(logging.Handler):
    """Keeps gcfork's lines of ``worker_init``, when Celery has not set its
    logging up yet, for ``worker_ready`` to log."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_HELD = _Held()


def install(app: Any, **settings: Any) -> Policy:
    """Turn gcfork on for the prefork workers of ``app``.

    Args:
        app: the ``celery.Celery`` app whose workers get the policy.
        **settings: gcfork's settings (``docs/configuration.md``);
            ``GCFORK_*`` environment variables override them. ``warmup`` is
            refused (no WSGI app); ``fast_exit`` does nothing, since
            billiard's children already end with ``os._exit``.

    Returns:
        The policy in force.

    Exits:
        With status 1 and one line on stderr naming the setting, the value
        and what is allowed, if a setting is invalid.
    """
    try:
        policy = Policy.from_settings(settings)
        refuse_server_only(policy, "gcfork.celery")
    except ConfigError as exc:
        print(f"gcfork: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    from celery import signals
    from celery.utils.log import get_logger

    RUNTIME.log = get_logger("gcfork.celery")  # propagates to Celery's handlers
    RUNTIME.policy = policy
    _state["app"] = app
    if policy.changes_gc and _runs_a_worker(sys.argv):
        # Before the rest of the app and its tasks are imported: no collection
        # frees objects between the import and the forks.
        actions.disable_in_master()
    for signal, receiver in ((signals.worker_init, _worker_init),
                             (signals.worker_ready, _worker_ready),
                             (signals.worker_process_init, _worker_process_init),
                             (signals.task_postrun, _task_postrun),
                             (signals.worker_process_shutdown, _worker_process_shutdown),
                             (signals.worker_shutting_down, _worker_shutting_down),
                             (signals.worker_shutdown, _worker_shutdown)):
        signal.connect(receiver, weak=False, dispatch_uid=f"gcfork.celery.{receiver.__name__}")
    return policy


def _runs_a_worker(argv: list[str]) -> bool:
    """Whether this process was started as ``celery ... worker`` (``celery
    multi`` starts its workers so too): read from the command line, since
    Celery imports the app before it parses the subcommand."""
    program = os.path.basename(argv[0]) if argv else ""
    celery = program.startswith("celery") or argv[0].endswith(os.path.join("celery",
                                                                            "__main__.py"))
    return celery and "worker" in argv[1:]


def _prefork(worker: Any) -> bool:
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool

    pool = get_implementation(worker.pool_cls)
    return isinstance(pool, type) and issubclass(pool, TaskPool)


def _worker_init(sender: Any = None, **_: Any) -> None:
    """Parent, as the worker starts, before its pool forks."""
    if sender is None or sender.app is not _state["app"] or LIFECYCLE.armed:
        return
    policy, log = RUNTIME.policy, RUNTIME.log
    log.addHandler(_HELD)
    log.propagate = False
    log.setLevel(logging.INFO)  # the root's WARNING until Celery sets its own
    if not _prefork(sender):
        if policy.changes_gc and not actions.gc_state().enabled:
            actions.enable_in_master()
        log.info("gcfork: pool %s does not fork: gcfork leaves the GC on", sender.pool_cls)
        return
    if policy.changes_gc and actions.gc_state().enabled:
        actions.disable_in_master()
        log.warning("gcfork: the GC was on while the app was imported (this process was "
                    "not started as `celery worker`): off from now on")
    log.info("%s", policy.describe())
    if policy.ignored:
        log.info("gcfork: mode=off: %s ignored", ", ".join(policy.ignored))
    # A thresholds callable is asked in the child, where billiard's index is known.
    RUNTIME.start_template(policy, child_info=None)


def _worker_ready(**_: Any) -> None:
    """Parent, once the pool runs and Celery's logging is set up."""
    _release_log(replay=True)


def _release_log(replay: bool) -> None:
    """Log through Celery's handlers again, with the lines held if ``replay``
    (in the parent; the first children inherit the hold, not the lines)."""
    log = RUNTIME.log
    if _HELD not in log.handlers:
        return
    log.removeHandler(_HELD)
    log.propagate = True
    log.setLevel(logging.NOTSET)  # Celery's --loglevel from now on
    records, _HELD.records = _HELD.records, []
    for record in records if replay else ():
        log.handle(record)


def _worker_process_init(**_: Any) -> None:
    """Pool child, after Celery's set-up of it, before its first task."""
    if not LIFECYCLE.forked_from_template:
        return  # the solo pool sends it in the parent
    _release_log(replay=False)
    from billiard.process import current_process

    index = int(getattr(current_process(), "index", -1))
    RUNTIME.set_thresholds(WorkerInfo(index=index, age=LIFECYCLE.forks))
    RUNTIME.start_child(f"pool process index={index} (fork {LIFECYCLE.forks}) "
                        f"pid={os.getpid()}", requests=lambda: int(_state["tasks"]))


def _task_postrun(**_: Any) -> None:
    _state["tasks"] += 1  # in the child that ran it; read by its publishing thread


def _worker_process_shutdown(pid: int | None = None, **_: Any) -> None:
    """Pool child, in billiard's exit path, right before its os._exit."""
    if pid == os.getpid() and LIFECYCLE.forked_from_template:
        RUNTIME.finish_child(int(_state["tasks"]))


def _worker_shutting_down(**_: Any) -> None:
    """Parent, as shutdown begins: measure while the children still run."""
    sampler = RUNTIME.sampler
    if sampler is None or os.getpid() != RUNTIME.template_pid:
        return
    try:
        sampler.stop()
        sampler.sample_now()
    except Exception as exc:  # the worker must stop whatever happens here
        RUNTIME.log.warning("gcfork: cannot measure at shutdown: %r", exc)


def _worker_shutdown(**_: Any) -> None:
    """Parent, at the end: the report in the log, stats removed."""
    RUNTIME.stop_template()
