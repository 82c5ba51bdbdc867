"""RELATE's reward providers (paper 3.3), one module each, registered with rlgen here.

Sentence-level: ``relate.length``, ``relate.format``, ``relate.relevance``, ``relate.correctness``.
Token-level (paper Eq. 5): ``relate.risk`` (blacklisted phrases), ``relate.diversity`` (frequent n-grams), and
``relate.overflow`` (the characters of a field past its limit: the structural rule with the credit on its cause),
``relate.contradiction`` (a clause denying what the ad or the advertiser asserts: "Free repair. No repair included."),
``relate.claims`` (``relate.correctness``'s unsupported claims, with the penalty on the claim's own words).
``relate.ctcvr`` lives with its model in :mod:`rlgen_relate.ctcvr`.
"""

from __future__ import annotations

import rlgen

from .claims import ClaimsReward
from .contradiction import ContradictionReward
from .correctness import CorrectnessReward
from .diversity import DiversityReward
from .format import FormatReward
from .length import LengthReward
from .overflow import OverflowReward
from .relevance import RelevanceReward
from .risk import RiskReward

PROVIDERS: list[type[rlgen.RewardProvider]] = [
    LengthReward,
    FormatReward,
    OverflowReward,
    RelevanceReward,
    CorrectnessReward,
    RiskReward,
    DiversityReward,
    ContradictionReward,
    ClaimsReward,
]


@rlgen.hookimpl
def rlgen_reward_providers() -> list[type[rlgen.RewardProvider]]:
    return list(PROVIDERS)


__all__ = [
    "ClaimsReward",
    "ContradictionReward",
    "CorrectnessReward",
    "DiversityReward",
    "FormatReward",
    "LengthReward",
    "OverflowReward",
    "RelevanceReward",
    "RiskReward",
    "rlgen_reward_providers",
]
