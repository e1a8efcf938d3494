"""A multiprocessing Pool with maxtasksperchild (tests/test_fork.py).

``python -m tests.apps.pool_main METHOD GO``: runs tasks on a pool of 2
children that are replaced every 2 tasks, prints ``{"states": [...]}`` (one
per task), waits for the file GO (the test runs ``gcfork report`` meanwhile),
then
closes the pool, and with METHOD ``fork`` prints the children's final
records as ``{"final": [...], "template_gc": ...}``.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import sys
import time

from tests.apps.pool_tasks import gc_state


def main() -> None:
    method = sys.argv[1]
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["tests.apps.pool_preload"])
    else:
        import tests.apps.pool_preload  # noqa: F401  (this process is the template)

    pool = ctx.Pool(2, maxtasksperchild=2)
    states = pool.map(gc_state, [0.05] * 10, chunksize=1)
    print(json.dumps({"states": states}), flush=True)
    # Not a line on stdin: the pool's thread forks replacements meanwhile, and
    # a child forked while this thread holds stdin's lock would hang closing it.
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.05)
    if method == "fork":
        import gcfork.fork

        runtime = gcfork.fork.RUNTIME
        # Stopped first, so that it prunes no record of the children exiting now.
        assert runtime.sampler is not None and runtime.stats is not None
        runtime.sampler.stop()
        pool.close()
        pool.join()
        final = [r.to_json() for r in runtime.stats.read().records.values() if r.final]
        print(json.dumps({"final": final, "template_gc": gc.isenabled()}), flush=True)
    else:
        pool.close()
        pool.join()


if __name__ == "__main__":  # forkserver children import this module too
    main()
