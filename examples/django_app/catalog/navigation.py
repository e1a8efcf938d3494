"""The category menu shown on every page, read from the database once.

The menu changes with a deploy, not between requests, so the shop loads it at
start-up (``shopsite.wsgi`` does, in the gunicorn master when the app is
preloaded) and keeps it in memory like the other reference data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from catalog.models import Category


@dataclass
class MenuEntry:
    name: str
    slug: str
    children: list[MenuEntry] = field(default_factory=list)


@lru_cache(maxsize=1)
def menu() -> tuple[MenuEntry, ...]:
    entries = {c.pk: (c.parent_id, MenuEntry(c.name, c.slug)) for c in Category.objects.all()}
    roots: list[MenuEntry] = []
    for parent_id, entry in entries.values():
        if parent_id is None:
            roots.append(entry)
        else:
            entries[parent_id][1].children.append(entry)
    return tuple(roots)
