"""A diverse pool of candidate ads per context, of deliberately mixed quality, for writing impression logs.

A CTCVR model can only learn what the logs vary. So the pool mixes, per context: well-made ads (on-query title,
one to three selling points, a specific call to action) in many phrasings; ads missing one ingredient (no CTA,
one fact, no bid word); vague and stock texts (the stock ones are the same in every context, so fatigue shows in
the logs); an ad written for another context (off-topic); hype, shouting, made-up numbers, over-long fields, thin
ads, chatter around the ad; and risky claims, which review rejects, so they never reach the logs, exactly as
rejected ads never reach a real platform's logs. Every ingredient is drawn from several phrasings so that the
model cannot key on a template's identity instead of its content.
"""

from __future__ import annotations

import random
import re
from typing import Any, Sequence

from .features import context_key, field_text

KINDS = (
    "good",
    "good_alt",
    "good_third",
    "one_fact",
    "no_cta",
    "no_bid",
    "vague",
    "stock",
    "off_topic",
    "hype",
    "shouting",
    "unsupported",
    "too_long",
    "thin",
    "chatter",
    "risky",
)

_SMALL = {"a", "an", "and", "or", "the", "of", "for", "to", "in", "on", "at", "by", "with", "vs", "near", "me"}

CTAS = (
    "Book online today.",
    "Book your visit online.",
    "Call now for details.",
    "Get a free quote.",
    "Get your free quote today.",
    "Shop now.",
    "Shop the collection online.",
    "Start your free trial.",
    "Schedule a visit today.",
    "Apply online in minutes.",
    "Reserve your spot.",
    "Order today.",
    "See plans and prices.",
    "Check your rate online.",
    "Request a quote today.",
    "Sign up in minutes.",
    "Compare plans online.",
    "Browse options online.",
)
WEAK_CTAS = ("Learn more.", "Find out more.", "Contact us.", "Read more.", "More info inside.")
VAGUE_TITLES = (
    "Quality You Can Trust",
    "Solutions for Every Need",
    "Your Search Ends Here",
    "Great Options Available",
    "Professional Service",
    "Find What You Need",
    "Trusted by Many",
    "Looking for Something?",
    "Service Done Right",
    "Fair Prices, Friendly Staff",
)
VAGUE_DESCRIPTIONS = (
    "We offer great solutions for all your needs.",
    "Quality service and friendly staff, every time.",
    "Experience the difference with our professional team.",
    "We are here to help with whatever you need.",
    "Serving customers with care and dedication.",
    "Our experts are ready to help you today.",
    "Discover what makes us different.",
)
STOCK_ADS = (
    "Title: Great Deals Available\nDescription: Quality service at fair prices. Contact us today to learn more.",
    "Title: Quality You Can Trust\nDescription: We offer great solutions for all your needs. Learn more.",
    "Title: Looking for Help?\nDescription: Our friendly team is ready to help. Find out more on our website.",
)
HYPE_TITLES = ("Amazing {Bid} Deals", "Incredible {Bid} Offers", "Unbelievable {Bid}", "Wow! {Bid}")
HYPE_LINES = ("Amazing value!!", "Incredible offers, act now!", "Hurry, don't miss out!", "Unbelievable deals!!")
RISKY_TITLES = ("Best {Bid} in Town", "#1 {Bid} Provider", "Guaranteed {Bid}", "The Best {Bid}", "Cheapest {Bid} Anywhere")
RISKY_LINES = (
    "Guaranteed results or your money back.",
    "100% satisfaction, lowest prices anywhere.",
    "The best choice, rated No. 1.",
    "Risk-free and perfect every time.",
)
MADE_UP = (
    "Save {n}% this week only.",
    "Over {k},000 happy customers.",
    "Rated 4.9 by {k},500 clients.",
    "{n}% off for new customers.",
    "Trusted for {y} years.",
)
CHATTER = ("Sure! Here is your ad:", "Here's a search ad for you.", "Ad:", "Okay, here it is.")


def title_case(text: str) -> str:
    words = text.split()
    out = []
    for i, w in enumerate(words):
        if w.isupper() or any(ch.isupper() for ch in w[1:]) or any(ch.isdigit() for ch in w):
            out.append(w)  # LASIK, iPhones, 4K stay as written
        elif i > 0 and w.lower() in _SMALL:
            out.append(w.lower())
        else:
            out.append(w[:1].upper() + w[1:])
    return " ".join(out)


def _ad(title: str, description: str) -> str:
    return f"Title: {title}\nDescription: {description}"


def _fit(parts: Sequence[str], limit: int) -> str:
    """As many of ``parts`` (in order) as fit in ``limit`` characters, joined by spaces; at least the first."""
    out = parts[0]
    for p in parts[1:]:
        if len(out) + 1 + len(p) <= limit:
            out = f"{out} {p}"
    return out


def _sentence(point: str) -> str:
    point = point.strip().rstrip(".")
    return point + "."


def _price(points: Sequence[str]) -> str | None:
    for p in points:
        m = re.search(r"\$\d[\d,]*(?:\.\d+)?", p)
        if m:
            return m.group(0)
    return None


def _titles(bid: str, points: Sequence[str], advertiser: str | None, limit: int, rng: random.Random) -> list[str]:
    b = title_case(bid)
    price = _price(points)
    options = [
        b,
        f"{b} Near You" if len(b) < 18 else b,
        f"Local {b}",
        f"Affordable {b}",
        f"{b} - Book Today",
        f"{b} Made Easy",
        f"Need {b}?",
        f"Expert {b}",
    ]
    if price:
        options += [f"{b} from {price}", f"{b} From {price}", f"{b}: {price}"]
    if advertiser:
        options += [f"{b} | {advertiser}", f"{advertiser}: {b}", f"{advertiser} {b}"]
    fitting = [t for t in dict.fromkeys(options) if len(t) <= limit]
    rng.shuffle(fitting)
    return fitting or [b[:limit].rstrip()]


