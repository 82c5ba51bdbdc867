"""What the simulated user and ad review see in one ad: the displayed fields and the features that move CTR/CVR.

An ad is shown as a title and a description (``Title: ...`` / ``Description: ...`` lines, the layout of the
prompt and of ``relate.format``). The platform displays at most ``title_max`` / ``description_max`` characters of
each, so everything below is measured on the *displayed* text: a fact or a call to action past the cut is not
seen. Context features (query words, intents, facts of the selling points) are computed once per context.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

from .lexicon import CTA_STRONG, CTA_WEAK, HYPE, INTENTS, QUERY_MODIFIERS, REVIEW_REJECT, STOPWORDS, compile_alternatives

_LABEL = re.compile(
    r"^[\s*_#>\-]*(?P<label>title|headline|description|desc)\b[^:：\n]{0,30}[:：][\s*_]*(?P<value>.*?)[\s*_]*$", re.I
)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_NUMBER = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)")
_UPPER_WORD = re.compile(r"\b[A-Z]{4,}\b")
_SENTENCE_END = re.compile(r"[.!?;:|…]+(?:\s|$)|\s[-–—]\s")
_MARKUP = re.compile(r"\*\*|__|~~|`|^\s*#{1,6}\s|^\s*[-*+]\s+\S|\[[^\]]*\]\([^)]*\)|</?[a-zA-Z][^>]*>", re.M)
_PLACEHOLDER = re.compile(r"\[[^\]]{1,40}\]|\{[^}]{1,40}\}|<[^>]{1,40}>|\bx{3,}\b|lorem ipsum|\binsert\b", re.I)
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\U00002600-\U000027bf\U0001f900-\U0001f9ff\U00002b00-\U00002bff\U0000fe0f\U0000200d"
    "\U0001f1e6-\U0001f1ff]"
)

REJECT_RE = compile_alternatives(REVIEW_REJECT)
HYPE_RE = compile_alternatives(HYPE)
CTA_STRONG_RE = compile_alternatives(CTA_STRONG)
CTA_WEAK_RE = compile_alternatives(CTA_WEAK)
INTENT_RES = {name: (re.compile(q), re.compile(a)) for name, (q, a) in INTENTS.items()}


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A light English stemmer: enough to match 'cleaners'/'cleaning'/'clean', cheap enough for every word."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ed") and not word.endswith("eed"):
        return word[:-2]
    if len(word) > 4 and word.endswith("ers"):
        return word[:-3]
    if len(word) > 4 and word.endswith("er"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def content_stems(text: str, drop: frozenset[str] = STOPWORDS) -> set[str]:
    return {stem(w) for w in _WORD.findall(text.lower()) if w not in drop and not w.isdigit()}


def numbers(text: str) -> set[str]:
    """Numbers in ``text``, normalised ('$1,299.00' -> '1299', '4.50' -> '4.5')."""
    out = set()
    for raw in _NUMBER.findall(text):
        n = raw.replace(",", "")
        if "." in n:
            n = n.rstrip("0").rstrip(".")
        out.add(n)
    return out


def trigrams(text: str) -> frozenset[str]:
    """Character trigrams of the words of ``text`` (with word-boundary spaces): a cheap fuzzy-match signature."""
    t = " " + " ".join(_WORD.findall(text.lower())) + " "
    return frozenset(t[i : i + 3] for i in range(len(t) - 2))


def coverage(ad: frozenset[str], query: frozenset[str]) -> float:
    """Share of the query's trigrams that the ad contains. Unlike a cosine, it does not grow when the ad is made of
    nothing but the query's words, so stuffing keywords does not look more relevant than using them once."""
    if not ad or not query:
        return 0.0
    return len(ad & query) / len(query)


def _root(word: str) -> str:
    return stem(word).rstrip("e")


def repetition(text: str) -> tuple[int, int]:
    """``(stutters, longest run)`` of a field: how many words (or two-word phrases) repeat the one right before them
    ("Transmission Transmission", "Lease Leasing", "book now book now"), and the longest run of one word."""
    words = [w for w in _WORD.findall(text.lower()) if not w.isdigit()]
    stutters, run, longest = 0, 1, 1 if words else 0
    for prev, word in zip(words, words[1:]):
        if word == prev or (len(_root(word)) >= 4 and _root(word) == _root(prev)):
            stutters += 1
            run += 1
            longest = max(longest, run)
        else:
            run = 1
    for i in range(2, len(words) - 1):
        if words[i : i + 2] == words[i - 2 : i] and words[i] != words[i + 1]:
            stutters += 1
    return stutters, longest


