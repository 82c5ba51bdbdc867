"""The `RewardResult` contract and the check every reward passes through.

A reward declares its granularity once, on its class. Sentence values are [B]; token values
are [B, T] and must be zero where the completion mask is false. A token result reduces to a
sentence result by summing over tokens (paper Eq. 4); the reverse is impossible, which is why
the granularity is declared rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from .errors import PluginError
from .rollout import Rollout

Granularity = Literal["token", "sentence"]
GRANULARITIES: tuple[str, ...] = ("token", "sentence")


@dataclass
class RewardResult:
    """What a reward provider returns for one rollout.

    Args:
        values: FloatTensor, [B] for sentence-level providers, [B, T] for token-level ones.
        details: optional per-sample dicts (matched phrases, failed rules, ...) for logs.
        metrics: optional batch-level numbers (e.g. how many frequent n-grams) that the
            loop logs as ``reward/<name>/<key>``.
        granularity: filled in by the core from the provider's class; providers need not
            set it.
    """

    values: torch.Tensor
    details: list[dict[str, Any]] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    granularity: Granularity | None = None

    def to_sentence(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sentence-level values [B]: token rewards summed over the sample's tokens (Eq. 4)."""
        if self.granularity == "sentence" or self.values.dim() == 1:
            return self.values
        if mask is not None:
            return (self.values * mask.to(self.values.dtype)).sum(dim=1)
        return self.values.sum(dim=1)

    def select(self, rows: list[int]) -> "RewardResult":
        """The values and details of the samples at ``rows``, in that order (as :meth:`Rollout.select`); the
        batch-level ``metrics`` stay those of the batch the reward scored."""
        index = torch.as_tensor(rows, dtype=torch.long)
        details = None if self.details is None else [self.details[i] for i in rows]
        return replace(self, values=self.values[index], details=details)


def check_reward_result(result: Any, *, plugin: str, granularity: str, rollout: Rollout) -> RewardResult:
    """Validate a provider's result against the rollout; return it with granularity set.

    Raises PluginError naming the plugin when the shape, dtype or values are wrong.
    """
    if not isinstance(result, RewardResult):
        raise PluginError(f"reward '{plugin}' returned {type(result).__name__}, expected rlgen.RewardResult")
    values = result.values
    if not isinstance(values, torch.Tensor):
        raise PluginError(f"reward '{plugin}' returned values of type {type(values).__name__}, expected a torch.Tensor")
    if not values.is_floating_point():
        raise PluginError(f"reward '{plugin}' returned {values.dtype} values, expected a floating point tensor")
    b, t = rollout.completion_ids.shape
    if granularity == "sentence":
        if tuple(values.shape) != (b,):
            raise PluginError(f"reward '{plugin}' is sentence-level: values must be [B={b}], got {tuple(values.shape)}")
    elif granularity == "token":
        if tuple(values.shape) != (b, t):
            raise PluginError(
                f"reward '{plugin}' is token-level: values must be [B={b}, T={t}], got {tuple(values.shape)}"
            )
        if bool((values[~rollout.completion_mask.to(values.device)] != 0).any()):
            raise PluginError(f"reward '{plugin}' is token-level: values must be zero on padding (mask false)")
    else:
        raise PluginError(f"reward '{plugin}' declares granularity {granularity!r}; use one of {GRANULARITIES}")
    if not bool(torch.isfinite(values).all()):
        raise PluginError(f"reward '{plugin}' returned non-finite values (NaN or inf)")
    if result.details is not None and len(result.details) != b:
        raise PluginError(f"reward '{plugin}' returned {len(result.details)} details for {b} samples")
    return replace(result, values=values.float(), granularity=granularity)  # type: ignore[arg-type]
