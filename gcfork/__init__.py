"""gcfork: Instagram-style garbage collection for pre-forked Python servers.

One line in ``gunicorn.conf.py``::

    import gcfork; gcfork.install(globals())
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from gcfork.exceptions import ConfigError, GcforkError
from gcfork.gunicorn import install
from gcfork.policy import Policy
from gcfork.typing import WorkerInfo

try:
    __version__ = version("gcfork")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["ConfigError", "GcforkError", "Policy", "WorkerInfo", "__version__", "install"]
