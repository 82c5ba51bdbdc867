"""Dynamic sampling's choice of groups (``data.oversample``): the most spread weighted rewards, in rollout order."""

from __future__ import annotations

import torch

import rlgen
from rlgen.group_selection import most_spread_groups, weighted_total

from .toy_plugins import CharTokenizer


def _rollout(texts: list[str], group: list[int]) -> rlgen.Rollout:
    return rlgen.Rollout.from_texts(CharTokenizer(), texts, group=group)


def test_weighted_total_sums_token_rewards_per_sample_and_weighs_each_reward():
    r = _rollout(["ab", "abc"], [0, 0])
    sentence = rlgen.RewardResult(values=torch.tensor([1.0, 2.0]), granularity="sentence")
    token = rlgen.RewardResult(values=torch.where(r.completion_mask, -1.0, 0.0), granularity="token")
    total = weighted_total(r, {"s": sentence, "t": token}, {"s": 2.0, "t": 0.5})
    assert total.tolist() == [2.0 - 1.0, 4.0 - 1.5]


def test_the_most_spread_groups_are_kept_in_rollout_order():
    # groups 0..3 of two samples; spreads (population std) 0, 2, 0.5, 2
    r = _rollout(["a"] * 8, [0, 0, 1, 1, 2, 2, 3, 3])
    values = torch.tensor([1.0, 1.0, 0.0, 4.0, 1.0, 2.0, 5.0, 1.0])
    rows, metrics = most_spread_groups(r, {"s": rlgen.RewardResult(values=values, granularity="sentence")},
                                       {"s": 1.0}, keep=2)
    assert rows == [2, 3, 6, 7]
    assert metrics == {"groups_sampled": 4.0, "kept_spread_mean": 2.0, "dropped_spread_mean": 0.25}
    # a tie goes to the group sampled first; keeping every group keeps every row
    rows, _ = most_spread_groups(r, {"s": rlgen.RewardResult(values=values, granularity="sentence")}, {"s": 1.0}, keep=1)
    assert rows == [2, 3]
    rows, metrics = most_spread_groups(r, {"s": rlgen.RewardResult(values=values, granularity="sentence")}, {"s": 1.0}, keep=4)
    assert rows == list(range(8)) and metrics["dropped_spread_mean"] == 0.0


def test_a_token_penalty_alone_can_make_a_group_spread():
    r = _rollout(["ab", "ab", "cd", "cd"], [0, 0, 1, 1])
    flat = rlgen.RewardResult(values=torch.zeros(4), granularity="sentence")
    token = torch.zeros(r.completion_ids.shape)
    token[2, 0] = -1.0  # one token of one sample of group 1
    rows, _ = most_spread_groups(r, {"s": flat, "t": rlgen.RewardResult(values=token, granularity="token")},
                                 {"s": 1.0, "t": 1.0}, keep=1)
    assert rows == [2, 3]
