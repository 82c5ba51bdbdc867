"""Dynamic sampling: which of an oversampled step's groups the trainer learns from.

GRPO learns only where a group's completions differ: a group whose rewards are all alike gets a zero
group-relative advantage (Eq. 8) and costs a forward and backward pass for nothing. Once a policy
passes most checks, most groups are alike, and the few failing completions a step holds are all it
learns from. DAPO samples more prompts and drops groups whose outcomes all agree; with rewards on a
continuous scale "agree" becomes "spread little", so ``data.oversample: k`` samples ``k`` times the
step's prompts and the loop keeps the ``prompts_per_step`` groups whose weighted reward spreads most.
Sampling costs ``k`` times as much; the update costs what it did.

Ranked by the weighted total (``oversample_rank: total``), a group where one completion breaks a rule
with a large penalty outranks one whose completions all pass and differ only in a business reward with
a small range (CTCVR): the ranking then drops what that reward is learnt from. ``per_reward`` ranks by
each reward's spread in the group measured in units of its spread over the whole sampled batch,
weighted and summed, so a reward counts by how much the group's completions differ in it relative to
how much they can differ at all.
"""

from __future__ import annotations

import torch

from .reward import RewardResult
from .rollout import Rollout


def weighted_total(rollout: Rollout, rewards: dict[str, RewardResult], weights: dict[str, float]) -> torch.Tensor:
    """Each sample's weighted reward [B], Eq. 2, with token-level rewards summed over its tokens (Eq. 4)."""
    total = torch.zeros(rollout.batch_size)
    for key, result in rewards.items():
        total += weights[key] * result.to_sentence(rollout.completion_mask)
    return total


def group_spreads(
    rollout: Rollout, rewards: dict[str, RewardResult], weights: dict[str, float], members: dict[int, list[int]],
    rank: str = "total",
) -> dict[int, float]:
    """Each group's spread: the standard deviation of its weighted reward (``total``), or the weighted sum
    over rewards of the group's standard deviation of that reward over the batch's (``per_reward``)."""
    if rank == "total":
        total = weighted_total(rollout, rewards, weights)
        return {g: float(total[rows].std(unbiased=False)) for g, rows in members.items()}
    spread = dict.fromkeys(members, 0.0)
    for key, result in rewards.items():
        values = result.to_sentence(rollout.completion_mask)
        batch = float(values.std(unbiased=False))
        if batch <= 1e-8:  # the same for every completion: it tells no group apart
            continue
        for g, rows in members.items():
            spread[g] += abs(weights[key]) * float(values[rows].std(unbiased=False)) / batch
    return spread


def most_spread_groups(
    rollout: Rollout, rewards: dict[str, RewardResult], weights: dict[str, float], keep: int, rank: str = "total"
) -> tuple[list[int], dict[str, float]]:
    """Rows of the ``keep`` groups whose rewards spread most (:func:`group_spreads`).

    Groups are ranked by that spread, ties by their order in the rollout; the rows come back in
    rollout order, so the kept batch is laid out as a sampled one. Returns the rows and metrics: the
    mean spread of the kept and of the dropped groups.
    """
    members: dict[int, list[int]] = {}  # group -> its rows, groups in order of first appearance
    for row, g in enumerate(rollout.group.tolist()):
        members.setdefault(g, []).append(row)
    groups = list(members)
    spread = group_spreads(rollout, rewards, weights, members, rank)
    ranked = sorted(groups, key=lambda g: -spread[g])  # stable: ties keep rollout order
    kept = set(ranked[:keep])
    rows = sorted(i for g in kept for i in members[g])
    dropped = [spread[g] for g in groups if g not in kept]
    metrics = {
        "groups_sampled": float(len(groups)),
        "kept_spread_mean": sum(spread[g] for g in kept) / max(len(kept), 1),
        "dropped_spread_mean": sum(dropped) / len(dropped) if dropped else 0.0,
    }
    return rows, metrics
