"""A pool's template: gcfork.fork installed first, then the "app" (tests/test_fork.py).

Imported by the main process (start method ``fork``) or preloaded by the
forkserver (``set_forkserver_preload``), which is then the template.
``TEST_POOL_CALLABLE=1`` gives a thresholds callable instead of the
``GCFORK_THRESHOLDS`` the test sets.
"""

from __future__ import annotations

import gc
import logging
import os

import gcfork.fork

if os.environ.get("TEST_POOL_CALLABLE"):
    gcfork.fork.install(thresholds=lambda w: (1000 + w.age, 5, 5 + w.index))
else:
    gcfork.fork.install()

logging.basicConfig(level=logging.INFO, format="%(process)d %(levelname)s %(message)s")

# One object made in the template right before each of its forks: os.fork()
# runs "before" handlers in reverse order of registration, so this one, made
# after gcfork's, runs first; the newest marker a child inherited is frozen
# only if the template froze right before that child's own fork.
MARKERS: list[list[int]] = []
os.register_at_fork(before=lambda: MARKERS.append([len(MARKERS) + 1]))

# A little heap for the template to share, as an app would have.
REFERENCE = {f"key{i}": {"id": i, "tags": [str(i)] * 3} for i in range(20_000)}

ENABLED_AT_IMPORT = gc.isenabled()
