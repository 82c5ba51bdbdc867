"""The curated vocabularies behind ``builtin:search-ads``, and the slot language their strings use.

Each vertical lives in ``vocab/<vertical>.json`` (advertiser names or name patterns, offerings with bid words,
query phrasings and selling points, vertical-wide selling points, landing-page intros and closings);
``vocab/common.json`` holds the cities, name stems and surnames that patterns draw from. Strings may hold slots:

- ``{city}``, ``{advertiser}``, ``{offering}``, ``{stem}``, ``{surname}``, ``{surname2}``: named values;
- ``{a|b|c}``: one of the alternatives;
- ``{$:199-449}``: a price in the range, shaped like real prices ($249, $1,299, $9.99 when the bounds have cents);
- ``{%:10-25}``: a percentage in steps of 5 (any integer when the range holds no multiple of 5);
- ``{#:1988-2014}`` / ``{#:2000-5000/1000}``: an integer (optionally in steps), thousands separated from 10,000
  or when stepped;
- ``{d:4.05-4.65}``: a decimal with two places, in steps of 0.05 (rates, APYs).

Facts are drawn once per advertiser and offering, so every ad context of one advertiser quotes the same prices.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

VOCAB_DIR = Path(__file__).parent / "vocab"
_SLOT = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True)
class Offering:
    name: str
    names: tuple[str, ...]  # advertiser names that only fit this offering (a bootcamp, a mattress brand)
    name_patterns: tuple[str, ...]
    bid_words: tuple[str, ...]
    queries: tuple[str, ...]
    points: tuple[str, ...]


@dataclass(frozen=True)
class Vertical:
    key: str
    label: str
    local: bool
    names: tuple[str, ...]
    name_patterns: tuple[str, ...]
    offerings: tuple[Offering, ...]
    points: tuple[str, ...]
    intros: tuple[str, ...]
    closings: tuple[str, ...]


@dataclass(frozen=True)
class Vocabulary:
    cities: tuple[str, ...]
    stems: tuple[str, ...]
    surnames: tuple[str, ...]
    verticals: tuple[Vertical, ...]


def _vertical(path: Path) -> Vertical:
    raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    try:
        offerings = tuple(
            Offering(
                o["name"],
                tuple(o.get("names", ())),
                tuple(o.get("name_patterns", ())),
                tuple(o["bid_words"]),
                tuple(o["queries"]),
                tuple(o["points"]),
            )
            for o in raw["offerings"]
        )
        vertical = Vertical(
            key=raw["vertical"],
            label=raw["label"],
            local=bool(raw["local"]),
            names=tuple(raw.get("names", ())),
            name_patterns=tuple(raw.get("name_patterns", ())),
            offerings=offerings,
            points=tuple(raw["points"]),
            intros=tuple(raw["intros"]),
            closings=tuple(raw["closings"]),
        )
    except KeyError as exc:
        raise ValueError(f"{path}: missing key {exc}") from exc
    if vertical.key != path.stem:
        raise ValueError(f"{path}: 'vertical' is {vertical.key!r}, expected the file name {path.stem!r}")
    for o in vertical.offerings:
        if not (vertical.names or vertical.name_patterns or o.names or o.name_patterns):
            raise ValueError(f"{path}: offering {o.name!r} has no advertiser names or name patterns")
    return vertical


@lru_cache(maxsize=1)
def load_vocabulary() -> Vocabulary:
    """Every vertical of ``vocab/`` (sorted by key) and the shared lists."""
    common = json.loads((VOCAB_DIR / "common.json").read_text(encoding="utf-8"))
    verticals = tuple(_vertical(p) for p in sorted(VOCAB_DIR.glob("*.json")) if p.stem != "common")
    return Vocabulary(tuple(common["cities"]), tuple(common["stems"]), tuple(common["surnames"]), verticals)


def vocabulary_fingerprint() -> str:
    """A short hash of the vocabulary files: cached datasets are regenerated when the vocabulary changes."""
    import hashlib

    h = hashlib.blake2b(digest_size=6)
    for p in sorted(VOCAB_DIR.glob("*.json")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _price(lo_text: str, hi_text: str, rng: random.Random) -> str:
    lo, hi = float(lo_text), float(hi_text)
    if "." in lo_text or "." in hi_text:
        # retail-style cents: x.49 or x.99 within the bounds
        options = [whole + cents for whole in range(int(lo), int(hi) + 1) for cents in (0.49, 0.99) if lo <= whole + cents <= hi]
        return f"${rng.choice(options):.2f}"
    # prices end in 9: $29, $249 in steps of 10, $849, $1,299 in steps of 50 above a few hundred
    step = 50 if hi >= 500 else 10 if hi >= 20 else 1
    ends = [v for v in range(int(lo) + 1, int(hi) + 2) if (v % step == 0)]
    value = (rng.choice(ends) - 1) if step > 1 and ends else rng.randint(int(lo), int(hi))
    return f"${value:,}"


def _integer(spec: str, rng: random.Random) -> str:
    bounds, _, step_text = spec.partition("/")
    lo_text, hi_text = bounds.split("-")
    lo, hi, step = int(lo_text), int(hi_text), int(step_text or 1)
    value = lo + step * rng.randint(0, (hi - lo) // step)
    return f"{value:,}" if value >= 10_000 or (step > 1 and value >= 1000) else str(value)


def _decimal(spec: str, rng: random.Random) -> str:
    lo_text, hi_text = spec.split("-")
    lo, hi = round(float(lo_text) * 100), round(float(hi_text) * 100)
    value = rng.randint(lo // 5, hi // 5) * 5
    return f"{max(lo, min(hi, value)) / 100:.2f}"


def fill(template: str, rng: random.Random, named: dict[str, str] | None = None) -> str:
    """``template`` with every slot replaced (see the module docstring); unknown slots raise ValueError."""
    named = named or {}

    def one(m: re.Match[str]) -> str:
        slot = m.group(1)
        if slot in named:
            return named[slot]
        kind, sep, spec = slot.partition(":")
        if sep and kind == "$":
            lo, hi = spec.split("-")
            return _price(lo, hi, rng)
        if sep and kind == "%":
            lo, hi = (int(x) for x in spec.split("-"))
            fives = [v for v in range(lo, hi + 1) if v % 5 == 0]
            return f"{rng.choice(fives) if fives else rng.randint(lo, hi)}%"
        if sep and kind == "#":
            return _integer(spec, rng)
        if sep and kind == "d":
            return _decimal(spec, rng)
        if "|" in slot:
            return rng.choice(slot.split("|"))
        raise ValueError(f"unknown slot {{{slot}}} in {template!r}")

    return _SLOT.sub(one, template)
