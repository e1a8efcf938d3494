"""The FastAPI app: JSON endpoints that read the shared catalogue.

- ``/parts/{number}``: one part, validated into a pydantic model;
- ``/parts/{number}/compatible``: the parts it fits with;
- ``/search?word=steel&limit=20``: parts tagged with a word;
- ``/categories/{name}/stats``: every part of a category read (2,500 of them),
  the request that touches most of the shared heap;
- ``/suppliers/{id}``: a supplier's parts, computed in a plain ``def`` endpoint,
  which FastAPI runs in its thread pool;
- ``/cycles?n=5000``: a doubly linked list of ``n`` nodes, made and dropped:
  garbage only the cyclic GC frees.

The lifespan opens an "inventory connection" at startup and closes it at
shutdown, as an app with a database pool does; gcfork's warm-up runs both in
the master, before the fork, and each worker runs its own startup.
"""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from parts.catalogue import BY_CATEGORY, BY_SUPPLIER, BY_WORD, PARTS_BY_NUMBER


class Part(BaseModel):
    number: str
    name: str
    category: str
    supplier: int
    price_cents: int
    stock: int
    weight_g: float
    tags: list[str]
    compatible: list[str]


class CategoryStats(BaseModel):
    category: str
    parts: int
    in_stock: int
    median_price_cents: float
    heaviest: str


class Inventory:
    """Stands in for a database pool: opened at startup, closed at shutdown."""

    def __init__(self) -> None:
        self.open = False

    async def connect(self) -> None:
        self.open = True

    async def close(self) -> None:
        self.open = False


inventory = Inventory()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await inventory.connect()
    yield
    await inventory.close()


app = FastAPI(title="parts", lifespan=lifespan)


def _part(number: str) -> dict[str, Any]:
    part = PARTS_BY_NUMBER.get(number)
    if part is None:
        raise HTTPException(status_code=404, detail=f"no part {number}")
    return part


@app.get("/health")
async def health() -> dict[str, Any]:
    return {"ok": True, "inventory": inventory.open, "parts": len(PARTS_BY_NUMBER)}


@app.get("/parts/{number}", response_model=Part)
async def part(number: str) -> dict[str, Any]:
    return _part(number)


@app.get("/parts/{number}/compatible", response_model=list[Part])
async def compatible(number: str) -> list[dict[str, Any]]:
    return [PARTS_BY_NUMBER[n] for n in _part(number)["compatible"]]


@app.get("/search", response_model=list[Part])
async def search(word: str, limit: int = 20) -> list[dict[str, Any]]:
    return [PARTS_BY_NUMBER[n] for n in BY_WORD.get(word, [])[:limit]]


@app.get("/categories/{name}/stats", response_model=CategoryStats)
async def category_stats(name: str) -> CategoryStats:
    numbers = BY_CATEGORY.get(name)
    if not numbers:
        raise HTTPException(status_code=404, detail=f"no category {name}")
    parts = [PARTS_BY_NUMBER[n] for n in numbers]
    return CategoryStats(
        category=name, parts=len(parts),
        in_stock=sum(1 for p in parts if p["stock"]),
        median_price_cents=statistics.median(p["price_cents"] for p in parts),
        heaviest=max(parts, key=lambda p: p["weight_g"])["number"],
    )


@app.get("/suppliers/{supplier}")
def supplier(supplier: int) -> dict[str, Any]:
    numbers = BY_SUPPLIER.get(supplier)
    if not numbers:
        raise HTTPException(status_code=404, detail=f"no supplier {supplier}")
    value = sum(PARTS_BY_NUMBER[n]["price_cents"] * PARTS_BY_NUMBER[n]["stock"] for n in numbers)
    return {"supplier": supplier, "parts": len(numbers), "stock_value_cents": value}


@app.get("/cycles")
async def cycles(n: int = 5000) -> dict[str, int]:
    head: dict[str, Any] = {"prev": None, "next": None}
    node = head
    for _ in range(n):
        new: dict[str, Any] = {"prev": node, "next": None}
        node["next"] = new
        node = new
    return {"nodes": n}
