"""Shared pieces of advantage estimation that more than one combiner needs.

Group-relative normalisation (paper Eq. 8) is the part every GRPO-family combiner shares, so
it lives here once instead of inside each plugin.
"""

from __future__ import annotations

from typing import Literal

import torch

from .errors import PluginError
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
