"""``gcfork bench``: baseline and gcfork side by side, on any WSGI app.

Each configuration ("variant") of the same app runs in turn under gunicorn on
127.0.0.1 with the same worker count, the same request mix and the same load.
After set request counts (the checkpoints) the load pauses and the whole
cluster is measured; at the end the variants are compared metric by metric,
each as a ratio to the baseline (the first variant, ``off`` by default).

The app's own gunicorn config runs unchanged inside a small generated config
that makes sure gcfork is installed (so that an app without gcfork's line can
be measured too) and sets gcfork's mode per variant through the environment.

One module per concern:

- :mod:`~gcfork.tools.bench.variants`: the configurations compared and the gunicorn
  config generated for each;
- :mod:`~gcfork.tools.bench.workload`: the app, its request mix and the load, alike
  for every variant;
- :mod:`~gcfork.tools.bench.runner`: serving a variant, loading it, measuring at the
  checkpoints;
- :mod:`~gcfork.tools.bench.results`: what was measured, and ``results.json``;
- :mod:`~gcfork.tools.bench.table`: the medians per variant and the side-by-side
  table with ratios;
- :mod:`~gcfork.tools.bench.chart`: ``chart.png``;
- :mod:`~gcfork.tools.bench.command`: the options' checks and the exit
  status (the options themselves are in :mod:`gcfork.tools.cli`).
"""

from __future__ import annotations

from gcfork.exceptions import BenchError
from gcfork.tools.bench.command import run
from gcfork.tools.bench.runner import run_bench
from gcfork.tools.bench.variants import Variant
from gcfork.tools.bench.workload import Example

__all__ = ["BenchError", "Example", "Variant", "run", "run_bench"]
