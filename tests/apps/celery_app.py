"""A Celery app with gcfork installed right after it (tests/test_celery.py).

The broker and result backend come from ``TEST_CELERY_BROKER`` (a Redis URL
the test starts). The task returns the GC state of the pool child that runs it.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from celery import Celery, signals

ENABLED_BEFORE_INSTALL = gc.isenabled()

app = Celery("gcstate", broker=os.environ["TEST_CELERY_BROKER"],
             backend=os.environ["TEST_CELERY_BROKER"])
app.conf.update(worker_prefetch_multiplier=1, task_acks_late=False,
                broker_connection_retry_on_startup=True)

import gcfork.celery  # noqa: E402

if os.environ.get("TEST_CELERY_CALLABLE"):
    gcfork.celery.install(app, thresholds=lambda w: (1000 + w.age, 5, 10 + w.index))
else:
    gcfork.celery.install(app)

ENABLED_AT_IMPORT = gc.isenabled()

# One object made in the parent right before each of its forks: os.fork() runs
# "before" handlers in reverse order of registration, so this one, registered
# after gcfork armed its lifecycle (in its own worker_init receiver, connected
# first), runs before gcfork's freeze; the newest marker a child inherited is
# frozen only if the parent froze right before that child's own fork.
MARKERS: list[list[int]] = []


@signals.worker_init.connect
def _mark_every_fork(**_: Any) -> None:
    os.register_at_fork(before=lambda: MARKERS.append([len(MARKERS) + 1]))

# A little heap for the parent to share, as an app would have.
REFERENCE = {f"key{i}": {"id": i, "tags": [str(i)] * 3} for i in range(20_000)}


@app.task
def gc_state(delay: float) -> dict[str, Any]:
    time.sleep(delay)  # so that the tasks spread over the children
    newest = MARKERS[-1] if MARKERS else None
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "enabled": gc.isenabled(),
        "thresholds": list(gc.get_threshold()),
        "freeze_count": gc.get_freeze_count(),
        "enabled_before_install": ENABLED_BEFORE_INSTALL,
        "enabled_at_import": ENABLED_AT_IMPORT,
        # gc.get_objects() lists the young generations only, never the
        # permanent one that gc.freeze() fills.
        "marker_frozen": newest is not None and gc.is_tracked(newest)
        and not any(o is newest for o in gc.get_objects()),
    }
