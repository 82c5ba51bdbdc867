"""Generates the ``builtin:search-ads`` contexts from the curated vocabularies, deterministically from a seed.

Every vertical gets a set of advertisers (named from the vertical's names or name patterns, placed in a city
when the vertical is local). Each advertiser sells one or two offerings; for each it has a landing page and a
pool of concrete facts (prices, durations, policies) drawn once, so all its ads quote the same numbers. A context
is one search on which the advertiser's ad shows: a query phrasing of the offering, the bid word that matched it,
2-5 selling points from the advertiser's pool, and the landing page.

The split is by advertiser, balanced per vertical: advertisers are ordered by a seeded hash and the first ones go
to ``eval`` until it holds ``eval_fraction`` of the vertical's contexts. No advertiser, hence no context, is in
both splits, and eval advertisers' landing pages and facts are never seen in training.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any

from .vocabulary import Offering, Vertical, Vocabulary, fill, load_vocabulary

# how many selling points a context carries: mostly three or four, as advertisers usually list
_POINT_COUNTS = (2, 3, 4, 5)
_POINT_WEIGHTS = (0.22, 0.36, 0.28, 0.14)
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class _Advertiser:
    name: str
    city: str | None
    offerings: list[Offering]


def _rng(seed: int, *parts: str) -> random.Random:
    # str seeds hash with SHA-512 inside random.Random: stable across processes and Python versions
    return random.Random(":".join([str(seed), *parts]))


def _stable_hash(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(parts).encode(), digest_size=8).digest(), "big")


def _tidy(text: str) -> str:
    # a name ending in a period ("Lumen Learning Co.") at the end of a sentence would leave ".."
    return re.sub(r"(?<!\.)\.\.(?!\.)", ".", text)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _advertisers(vertical: Vertical, vocab: Vocabulary, count: int, rng: random.Random) -> list[_Advertiser]:
    """``count`` distinct advertisers, each named to fit what it sells (a bootcamp does not sell SAT prep)."""
    used: set[str] = set()
    out: list[_Advertiser] = []
    for _ in range(200 * count):
        if len(out) == count:
            return out
        k = 2 if rng.random() < 0.35 and len(vertical.offerings) > 1 else 1
        offerings = rng.sample(list(vertical.offerings), k)
        # a name must fit every offering it sells: vertical-wide, or specific to all of them
        names = set(vertical.names) | set.intersection(*(set(o.names) for o in offerings))
        patterns = list(vertical.name_patterns) + sorted(set.intersection(*(set(o.name_patterns) for o in offerings)))
        names -= used
        city = rng.choice(vocab.cities) if vertical.local else None
        if names and (not patterns or rng.random() < 0.6):
            name = rng.choice(sorted(names))
        elif patterns:
            s1, s2 = rng.sample(vocab.surnames, 2)
            named = {"stem": rng.choice(vocab.stems), "city": city or "", "surname": s1, "surname2": s2}
            name = fill(rng.choice(patterns), rng, named)
        else:
            continue
        if name in used:
            continue
        used.add(name)
        out.append(_Advertiser(name, city, offerings))
    raise ValueError(f"vertical {vertical.key}: cannot name {count} distinct advertisers; add names or patterns")


def _landing_page(
    vertical: Vertical, adv: _Advertiser, offering: Offering, points: list[str], rng: random.Random
) -> str:
    named = {"advertiser": adv.name, "offering": offering.name, "city": adv.city or ""}
    intros = [t for t in vertical.intros if adv.city or "{city}" not in t]
    closings = [t for t in vertical.closings if adv.city or "{city}" not in t]
    intro = fill(rng.choice(intros), rng, named)
    closing = fill(rng.choice(closings), rng, named)
    heading = offering.name[0].upper() + offering.name[1:]
    shown = points[:]
    rng.shuffle(shown)
    style = rng.randrange(3)
    if style == 0:
        where = f" in {adv.city}" if adv.city else ""
        return _tidy(f"{adv.name} | {heading}{where}\n{intro} " + " ".join(_sentence(p) for p in shown) + f" {closing}")
    if style == 1:
        return _tidy(f"{intro}\nWhat you get: " + "; ".join(shown) + f".\n{closing}")
    return _tidy(f"{heading} at {adv.name}. {intro} Highlights: " + "; ".join(shown) + f". {closing}")


def _bid_word(offering: Offering, query: str, city: str | None, rng: random.Random) -> str:
    q = set(_WORD.findall(query.lower()))
    filled = [b.replace("{city}", city or "").strip() for b in offering.bid_words]
    scores = [len(q & set(_WORD.findall(b.lower()))) for b in filled]
    best = max(scores)
    return rng.choice([b for b, s in zip(filled, scores) if s == best])


def _pick_points(pool: list[str], n_specific: int, rng: random.Random) -> list[str]:
    k = min(rng.choices(_POINT_COUNTS, _POINT_WEIGHTS)[0], len(pool))
    specific = pool[:n_specific]
    first = rng.choice(specific)  # every context carries at least one offering-specific fact
    rest = rng.sample([p for p in pool if p != first], k - 1)
    chosen = [first, *rest]
    # selling points are listed offering-first, the way advertisers fill the field
    chosen.sort(key=lambda p: (p not in specific, pool.index(p)))
    return chosen


def generate_contexts(
    seed: int = 0,
    contexts_per_vertical: int = 48,
    advertisers_per_vertical: int = 14,
    eval_fraction: float = 0.1,
) -> list[dict[str, Any]]:
    """Every search-ad context (both splits), in a stable order; ``split`` says which split each is in."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if advertisers_per_vertical < 2 or contexts_per_vertical < advertisers_per_vertical:
        raise ValueError("need at least 2 advertisers per vertical and one context per advertiser")
    vocab = load_vocabulary()
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    for vertical in vocab.verticals:
        rng = _rng(seed, vertical.key)
        advertisers = _advertisers(vertical, vocab, advertisers_per_vertical, rng)
        base, extra = divmod(contexts_per_vertical, len(advertisers))
        vertical_rows: list[dict[str, Any]] = []
        for i, adv in enumerate(advertisers):
            want = base + (1 if i < extra else 0)
            # this advertiser's facts and landing page, per offering, drawn once
            plans = []
            for offering in adv.offerings:
                named = {"city": adv.city or "", "advertiser": adv.name, "offering": offering.name}
                specific = rng.sample(offering.points, min(len(offering.points), rng.choice((3, 4))))
                general_pool = [p for p in vertical.points if adv.city or "{city}" not in p]
                general = rng.sample(general_pool, min(len(general_pool), rng.choice((1, 2))))
                pool = [fill(p, rng, named) for p in specific + general]
                landing = _landing_page(vertical, adv, offering, pool, rng)
                queries = [q for q in offering.queries if adv.city or "{city}" not in q]
                rng.shuffle(queries)
                plans.append((offering, pool, len(specific), landing, queries))
            made = 0
            for attempt in range(20 * want):
                if made == want:
                    break
                offering, pool, n_specific, landing, queries = plans[attempt % len(plans)]
                if not queries:
                    continue
                query = fill(queries.pop(), rng, {"city": adv.city or ""})
                bid_word = _bid_word(offering, query, adv.city, rng)
                points = _pick_points(pool, n_specific, rng)
                key = (query.lower(), bid_word.lower(), *points)
                if key in seen:
                    continue
                seen.add(key)
                vertical_rows.append(
                    {
                        "vertical": vertical.key,
                        "advertiser": adv.name,
                        "query": query,
                        "bid_word": bid_word,
                        "selling_points": points,
                        "landing_page": landing,
                    }
                )
                made += 1
        _assign_split(vertical_rows, seed, eval_fraction)
        for j, row in enumerate(vertical_rows):
            rows.append({"id": f"sa-{vertical.key}-{j:03d}", **row, "lang": "en"})
    return rows


def _assign_split(rows: list[dict[str, Any]], seed: int, eval_fraction: float) -> None:
    """Advertiser-level split, balanced per vertical (rows of one vertical)."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["advertiser"]] = counts.get(row["advertiser"], 0) + 1
    order = sorted(counts, key=lambda a: _stable_hash(str(seed), rows[0]["vertical"], a))
    target = max(1, round(eval_fraction * len(rows)))
    held: set[str] = set()
    n_eval = 0
    for adv in order[:-1]:  # the last advertiser always trains, so neither split is empty
        if n_eval >= target:
            break
        # skip an advertiser that would overshoot the target by more than it closes the gap
        if held and n_eval + counts[adv] - target > target - n_eval:
            continue
        held.add(adv)
        n_eval += counts[adv]
    for row in rows:
        row["split"] = "eval" if row["advertiser"] in held else "train"
