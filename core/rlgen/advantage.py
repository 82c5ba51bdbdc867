"""Shared pieces of advantage estimation that more than one combiner needs.

Group-relative normalisation (paper Eq. 8), the split of a step's rewards into weighted sentence
and token terms (Eq. 2, Eq. 4) and the sentence-level advantage built from them are what every
GRPO-family combiner shares, so they live here once instead of inside each plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Literal

import torch

from .errors import PluginError
from .reward import RewardResult
from .rollout import Rollout

StdScale = Literal["group", "batch", "none"]


def group_mean(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [B] over each sample's group, broadcast back to [B]."""
    _, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.shape[0], dtype=values.dtype).index_add_(0, inverse, values)
    return (sums / counts.to(values.dtype))[inverse]


def group_std(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Unbiased standard deviation of ``values`` over each sample's group, broadcast to [B] (0 for size-1 groups)."""
    _, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    mean = group_mean(values, group)
    sq = torch.zeros(counts.shape[0], dtype=values.dtype).index_add_(0, inverse, (values - mean) ** 2)
    denom = (counts - 1).clamp(min=1).to(values.dtype)
    return torch.sqrt(sq / denom)[inverse]


def group_normalize(
    values: torch.Tensor, group: torch.Tensor, scale: StdScale = "group", eps: float = 1e-6
) -> tuple[torch.Tensor, float]:
    """Group-relative advantage, paper Eq. 8: (r_i - mean_G(r)) / std_G(r).

    Args:
        values: sentence rewards [B].
        group: prompt index [B].
        scale: ``group`` divides by the group's std (GRPO), ``batch`` by the whole batch's
            std, ``none`` only centres (Dr. GRPO).
        eps: groups whose std is below ``eps`` get zero advantage rather than NaN or noise.

    Returns:
        (advantages [B], fraction of groups with zero variance).
    """
    values = values.double()
    centred = values - group_mean(values, group)
    std = group_std(values, group)
    zero_var = std < eps
    if scale == "group":
        adv = torch.where(zero_var, torch.zeros_like(centred), centred / std.clamp(min=eps))
    elif scale == "batch":
        batch_std = values.std(unbiased=True) if values.numel() > 1 else values.new_tensor(0.0)
        adv = centred / batch_std if batch_std >= eps else torch.zeros_like(centred)
        adv = torch.where(zero_var, torch.zeros_like(adv), adv)
    elif scale == "none":
        adv = torch.where(zero_var, torch.zeros_like(centred), centred)
    else:
        raise ValueError(f"unknown std scale {scale!r}; use 'group', 'batch' or 'none'")
    groups, inverse = torch.unique(group, return_inverse=True)
    zero_groups = torch.zeros(groups.shape[0], dtype=torch.bool).index_put_((inverse,), zero_var)
    return adv.float(), float(zero_groups.float().mean()) if groups.numel() else 0.0


def broadcast_to_tokens(per_sample: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Spread a [B] advantage over every real completion token: [B, T], zero on padding."""
    return per_sample[:, None].to(torch.float32) * mask.to(torch.float32)


def check_advantages(advantages: object, *, plugin: str, rollout: Rollout) -> torch.Tensor:
    """Validate a combiner's output; raise PluginError naming the plugin."""
    if not isinstance(advantages, torch.Tensor):
        raise PluginError(f"advantage combiner '{plugin}' returned {type(advantages).__name__}, expected a Tensor")
    shape = tuple(rollout.completion_ids.shape)
    if tuple(advantages.shape) != shape:
        raise PluginError(f"advantage combiner '{plugin}' returned shape {tuple(advantages.shape)}, expected {shape}")
    if not advantages.is_floating_point() or not bool(torch.isfinite(advantages).all()):
        raise PluginError(f"advantage combiner '{plugin}' returned non-float or non-finite advantages")
    if bool((advantages[~rollout.completion_mask] != 0).any()):
        raise PluginError(f"advantage combiner '{plugin}' returned non-zero advantages on padding")
    return advantages.float()


@dataclass
class RewardTerm:
    """One reward's part of an advantage: its key, its weight w_k and its values ([B] or [B, T])."""

    name: str
    weight: float
    values: torch.Tensor


def reward_terms(
    plugin: str,
    rollout: Rollout,
    rewards: dict[str, RewardResult],
    weights: dict[str, float],
    *,
    keep_tokens: Collection[str] = (),
) -> tuple[list[RewardTerm], list[RewardTerm]]:
    """Split a step's rewards into sentence terms [B] and token terms [B, T], zero-weight rewards left out.

    Token-level rewards named in ``keep_tokens`` stay [B, T]; every other reward is reduced to
    one value per completion (token rewards summed, paper Eq. 4). Raises PluginError naming
    ``plugin`` when a reward has no weight or every weight is zero.
    """
    missing = set(rewards) - set(weights)
    if missing:
        raise PluginError(f"advantage combiner '{plugin}': no weight given for rewards {sorted(missing)}")
    sentence: list[RewardTerm] = []
    token: list[RewardTerm] = []
    for name, result in rewards.items():
        weight = float(weights[name])
        if weight == 0.0:  # logged by the loop, but no part of the objective
            continue
        granularity = result.granularity or ("token" if result.values.dim() == 2 else "sentence")
        if granularity == "token" and name in keep_tokens:
            token.append(RewardTerm(name, weight, result.values.float()))
        else:
            sentence.append(RewardTerm(name, weight, result.to_sentence(rollout.completion_mask).double()))  # Eq. 4
    if not sentence and not token:
        raise PluginError(f"advantage combiner '{plugin}': every reward has weight 0; nothing to optimise")
    return sentence, token


def weighted_sum(terms: list[RewardTerm]) -> torch.Tensor:
    """Eq. 2: R_i = sum_k w_k r_k(o_i) (or per token, for token terms)."""
    return torch.stack([t.weight * t.values for t in terms]).sum(dim=0)


SentenceMode = Literal["sum_then_normalize", "normalize_then_sum"]


def sentence_advantage(
    terms: list[RewardTerm], group: torch.Tensor, *, scale: StdScale = "group", mode: SentenceMode = "sum_then_normalize",
    eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The group-relative advantage of weighted sentence rewards, [B] float32, and its metrics.

    ``sum_then_normalize``: Eq. 2, then Eq. 8 on the sum. ``normalize_then_sum``: Eq. 8 on each
    reward, then their weighted sum, A_i = sum_k w_k (r_k(o_i) - mean_G r_k) / sigma_k. A group
    whose rewards are all equal gets zero (never NaN); ``zero_var_group_frac`` is the share of
    such groups (1.0 when there is no sentence term at all), with a per-reward share
    ``zero_var_group_frac/<name>`` under ``normalize_then_sum``.
    """
    b = group.shape[0]
    if not terms:
        return torch.zeros(b), {"zero_var_group_frac": 1.0}
    metrics: dict[str, float] = {}
    if mode == "sum_then_normalize":
        adv, zero_frac = group_normalize(weighted_sum(terms), group, scale=scale, eps=eps)  # Eq. 2, Eq. 8
        metrics["zero_var_group_frac"] = zero_frac
        return adv.float(), metrics
    if mode != "normalize_then_sum":
        raise ValueError(f"unknown mode {mode!r}; use 'sum_then_normalize' or 'normalize_then_sum'")
    adv = torch.zeros(b, dtype=torch.float64)
    flat = torch.ones(b, dtype=torch.bool)  # samples whose every reward is flat in their group
    for term in terms:
        norm, frac = group_normalize(term.values, group, scale=scale, eps=eps)  # Eq. 8 per reward
        adv = adv + term.weight * norm.double()
        flat &= group_std(term.values.double(), group) < eps
        metrics[f"zero_var_group_frac/{term.name}"] = frac
    groups, inverse = torch.unique(group, return_inverse=True)
    # a group is flat only if all of its samples are (they agree by construction)
    group_flat = torch.ones(groups.shape[0], dtype=torch.bool).index_put_((inverse,), flat)
    metrics["zero_var_group_frac"] = float(group_flat.float().mean()) if groups.numel() else 0.0
    return adv.float(), metrics
