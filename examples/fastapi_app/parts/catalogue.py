"""The reference data every request reads: 50,000 spare parts, built at import.

Built in gunicorn's master (``preload_app``) and read, never written, by the
workers: the shape of a real app's read-mostly data (a price list, a product
catalogue, a routing table). Each read still writes the reference count of
every object it touches, which is what copies these pages into a worker.
"""

from __future__ import annotations

import random
from collections import defaultdict

CATEGORIES = ("bearings", "belts", "bolts", "brakes", "cables", "filters", "gaskets", "gears",
              "hoses", "lamps", "motors", "nuts", "pumps", "relays", "seals", "sensors",
              "springs", "switches", "valves", "washers")
WORDS = ("steel", "brass", "nylon", "heavy", "light", "compact", "sealed", "coated", "metric",
         "imperial", "marine", "thermal", "quiet", "rapid", "precision", "universal", "spare",
         "reinforced", "low-profile", "high-flow")
SUPPLIERS = 400
PARTS = 50_000


def _build() -> dict[str, dict[str, object]]:
    rng = random.Random(0)
    parts: dict[str, dict[str, object]] = {}
    for i in range(PARTS):
        category = CATEGORIES[i % len(CATEGORIES)]
        words = rng.sample(WORDS, 3)
        parts[f"P{i:06d}"] = {
            "number": f"P{i:06d}",
            "name": f"{' '.join(words)} {category[:-1]}",
            "category": category,
            "supplier": rng.randrange(SUPPLIERS),
            "price_cents": rng.randrange(50, 250_000),
            "stock": rng.randrange(0, 5_000),
            "weight_g": round(rng.uniform(1.0, 25_000.0), 1),
            "tags": words,
            "compatible": [f"P{rng.randrange(PARTS):06d}" for _ in range(3)],
        }
    return parts


PARTS_BY_NUMBER = _build()

# Lookups derived once from the records, as an app's caches are.
BY_CATEGORY: dict[str, list[str]] = defaultdict(list)
BY_SUPPLIER: dict[int, list[str]] = defaultdict(list)
BY_WORD: dict[str, list[str]] = defaultdict(list)
for _number, _part in PARTS_BY_NUMBER.items():
    BY_CATEGORY[str(_part["category"])].append(_number)
    BY_SUPPLIER[int(_part["supplier"])].append(_number)  # type: ignore[call-overload]
    for _word in _part["tags"]:  # type: ignore[attr-defined]
        BY_WORD[_word].append(_number)
