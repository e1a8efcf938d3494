"""shop: a Celery app whose tasks read a catalogue built at import.

The worker's parent imports this module, so the catalogue (about 60,000
products, an index by category and one by tag) is built once there and
shared by the prefork pool's children. gcfork's part is the line right after
the app; ``GCFORK_MODE=off`` in the environment gives plain Celery.
"""

from __future__ import annotations

import os
import random
from typing import Any

from celery import Celery

BROKER = os.environ.get("SHOP_BROKER", "redis://127.0.0.1:6379/0")

app = Celery("shop", broker=BROKER, backend=BROKER)
app.conf.update(worker_prefetch_multiplier=4, result_expires=600,
                broker_connection_retry_on_startup=True)

import gcfork.celery  # noqa: E402  (right after the app: the GC is off while the rest loads)

gcfork.celery.install(app)

CATEGORIES = [f"category-{i}" for i in range(40)]
TAGS = [f"tag-{i}" for i in range(300)]


def _build_catalogue(size: int = 60_000) -> dict[int, dict[str, Any]]:
    rng = random.Random(11)
    return {
        pid: {
            "id": pid,
            "name": f"product {pid}",
            "category": rng.choice(CATEGORIES),
            "price": round(rng.uniform(1, 500), 2),
            "tags": rng.sample(TAGS, 4),
            "stock": {"warehouse": rng.randint(0, 50), "store": rng.randint(0, 10)},
        }
        for pid in range(size)
    }


CATALOGUE = _build_catalogue()
BY_CATEGORY: dict[str, list[dict[str, Any]]] = {c: [] for c in CATEGORIES}
BY_TAG: dict[str, list[int]] = {t: [] for t in TAGS}
for _product in CATALOGUE.values():
    BY_CATEGORY[_product["category"]].append(_product)
    for _tag in _product["tags"]:
        BY_TAG[_tag].append(_product["id"])

# A per-child cache, as apps keep: what a child adds here stays, so its
# collector has long-lived objects to look at, and runs full collections.
_QUOTES: dict[tuple[int, ...], dict[str, Any]] = {}


@app.task
def quote(product_ids: list[int]) -> dict[str, Any]:
    """Price a basket: reads a few products, builds a small nested result."""
    lines = [{"product": CATALOGUE[p], "qty": 1 + p % 3} for p in product_ids]
    total = sum(line["product"]["price"] * line["qty"] for line in lines)
    result = {"lines": len(lines), "total": round(total, 2)}
    _QUOTES[tuple(product_ids)] = {"result": result, "lines": lines}
    if len(_QUOTES) > 2_000:
        _QUOTES.clear()
    return result


@app.task
def category_report(category: str) -> dict[str, Any]:
    """Statistics of one category: reads every product in it."""
    products = BY_CATEGORY[category]
    prices = [p["price"] for p in products]
    in_stock = sum(1 for p in products if p["stock"]["warehouse"] + p["stock"]["store"] > 0)
    tags: dict[str, int] = {}
    for p in products:
        for tag in p["tags"]:
            tags[tag] = tags.get(tag, 0) + 1
    top = sorted(tags.items(), key=lambda kv: -kv[1])[:5]
    return {"category": category, "products": len(products), "in_stock": in_stock,
            "mean_price": round(sum(prices) / len(prices), 2), "top_tags": top}


@app.task
def tag_search(tag: str) -> int:
    """How many products of one tag are in stock: reads through the tag index."""
    return sum(1 for pid in BY_TAG[tag] if CATALOGUE[pid]["stock"]["warehouse"] > 0)