def _good(
    ctx: dict[str, Any], rng: random.Random, n_points: int, cta: bool, bid_title: bool, limit_t: int, limit_d: int
) -> str:
    """A well-made ad (or one missing the CTA / the bid word in the title): bid-word title, facts, CTA."""
    points = [str(p) for p in ctx.get("selling_points") or []]
    bid = field_text(ctx.get("bid_word")) or field_text(ctx.get("query"))
    advertiser = ctx.get("advertiser")
    if bid_title:
        title = _titles(bid, points, advertiser, limit_t, rng)[0]
    else:
        # a title from a selling point instead of the bid word
        cands = [p for p in points if len(p) <= limit_t] or [advertiser or "Special Offer"]
        title = rng.choice(cands)[:limit_t]
    chosen = rng.sample(points, min(n_points, len(points))) if points else []
    parts = [_sentence(p) for p in chosen]
    if cta:
        parts.append(rng.choice(CTAS))
    if not parts:
        parts = [rng.choice(VAGUE_DESCRIPTIONS)]
    # keep the CTA when cutting: drop facts from the end first
    while len(" ".join(parts)) > limit_d and len(parts) > 1:
        parts.pop(-2 if cta and len(parts) > 1 else -1)
    return _ad(title, " ".join(parts)[:limit_d].rstrip())


def candidate_ads(
    context: dict[str, Any],
    seed: int = 0,
    other: dict[str, Any] | None = None,
    kinds: Sequence[str] = KINDS,
    title_max: int = 30,
    description_max: int = 90,
) -> list[tuple[str, str]]:
    """``(kind, ad_text)`` candidates for one context, deterministic in (seed, context).

    ``other`` is a context of a different topic, for the off-topic candidate (skipped when None).
    """
    rng = random.Random(f"{seed}:candidates:{context_key(context)}")
    bid = field_text(context.get("bid_word")) or field_text(context.get("query"))
    b = title_case(bid)
    points = [str(p) for p in context.get("selling_points") or []]
    lt, ld = title_max, description_max

    def one_point() -> list[str]:
        return [_sentence(p) for p in rng.sample(points, min(1, len(points)))]

    def styled_title(templates: Sequence[str], fallback: str) -> str:
        fitting = [t.format(Bid=b) for t in templates if len(t.format(Bid=b)) <= lt]
        return rng.choice(fitting) if fitting else fallback[:lt]

    out: list[tuple[str, str]] = []
    for kind in kinds:
        if kind in ("good", "good_alt", "good_third"):
            text = _good(context, rng, rng.choice((1, 2, 2, 3)), True, True, lt, ld)
        elif kind == "one_fact":
            text = _good(context, rng, 1, True, True, lt, ld)
        elif kind == "no_cta":
            text = _good(context, rng, 2, False, True, lt, ld)
        elif kind == "no_bid":
            text = _good(context, rng, 2, True, False, lt, ld)
        elif kind == "vague":
            title = rng.choice(VAGUE_TITLES + ((f"Looking for {b}?",) if len(b) < 17 else ()))
            desc = rng.choice(VAGUE_DESCRIPTIONS) + (" " + rng.choice(WEAK_CTAS) if rng.random() < 0.6 else "")
            text = _ad(title, desc[:ld])
        elif kind == "stock":
            text = rng.choice(STOCK_ADS)
        elif kind == "off_topic":
            if other is None:
                continue
            text = _good(other, rng, 2, True, True, lt, ld)
        elif kind == "hype":
            desc = _fit([rng.choice(HYPE_LINES), *one_point(), rng.choice(CTAS)], ld)
            text = _ad(styled_title(HYPE_TITLES, b), desc)
        elif kind == "shouting":
            text = _ad(b.upper()[:lt], _fit([*one_point(), "CALL TODAY!", "FREE QUOTE."], ld))
        elif kind == "unsupported":
            claim = rng.choice(MADE_UP).format(
                n=rng.choice((20, 30, 40, 50)), k=rng.choice((5, 10, 25)), y=rng.choice((15, 20, 35))
            )
            desc = _fit([*one_point(), claim, rng.choice(CTAS)], ld)
            text = _ad(_titles(bid, points, context.get("advertiser"), lt, rng)[0], desc)
        elif kind == "too_long":
            adv = context.get("advertiser") or "Our Team"
            desc = " ".join([*(_sentence(p) for p in points), rng.choice(CTAS), "Friendly staff and flexible hours."])
            text = _ad(f"{b} from {adv} - Trusted Local Experts", desc)
        elif kind == "thin":
            title = b[:9] if rng.random() < 0.5 else b[:lt]
            text = _ad(title, rng.choice(("Call us.", "Learn more.", "Visit us today.", "Open now.")))
        elif kind == "chatter":
            text = rng.choice(CHATTER) + "\n" + _good(context, rng, 2, True, True, lt, ld)
        elif kind == "risky":
            desc = _fit([rng.choice(RISKY_LINES), *one_point(), rng.choice(CTAS)], ld)
            text = _ad(styled_title(RISKY_TITLES, f"Best {b}"), desc)
        else:
            raise ValueError(f"unknown candidate kind '{kind}' (known: {list(KINDS)})")
        out.append((kind, text))
    return out
