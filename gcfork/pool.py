"""gcfork's runtime in a pool: a template that forks children through a
library gcfork has no hook in before the fork, and those children.

A *pool* is any template whose forks no hook of gcfork announces:
``multiprocessing`` (fork and forkserver), Celery's prefork pool (billiard),
a hand-written ``os.fork()`` loop. The fork lifecycle (:mod:`gcfork.lifecycle`)
already does the GC's part at every fork of an armed template: freeze right
before, GC on with the policy's thresholds right after, in the child. This
module does the rest, in the order it happens, and the pool adapters
(:mod:`gcfork.fork`, :mod:`gcfork.celery`) only say when:

In the template, once (:meth:`PoolRuntime.start_template`):

1. open the stats directory and advertise it, so that ``gcfork report --pid
   TEMPLATE`` finds the tree;
2. publish the template's record at once: its role names the cluster's kind
   for the report (:func:`members`) from the first moment;
3. start the sampling thread (the template's record every 2 s, the periodic
   log line);
4. arm the lifecycle, with a :class:`~gcfork.typing.WorkerInfo` per fork for
   a thresholds callable and this module's step in each child.

In each child:

- inside ``os.fork()`` (:meth:`PoolRuntime.child_forked`): forget the
  template's counts; nothing that blocks or logs;
- at the pool's first moment in the child (:meth:`PoolRuntime.start_child`):
  log the GC state (at ERROR if it is not what the policy asked, or if the
  lifecycle failed inside the fork), then start the publishing thread. Lazily,
  not inside ``os.fork()``: the pool's own set-up of the child (billiard
  re-creates logging locks, multiprocessing clears finalizers) comes first;
- at the child's exit, where the pool lets code run (:meth:`PoolRuntime.finish_child`):
  the final record, with the child's USS.

In the template at exit (:meth:`PoolRuntime.stop_template`): the report in
the log, the advertisement withdrawn, the stats directory removed.

Standard library only: it runs in every process of the pool.

.. versionadded:: 0.4
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Callable

from gcfork import actions, finish, immortal, memory, procfs
from gcfork.exceptions import ConfigError, ImmortalizeUnsupported, StatsDirError
from gcfork.fleet import Exporter
from gcfork.lifecycle import LIFECYCLE
from gcfork.policy import Policy
from gcfork.report import WORKER, Member, Sampler, TableRenderer, collect
from gcfork.stats import GCCollector, Publisher, StatsDir, StatsRecord, advertise, withdraw
from gcfork.typing import Thresholds, WorkerInfo

__all__ = ["CHILD", "TEMPLATE", "PoolRuntime", "members", "refuse_server_only"]

TEMPLATE = "template"
"""The role of a pool's template in the report (an adapter may give its own)."""

CHILD = "child"
"""The role of a process deeper in a pool's tree (a child's own child)."""


def members(template_pid: int, records: Mapping[int, StatsRecord]) -> list[Member]:
    """A pool's cluster for the report (:data:`gcfork.report.MembersOf`): the
    template first, named by its own record's role (``template``, or the
    adapter's word such as ``celery-parent``); its direct children are
    ``worker``; anything deeper is ``child``.

    Runs in the template's sampling thread or in ``gcfork report``.
    """
    if memory.process_start(template_pid) is None:
        return []
    own = records.get(template_pid)
    parent_of = procfs.descendants(template_pid)
    found = sorted(
        (Member(pid, WORKER if ppid == template_pid else CHILD)
         for pid, ppid in parent_of.items()),
        key=lambda m: (m.role != WORKER, m.pid),
    )
    return [Member(template_pid, own.role if own else TEMPLATE), *found]


def refuse_server_only(policy: Policy, source: str) -> None:
    """Refuse what only a web server can do, at start, in one line.

    ``warmup`` sends requests through a WSGI app; a pool has none to give.

    Raises:
        ConfigError: ``warmup`` is set (and mode is not ``off``).
    """
    if policy.warms_up:
        raise ConfigError("warmup", policy.warmup, "None in a pool (warm the app up "
                          "yourself before the first fork)", policy.sources.get("warmup", source),
                          f"{source} has no WSGI app to send requests to")


