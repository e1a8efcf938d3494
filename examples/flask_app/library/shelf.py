"""The ``shelf`` blueprint: HTML pages rendered from the catalogue."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template, request

from library.refdata import AUTHORS, BOOKS, SUBJECTS, Book

shelf = Blueprint("shelf", __name__)

# Books of each subject and of each author, best rated first: derived once
# from the catalogue, read by every request.
_BY_SUBJECT: dict[str, list[Book]] = {slug: [] for slug in SUBJECTS}
_BY_AUTHOR: dict[int, list[Book]] = {}
for _book in sorted(BOOKS.values(), key=lambda b: -b.rating):
    for _slug in _book.subjects:
        _BY_SUBJECT[_slug].append(_book)
    _BY_AUTHOR.setdefault(_book.author_id, []).append(_book)


@shelf.app_template_filter("stars")
def stars(rating: float) -> str:
    full = round(rating)
    return "★" * full + "☆" * (5 - full)


@shelf.route("/")
def index() -> str:
    subjects = sorted(SUBJECTS.values(), key=lambda s: -len(_BY_SUBJECT[s.slug]))
    return render_template("index.html", subjects=subjects, counts=_BY_SUBJECT,
                           top=[BOOKS[i] for i in range(1, 11)], authors=AUTHORS)


@shelf.route("/subjects/<slug>")
def subject(slug: str) -> str:
    if slug not in SUBJECTS:
        abort(404)
    size = current_app.config["PAGE_SIZE"]
    page = max(1, request.args.get("page", 1, type=int))
    books = _BY_SUBJECT[slug]
    return render_template("subject.html", subject=SUBJECTS[slug], page=page,
                           books=books[(page - 1) * size: page * size], total=len(books),
                           has_next=page * size < len(books), authors=AUTHORS)


@shelf.route("/books/<int:book_id>")
def book(book_id: int) -> str:
    found = BOOKS.get(book_id) or abort(404)
    author = AUTHORS[found.author_id]
    others = [b for b in _BY_AUTHOR[author.id] if b.id != book_id][:8]
    return render_template("book.html", book=found, author=author, others=others,
                           subjects=SUBJECTS)


@shelf.route("/authors/<int:author_id>")
def author(author_id: int) -> str:
    found = AUTHORS.get(author_id) or abort(404)
    return render_template("author.html", author=found, books=_BY_AUTHOR.get(author_id, []),
                           subjects=SUBJECTS)
