"""Dynamic sampling's choice of groups (``data.oversample``): the most spread weighted rewards, in rollout order."""

from __future__ import annotations

import pytest
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


def test_per_reward_rank_keeps_the_group_that_differs_in_a_reward_with_a_small_range():
    """A rule reward of range 10 fails one completion in group 0; a business reward of range 0.1 differs only
    in group 1. The weighted total keeps group 0; per reward (each spread in units of the batch's) keeps group 1,
    where the business reward varies as much as it varies at all."""
    r = _rollout(["a"] * 6, [0, 0, 1, 1, 2, 2])
    rule = rlgen.RewardResult(values=torch.tensor([0.0, -10.0, 0.0, 0.0, 0.0, 0.0]), granularity="sentence")
    business = rlgen.RewardResult(values=torch.tensor([0.05, 0.05, 0.0, 0.1, 0.05, 0.05]), granularity="sentence")
    rewards, weights = {"rule": rule, "business": business}, {"rule": 1.0, "business": 2.0}
    assert most_spread_groups(r, rewards, weights, keep=1)[0] == [0, 1]
    rows, metrics = most_spread_groups(r, rewards, weights, keep=1, rank="per_reward")
    assert rows == [2, 3]
    # group 1: business std 0.05 over the batch's 0.05 / sqrt(3), times 2; group 0: rule std 5 over the batch's 3.73
    assert metrics["kept_spread_mean"] == pytest.approx(2 * 3 ** 0.5, rel=1e-4)
    assert metrics["dropped_spread_mean"] == pytest.approx((5 / 3.7268) / 2, rel=1e-4)
    # a reward that is the same everywhere tells no group apart
    flat = rlgen.RewardResult(values=torch.ones(6), granularity="sentence")
    assert most_spread_groups(r, {**rewards, "flat": flat}, {**weights, "flat": 5.0}, keep=1, rank="per_reward")[0] == [2, 3]
