"""Read-mostly lookup tables that the shop loads once, at import.

Real shops preload this kind of data (postcode gazetteers, search vocabularies,
tax tables) so that requests never wait for it. Here it is generated from a
fixed seed instead of read from files, and comes to a few MB of small Python
objects: exactly what pre-forked workers only read, and what a worker's first
garbage collection would otherwise copy page by page.
"""

from __future__ import annotations

import random
from typing import NamedTuple

__all__ = ["PLACES", "TAX_RATES", "VOCABULARY", "Place", "Term", "expand_query", "word"]


class Place(NamedTuple):
    """One postcode of the gazetteer."""

    city: str
    region: str
    latitude: float
    longitude: float
    tax_zone: int


class Term(NamedTuple):
    """One word of the search vocabulary."""

    id: int
    stem: str
    frequency: int
    related: tuple[str, ...]


_SYLLABLES = (
    "ka", "lo", "mi", "ra", "ten", "dor", "bel", "sun", "vi", "mar",
    "qu", "est", "on", "lia", "gra", "fen", "tor", "pel", "shi", "zan",
)  # fmt: skip
_SEED = 20240604


def word(rng: random.Random, syllables: int) -> str:
    """A made-up but pronounceable word; the seeding command uses it too."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(syllables))


def _build_places(rng: random.Random, count: int) -> dict[str, Place]:
    regions = [word(rng, 3).title() for _ in range(40)]
    cities = [word(rng, 2).title() + word(rng, 2) for _ in range(2_000)]
    places: dict[str, Place] = {}
    while len(places) < count:
        code = f"{rng.choice('ABCDEFGHJKLMNPRSTW')}{rng.randrange(10, 99)} {rng.randrange(1, 9)}"
        code += f"{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}"
        city = rng.randrange(len(cities))
        places[code] = Place(cities[city], regions[city % len(regions)],
                             round(rng.uniform(49.9, 58.6), 5), round(rng.uniform(-7.5, 1.7), 5),
                             rng.randrange(6))
    return places


def _build_vocabulary(rng: random.Random, count: int) -> dict[str, Term]:
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < count:
        candidate = word(rng, rng.choice((2, 3, 3, 4)))
        if candidate not in seen:
            seen.add(candidate)
            words.append(candidate)
    return {
        w: Term(i, w[:4], int(1_000_000 / (i + 1)),
                tuple(rng.choice(words) for _ in range(rng.randrange(1, 5))))
        for i, w in enumerate(words)
    }


def expand_query(query: str, limit: int = 8) -> list[str]:
    """The known words of ``query`` and their related words, most frequent first."""
    found = [VOCABULARY[t] for t in query.lower().split() if t in VOCABULARY]
    terms = {t.stem: t.frequency for t in found}
    for term in found:
        for related in term.related:
            terms.setdefault(VOCABULARY[related].stem, VOCABULARY[related].frequency)
    return sorted(terms, key=terms.__getitem__, reverse=True)[:limit]


_rng = random.Random(_SEED)
PLACES: dict[str, Place] = _build_places(_rng, 20_000)
VOCABULARY: dict[str, Term] = _build_vocabulary(_rng, 30_000)
TAX_RATES: dict[int, float] = {zone: 0.05 * zone for zone in range(6)}
