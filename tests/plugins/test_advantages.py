"""The sentence-level combiners ``grpo`` and ``rloo`` against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

import rlgen
from rlgen.advantage import check_advantages
from rlgen.config import validate_params
from rlgen_plugins.advantages import GRPOAdvantage, RLOOAdvantage

R2 = 1 / math.sqrt(2)  # (x - mean) / std for a group of two different values


def rollout(group: list[int], lengths: list[int], t: int | None = None) -> rlgen.Rollout:
    t = t or max(lengths)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    return rlgen.Rollout(
        texts=["x"] * len(group),
        completion_ids=torch.zeros(len(group), t, dtype=torch.long),
        completion_mask=mask,
        group=torch.tensor(group),
    )


def sentence(values: list[float]) -> rlgen.RewardResult:
    return rlgen.RewardResult(torch.tensor(values, dtype=torch.float32), granularity="sentence")


def per_sample(adv: torch.Tensor, ro: rlgen.Rollout) -> list[float]:
    """The advantage of each sample, after checking it is constant on its tokens and zero on padding."""
    check_advantages(adv, plugin="test", rollout=ro)
    out = []
    for i in range(ro.batch_size):
        vals = adv[i][ro.completion_mask[i]]
        assert torch.allclose(vals, vals[0].expand_as(vals)), "a sentence advantage must be the same on every token"
        out.append(float(vals[0]))
    return out


def test_grpo_group_std_zero_variance_group_and_padding() -> None:
    ro = rollout([0, 0, 0, 1, 1, 1], [2, 3, 1, 3, 2, 1])
    comb = GRPOAdvantage()
    adv = comb.combine(ro, {"r": sentence([1, 2, 3, 5, 5, 5])}, {"r": 1.0})
    expected = torch.tensor(
        [[-1, -1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.float32
    )
    torch.testing.assert_close(adv, expected)
    assert comb.metrics()["zero_var_group_frac"] == pytest.approx(0.5)
    assert not torch.isnan(adv).any()


def test_grpo_sums_token_rewards_then_weights() -> None:
    ro = rollout([0, 0, 1, 1], [2, 3, 1, 3])
    token = rlgen.RewardResult(
        torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), granularity="token"
    )
    # Eq. 4: token sums [2, 0, 2, 3]; Eq. 2: + 2 x [0, 1, 0, 0] = [2, 2, 2, 3]
    comb = GRPOAdvantage()
    adv = comb.combine(ro, {"tok": token, "s": sentence([0, 1, 0, 0])}, {"tok": 1.0, "s": 2.0})
    assert per_sample(adv, ro) == pytest.approx([0.0, 0.0, -R2, R2], abs=1e-6)
    assert comb.metrics()["zero_var_group_frac"] == pytest.approx(0.5)


def test_grpo_batch_and_none_scaling() -> None:
    ro = rollout([0, 0, 0, 1, 1, 1], [1] * 6)
    values = {"r": sentence([1, 2, 3, 5, 5, 5])}
    none = GRPOAdvantage(GRPOAdvantage.Params(scale="none")).combine(ro, values, {"r": 1.0})
    assert per_sample(none, ro) == pytest.approx([-1, 0, 1, 0, 0, 0])
    batch = GRPOAdvantage(GRPOAdvantage.Params(scale="batch")).combine(ro, values, {"r": 1.0})
    batch_std = math.sqrt(15.5 / 5)  # unbiased std of [1, 2, 3, 5, 5, 5]
    assert per_sample(batch, ro) == pytest.approx([-1 / batch_std, 0, 1 / batch_std, 0, 0, 0], abs=1e-6)


def test_grpo_normalize_then_sum_differs_from_sum_then_normalize() -> None:
    ro = rollout([0, 0, 1, 1], [2, 2, 2, 2])
    rewards = {"a": sentence([1, 3, 0, 0]), "b": sentence([10, 10, 1, 2])}
    weights = {"a": 1.0, "b": 0.5}
    per = GRPOAdvantage(GRPOAdvantage.Params(mode="normalize_then_sum"))
    adv = per.combine(ro, rewards, weights)
    # a normalised: [-R2, R2, 0, 0]; b normalised: [0, 0, -R2, R2] weighted by 0.5
    assert per_sample(adv, ro) == pytest.approx([-R2, R2, -0.5 * R2, 0.5 * R2], abs=1e-6)
    m = per.metrics()
    assert m["zero_var_group_frac"] == 0.0
    assert m["zero_var_group_frac/a"] == pytest.approx(0.5) and m["zero_var_group_frac/b"] == pytest.approx(0.5)
    joint = GRPOAdvantage().combine(ro, rewards, weights)  # R = [6, 8, 0.5, 1]
    assert per_sample(joint, ro) == pytest.approx([-R2, R2, -R2, R2], abs=1e-6)


def test_grpo_normalize_then_sum_counts_groups_flat_in_every_reward() -> None:
    ro = rollout([0, 0, 1, 1], [1, 1, 1, 1])
    comb = GRPOAdvantage(GRPOAdvantage.Params(mode="normalize_then_sum"))
    adv = comb.combine(ro, {"a": sentence([1, 1, 0, 1]), "b": sentence([4, 4, 2, 2])}, {"a": 1.0, "b": 1.0})
    assert per_sample(adv, ro) == pytest.approx([0, 0, -R2, R2], abs=1e-6)
    assert comb.metrics()["zero_var_group_frac"] == pytest.approx(0.5)


def test_grpo_uneven_and_unsorted_groups() -> None:
    ro = rollout([0, 0, 0, 1, 1, 2], [1] * 6)
    comb = GRPOAdvantage()
    adv = comb.combine(ro, {"r": sentence([1, 2, 3, 4, 6, 9])}, {"r": 1.0})
    assert per_sample(adv, ro) == pytest.approx([-1, 0, 1, -R2, R2, 0], abs=1e-6)
    assert comb.metrics()["zero_var_group_frac"] == pytest.approx(1 / 3)  # a group of one has no spread
    ro = rollout([1, 0, 1, 0], [1] * 4)
    adv = GRPOAdvantage().combine(ro, {"r": sentence([1, 5, 3, 7])}, {"r": 1.0})
    assert per_sample(adv, ro) == pytest.approx([-R2, -R2, R2, R2], abs=1e-6)


def test_all_equal_rewards_give_zero_never_nan() -> None:
    ro = rollout([0, 0, 1, 1], [2, 1, 2, 1])
    for comb in (GRPOAdvantage(), GRPOAdvantage(GRPOAdvantage.Params(scale="batch")), RLOOAdvantage()):
        adv = comb.combine(ro, {"r": sentence([3, 3, 3, 3])}, {"r": 1.0})
        assert torch.equal(adv, torch.zeros_like(adv)), comb.name
        assert comb.metrics()["zero_var_group_frac"] == 1.0


def test_rloo_leave_one_out_baseline() -> None:
    ro = rollout([0, 0, 0, 1, 1, 2], [3, 1, 2, 2, 3, 1])
    comb = RLOOAdvantage()
    adv = comb.combine(ro, {"r": sentence([1, 2, 3, 4, 6, 9])}, {"r": 1.0})
    # 1 - (2+3)/2, 2 - (1+3)/2, 3 - (1+2)/2; 4 - 6, 6 - 4; a lone sample has no baseline
    assert per_sample(adv, ro) == pytest.approx([-1.5, 0, 1.5, -2, 2, 0])
    assert comb.metrics()["zero_var_group_frac"] == pytest.approx(1 / 3)
    normed = RLOOAdvantage(RLOOAdvantage.Params(normalize_batch_std=True)).combine(ro, {"r": sentence([1, 2, 3, 4, 6, 9])}, {"r": 1.0})
    std = math.sqrt(12.5 / 5)
    assert per_sample(normed, ro) == pytest.approx([-1.5 / std, 0, 1.5 / std, -2 / std, 2 / std, 0], abs=1e-6)


def test_rloo_weights_and_token_rewards() -> None:
    ro = rollout([0, 0], [2, 2])
    token = rlgen.RewardResult(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), granularity="token")
    adv = RLOOAdvantage().combine(ro, {"t": token, "s": sentence([0, 2])}, {"t": 2.0, "s": 1.0})
    # R = 2 x [2, 1] + [0, 2] = [4, 4]: the two rewards cancel
    assert per_sample(adv, ro) == [0.0, 0.0]


def test_weights_are_checked() -> None:
    ro = rollout([0, 0], [1, 1])
    with pytest.raises(rlgen.PluginError, match="no weight given for rewards \\['b'\\]"):
        GRPOAdvantage().combine(ro, {"a": sentence([0, 1]), "b": sentence([1, 0])}, {"a": 1.0})
    with pytest.raises(rlgen.PluginError, match="weight 0"):
        RLOOAdvantage().combine(ro, {"a": sentence([0, 1])}, {"a": 0.0})
    # a zero-weight reward is logged by the loop but does not move the advantage
    adv = GRPOAdvantage().combine(ro, {"a": sentence([0, 1]), "b": sentence([5, 0])}, {"a": 1.0, "b": 0.0})
    assert per_sample(adv, ro) == pytest.approx([-R2, R2], abs=1e-6)


def test_registered_and_params_validated(registry) -> None:
    assert registry.advantages["grpo"] is GRPOAdvantage and registry.advantages["rloo"] is RLOOAdvantage
    with pytest.raises(rlgen.ConfigError, match="plugin 'grpo'.*scale"):
        validate_params(GRPOAdvantage, {"scale": "std"}, origin="cfg.yaml", key="advantage", name="grpo")
    with pytest.raises(rlgen.ConfigError, match="unknown key 'advantage.params.mode_x'"):
        validate_params(GRPOAdvantage, {"mode_x": 1}, origin="cfg.yaml", key="advantage", name="grpo")
