"""Sentence-level advantage combiners: ``grpo`` (with Dr. GRPO and per-reward variants) and ``rloo``.

These are the baselines that RELATE's granularity-aware credit assignment is compared against:
every reward is reduced to one number per completion (token rewards summed, paper Eq. 4), the
rewards are weighted and summed (Eq. 2), a per-prompt baseline is subtracted, and the result is
spread over every completion token. The group statistics come from the core
(:func:`rlgen.group_normalize`, Eq. 8) so every combiner normalises the same way.
"""

from __future__ import annotations

from typing import Literal

import pydantic
import torch

import rlgen


def _group_ids(group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse [B] mapping each sample to 0..n_groups-1, size of each sample's group [B])."""
    _, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    return inverse, counts[inverse]


def _summary(adv: torch.Tensor) -> dict[str, float]:
    """Statistics of the per-sample advantages [B] (the loop logs them as ``advantage/<key>``)."""
    return {
        "sample_mean": float(adv.mean()) if adv.numel() else 0.0,
        "sample_std": float(adv.std()) if adv.numel() > 1 else 0.0,
        "sample_abs_max": float(adv.abs().max()) if adv.numel() else 0.0,
    }


class GRPOAdvantage(rlgen.AdvantageCombiner):
    r"""Group-relative sentence-level advantage (GRPO, Dr. GRPO).

    For the G completions o_1..o_G of one prompt, with rewards k = 1..K of weight w_k:

    .. math::

        r_k(o_i) = \sum_t r_{k,t}(o_i)                        \quad \text{(Eq. 4, token rewards)}

        R_i = \sum_k w_k \, r_k(o_i)                          \quad \text{(Eq. 2)}

        A_i = \frac{R_i - \mathrm{mean}_j R_j}{\sigma}        \quad \text{(Eq. 8)}

        A_{i,t} = A_i \ \text{for every completion token } t

    ``scale`` picks sigma: the group's std (``group``, GRPO), the whole batch's std (``batch``)
    or 1 (``none``, Dr. GRPO). With ``normalize_then_sum`` each reward is normalised on its own
    and the normalised rewards are weighted and summed instead:
    A_i = sum_k w_k (r_k(o_i) - mean_j r_k(o_j)) / sigma_k. A group whose rewards are all equal
    gives zero advantage (never NaN); the share of such groups is ``zero_var_group_frac``.
    """

    name = "grpo"
    description = "GRPO / Dr. GRPO: weighted sentence rewards, group-relative normalisation (Eq. 8), same advantage on every token"

    class Params(rlgen.Params):
        scale: Literal["group", "batch", "none"] = pydantic.Field(
            "group", description="divide centred rewards by the group std (GRPO), the batch std, or nothing (Dr. GRPO)"
        )
        mode: Literal["sum_then_normalize", "normalize_then_sum"] = pydantic.Field(
            "sum_then_normalize",
            description="weight and sum the rewards, then normalise (default); or normalise each reward, then weight and sum",
        )
        eps: float = pydantic.Field(1e-6, gt=0, description="a group whose reward std is below this gets zero advantage")

    def __init__(self, params: pydantic.BaseModel | None = None) -> None:
        super().__init__(params)
        self._metrics: dict[str, float] = {}

    def combine(
        self, rollout: rlgen.Rollout, rewards: dict[str, rlgen.RewardResult], weights: dict[str, float]
    ) -> torch.Tensor:
        p = self.params
        terms, _ = rlgen.reward_terms(self.name, rollout, rewards, weights)  # Eq. 4
        adv, metrics = rlgen.sentence_advantage(terms, rollout.group, scale=p.scale, mode=p.mode, eps=p.eps)  # Eq. 2, 8
        metrics.update(_summary(adv))
        self._metrics = metrics
        return rlgen.broadcast_to_tokens(adv, rollout.completion_mask)

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)


class RLOOAdvantage(rlgen.AdvantageCombiner):
    r"""REINFORCE leave-one-out: each completion's baseline is the mean reward of the others.

    With R_i the weighted sentence reward (Eq. 4 for token rewards, Eq. 2 for the weighting)
    of completion i in a group of n:

    .. math::

        A_i = R_i - \frac{1}{n-1} \sum_{j \ne i} R_j = \frac{n}{n-1} \left(R_i - \mathrm{mean}_j R_j\right)

        A_{i,t} = A_i \ \text{for every completion token } t

    A group of one sample, or one whose rewards are all equal, gives zero advantage. With
    ``normalize_batch_std`` the advantages are divided by their std over the whole batch.
    """

    name = "rloo"
    description = "RLOO: weighted sentence rewards minus the leave-one-out mean of the other samples of the prompt"

    class Params(rlgen.Params):
        normalize_batch_std: bool = pydantic.Field(
            False, description="divide the leave-one-out advantages by their standard deviation over the batch"
        )
        eps: float = pydantic.Field(1e-6, gt=0, description="a group whose reward std is below this gets zero advantage")

    def __init__(self, params: pydantic.BaseModel | None = None) -> None:
        super().__init__(params)
        self._metrics: dict[str, float] = {}

    def combine(
        self, rollout: rlgen.Rollout, rewards: dict[str, rlgen.RewardResult], weights: dict[str, float]
    ) -> torch.Tensor:
        p = self.params
        terms, _ = rlgen.reward_terms(self.name, rollout, rewards, weights)  # Eq. 4
        total = rlgen.weighted_sum(terms)  # Eq. 2
        # R_i - mean_j R_j, zero for flat groups; the core's centring (Eq. 8 without scaling)
        centred, zero_frac = rlgen.group_normalize(total, rollout.group, scale="none", eps=p.eps)
        _, n = _group_ids(rollout.group)
        n = n.to(torch.float64)
        loo_factor = torch.where(n > 1, n / (n - 1).clamp(min=1), torch.zeros_like(n))
        adv = centred.double() * loo_factor
        if p.normalize_batch_std and adv.numel() > 1:
            std = adv.std()
            adv = adv / std if std >= p.eps else torch.zeros_like(adv)
        adv = adv.float()
        self._metrics = {"zero_var_group_frac": zero_frac, **_summary(adv)}
        return rlgen.broadcast_to_tokens(adv, rollout.completion_mask)

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)


@rlgen.hookimpl
def rlgen_advantage_combiners() -> list[type[rlgen.AdvantageCombiner]]:
    return [GRPOAdvantage, RLOOAdvantage]
