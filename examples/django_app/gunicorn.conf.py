"""gunicorn configuration of the shopsite example.

Run from the repository root:  .venv/bin/gunicorn -c examples/django_app/gunicorn.conf.py
"""

from __future__ import annotations

# gcfork, first thing, so the GC is off before anything else is imported.
import gcfork; gcfork.install(globals())

import os
from typing import Any


# The project lives next to this file; gunicorn changes into it (and puts it on
# sys.path) before importing the app, whatever directory it was started from.
chdir = os.path.dirname(os.path.abspath(__file__))
wsgi_app = "shopsite.wsgi:application"

bind = "127.0.0.1:8000"
workers = 4
# Import the app in the master, before forking: what gcfork makes shareable.
preload_app = True
timeout = 30
graceful_timeout = 10
accesslog = None
errorlog = "-"
loglevel = "info"


def pre_fork(server: Any, worker: Any) -> None:
    """Runs in the master before each fork: close its database connections.

    The preloaded app queried the database while loading (the category menu),
    so the master holds an open connection. A forked worker would inherit it,
    and two processes using one SQLite handle or one PostgreSQL socket corrupt
    each other's state. Closed here, each worker opens its own on first use.
    """
    from django.db import connections

    connections.close_all()

