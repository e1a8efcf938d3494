"""WSGI entry point: ``shopsite.wsgi:application``.

Besides creating the application, it does at import what Django would
otherwise do lazily on the first requests. Under ``preload_app`` that import
happens once, in the gunicorn master, so the work and the memory it fills are
shared by every worker instead of repeated in each.
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application
from django.db import DatabaseError
from django.template.loader import get_template
from django.urls import resolve

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")

application = get_wsgi_application()

_TEMPLATES = (
    "base.html", "home.html", "catalog/_product_card.html", "catalog/category_list.html",
    "catalog/product_list.html", "catalog/product_detail.html", "blog/post_list.html",
    "blog/post_detail.html", "accounts/profile.html",
)  # fmt: skip


def _warm_up() -> None:
    # Imports the URLconf, hence every view module and the reference data.
    resolve("/")
    # The cached template loader (on whenever DEBUG is off) keeps these.
    for name in _TEMPLATES:
        get_template(name)
    from catalog.navigation import menu

    # This query opens a database connection in the master: gunicorn.conf.py
    # closes it before forking, or every worker would share its socket/file.
    try:
        menu()
    except DatabaseError as exc:
        raise ImproperlyConfigured(
            f"the shop's database is not ready ({exc}); run "
            "`python examples/django_app/manage.py setup_demo` first"
        ) from exc


_warm_up()
