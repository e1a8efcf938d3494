"""gcfork's state and work in one gunicorn process tree: what each hook does.

:mod:`gcfork.gunicorn` lists the hooks and the process each runs in;
:mod:`gcfork.gunicorn.hooks` puts these methods into gunicorn's config.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable

from gcfork import actions, fastexit, memory, procfs
from gcfork.exceptions import ConfigError, StartupError, StatsDirError, ThresholdsRefused
from gcfork.gunicorn.attribution import REQUESTS, warn_unapplied
from gcfork.gunicorn.kinds import CountingASGI, WorkerKind, count_requests, kind_of, kinds_line
from gcfork.gunicorn.metrics import Exporter, start_exports
from gcfork.gunicorn.recycling import GunicornRecycler
from gcfork.gunicorn.roles import DIRTY_ARBITER, DIRTY_WORKER, MASTER, WORKER, members
from gcfork.gunicorn.warming import immortalize_master, warm_up_master
from gcfork.lifecycle import LIFECYCLE
from gcfork.policy import Policy
from gcfork.report import Sampler, TableRenderer, collect, worker_exit_line
from gcfork.stats import (
    TRIGGER_NAME,
    GCCollector,
    Publisher,
    StatsDir,
    StatsRecord,
    advertise,
    withdraw,
)
from gcfork.trigger import ExplainTrigger
from gcfork.typing import Thresholds, WorkerInfo

__all__ = ["ADAPTER", "Adapter"]


class Adapter:
    """gcfork's state in one gunicorn process tree; one instance per process."""

    def __init__(self) -> None:
        self.policy = Policy.defaults()
        # The settings the config file gave install(), resolved again in
        # on_starting and on_reload: only then has gunicorn put its ``raw_env``
        # (``-e GCFORK_MODE=...``) into the environment.
        self.given: dict[str, Any] = {}
        # A config that failed validation on a HUP: told through gunicorn's
        # logger in on_reload, since install() runs before the logger is at hand.
        self.refused: str | None = None
        self.installed = False
        self.started = False
        self._slot_of_age: dict[int, int] = {}
        # Set in the master right before a fork, read in the child right after:
        # the child inherits it with the rest of the master's memory.
        self._next: tuple[int, WorkerInfo, Thresholds | None] | None = None
        # The report's state: made in the master, inherited by every worker.
        self.stats: StatsDir | None = None
        self.collector = GCCollector()
        self.sampler: Sampler | None = None
        self.recycler: GunicornRecycler | None = None
        self.publisher: Publisher | None = None
        # Master: the fleet exports (gcfork.gunicorn.metrics); the workers
        # recycled by reason, which they show, are counted by the recycler.
        self.exporter: Exporter | None = None
        # Worker: gunicorn's exit status, read before the user's worker_exit
        # hook runs (an exception it raises would hide it).
        self._exit_status: int | None = None
        # The worker kind (kinds.py), set in on_starting and inherited; gcfork's
        # request count in a worker of a kind that keeps none (post_worker_init).
        self.kind: WorkerKind | None = None
        self.counter: CountingASGI | None = None
        self._final_published = False

    # -- master -------------------------------------------------------------

    def on_starting(self, server: Any) -> None:
        self.started = True
        # Raised, not logged: a bad GCFORK_* in gunicorn's raw_env stops the
        # server before any fork, as a bad setting in the file does.
        self._settle(server, StartupError)
        preload = bool(server.cfg.preload_app)
        server.log.info(self.policy.describe(preload=preload))
        warn_unapplied(server, self.policy)
        if self.policy.mode == "disable":
            server.log.warning(
                "gcfork: mode=disable: the GC stays off in workers, so reference cycles "
                "made by requests are never freed; bound worker memory with max_requests"
            )
        if self.policy.changes_gc and not preload:
            server.log.warning(
                "gcfork: preload_app is False, so workers import the app themselves and "
                "share nothing of it with the master; set preload_app = True (or run "
                "gunicorn with --preload) to share it. Meanwhile each worker freezes the "
                "app right after importing it, so its collections skip that heap."
            )
        if self.policy.ignored:
            server.log.info("gcfork: mode=off: %s ignored", ", ".join(self.policy.ignored))
        self.kind = kind_of(server.worker_class)
        said = kinds_line(self.kind, self.policy.exits_fast)
        if said is not None:
            server.log.info("%s", said)
        if self.policy.warms_up:
            if preload:
                warm_up_master(server, self.policy, self.kind)
            else:
                server.log.warning("gcfork: warm-up skipped: it needs preload_app = True, "
                                   "since the master does not import the app without it")
        self._open_stats(server)
        # From here on every fork of the master gets the policy, announced by
        # pre_fork or not (the dirty arbiter); forks before (daemon) do not.
        LIFECYCLE.on_first_freeze = lambda: self._first_freeze(server)
        LIFECYCLE.arm(self.policy)
        with contextlib.suppress(OSError):
            # Read once here, inherited: no worker reads /proc/stat for its record.
            procfs.boot_time()

    def on_reload(self, server: Any) -> None:
        """Master, after a HUP re-read the config and before the new workers
        are forked: settle the policy the new workers get."""
        if self.refused is not None:
            server.log.error("%s", self.refused)
            self.refused = None
            return
        self._settle(server, None)
        server.log.info(self.policy.describe(preload=bool(server.cfg.preload_app)))
        if self.exporter is not None:
            self.exporter.reconfigure(self.policy)
        warn_unapplied(server, self.policy)

    def dirty_worker_init(self, worker: Any) -> None:
        """Dirty worker, after loading its dirty apps: publish its GC record,
        so that the report shows its collections."""
        if LIFECYCLE.forked_from_template:
            _log_lifecycle_failure(worker.log, f"dirty worker pid={os.getpid()}")
            self._start_publishing(worker, DIRTY_WORKER)

    def on_dirty_starting(self, arbiter: Any) -> None:
        """Dirty arbiter (gunicorn 25+), forked by the master without pre_fork:
        it forks dirty workers from a loaded app, so it is a template too."""
        if not LIFECYCLE.forked_from_template:
            return
        _log_lifecycle_failure(arbiter.log, f"dirty arbiter pid={os.getpid()}")
        if self.policy.changes_gc:
            actions.disable_in_master()
        LIFECYCLE.arm(self.policy)
        # Its record names it for the report (gcfork.gunicorn.roles): the first
        # is written now, before the arbiter forks any dirty worker. It is not
        # explained: `gcfork explain` profiles the processes that serve.
        self._start_publishing(arbiter, DIRTY_ARBITER, explain=False)
        if self.publisher is not None:
            self.publisher.publish()
        arbiter.log.info("gcfork: dirty arbiter pid=%s: GC %s, its workers forked with the "
                         "policy", os.getpid(), "off" if self.policy.changes_gc else "as is")

    def _settle(self, server: Any, fatal: type[StartupError] | None) -> None:
        """Resolve the settings again now that gunicorn's environment is final.

        Args:
            fatal: raise this with the one-line message if the settings are
                refused (at start); None logs the error and keeps the policy
                in force (on a reload, where workers must keep being forked).
        """
        try:
            policy = Policy.from_settings(self.given)
        except ConfigError as exc:
            if fatal is not None:
                raise fatal(f"gcfork: error: {exc}") from None
            server.log.error("gcfork: error: %s; workers keep the previous settings", exc)
            return
        if policy.changes_gc and not self.policy.changes_gc:
            actions.disable_in_master()
            server.log.warning(
                "gcfork: the GC was on while gunicorn imported the app, since mode=%s came "
                "from gunicorn's raw_env (-e); set it in the process environment or in "
                "install() to have the GC off from the start", policy.mode)
        elif not policy.changes_gc and self.policy.changes_gc:
            actions.enable_in_master()
        self.policy = policy
        if LIFECYCLE.armed:
            LIFECYCLE.policy = policy

    def _open_stats(self, server: Any) -> None:
        if self.stats is not None:
            return
        # Owned by the workers' user (gunicorn's user/group; the master's own
        # when unset): workers publish after dropping privileges.
        owner = (int(getattr(server.cfg, "uid", os.geteuid())),
                 int(getattr(server.cfg, "gid", os.getegid())))
        try:
            self.stats = StatsDir.create(self.policy.stats_dir, owner=owner)
        except (OSError, StatsDirError) as exc:
            server.log.error("gcfork: %s; the server runs without GC statistics", exc)
            return
        if self.policy.stats_dir is not None and self.stats.owned:
            server.log.info("gcfork: stats_dir %s is shared or not private to uid %d: using a "
                            "private subdirectory, removed at exit", self.policy.stats_dir,
                            owner[0])
        self.collector.install()
        pid = os.getpid()
        try:
            advertise(pid, memory.process_start(pid) or 0, self.stats.path)
            how = f"gcfork report --pid {pid}"
        except StatsDirError as exc:
            server.log.warning("gcfork: cannot advertise the stats directory: %s", exc)
            how = f"gcfork report --pid {pid} --stats-dir {self.stats.path}"
        server.log.info("gcfork: GC statistics in %s; `%s` shows memory sharing",
                        self.stats.path, how)

    def when_ready(self, server: Any) -> None:
        if self.stats is None or self.sampler is not None:
            return

        def master_record() -> StatsRecord:
            return self.collector.record(MASTER, None)

        self.recycler = GunicornRecycler(server, lambda: self.policy, lambda: self._slot_of_age)
        self.sampler = Sampler(os.getpid(), self.stats, members, master_record, server.log.info,
                               self.policy.report_interval, watcher=self.recycler)
        self.stats.publish(master_record())
        self.sampler.start()
        self._measure_when_stopping(server, self.sampler)
        self.exporter = start_exports(server, self.sampler, self.policy,
                                      lambda: self._slot_of_age, self._recycles)

    def _recycles(self) -> dict[str, int]:
        """Master: workers recycled on private memory, by reason (for the metrics)."""
        return dict(self.recycler.engine.recycles) if self.recycler is not None else {}

    def _measure_when_stopping(self, server: Any, sampler: Sampler) -> None:
        """Master: take the shutdown report as shutdown begins, while the
        workers still run; by ``on_exit`` they are gone, and the sampler's
        last report can be 30 s old. gunicorn has no hook for that moment, so
        this wraps the arbiter's ``stop`` (TERM, INT, QUIT), on this instance only."""
        stop = server.stop
        measured: list[bool] = []

        def measure_then_stop(*args: Any, **kwargs: Any) -> Any:
            # Once: after INT or QUIT, halt() calls stop again once the workers
            # are gone; measuring then left the exit lines nothing to report.
            try:
                if not measured:
                    measured.append(sampler.stop())
                    sampler.sample_now()
            except Exception as exc:  # the server must stop whatever happens here
                server.log.warning("gcfork: cannot measure at shutdown: %r", exc)
            return stop(*args, **kwargs)

        server.stop = measure_then_stop

    def child_exit(self, server: Any, worker: Any) -> None:
        if self.stats is None:
            return
        record = self.stats.find(worker.pid)
        last = self.sampler.row_of(worker.pid) if self.sampler is not None else None
        private = record.uss_at_exit if record is not None else None
        ago = None
        if private is None and last is not None and self.sampler is not None:
            # A killed worker, or one that published no final record: the last
            # sample of it, said to be as old as it is (a dead process cannot
            # be measured).
            private = last.memory.uss
            taken = self.sampler.last.taken if self.sampler.last is not None else time.time()
            ago = max(time.time() - taken, 0.0)
        age = None
        if record is not None:
            age = (record.written if record.final else time.time()) - record.started
        elif last is not None:
            age = last.age(time.time())
        server.log.info(worker_exit_line(worker.pid, record, age, private, ago))
        if record is not None:
            self.stats.remove(record.pid, record.start)

    def on_exit(self, server: Any) -> None:
        if self.stats is None:
            return
        pid = os.getpid()
        try:
            if self.sampler is not None:
                self.sampler.stop()
            if self.exporter is not None:
                self.exporter.stop()
            last = self.sampler.last if self.sampler is not None else None
            report = last if last is not None else collect(pid, members, self.stats.path)
            server.log.info("gcfork: report at shutdown (sampled %.0fs before):\n%s",
                            time.time() - report.taken, TableRenderer()(report))
        finally:
            start = memory.process_start(pid) or 0
            self.stats.remove(pid, start)
            withdraw(pid, start)
            # Only once the sampler is done with the descriptor: a closed
            # number can be reused by another open.
            if self.sampler is None or self.sampler.stop():
                self.stats.destroy()
            else:
                server.log.warning("gcfork: the sampler did not stop; leaving %s", self.stats.path)

    def pre_fork(self, server: Any, worker: Any) -> None:
        info = WorkerInfo(index=self._take_slot(server, worker.age), age=worker.age)
        try:
            thresholds = self.policy.thresholds_for(info)
        except ConfigError as exc:
            server.log.error("gcfork: %s; worker %s keeps the interpreter's thresholds", exc, info)
            thresholds = None
        self._next = (worker.age, info, thresholds)
        if not self.policy.changes_gc:
            return
        if actions.gc_state().enabled:
            server.log.warning("gcfork: something re-enabled the GC in the master; "
                               "disabling it again")
            actions.disable_in_master()
        # The freeze itself happens inside os.fork(), after every pre_fork hook
        # (gcfork.lifecycle); this worker's GC is left to post_fork.
        LIFECYCLE.announce()

    def _first_freeze(self, server: Any) -> None:
        # In the master, inside the first os.fork(), right after the first freeze.
        if self.policy.immortalizes:
            # Once: a later walk would cost a third of the first for the few
            # objects the master made since, and would make immortal, so
            # never free, the bookkeeping of every worker that comes and goes.
            immortalize_master(server)

    def _take_slot(self, server: Any, age: int) -> int:
        live = sorted((w.age for w in server.WORKERS.values()), reverse=True)
        self._slot_of_age = {a: s for a, s in self._slot_of_age.items() if a in live}
        # gunicorn keeps the youngest num_workers workers and retires the rest
        # (a HUP forks the new generation before the old one leaves), so only
        # the slots of those that stay alongside the new worker are taken.
        staying = live[: max(getattr(server, "num_workers", len(live) + 1) - 1, 0)]
        taken = {self._slot_of_age[a] for a in staying if a in self._slot_of_age}
        slot = next(i for i in range(len(taken) + 1) if i not in taken)
        self._slot_of_age[age] = slot
        return slot

    # -- worker -------------------------------------------------------------

    def post_fork(self, server: Any, worker: Any) -> None:
        _log_lifecycle_failure(worker.log, f"worker age={worker.age}")
        try:
            self._post_fork_gc(server, worker)
        finally:
            REQUESTS.start(worker, self.policy.attribute_every, self.kind)
            # After the GC is set up, so that the first record shows it on.
            self._start_publishing(worker, WORKER)

    def _post_fork_gc(self, server: Any, worker: Any) -> None:
        if not self.policy.changes_gc:
            return
        info, thresholds = self._assignment(worker)
        if not server.cfg.preload_app:
            # The GC stays off until post_worker_init has frozen the app import.
            if thresholds is not None:
                actions.enable_in_worker(thresholds, enable=False)
            return
        self._enable(worker, info, thresholds)

    def post_worker_init(self, worker: Any) -> None:
        # Whatever the mode: mode "off" is the baseline a comparison counts too.
        self._account_for_kind(worker)
        if not self.policy.changes_gc or worker.cfg.preload_app:
            return
        actions.freeze()
        info, thresholds = self._assignment(worker)
        self._enable(worker, info, thresholds)

    def _account_for_kind(self, worker: Any) -> None:
        """Worker, app loaded, about to serve: what its kind needs for the report."""
        self.counter = count_requests(worker)
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            # Nothing handles SIGTERM: the kind lets the signal end the process
            # (uvicorn's worker restores the default and raises it again after
            # its graceful shutdown), so worker_exit never runs. The final
            # record is published from here instead, then the signal goes on.
            signal.signal(signal.SIGTERM, lambda signum, frame: self._last_words(worker, signum))

    def _last_words(self, worker: Any, signum: int) -> None:
        """Worker, main thread, as SIGTERM ends a kind that dies by it."""
        try:
            self._publish_final(worker)
        finally:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def _requests(self, proc: Any, role: str) -> int | None:
        """Requests served: gcfork's count, gunicorn's, or None (unknown)."""
        if self.counter is not None:
            return self.counter.count
        if role == WORKER and self.kind is not None and not self.kind.counts_requests:
            return None
        return getattr(proc, "nr", None)

    def _publish_final(self, worker: Any) -> None:
        """Worker, on its way out: the final record, with its USS measured now."""
        if self.publisher is None or self._final_published:
            return
        self._final_published = True
        self.publisher.stop()
        self.publisher.publish(self.collector.record(
            WORKER, self._requests(worker, WORKER), final=True, uss_at_exit=memory.own_uss(),
            by_path=REQUESTS.by_path()))

    def _start_publishing(self, proc: Any, role: str, explain: bool = True) -> None:
        """In a child of a template, right after its fork: publish its record,
        with its role, every few seconds from a daemon thread."""
        # Published whatever the mode: mode "off" is the baseline of a comparison.
        self.sampler = None  # the master's thread does not run in a child
        if self.stats is None:
            return
        try:
            self.collector.reset()
            self.collector.install()
            # The count is read from the thread: the request path does no work
            # for it but CountingASGI's increment (uvicorn's worker).
            self.publisher = Publisher(
                self.stats, lambda: self.collector.record(role, self._requests(proc, role),
                                                          by_path=REQUESTS.by_path()),
                on_error=lambda msg: proc.log.warning("gcfork: %s", msg),
                also=self._explain_trigger(self.stats, proc) if explain else None,
                release_memory=self.policy.changes_gc)
            # gevent's worker patches threading after post_fork, where this runs.
            self.publisher.start(untracked=self.kind is not None and self.kind.patches_threading)
        except Exception:
            proc.log.exception("gcfork: cannot publish GC statistics; serving without them")

    @staticmethod
    def _explain_trigger(stats: StatsDir, worker: Any) -> Callable[[], object] | None:
        # In the stats directory, so `gcfork explain` finds it as `gcfork report`
        # finds the stats; polled by the publishing thread (gcfork.trigger).
        try:
            return ExplainTrigger(stats.subdir(TRIGGER_NAME)).poll
        except Exception as exc:
            worker.log.warning("gcfork: `gcfork explain` cannot profile this worker: %s", exc)
            return None

    def worker_exit(self, server: Any, worker: Any) -> None:
        # gunicorn also calls this hook in the master for a worker it found gone.
        if os.getpid() != worker.pid:
            return
        # gunicorn calls the hook while its sys.exit(status) is in flight.
        self._exit_status = fastexit.exit_status_in_flight()
        self._publish_final(worker)

    def worker_exit_last(self, server: Any, worker: Any) -> None:
        """After the user's ``worker_exit`` hook, even one that raised: end the
        worker without finalization, with gunicorn's status."""
        if not self.policy.exits_fast or os.getpid() != worker.pid:
            return
        raised = sys.exc_info()[1]
        if isinstance(raised, Exception):
            # The user's hook raised: log it as gunicorn would have, on its way out.
            server.log.warning("Exception during worker exit:\n%s", "".join(
                traceback.format_exception(type(raised), raised, raised.__traceback__)))
        fastexit.fast_exit(self._exit_status)

    def _assignment(self, worker: Any) -> tuple[WorkerInfo, Thresholds | None]:
        if self._next is not None and self._next[0] == worker.age:
            return self._next[1], self._next[2]
        # A fork that gcfork's pre_fork did not see (it was not in the config
        # gunicorn used): the GC still goes on, but not as the policy planned.
        worker.log.error("gcfork: worker age=%s was forked without gcfork's pre_fork hook: "
                         "no slot, the interpreter's thresholds", worker.age)
        return WorkerInfo(index=-1, age=worker.age), None

    def _enable(self, worker: Any, info: WorkerInfo, thresholds: Thresholds | None) -> None:
        try:
            state = actions.enable_in_worker(thresholds, self.policy.workers_collect,
                                             self.policy.settles)
        except ThresholdsRefused as exc:
            state = actions.gc_state()
            worker.log.error("gcfork: worker slot=%s age=%s pid=%s: %s; GC %s with thresholds "
                             "%s instead", info.index, info.age, worker.pid, exc,
                             "on" if state.enabled else "off", state.thresholds)
            return
        kept = actions.significant_thresholds()
        wanted = (thresholds or state.thresholds)[:kept]
        ok = (state.enabled == self.policy.workers_collect
              and state.thresholds[: len(wanted)] == wanted)
        log = worker.log.info if ok else worker.log.error
        log("gcfork: worker slot=%s age=%s pid=%s: GC %s, thresholds %s, %s objects frozen%s",
            info.index, info.age, worker.pid, "on" if state.enabled else "off",
            state.thresholds, state.freeze_count,
            "" if ok else f" (NOT what the policy asked: enabled={self.policy.workers_collect}, "
                          f"thresholds={wanted})")


# One per process: made at import in the master, inherited by every worker.
ADAPTER = Adapter()


def _log_lifecycle_failure(log: Any, who: str) -> None:
    """In a child, right after its fork: what the lifecycle could not do for it
    (set inside os.fork(), where nothing may log), at ERROR."""
    if LIFECYCLE.failure is not None:
        log.error("gcfork: %s: %s", who, LIFECYCLE.failure)
        LIFECYCLE.failure = None