def word_count(text: str) -> int:
    """Words of ``text`` as every feature counts them ('take-home' is two, '$249' one)."""
    return len(_WORD.findall(text.lower()))


def sentences(field: str, min_words: int) -> list[tuple[str, ...]]:
    """The sentences of a displayed field as word tuples, those of at least ``min_words`` words."""
    out = []
    for part in _SENTENCE_END.split(field.lower()):
        words = tuple(_WORD.findall(part))
        if len(words) >= min_words:
            out.append(words)
    return out


def field_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value)
    return str(value)


def context_key(context: dict[str, Any]) -> str:
    """A stable identity of a context: its ``id`` if it has one, else a hash of its fields."""
    if context.get("id") is not None:
        return str(context["id"])
    body = json.dumps([field_text(context.get(k)) for k in ("query", "bid_word", "selling_points", "landing_page")])
    return hashlib.blake2b(body.encode(), digest_size=8).hexdigest()


# -- the ad ---------------------------------------------------------------------------------


@dataclass
class ParsedAd:
    title: str | None = None
    description: str | None = None
    stray: bool = False  # text outside the two fields (prompt echo, chatter): not displayed
    broken: bool = False  # a field continues on the next line
    duplicate: bool = False  # a field given twice


def parse_ad(text: str) -> ParsedAd:
    ad = ParsedAd()
    current: str | None = None
    for line in text.strip().splitlines():
        if not line.strip():
            continue
        m = _LABEL.match(line)
        if m is not None:
            name = "title" if m.group("label").lower() in ("title", "headline") else "description"
            if getattr(ad, name) is not None:
                ad.duplicate = True
                current = None
                continue
            setattr(ad, name, m.group("value").strip())
            current = name
        elif current is not None:
            setattr(ad, current, f"{getattr(ad, current)} {line.strip()}".strip())
            ad.broken = True
        else:
            ad.stray = True
    return ad


def displayed(value: str, limit: int) -> tuple[str, bool]:
    """What the platform shows of a field, and whether it was cut."""
    if len(value) <= limit:
        return value, False
    return value[: limit - 1].rstrip() + "…", True


# -- the context ----------------------------------------------------------------------------


@dataclass
class ContextFeatures:
    key: str
    vertical: str
    query_stems: set[str]
    bid_stems: set[str]
    query_grams: frozenset[str]
    intents: list[str]
    points: list[tuple[set[str], set[str]]]  # (stems beyond the query, numbers) of each selling point
    supported_numbers: set[str]
    known_upper: set[str]  # all-caps words of the context (LASIK, CCNE): not shouting when repeated

    @classmethod
    def of(cls, context: dict[str, Any]) -> "ContextFeatures":
        query = field_text(context.get("query"))
        bid = field_text(context.get("bid_word"))
        points_raw = context.get("selling_points") or []
        if isinstance(points_raw, str):
            points_raw = [p for p in re.split(r"[;\n]", points_raw) if p.strip()]
        landing = field_text(context.get("landing_page"))
        query_stems = content_stems(query, STOPWORDS | QUERY_MODIFIERS)
        bid_stems = content_stems(bid, STOPWORDS | QUERY_MODIFIERS)
        on_query = query_stems | bid_stems
        q = query.lower()
        all_text = " ".join([query, bid, *map(str, points_raw), landing])
        return cls(
            key=context_key(context),
            vertical=str(context.get("vertical") or ""),
            query_stems=query_stems,
            bid_stems=bid_stems,
            query_grams=trigrams(f"{query} {bid}"),
            intents=[name for name, (q_re, _) in INTENT_RES.items() if q_re.search(q)],
            points=[(content_stems(str(p)) - on_query, numbers(str(p))) for p in points_raw],
            supported_numbers=numbers(all_text),
            known_upper=set(_UPPER_WORD.findall(all_text)),
        )


# -- features of one ad in one context ------------------------------------------------------


@dataclass
class AdFeatures:
    rejected: list[str] = field(default_factory=list)  # review failures; non-empty = never shown
    title: str = ""
    description: str = ""
    truncated: bool = False
    thin: bool = False  # a title under 10 or a description under 25 characters
    sloppy: bool = False  # stray text, a broken or repeated field
    query_coverage: float = 0.0
    bid_coverage: float = 0.0
    bid_in_title: bool = False
    similarity: float = 0.0  # share of the character trigrams of query + bid word that the ad contains
    intent_match: float = 1.0  # share of the query's intents (price, local, urgent, ...) the ad answers
    relevance: float = 0.0
    cited: int = 0  # selling points the ad cites
    concrete: int = 0  # ... of which with their number (price, duration, count)
    unsupported: int = 0  # numbers in the ad that no context field backs
    cta: int = 0  # 2 specific call to action, 1 vague one ("learn more"), 0 none
    hype: int = 0
    shouting: bool = False
    stutter: int = 0  # words or two-word phrases that repeat the one right before them, in the displayed fields
    stuffing: int = 0  # mentions of query / bid-word words beyond one per field, less one tolerated
    boilerplate: float = 0.0  # share of the displayed words in sentences of the advertiser's other ads (set per set of ads)
    shown_text: str = ""  # title + description as displayed: what fatigue compares


