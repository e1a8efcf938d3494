"""gunicorn configuration of the FastAPI parts example, with uvicorn's worker.

Run from the repository root:  .venv/bin/gunicorn -c examples/fastapi_app/gunicorn.conf.py
"""

from __future__ import annotations

# gcfork, first thing, so the GC is off before anything else is imported.
import gcfork; gcfork.install(globals())

import os

# The app lives next to this file; gunicorn changes into it (and puts it on
# sys.path) before importing the app, whatever directory it was started from.
chdir = os.path.dirname(os.path.abspath(__file__))
wsgi_app = "parts.app:app"
# uvicorn's worker runs the ASGI app (pip install uvicorn-worker).
worker_class = "uvicorn_worker.UvicornWorker"

bind = "127.0.0.1:8000"
workers = 4
# Import the app in the master, before forking: what gcfork makes shareable.
preload_app = True
timeout = 30
graceful_timeout = 10
accesslog = None
errorlog = "-"
loglevel = "info"
