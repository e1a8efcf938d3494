"""gcfork: Instagram-style garbage collection for pre-forked Python servers.

One line in ``gunicorn.conf.py``::

    import gcfork; gcfork.install(globals())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gcfork.exceptions import ConfigError, GcforkError
from gcfork.policy import Policy
from gcfork.typing import WorkerInfo

if TYPE_CHECKING:
    from gcfork.gunicorn import install


def __getattr__(name: str) -> Any:
    # The gunicorn adapter is loaded by the gunicorn line only: a Celery or
    # multiprocessing template (gcfork.celery, gcfork.fork) does not pay for it.
    if name == "install":
        from gcfork.gunicorn import install

        return install
    # importlib.metadata costs the gunicorn master ~40 ms and the email
    # package at import; only someone asking for the version pays for it.
    if name != "__version__":
        raise AttributeError(f"module 'gcfork' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gcfork")
    except PackageNotFoundError:  # a source tree that was not installed
        return "0+unknown"

__all__ = ["ConfigError", "GcforkError", "Policy", "WorkerInfo", "__version__", "install"]
