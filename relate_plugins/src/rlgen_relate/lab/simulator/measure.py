"""Simulator CTCVR of a policy: show each ad a fixed number of times to simulated users and count.

Every ad gets the same number of impression opportunities. An ad that fails review is never shown, so its
opportunities earn nothing: a policy pays for risky or malformed ads in its CTCVR, as it would online. The
result carries both the sampled rates (what an A/B test would observe) and the true expected rates (the
simulator's probabilities, free of sampling noise), per ad and overall.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .model import Simulator, SimulatorConfig


@dataclass
class Measurement:
    impressions: np.ndarray  # [N] opportunities per ad
    clicks: np.ndarray  # [N]
    conversions: np.ndarray  # [N]
    p_click: np.ndarray  # [N] true probabilities
    p_conv: np.ndarray  # [N]
    shown: np.ndarray  # [N] bool: passed review
    rejected: list[list[str]]  # [N] review failures per ad

    @property
    def ctr(self) -> np.ndarray:
        return self.clicks / np.maximum(self.impressions, 1)

    @property
    def cvr(self) -> np.ndarray:
        return np.where(self.clicks > 0, self.conversions / np.maximum(self.clicks, 1), 0.0)

    @property
    def ctcvr(self) -> np.ndarray:
        return self.conversions / np.maximum(self.impressions, 1)

    @property
    def p_ctcvr(self) -> np.ndarray:
        return self.p_click * self.p_conv

    def overall(self) -> dict[str, float]:
        imps, clicks, convs = float(self.impressions.sum()), float(self.clicks.sum()), float(self.conversions.sum())
        n = len(self.impressions)
        return {
            "ads": float(n),
            "impressions": imps,
            "clicks": clicks,
            "conversions": convs,
            "ctr": clicks / imps if imps else 0.0,
            "cvr": convs / clicks if clicks else 0.0,
            "ctcvr": convs / imps if imps else 0.0,
            "ctr_true": float(self.p_click.mean()) if n else 0.0,
            "ctcvr_true": float(self.p_ctcvr.mean()) if n else 0.0,
            "shown_rate": float(self.shown.mean()) if n else 0.0,
        }

    def per_ad(self) -> list[dict[str, Any]]:
        return [
            {
                "impressions": int(self.impressions[i]),
                "clicks": int(self.clicks[i]),
                "conversions": int(self.conversions[i]),
                "ctr": float(self.ctr[i]),
                "cvr": float(self.cvr[i]),
                "ctcvr": float(self.ctcvr[i]),
                "p_click": float(self.p_click[i]),
                "p_conv": float(self.p_conv[i]),
                "p_ctcvr": float(self.p_ctcvr[i]),
                "rejected": self.rejected[i],
            }
            for i in range(len(self.impressions))
        ]


def measure(
    contexts: Sequence[dict[str, Any]],
    ads: Sequence[str],
    impressions_per_ad: int = 2000,
    seed: int = 0,
    config: SimulatorConfig | None = None,
    fatigue: bool = True,
) -> Measurement:
    """Simulated CTR / CVR / CTCVR of each ad (``ads[i]`` shown in ``contexts[i]``) and overall.

    ``seed`` fixes both the user model's noise and the sampled outcomes. Fatigue is computed over ``ads`` as one
    set: evaluate all of a policy's ads together.
    """
    if impressions_per_ad < 1:
        raise ValueError(f"impressions_per_ad must be >= 1, got {impressions_per_ad}")
    assessment = Simulator(config, seed).assess(contexts, ads, fatigue=fatigue)
    n = len(ads)
    rng = np.random.default_rng([seed, 0x5EA5])
    imps = np.full(n, impressions_per_ad, dtype=np.int64)
    clicks = rng.binomial(imps, assessment.p_click)
    conversions = rng.binomial(clicks, assessment.p_conv)
    return Measurement(
        impressions=imps,
        clicks=clicks,
        conversions=conversions,
        p_click=assessment.p_click,
        p_conv=assessment.p_conv,
        shown=assessment.shown,
        rejected=[list(f.rejected) for f in assessment.features],
    )
