"""``length``: sentence-level target length, for configs that use no task-specific length reward.

``reward_inside`` for a completion whose length lies in ``[min, max]``; outside, ``-penalty_per_unit`` per unit of
distance to the interval, capped at ``max_penalty`` so that one runaway sample is not an outlier of the group.
Length is counted in completion tokens that produce text (EOS and other invisible tokens do not make a text
longer) or in characters of the stripped text (for scripts where a token count says more about the tokenizer
than about the text).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

import rlgen


class LengthReward(rlgen.RewardProvider):
    name = "length"
    description = "Positive inside a target length interval (tokens or characters), a penalty growing with the distance outside."
    granularity = "sentence"

    class Params(rlgen.Params):
        unit: Literal["tokens", "chars"] = Field("tokens", description="count visible completion tokens or characters")
        min: int = Field(8, ge=0, description="shortest length inside the interval")
        max: int | None = Field(48, ge=0, description="longest length inside the interval (None: no upper limit)")
        reward_inside: float = Field(1.0, description="reward of a length inside the interval")
        penalty_per_unit: float = Field(0.05, ge=0, description="penalty per token (or character) outside the interval")
        max_penalty: float = Field(1.0, ge=0, description="cap of the penalty")

        @model_validator(mode="after")
        def _ordered(self) -> "LengthReward.Params":
            if self.max is not None and self.max < self.min:
                raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
            return self

    def lengths(self, rollout: rlgen.Rollout) -> torch.Tensor:
        """Length of every completion [B] in the configured unit."""
        if self.params.unit == "chars":
            return torch.tensor([len(t.strip()) for t in rollout.texts], dtype=torch.float32)
        visible = rollout.completion_mask
        if rollout.token_offsets is not None:
            visible = visible & (rollout.token_offsets[..., 1] > rollout.token_offsets[..., 0])
        return visible.sum(dim=1).float()

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        p = self.params
        length = self.lengths(rollout)
        upper = float("inf") if p.max is None else float(p.max)
        distance = (p.min - length).clamp(min=0) + (length - upper).clamp(min=0)
        penalty = (p.penalty_per_unit * distance).clamp(max=p.max_penalty)
        values = torch.where(distance > 0, -penalty, torch.tensor(float(p.reward_inside))) + 0.0  # no -0.0
        inside = (distance == 0).float()
        metrics = {
            "inside_fraction": float(inside.mean()) if len(length) else 0.0,
            "mean_length": float(length.mean()) if len(length) else 0.0,
        }
        details = [{"unit": p.unit, "length": int(n)} for n in length.tolist()]
        return rlgen.RewardResult(values=values, details=details, metrics=metrics)
