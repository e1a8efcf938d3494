"""The library example: a Flask app factory with two blueprints."""

from __future__ import annotations

import os

from flask import Flask

__all__ = ["create_app"]


def create_app() -> Flask:
    # Imported here, as the factory pattern has it: the blueprints (and with
    # them the reference data) load when the app is created, which under
    # preload_app is in the gunicorn master.
    from library.api import api
    from library.shelf import shelf

    app = Flask(__name__)
    app.config.from_mapping(
        # Demo only: a real deployment reads its key from the environment.
        SECRET_KEY=os.environ.get("LIBRARY_SECRET_KEY", "demo-only-not-secret"),
        PAGE_SIZE=20,
    )
    app.register_blueprint(shelf)
    app.register_blueprint(api, url_prefix="/api")
    return app