class PoolRuntime:
    """gcfork's state in one pool's tree; one per process, inherited by children.

    Args:
        role: the template's role in the report (``template``, ``celery-parent``).
        log: the server's logger (``logging.getLogger("gcfork")``, Celery's).
    """

    def __init__(self, role: str = TEMPLATE, log: logging.Logger | None = None) -> None:
        self.role = role
        self.log = log or logging.getLogger("gcfork")
        self.policy = Policy.defaults()
        self.stats: StatsDir | None = None
        self.collector = GCCollector()
        self.sampler: Sampler | None = None
        self.exporter: Exporter | None = None
        self.publisher: Publisher | None = None
        self.template_pid = 0
        # In a child: the thresholds the policy asked for it (None: the interpreter's).
        self._wanted: Thresholds | None = None

    # -- template -------------------------------------------------------------

    def start_template(self, policy: Policy,
                       child_info: Callable[[int], WorkerInfo] | None,
                       on_child: Callable[[], object] | None = None) -> None:
        """Template, before its first fork: stats, sampler, lifecycle (steps 1 to 4).

        Args:
            policy: the settled policy; the GC is already off if it changes it.
            child_info: the WorkerInfo of fork number N for a thresholds
                callable, asked inside that fork, in the child; None when the
                adapter sets a callable's thresholds itself later.
            on_child: the adapter's step in each child, inside os.fork(); it
                calls :meth:`child_forked` first. None: that alone.
        """
        self.policy = policy
        self.template_pid = os.getpid()
        self._open_stats()
        if self.stats is not None:
            self.stats.publish(self._template_record())
            self.sampler = Sampler(self.template_pid, self.stats, members,
                                   self._template_record, self.log.info,
                                   policy.report_interval)
            self.sampler.start()
            # A pool gives its children no slot (numbered by age) and recycles none.
            self.exporter = Exporter(policy, self.sampler, lambda pid: None, dict,
                                     self.log.info, self.log.error)
            self.exporter.start()
        LIFECYCLE.child_info = child_info
        LIFECYCLE.on_child = on_child or self.child_forked
        LIFECYCLE.on_first_freeze = self._first_freeze
        LIFECYCLE.arm(policy)

    def _template_record(self) -> StatsRecord:
        return self.collector.record(self.role, None)

    def _open_stats(self) -> None:
        try:
            self.stats = StatsDir.create(self.policy.stats_dir)
        except (OSError, StatsDirError) as exc:
            self.log.error("gcfork: %s; the pool runs without GC statistics", exc)
            return
        self.collector.install()
        pid = self.template_pid
        with contextlib.suppress(OSError):
            # Read once here, inherited: no child reads /proc/stat for its record.
            procfs.boot_time()
        try:
            advertise(pid, memory.process_start(pid) or 0, self.stats.path)
            how = f"gcfork report --pid {pid}"
        except StatsDirError as exc:
            self.log.warning("gcfork: cannot advertise the stats directory: %s", exc)
            how = f"gcfork report --pid {pid} --stats-dir {self.stats.path}"
        self.log.info("gcfork: %s pid=%s: GC statistics in %s; `%s` shows memory sharing",
                      self.role, pid, self.stats.path, how)

    def _first_freeze(self) -> None:
        # In the template, inside its first os.fork(), right after the first freeze.
        if not self.policy.immortalizes:
            return
        # The same walk hashes strings and tags types (gcfork.finish): the
        # caches a worker would otherwise write into objects made immortal.
        finisher = finish.Finisher()
        try:
            result = immortal.immortalize_heap(finish=finisher)
        except ImmortalizeUnsupported as exc:
            self.log.error("gcfork: %s; children share the frozen heap without it", exc)
            return
        done = finisher.result()
        self.log.info("gcfork: made %d objects of the %s immortal (%d left mortal) in %.3fs; "
                      "hashed %d str and bytes objects, %d types have a version tag",
                      result.objects, self.role, result.skipped, result.seconds,
                      done.hashed, done.tagged)
        for line in finish.warnings(done):
            self.log.warning("%s", line)

    def stop_template(self) -> None:
        """Template at exit: the report in the log, then the stats directory
        removed and the advertisement withdrawn. Does nothing in a child."""
        if os.getpid() != self.template_pid or self.stats is None:
            return
        stats, self.stats = self.stats, None
        pid = self.template_pid
        stopped = True
        try:
            if self.sampler is not None:
                stopped = self.sampler.stop()
            if self.exporter is not None:
                self.exporter.stop()
            report = self.sampler.last if self.sampler is not None else None
            if report is None:
                report = collect(pid, members, stats.path)
            self.log.info("gcfork: report at exit (sampled %.0fs before):\n%s",
                          time.time() - report.taken, TableRenderer()(report))
        except Exception as exc:  # the template is exiting: say why, carry on
            self.log.warning("gcfork: no report at exit: %r", exc)
        finally:
            start = memory.process_start(pid) or 0
            withdraw(pid, start)
            if stopped:  # the sampler no longer uses the descriptor
                stats.destroy()

    # -- child ------------------------------------------------------------------

    def child_forked(self) -> None:
        """Child, inside os.fork() (the lifecycle's ``on_child``): quick steps
        only, never a thread or a log line."""
        self.sampler = None  # the template's threads do not run here
        self.exporter = None
        self.publisher = None
        self.collector.reset()
        self._wanted = LIFECYCLE.child_thresholds

    def set_thresholds(self, info: WorkerInfo) -> None:
        """Child, for an adapter that knows the child's slot only after the
        fork (Celery's pool index): a thresholds callable is asked now."""
        if not self.policy.workers_collect or not callable(self.policy.thresholds):
            return
        try:
            self._wanted = self.policy.thresholds_for(info)
        except ConfigError as exc:
            self.log.error("gcfork: %s pid=%s: %s; the interpreter's thresholds instead",
                           info, os.getpid(), exc)
            return
        with contextlib.suppress(actions.ThresholdsRefused):  # start_child says so
            actions.enable_in_worker(self._wanted, settles=self.policy.settles)

    def start_child(self, who: str, requests: Callable[[], int | None] = lambda: None) -> None:
        """Child, at the pool's first moment in it: log its GC state (ERROR if
        the policy could not be applied), then publish its record every 2 s.

        Args:
            who: how the log names the child (e.g. ``child 3 pid=1234``).
            requests: the child's count of tasks done, read by the thread.
        """
        self._check_gc(who)
        if self.stats is None or self.publisher is not None:
            return
        try:
            self.collector.install()
            self.publisher = Publisher(
                self.stats, lambda: self.collector.record(WORKER, requests()),
                on_error=lambda msg: self.log.warning("gcfork: %s", msg),
                release_memory=self.policy.changes_gc)
            self.publisher.start()
        except Exception:
            self.log.exception("gcfork: cannot publish GC statistics; the child runs without")

    def finish_child(self, requests: int | None = None) -> None:
        """Child, as it exits: its final record, with its USS now."""
        if self.publisher is None:
            return
        self.publisher.stop()
        self.publisher.publish(self.collector.record(
            WORKER, requests, final=True, uss_at_exit=memory.own_uss()))

    def _check_gc(self, who: str) -> None:
        if LIFECYCLE.failure is not None:
            self.log.error("gcfork: %s: %s", who, LIFECYCLE.failure)
            LIFECYCLE.failure = None
        if not self.policy.changes_gc:
            return
        state = actions.gc_state()
        kept = actions.significant_thresholds()
        wanted = (self._wanted or state.thresholds)[:kept]
        ok = (state.enabled == self.policy.workers_collect
              and state.thresholds[: len(wanted)] == wanted)
        (self.log.info if ok else self.log.error)(
            "gcfork: %s: GC %s, thresholds %s, %s objects frozen%s", who,
            "on" if state.enabled else "off", state.thresholds, state.freeze_count,
            "" if ok else f" (NOT what the policy asked: enabled={self.policy.workers_collect}, "
                          f"thresholds={wanted})")

