"""The task a pool child runs: its GC state, and what it inherited from the
template (tests/test_fork.py). No gcfork here: the forkserver's main process
imports this module to name the task, and must not become a template."""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any


def gc_state(delay: float) -> dict[str, Any]:
    """The calling child's collector and whether the template froze right
    before its fork (see tests/apps/pool_preload.py)."""
    time.sleep(delay)  # so that the tasks spread over the children
    preload = sys.modules.get("tests.apps.pool_preload")
    markers = getattr(preload, "MARKERS", [])
    newest = markers[-1] if markers else None
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "enabled": gc.isenabled(),
        "thresholds": list(gc.get_threshold()),
        "freeze_count": gc.get_freeze_count(),
        "fork_number": newest[0] if newest else None,
        # gc.get_objects() lists the young generations only, never the
        # permanent one that gc.freeze() fills.
        "marker_frozen": newest is not None and gc.is_tracked(newest)
        and not any(o is newest for o in gc.get_objects()),
    }
