"""Generic bundled rewards, for any text task and any config that uses no task-specific plugin.

``repetition`` (token level): a penalty on the tokens of a word or phrase the completion repeats ("Lease Lease").
``length`` (sentence level): positive inside a target length interval, a growing penalty outside.
"""

from __future__ import annotations

import rlgen

from .length import LengthReward
from .repetition import RepetitionReward


@rlgen.hookimpl
def rlgen_reward_providers() -> list[type[rlgen.RewardProvider]]:
    return [RepetitionReward, LengthReward]


__all__ = ["LengthReward", "RepetitionReward", "rlgen_reward_providers"]
