"""The library's catalogue, built once at import and only read afterwards.

A real service would load it from files at start-up (a catalogue dump, a
search index); here it is generated from a fixed seed. It comes to a few MB of
small Python objects: the memory that pre-forked workers share with the master
for as long as nothing writes to it, and that a garbage collection touches.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import NamedTuple

__all__ = ["AUTHORS", "BOOKS", "INDEX", "SUBJECTS", "Author", "Book", "Subject"]


class Subject(NamedTuple):
    slug: str
    name: str


class Author(NamedTuple):
    id: int
    name: str
    born: int
    country: str


class Book(NamedTuple):
    id: int
    title: str
    author_id: int
    year: int
    isbn: str
    pages: int
    subjects: tuple[str, ...]
    rating: float


_SYLLABLES = (
    "an", "bel", "cor", "da", "el", "fir", "gan", "hol", "is", "jor",
    "ka", "lum", "mer", "nor", "os", "pra", "quin", "ros", "sel", "tur",
)  # fmt: skip


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(syllables))


def _build(seed: int, books: int, authors: int) -> tuple[
    dict[str, Subject], dict[int, Author], dict[int, Book], dict[str, tuple[int, ...]]
]:
    rng = random.Random(seed)
    subjects = {f"subject-{i}": Subject(f"subject-{i}", _word(rng, 3).title()) for i in range(40)}
    slugs = list(subjects)
    countries = ("AR", "CZ", "DE", "FR", "GB", "IN", "JP", "NG", "PT", "US")
    author_map = {
        i: Author(i, f"{_word(rng, 2).title()} {_word(rng, 3).title()}",
                  rng.randrange(1800, 1990), rng.choice(countries))
        for i in range(1, authors + 1)
    }
    vocabulary = sorted({_word(rng, rng.choice((2, 3))) for _ in range(8_000)})
    book_map: dict[int, Book] = {}
    index: defaultdict[str, list[int]] = defaultdict(list)
    for i in range(1, books + 1):
        words = rng.sample(vocabulary, rng.randrange(2, 5))
        author = author_map[rng.randrange(1, authors + 1)]
        book_map[i] = Book(
            i, " ".join(words).capitalize(), author.id,
            rng.randrange(author.born + 20, min(author.born + 80, 2024)),
            f"978-{rng.randrange(10**9, 10**10)}", rng.randrange(80, 900),
            tuple(rng.sample(slugs, rng.randrange(1, 4))), round(rng.uniform(1, 5), 2),
        )
        for w in words:
            index[w].append(i)
    return subjects, author_map, book_map, {w: tuple(ids) for w, ids in index.items()}


SUBJECTS, AUTHORS, BOOKS, INDEX = _build(seed=1869, books=25_000, authors=2_000)
