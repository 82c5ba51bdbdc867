"""Means and 95% CIs over training seeds and eval contexts, for configurations trained at several seeds.

One run says little when ten completions per step drive a dozen updates: a second seed can reorder the
configurations. A value is therefore a matrix ``[seeds, contexts]`` (each trained policy's per-context metric on
the same eval contexts), and its interval comes from a two-level bootstrap: every resample draws the seeds with
replacement and the contexts with replacement, and averages. The draws depend only on the matrix's shape and the
bootstrap seed, so two configurations of the same shape see the same draws; a difference between them is taken
on the matrix of per-(seed, context) differences, paired by training seed and by context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from rlgen import BOOTSTRAP_SAMPLES


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap confidence interval."""

    mean: float
    ci_low: float
    ci_high: float

    @property
    def significant(self) -> bool:
        """The interval excludes zero (meaningful for a difference)."""
        return self.ci_low > 0 or self.ci_high < 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def interval(values: torch.Tensor, *, seed: int = 0, level: float = 0.95,
             samples: int = BOOTSTRAP_SAMPLES) -> Interval:
    """Mean of ``values`` (``[seeds, contexts]``) over both, with a CI from resampling seeds and contexts."""
    if values.dim() != 2 or values.numel() == 0:
        raise ValueError(f"expected a non-empty [seeds, contexts] matrix, got shape {tuple(values.shape)}")
    values = values.to(torch.float64)
    n_seeds, n_contexts = values.shape
    gen = torch.Generator().manual_seed(seed)
    seed_idx = torch.randint(n_seeds, (samples, n_seeds), generator=gen)
    ctx_idx = torch.randint(n_contexts, (samples, n_contexts), generator=gen)
    boots = values[seed_idx[:, :, None], ctx_idx[:, None, :]].mean(dim=(1, 2))
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    return Interval(float(values.mean()), float(boots.quantile(lo_q)), float(boots.quantile(hi_q)))


def paired_interval(a: torch.Tensor, b: torch.Tensor, *, seed: int = 0, level: float = 0.95) -> Interval:
    """``a - b`` with a CI, where row i of both comes from training seed i and column j from eval context j."""
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same [seeds, contexts] shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return interval(a.to(torch.float64) - b.to(torch.float64), seed=seed, level=level)
