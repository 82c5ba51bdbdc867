"""``relate.claims``: the correctness check at token level, with the penalty on the words of each unsupported claim.

``relate.correctness`` (paper 3.3.1) scores a whole ad: one "$30" the advertiser never offered costs the ad its
reward, and GRPO's group-relative advantage (Eq. 8) then spreads that loss over every token, the title and the true
facts included. Read as an advertiser reads them, what is left wrong in trained ads is nearly always one such
claim in an otherwise good ad: "Free transmission repair." where the diagnostic is free, "30% bonus" for a $300
one. This reward runs the same rule checker (:class:`.correctness.ClaimChecker`, same claim kinds and evidence)
and puts ``-penalty`` on the tokens of each unsupported claim only (Eq. 5), so token-level credit (Eq. 7) pushes
down the claim and leaves the rest of the ad alone. Use it in place of ``relate.correctness``, not beside it:
both together count each claim twice.
"""

from __future__ import annotations

import torch
from pydantic import Field

import rlgen

from ._text import context_text
from .correctness import ClaimChecker, ClaimParams, claim_metrics


class ClaimsReward(rlgen.RewardProvider):
    name = "relate.claims"
    description = ("Token-level penalty on the words of each claim (number, price, duration, guarantee, name, free "
                   "offer) the ad's context does not support: relate.correctness's rules with the credit on the claim.")
    granularity = "token"

    class Params(ClaimParams):
        penalty: float = Field(1.0, ge=0, description="penalty on each token of an unsupported claim")

    def __init__(self, params: rlgen.Params | None = None) -> None:
        super().__init__(params)
        self.checker = ClaimChecker(self.params.checks, self.params.guarantee_files, plugin=self.name)

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        metas = rollout.meta or [None] * rollout.batch_size
        found = [self.checker.unsupported(text, context_text(meta, self.params.context_fields))
                 for text, meta in zip(rollout.texts, metas)]
        hit = rollout.spans_to_tokens([[span for _, span, _ in bad] for bad, _ in found])
        values = torch.where(hit, torch.tensor(-float(self.params.penalty)), torch.tensor(0.0))  # Eq. 5 style
        details = [{"unsupported": [{"kind": kind, "text": text} for kind, _, text in bad], "claims": n} for bad, n in found]
        return rlgen.RewardResult(values=values, details=details, metrics=claim_metrics(details))
