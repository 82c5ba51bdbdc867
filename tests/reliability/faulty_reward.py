"""A reward plugin with a bug: its N-th ``score`` call raises when ``FAULTY_REWARD_AT=N`` is set.

Registered through ``RLGEN_PLUGINS=faulty_reward`` (this folder on the path), the way a user's
own plugin module is; unset the variable and it is the fixed plugin. Each step scores once, so
N is the step it fails at.
"""

from __future__ import annotations

import os

import torch

import rlgen


class FaultyLength(rlgen.RewardProvider):
    name = "test.faulty"
    description = "completion length in tokens, with a bug at the N-th call (FAULTY_REWARD_AT=N)"

    def __init__(self, params=None) -> None:
        super().__init__(params)
        self.calls = 0

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        self.calls += 1
        if os.environ.get("FAULTY_REWARD_AT") == str(self.calls):
            raise ValueError(f"no length table entry for call {self.calls}")
        return rlgen.RewardResult(rollout.completion_mask.sum(1).to(torch.float32))


@rlgen.hookimpl
def rlgen_reward_providers():
    return [FaultyLength]
