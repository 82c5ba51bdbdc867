r"""``relate.credit``: RELATE's granularity-aware credit assignment (paper 3.4, Eq. 7, 8, 9).

Each reward is used at its natural granularity instead of being squeezed into one number per completion:

- sentence-level rewards (and token-level ones listed in ``demote``, reduced to their sum, Eq. 4) are weighted,
  summed and normalised within each prompt's group exactly like the ``grpo`` combiner (same ``scale``, ``mode``
  and ``eps``, through the core's :func:`rlgen.group_normalize`, Eq. 8); the result is the same on every token
  of the completion;
- token-level rewards are weighted and scaled by ``alpha`` and stay on the tokens that triggered them (Eq. 7):
  not normalised, not spread to earlier tokens as returns-to-go;
- the advantage of token t of completion i is their sum (Eq. 9), zero on padding:

.. math::

    A^{sentence}_i = \frac{R_i - \mathrm{mean}_G(R)}{\mathrm{std}_G(R)},\quad R_i = \sum_{k \in S} w_k r_k(o_i)
    \qquad \text{(Eq. 8)}

    A^{token}_{i,t} = \alpha \sum_{k \in T} w_k r_{k,t}(o_i) \qquad \text{(Eq. 7)}

    A_{i,t} = A^{sentence}_i + A^{token}_{i,t} \qquad \text{(Eq. 9)}

With no token-level reward (or all of them demoted) this is exactly ``grpo`` with the same options, which is how
ablation Models 3 and 4 of the paper's Table 2 are expressed: the same rewards, token ones demoted.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

import rlgen


class CreditAssignment(rlgen.AdvantageCombiner):
    name = "relate.credit"
    description = "Granularity-aware credit: group-normalised sentence advantage + alpha * token rewards on their tokens (Eq. 7-9)"

    class Params(rlgen.Params):
        alpha: float = Field(1.0, ge=0, description="alpha of Eq. 7: weight of token-level rewards against the sentence advantage")
        demote: list[str] = Field(
            default_factory=list,
            description="token-level rewards (by reward name or alias) to use at sentence level, as their sum (Eq. 4)",
        )
        scale: Literal["group", "batch", "none"] = Field(
            "group", description="Eq. 8 denominator: the group std (GRPO), the batch std, or 1 (Dr. GRPO); as in grpo"
        )
        mode: Literal["sum_then_normalize", "normalize_then_sum"] = Field(
            "sum_then_normalize",
            description="sentence rewards: weight and sum, then normalise (default); or normalise each, then weight and sum",
        )
        eps: float = Field(1e-6, gt=0, description="a group whose sentence-reward std is below this gets zero sentence advantage")

    def __init__(self, params: rlgen.Params | None = None) -> None:
        super().__init__(params)
        self._metrics: dict[str, float] = {}

    def _split(
        self, rollout: rlgen.Rollout, rewards: dict[str, rlgen.RewardResult], weights: dict[str, float]
    ) -> tuple[list[rlgen.RewardTerm], list[rlgen.RewardTerm]]:
        """(sentence terms [B], token terms [B, T]); demoted token rewards count as sentence terms (Eq. 4)."""
        unknown = set(self.params.demote) - set(rewards)
        if unknown:
            raise rlgen.PluginError(
                f"advantage combiner '{self.name}': params.demote names {sorted(unknown)}, which are not rewards of "
                f"this run (have {sorted(rewards)})"
            )
        return rlgen.reward_terms(self.name, rollout, rewards, weights, keep_tokens=set(rewards) - set(self.params.demote))

    def combine(
        self, rollout: rlgen.Rollout, rewards: dict[str, rlgen.RewardResult], weights: dict[str, float]
    ) -> torch.Tensor:
        mask = rollout.completion_mask
        p = self.params
        sentence, token = self._split(rollout, rewards, weights)
        adv_sentence, self._metrics = rlgen.sentence_advantage(sentence, rollout.group, scale=p.scale, mode=p.mode,
                                                               eps=p.eps)  # Eq. 8
        advantages = rlgen.broadcast_to_tokens(adv_sentence, mask)
        if token:
            # Eq. 7: alpha * sum_k w_k r_k[i, t], only where the provider put a reward (zero elsewhere and on padding)
            adv_token = p.alpha * rlgen.weighted_sum(token) * mask.float()
            advantages = advantages + adv_token  # Eq. 9
        else:
            adv_token = torch.zeros_like(advantages)
        n_real = max(int(mask.sum()), 1)
        self._metrics.update(
            {
                "sample_mean": float(adv_sentence.mean()) if adv_sentence.numel() else 0.0,
                "sample_std": float(adv_sentence.std()) if adv_sentence.numel() > 1 else 0.0,
                "sample_abs_max": float(adv_sentence.abs().max()) if adv_sentence.numel() else 0.0,
                "token_mean": float(adv_token.sum()) / n_real,
                "token_nonzero_frac": float((adv_token != 0).sum()) / n_real,
                "token_min": float(adv_token[mask].min()) if bool(mask.any()) else 0.0,
            }
        )
        return advantages

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)


@rlgen.hookimpl
def rlgen_advantage_combiners() -> list[type[rlgen.AdvantageCombiner]]:
    return [CreditAssignment]
