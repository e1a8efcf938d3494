"""examples/fastapi_app's config, with workers that rarely run a full collection.

Every variant, the baseline included, sets the worker's third threshold to
1,000,000 after gcfork's post_fork: young collections as usual, a full one
almost never. The question it answers: what does gc.freeze() save when the
workers do not run full collections? Its request mix (paths.txt beside this
file) is the example's without /cycles, whose garbage only a full collection
frees.
"""

import os
import gc

_example = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                        "examples", "fastapi_app", "gunicorn.conf.py")
with open(_example) as _f:
    exec(compile(_f.read(), _example, "exec"))
chdir = os.path.normpath(os.path.join(os.path.dirname(_example)))


def post_fork(server, worker):
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1_000_000)
