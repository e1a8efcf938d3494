"""The fork lifecycle of a template process, carried by ``os.register_at_fork``.

The *template* is the process that holds the loaded app and forks the workers
(gunicorn's master, a Celery parent, a forkserver). Once an adapter arms the
lifecycle in it, every fork of that process gets the policy, whether or not
the server announces the fork through a hook of its own:

- right before the fork, in the template: the GC stays off; before every
  freeze but the first, the cycles made since the previous one are collected
  (``gc.collect(0)``); then ``gc.freeze()``, as the very last step, after every
  hook of the server and of the user;
- right after, in the child: nothing more if the adapter announced the fork
  (:meth:`ForkLifecycle.announce`: its own hook, e.g. gunicorn's ``post_fork``,
  enables the GC with the worker's slot and logs it); otherwise the GC goes on
  with the policy's thresholds (the interpreter's when they depend on a slot,
  which only an announced fork has, unless the adapter gives
  :attr:`ForkLifecycle.child_info`, as pool adapters do); then the adapter's
  :attr:`ForkLifecycle.on_child`, if any. A fork that makes another template
  (a dirty arbiter) is re-armed there by its adapter.

Not every fork makes a worker, and the lifecycle tells these apart by where
and when they happen: forks made before the adapter arms it (gunicorn's
``daemon`` double fork, before ``on_starting``) and forks made in any other
process (a worker that forks, the profiler's throw-away child) are left
alone. A child that execs right away (gunicorn's ``USR2`` upgrade) gets the
child's steps, which the exec discards.

The handlers run inside ``os.fork()``: they never raise (a failure is kept in
:attr:`ForkLifecycle.failure` for the adapter to log) and never log
themselves.

.. versionadded:: 0.3
"""

from __future__ import annotations

import os
from typing import Callable

from gcfork import actions
from gcfork.exceptions import ConfigError, GcforkError
from gcfork.policy import Policy
from gcfork.typing import Thresholds, WorkerInfo

__all__ = ["LIFECYCLE", "ForkLifecycle"]


class ForkLifecycle:
    """The fork policy of this process's template, one per process."""

    def __init__(self) -> None:
        self.policy = Policy.defaults()
        # The pid whose forks get the policy; 0 while disarmed. A child finds
        # its parent's pid here, and sets 0: its own forks are left alone.
        self._template = 0
        self._frozen_once = False
        self._announced = False
        self._registered = False
        # Called in the template right after its first freeze (immortalize).
        self.on_first_freeze: Callable[[], object] | None = None
        # Why the last handler could not do its part, for the adapter to log.
        self.failure: str | None = None
        # In a child: whether it was forked by an armed template.
        self.forked_from_template = False
        # Forks of the armed template so far; a child reads its own number
        # here (1 for the first fork after arm()), as a pool's "age".
        self.forks = 0
        # A pool adapter's WorkerInfo for fork number N, for a thresholds
        # callable in a fork no hook announced (None: the interpreter's).
        self.child_info: Callable[[int], WorkerInfo] | None = None
        # A pool adapter's step in every child of the template, right after the
        # GC steps, inside os.fork(): it must be quick and must not raise.
        self.on_child: Callable[[], object] | None = None
        # In a child of a fork no hook announced: the thresholds set in it.
        self.child_thresholds: Thresholds | None = None

    @property
    def armed(self) -> bool:
        """Whether the forks of this process get the policy."""
        return self._template == os.getpid()

    @property
    def frozen_once(self) -> bool:
        return self._frozen_once

    def arm(self, policy: Policy) -> None:
        """Template: from now on every fork of this process gets ``policy``.

        Call it where the server is about to fork workers (gunicorn's
        ``on_starting``), not earlier: a fork before (``daemon``) makes the
        template itself.
        """
        self.policy = policy
        self._template = os.getpid()
        self.forked_from_template = False
        if not self._registered:
            os.register_at_fork(before=self._before, after_in_child=self._after_in_child)
            self._registered = True

    def announce(self) -> None:
        """Template, right before a fork that the adapter will finish in the
        child (gunicorn's ``pre_fork``): the child leaves the GC to it."""
        self._announced = True

    def _before(self) -> None:
        if not self.armed:
            return
        self.failure = None  # each fork's child reports only its own
        self.forks += 1
        if not self.policy.changes_gc:
            return
        first = not self._frozen_once
        self._frozen_once = True
        try:
            actions.disable_in_master()
            plan = actions.freeze_plan(first, self.policy.collect_before_freeze)
            if plan.freeze:
                actions.freeze(collect_first=plan.collect_all, collect_young=plan.collect_young)
            if first and self.on_first_freeze is not None:
                self.on_first_freeze()
        except Exception as exc:  # inside os.fork(): never raise there
            self.failure = f"freezing before a fork failed: {exc!r}"

    def _after_in_child(self) -> None:
        announced, self._announced = self._announced, False
        if self._template != os.getppid():
            return
        self._template = 0
        self.forked_from_template = True
        if not announced and self.policy.changes_gc:
            try:
                thresholds = self._unannounced_thresholds()
            except ConfigError as exc:  # the user's callable: still turn the GC on
                self.failure = f"{exc}; the interpreter's thresholds instead"
                thresholds = None
            self.child_thresholds = thresholds
            try:
                actions.enable_in_worker(thresholds, enable=self.policy.workers_collect,
                                         settles=self.policy.settles)
            except GcforkError as exc:
                self.failure = f"a fork without a worker slot: {exc}"
        if self.on_child is not None:
            try:
                self.on_child()
            except Exception as exc:  # inside os.fork(): never raise there
                self.failure = f"gcfork's set-up of this child failed: {exc!r}"

    def _unannounced_thresholds(self) -> Thresholds | None:
        """Raises ConfigError: the thresholds callable failed."""
        if callable(self.policy.thresholds):
            if self.child_info is None:
                return None  # a slot the callable could be asked about is unknown
            return self.policy.thresholds_for(self.child_info(self.forks))
        try:
            return self.policy.thresholds_for(WorkerInfo(index=-1, age=0))
        except ConfigError:
            return None


LIFECYCLE = ForkLifecycle()
"""This process's lifecycle: armed in a template, inherited by its children."""
