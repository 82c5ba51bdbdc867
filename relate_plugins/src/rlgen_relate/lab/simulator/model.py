"""The user model: true click and conversion probabilities of ads in their contexts (docs/simulator.md).

    p_click = base_ctr[vertical] * exp(u_ctx + u_ad + sum_k a_k x_k - c_ctr) * fatigue      (0 if review fails)
    p_conv  = base_cvr[vertical] * exp(v_ctx + v_ad + sum_k b_k x_k - c_cvr)                (after a click)

``x_k`` are the features of :mod:`.features` (relevance to the query, selling points cited, concreteness, call to
action, hype, unsupported numbers, truncation, stutter, keyword stuffing, ...) and the boilerplate share of
:mod:`.fatigue`, ``a_k`` / ``b_k`` the weights of :class:`SimulatorConfig`,
``u`` / ``v`` seeded Gaussian noise per context and per (context, ad) that no feature explains (the part of a
real user's taste a model cannot see), ``c`` centring constants that put an ordinary ad near the base rate.
Review rejects risky claims, a broken layout, emoji, markup, placeholders and gimmicky repetition: such an ad is
never shown.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .fatigue import advertiser_key, boilerplate_shares, fatigue_multipliers
from .features import AdFeatures, ad_features, contexts_features, sentences, word_count

# Per-vertical base rates (CTR, CVR after click) of an ordinary ad, in line with published search-ad benchmarks:
# high-intent local services click and convert well, considered purchases (furniture, real estate) convert less.
BASE_RATES: dict[str, tuple[float, float]] = {
    "auto_repair": (0.055, 0.11),
    "auto_sales": (0.045, 0.05),
    "banking": (0.025, 0.05),
    "beauty": (0.045, 0.10),
    "cleaning": (0.045, 0.10),
    "dental": (0.045, 0.09),
    "education": (0.03, 0.04),
    "electronics": (0.02, 0.025),
    "fashion": (0.025, 0.035),
    "fitness": (0.035, 0.06),
    "furniture": (0.02, 0.02),
    "health": (0.04, 0.07),
    "home_improvement": (0.035, 0.06),
    "home_services": (0.055, 0.12),
    "hotels": (0.05, 0.08),
    "insurance": (0.025, 0.06),
    "language_learning": (0.03, 0.05),
    "legal": (0.02, 0.08),
    "loans": (0.025, 0.04),
    "meal_kits": (0.03, 0.06),
    "moving": (0.04, 0.09),
    "pets": (0.05, 0.12),
    "real_estate": (0.03, 0.03),
    "software": (0.03, 0.05),
    "tax_accounting": (0.035, 0.08),
    "travel": (0.035, 0.03),
    "web_hosting": (0.03, 0.06),
}


class SimulatorConfig(BaseModel):
    """Every constant of the user model; the defaults are the documented model (docs/simulator.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title_max: int = Field(30, description="characters of the title the platform displays")
    description_max: int = Field(90, description="characters of the description the platform displays")
    base_rates: dict[str, tuple[float, float]] = Field(default_factory=lambda: dict(BASE_RATES), description="vertical -> (CTR, CVR)")
    default_rates: tuple[float, float] = Field((0.035, 0.06), description="(CTR, CVR) of a context whose vertical is unknown")
    relevance_center: float = Field(0.50, description="relevance of an ordinary ad; relevance enters as (r - center)")
    # CTR weights (log scale)
    ctr_relevance: float = Field(1.6, description="per unit of relevance")
    ctr_bid_in_title: float = Field(0.15, description="the bid word's words all in the title (shown in bold)")
    ctr_cited: float = Field(0.12, description="per selling point cited, up to 3")
    ctr_concrete: float = Field(0.08, description="per cited point with its number (price, duration), up to 2")
    ctr_cta: tuple[float, float, float] = Field((0.0, 0.04, 0.18), description="no / vague / specific call to action")
    ctr_hype: float = Field(-0.20, description="per hype word or '!!', up to 3")
    ctr_shouting: float = Field(-0.15, description="ALL-CAPS words the context does not have")
    ctr_truncated: float = Field(-0.30, description="a field longer than displayed, cut with '…'")
    ctr_thin: float = Field(-0.15, description="title under 10 or description under 25 characters")
    ctr_sloppy: float = Field(-0.15, description="stray text, a broken or repeated field")
    ctr_unsupported: float = Field(0.04, description="per made-up number, up to 2: specific-looking claims draw clicks")
    ctr_stutter: float = Field(-0.35, description="per stuttered word or phrase, up to 2: reads as careless or machine-made")
    ctr_stuffing: float = Field(-0.15, description="per extra mention of a query word, up to 3: keyword stuffing reads as spam")
    ctr_boilerplate: float = Field(-0.5, description="times the share of the ad's words in sentences of the advertiser's other ads")
    ctr_center: float = Field(0.25, description="subtracted so an ordinary ad sits near the base CTR")
    # CVR weights (log scale)
    cvr_relevance: float = Field(0.8, description="per unit of relevance")
    cvr_cited: float = Field(0.08, description="per selling point cited, up to 3")
    cvr_concrete: float = Field(0.12, description="per cited point with its number, up to 2: clicks know the price")
    cvr_cta: tuple[float, float, float] = Field((-0.05, 0.0, 0.12), description="no / vague / specific call to action")
    cvr_hype: float = Field(-0.30, description="per hype word, up to 3: over-promising disappoints on landing")
    cvr_shouting: float = Field(-0.10, description="ALL-CAPS words")
    cvr_unsupported: float = Field(-0.45, description="per number the landing page does not back, up to 2")
    cvr_stutter: float = Field(-0.10, description="per stuttered word or phrase, up to 2: a careless ad, a less trusted offer")
    cvr_center: float = Field(0.15, description="subtracted so an ordinary ad sits near the base CVR")
    # noise and caps
    context_sigma: float = Field(0.25, description="sd of the per-context log effect (some searches are more commercial)")
    ad_sigma: float = Field(0.15, description="sd of the per-(context, ad) log effect no feature explains")
    max_ctr: float = Field(0.5, description="cap on p_click")
    max_cvr: float = Field(0.6, description="cap on p_conv")
    # fatigue
    fatigue: bool = Field(True, description="apply the batch-level fatigue penalty")
    fatigue_threshold: float = Field(0.5, description="word-bigram Jaccard at which two shown ads are near-duplicates")
    fatigue_tolerance: float = Field(0.02, description="share of near-duplicates in the set that costs nothing")
    fatigue_strength: float = Field(2.0, description="CTR multiplier exp(-strength * (share - tolerance))")
    # boilerplate (a batch-level effect, with fatigue)
    boilerplate_min_words: int = Field(4, description="shortest sentence, in words, that can be boilerplate")


def _gaussians(seed: int, *parts: str) -> tuple[float, float]:
    """Two standard normals from a hash of ``parts`` (Box-Muller): stable across processes, no RNG state."""
    d = hashlib.blake2b("\x1f".join((str(seed), *parts)).encode(), digest_size=16).digest()
    u1 = (int.from_bytes(d[:8], "big") + 1) / 2.0**64
    u2 = int.from_bytes(d[8:], "big") / 2.0**64
    r = math.sqrt(-2.0 * math.log(u1))
    return r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2)


