"""The ``api`` blueprint: JSON over the catalogue, and an endpoint making cycles."""

from __future__ import annotations

from collections import Counter
from typing import Any

from flask import Blueprint, abort, jsonify, request
from flask.typing import ResponseReturnValue

from library.refdata import AUTHORS, BOOKS, INDEX, SUBJECTS

api = Blueprint("api", __name__)


@api.route("/books/<int:book_id>")
def book(book_id: int) -> ResponseReturnValue:
    found = BOOKS.get(book_id) or abort(404)
    return jsonify({**found._asdict(), "author": AUTHORS[found.author_id]._asdict()})


@api.route("/search")
def search() -> ResponseReturnValue:
    """Books whose titles hold the most query words, from the inverted index."""
    words = request.args.get("q", "").lower().split()
    hits = Counter(book_id for w in words for book_id in INDEX.get(w, ()))
    ranked = sorted(hits, key=lambda i: (-hits[i], -BOOKS[i].rating))[:20]
    return jsonify({"query": words, "total": len(hits),
                    "books": [{"id": i, "title": BOOKS[i].title, "matched": hits[i]}
                              for i in ranked]})


@api.route("/subjects")
def subjects() -> ResponseReturnValue:
    counts = Counter(slug for b in BOOKS.values() for slug in b.subjects)
    return jsonify([{"slug": s.slug, "name": s.name, "books": counts[s.slug]}
                    for s in SUBJECTS.values()])


@api.route("/stats/decades")
def decades() -> ResponseReturnValue:
    by_decade: dict[int, list[float]] = {}
    for b in BOOKS.values():
        by_decade.setdefault(b.year // 10 * 10, []).append(b.rating)
    return jsonify({str(d): {"books": len(r), "rating": round(sum(r) / len(r), 2)}
                    for d, r in sorted(by_decade.items())})


@api.route("/authors/<int:author_id>/similar")
def similar(author_id: int) -> ResponseReturnValue:
    """Authors who share the most subjects with this one."""
    if author_id not in AUTHORS:
        abort(404)
    mine = Counter(s for b in BOOKS.values() if b.author_id == author_id for s in b.subjects)
    scores: Counter[int] = Counter()
    for b in BOOKS.values():
        if b.author_id != author_id:
            scores[b.author_id] += sum(mine[s] for s in b.subjects)
    return jsonify([{**AUTHORS[a]._asdict(), "score": score}
                    for a, score in scores.most_common(10)])


class _Entry:
    """A reading-list entry linked both ways to its neighbours: a reference cycle."""

    def __init__(self, book_id: int, previous: _Entry | None) -> None:
        self.book_id = book_id
        self.previous = previous
        self.next: _Entry | None = None
        self.meta: dict[str, Any] = {"list": None}
        if previous is not None:
            previous.next = self


@api.route("/cycles")
def cycles() -> ResponseReturnValue:
    """Build a doubly linked reading list of ``n`` entries and drop it.

    Reference counting cannot free the entries (each points at its neighbours),
    so only the cyclic GC reclaims them: a worker whose GC is off keeps them.
    """
    n = max(1, min(request.args.get("n", 5000, type=int), 50_000))
    head = tail = _Entry(1, None)
    for i in range(2, n + 1):
        tail = _Entry(i % len(BOOKS) + 1, tail)
        tail.meta["list"] = head
    pages = 0
    entry: _Entry | None = head
    while entry is not None:
        pages += BOOKS[entry.book_id].pages
        entry = entry.next
    return jsonify({"entries": n, "pages": pages})