def _relevance(f: AdFeatures) -> float:
    # weights of the match to the query intent; documented in docs/simulator.md
    return 0.40 * f.query_coverage + 0.20 * f.bid_coverage + 0.25 * f.similarity + 0.15 * f.intent_match


def ad_features(ctx: ContextFeatures, text: str, title_max: int = 30, description_max: int = 90) -> AdFeatures:
    f = AdFeatures()
    raw = text if isinstance(text, str) else ""
    parsed = parse_ad(raw)
    if not parsed.title or not parsed.description:
        f.rejected.append("layout")
    if _EMOJI.search(raw):
        f.rejected.append("emoji")
    if _MARKUP.search(raw):
        f.rejected.append("markup")
    if _PLACEHOLDER.search(raw):
        f.rejected.append("placeholder")
    title, cut_t = displayed(parsed.title or "", title_max)
    desc, cut_d = displayed(parsed.description or "", description_max)
    shown = f"{title} {desc}".strip()
    low = shown.lower()
    # review reads the whole submitted text, not only what fits on screen
    if REJECT_RE.search(raw.lower()):
        f.rejected.append("risky_claim")
    # editorial standards: no gimmicky repetition of words ("Lease Lease Lease")
    if any(repetition(v or "")[1] >= 3 for v in (parsed.title, parsed.description)):
        f.rejected.append("repetition")
    f.title, f.description, f.shown_text = title, desc, shown
    f.truncated = cut_t or cut_d
    f.thin = len(parsed.title or "") < 10 or len(parsed.description or "") < 25
    f.sloppy = parsed.stray or parsed.broken or parsed.duplicate

    stems = content_stems(low)
    title_stems = content_stems(title.lower())
    f.query_coverage = len(ctx.query_stems & stems) / len(ctx.query_stems) if ctx.query_stems else 1.0
    f.bid_coverage = len(ctx.bid_stems & stems) / len(ctx.bid_stems) if ctx.bid_stems else 1.0
    f.bid_in_title = bool(ctx.bid_stems) and ctx.bid_stems <= title_stems
    f.similarity = coverage(trigrams(low), ctx.query_grams)
    if ctx.intents:
        f.intent_match = sum(1 for name in ctx.intents if INTENT_RES[name][1].search(low)) / len(ctx.intents)
    f.relevance = _relevance(f)

    ad_numbers = numbers(shown)
    for point_stems, point_numbers in ctx.points:
        if point_numbers and point_numbers & ad_numbers:
            f.cited += 1
            f.concrete += 1
        elif point_stems:
            hit = len(point_stems & stems)
            if hit >= min(2, len(point_stems)) and hit / len(point_stems) >= 0.5:
                f.cited += 1
    f.unsupported = len(ad_numbers - ctx.supported_numbers)
    f.cta = 2 if CTA_STRONG_RE.search(low) else 1 if CTA_WEAK_RE.search(low) else 0
    f.hype = len(HYPE_RE.findall(low)) + len(re.findall(r"[!?]{2,}", shown))
    f.shouting = any(w not in ctx.known_upper for w in _UPPER_WORD.findall(shown))
    f.stutter = sum(repetition(v)[0] for v in (title, desc))
    on_query = ctx.query_stems | ctx.bid_stems
    for value in (title, desc):
        mentions = collections.Counter(stem(w) for w in _WORD.findall(value.lower()) if stem(w) in on_query)
        f.stuffing += sum(c - 1 for c in mentions.values())
    f.stuffing = max(0, f.stuffing - 1)  # naming the product twice in one field is still ordinary copy
    return f


def contexts_features(contexts: Sequence[dict[str, Any]]) -> list[ContextFeatures]:
    """Features of each context, computed once per distinct context."""
    cache: dict[str, ContextFeatures] = {}
    out = []
    for c in contexts:
        key = context_key(c)
        if key not in cache:
            cache[key] = ContextFeatures.of(c)
        out.append(cache[key])
    return out