@dataclass
class Assessment:
    """The simulator's verdict on each ad of one evaluated set (its internals: never shown to a reward model)."""

    p_click: np.ndarray  # [N]
    p_conv: np.ndarray  # [N], conversion probability after a click
    fatigue: np.ndarray  # [N] CTR multipliers in (0, 1]
    features: list[AdFeatures] = field(default_factory=list)

    @property
    def p_ctcvr(self) -> np.ndarray:
        return self.p_click * self.p_conv

    @property
    def shown(self) -> np.ndarray:
        return np.array([not f.rejected for f in self.features], dtype=bool)


class Simulator:
    """A seeded user model; :meth:`assess` scores ads in their contexts."""

    def __init__(self, config: SimulatorConfig | None = None, seed: int = 0) -> None:
        self.config = config or SimulatorConfig()
        self.seed = int(seed)

    def features(self, contexts: Sequence[dict[str, Any]], ads: Sequence[str]) -> list[AdFeatures]:
        if len(contexts) != len(ads):
            raise ValueError(f"simulator: {len(contexts)} contexts but {len(ads)} ads; pass one context per ad")
        c = self.config
        ctx = contexts_features(contexts)
        return [ad_features(cf, ad, c.title_max, c.description_max) for cf, ad in zip(ctx, ads)]

    def assess(self, contexts: Sequence[dict[str, Any]], ads: Sequence[str], fatigue: bool | None = None) -> Assessment:
        """True probabilities of every ad, with fatigue computed over this whole set of ads."""
        c = self.config
        feats = self.features(contexts, ads)
        keys = [cf.key for cf in contexts_features(contexts)]
        verticals = [str(ctx.get("vertical") or "") for ctx in contexts]
        n = len(ads)
        use_fatigue = c.fatigue if fatigue is None else fatigue
        if use_fatigue:
            shares = boilerplate_shares(
                [[*sentences(f.title, c.boilerplate_min_words), *sentences(f.description, c.boilerplate_min_words)] for f in feats],
                [word_count(f.shown_text) for f in feats],
                [advertiser_key(ctx) or f"context\x1f{key}" for ctx, key in zip(contexts, keys)],
                keys,
                [not f.rejected for f in feats],
            )
            for f, share in zip(feats, shares.tolist()):
                f.boilerplate = share
        log_ctr = np.empty(n)
        log_cvr = np.empty(n)
        for i, f in enumerate(feats):
            base_ctr, base_cvr = c.base_rates.get(verticals[i], c.default_rates)
            u_ctx, v_ctx = _gaussians(self.seed, "context", keys[i])
            u_ad, v_ad = _gaussians(self.seed, "ad", keys[i], ads[i] if isinstance(ads[i], str) else "")
            rel = f.relevance - c.relevance_center
            cited, concrete = min(f.cited, 3), min(f.concrete, 2)
            hype, unsupported = min(f.hype, 3), min(f.unsupported, 2)
            stutter, stuffing = min(f.stutter, 2), min(f.stuffing, 3)
            x_ctr = (
                c.ctr_relevance * rel
                + c.ctr_bid_in_title * f.bid_in_title
                + c.ctr_cited * cited
                + c.ctr_concrete * concrete
                + c.ctr_cta[f.cta]
                + c.ctr_hype * hype
                + c.ctr_shouting * f.shouting
                + c.ctr_truncated * f.truncated
                + c.ctr_thin * f.thin
                + c.ctr_sloppy * f.sloppy
                + c.ctr_unsupported * unsupported
                + c.ctr_stutter * stutter
                + c.ctr_stuffing * stuffing
                + c.ctr_boilerplate * f.boilerplate
                - c.ctr_center
            )
            x_cvr = (
                c.cvr_relevance * rel
                + c.cvr_cited * cited
                + c.cvr_concrete * concrete
                + c.cvr_cta[f.cta]
                + c.cvr_hype * hype
                + c.cvr_shouting * f.shouting
                + c.cvr_unsupported * unsupported
                + c.cvr_stutter * stutter
                - c.cvr_center
            )
            # the per-ad noise is mean-one on the probability scale (lognormal with -sigma^2/2)
            log_ctr[i] = math.log(base_ctr) + c.context_sigma * u_ctx + c.ad_sigma * u_ad - c.ad_sigma**2 / 2 + x_ctr
            log_cvr[i] = math.log(base_cvr) + c.context_sigma * v_ctx + c.ad_sigma * v_ad - c.ad_sigma**2 / 2 + x_cvr
        shown = np.array([not f.rejected for f in feats], dtype=bool)
        if use_fatigue:
            fat = fatigue_multipliers(
                [f.shown_text for f in feats],
                shown,
                threshold=c.fatigue_threshold,
                tolerance=c.fatigue_tolerance,
                strength=c.fatigue_strength,
                seed=self.seed,
            )
        else:
            fat = np.ones(n)
        p_click = np.minimum(np.exp(log_ctr) * fat, c.max_ctr) * shown
        p_conv = np.minimum(np.exp(log_cvr), c.max_cvr) * shown
        return Assessment(p_click=p_click, p_conv=p_conv, fatigue=fat, features=feats)


def true_probabilities(
    contexts: Sequence[dict[str, Any]],
    ads: Sequence[str],
    seed: int = 0,
    fatigue: bool = True,
    config: SimulatorConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(p_click, p_conv_given_click)`` of each ad in its context; ads failing review get 0 for both."""
    a = Simulator(config, seed).assess(contexts, ads, fatigue=fatigue)
    return a.p_click, a.p_conv
