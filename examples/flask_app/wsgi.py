"""WSGI entry point: ``wsgi:app``."""

from __future__ import annotations

from library import create_app

app = create_app()
