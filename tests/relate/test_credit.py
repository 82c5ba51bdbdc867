"""relate.credit: Eq. 7, 8, 9 on hand-computed tensors, demotion, and equality with grpo."""

from __future__ import annotations

import math

import pytest
import torch

import rlgen
from rlgen.advantage import check_advantages
from rlgen.reward import RewardResult, check_reward_result
from rlgen_plugins.advantages import GRPOAdvantage
from rlgen_plugins.models import load_tokenizer
from rlgen_relate.credit import CreditAssignment
from rlgen_relate.rewards import LengthReward, RiskReward

MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)


def toy_rollout(mask=MASK, groups=(0, 0, 1, 1)):
    b, t = mask.shape
    return rlgen.Rollout(
        texts=["x"] * b,
        completion_ids=torch.zeros(b, t, dtype=torch.long),
        completion_mask=mask,
        group=torch.tensor(groups),
    )


def rewards():
    return {
        "s": RewardResult(torch.tensor([1.0, 3.0, 2.0, 2.0]), granularity="sentence"),
        "t": RewardResult(
            torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, 0.0], [-1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]), granularity="token"
        ),
    }


def test_eq7_eq8_eq9_hand_computed():
    r = toy_rollout()
    c = CreditAssignment(CreditAssignment.Params(alpha=2.0))
    adv = check_advantages(c.combine(r, rewards(), {"s": 2.0, "t": 0.5}), plugin=c.name, rollout=r)
    # Eq. 8: R = 2*[1, 3, 2, 2] = [2, 6, 4, 4]; group 0: (R - 4) / sqrt(8) = -+1/sqrt(2); group 1 is flat -> 0
    a = 1 / math.sqrt(2)
    # Eq. 7: alpha * w * r_tok = 2 * 0.5 * r_tok, only where the token reward fired; Eq. 9: the sum, 0 on padding
    expected = torch.tensor([
        [-a, -a - 1, -a],
        [a, a, 0.0],
        [-1.0, -1.0, 0.0],
        [0.0, 0.0, 0.0],
    ])
    assert torch.allclose(adv, expected, atol=1e-6)
    m = c.metrics()
    assert m["zero_var_group_frac"] == 0.5
    assert m["token_nonzero_frac"] == pytest.approx(3 / 9)
    assert m["token_min"] == -1.0


def test_demote_uses_the_sum_at_sentence_level():
    r = toy_rollout()
    c = CreditAssignment(CreditAssignment.Params(alpha=2.0, demote=["t"]))
    adv = c.combine(r, rewards(), {"s": 2.0, "t": 0.5})
    # Eq. 4 then Eq. 8: R = 2*s + 0.5*sum_t(t) = [1.5, 6, 3, 4]; both groups normalise to -+1/sqrt(2)
    a = 1 / math.sqrt(2)
    expected = torch.tensor([[-a, -a, -a], [a, a, 0], [-a, -a, -a], [a, 0, 0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert c.metrics()["token_nonzero_frac"] == 0.0


def test_token_only_rewards_are_not_normalised():
    r = toy_rollout()
    c = CreditAssignment(CreditAssignment.Params(alpha=0.5))
    adv = c.combine(r, {"t": rewards()["t"]}, {"t": 3.0})
    assert torch.equal(adv, 1.5 * rewards()["t"].values)
    assert c.metrics()["zero_var_group_frac"] == 1.0


def test_padding_stays_zero_even_if_a_token_reward_is_not():
    r = toy_rollout()
    dirty = RewardResult(torch.full((4, 3), -1.0), granularity="token")  # not validated by the loop here
    adv = CreditAssignment().combine(r, {"t": dirty}, {"t": 1.0})
    assert not adv[~MASK].any()


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("mode", ["sum_then_normalize", "normalize_then_sum"])
def test_equals_grpo_without_token_rewards(scale, mode):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(12, 7, generator=g) > 0.2
    mask[:, 0] = True
    r = toy_rollout(mask, groups=[0] * 4 + [1] * 4 + [2] * 4)
    rew = {
        "a": RewardResult(torch.randn(12, generator=g), granularity="sentence"),
        "b": RewardResult(torch.randint(0, 2, (12,), generator=g).float(), granularity="sentence"),
        "tok": RewardResult(-(torch.rand(12, 7, generator=g) > 0.7).float() * mask, granularity="token"),
    }
    rew["a"].values[8:] = 1.0  # a flat group for the zero-variance path
    rew["b"].values[8:] = 0.0
    weights = {"a": 1.0, "b": 0.5, "tok": 2.0}
    grpo = GRPOAdvantage(GRPOAdvantage.Params(scale=scale, mode=mode))
    credit = CreditAssignment(CreditAssignment.Params(scale=scale, mode=mode, alpha=3.0, demote=["tok"]))
    sentence_only = {k: v for k, v in rew.items() if k != "tok"}
    w = {k: weights[k] for k in sentence_only}
    plain = CreditAssignment(CreditAssignment.Params(scale=scale, mode=mode, alpha=3.0))
    assert torch.equal(plain.combine(r, sentence_only, w), grpo.combine(r, sentence_only, w))
    assert plain.metrics()["zero_var_group_frac"] == grpo.metrics()["zero_var_group_frac"]
    # with the token reward demoted (ablation Models 3/4) it is grpo on the same rewards, token ones summed (Eq. 4)
    assert torch.equal(credit.combine(r, rew, weights), grpo.combine(r, rew, weights))


def test_errors_name_the_plugin():
    r = toy_rollout()
    with pytest.raises(rlgen.PluginError, match=r"'relate\.credit': params\.demote names \['risk'\]"):
        CreditAssignment(CreditAssignment.Params(demote=["risk"])).combine(r, rewards(), {"s": 1.0, "t": 1.0})
    with pytest.raises(rlgen.PluginError, match=r"no weight given for rewards \['t'\]"):
        CreditAssignment().combine(r, rewards(), {"s": 1.0})
    with pytest.raises(rlgen.PluginError, match="every reward has weight 0"):
        CreditAssignment().combine(r, rewards(), {"s": 0.0, "t": 0.0})
    with pytest.raises(Exception, match="alpha"):
        CreditAssignment.Params(alpha=-1)


def test_with_real_providers_the_token_part_sits_on_the_risky_tokens():
    tok = load_tokenizer("builtin:minilm-l6", padding_side="right")
    texts = ["a guaranteed cure for tea lovers", "fresh tea for tea lovers", "calm green tea", "calm green tea"]
    r = rlgen.Rollout.from_texts(tok, texts, [0, 0, 1, 1])
    risk = RiskReward(RiskReward.Params(penalty=1.0))
    length = LengthReward(LengthReward.Params(unit="tokens", tokens={"min": 4, "max": 10}))

    res = {
        "risk": check_reward_result(risk.score(r), plugin="relate.risk", granularity="token", rollout=r),
        "length": check_reward_result(length.score(r), plugin="relate.length", granularity="sentence", rollout=r),
    }
    adv = CreditAssignment(CreditAssignment.Params(alpha=0.5)).combine(r, res, {"risk": 1.0, "length": 1.0})
    # group 0: both have length 6 inside [4, 10] -> flat sentence advantage; only "guaranteed cure" is pushed down
    assert torch.equal(adv[0], torch.tensor([0, -0.5, -0.5, 0, 0, 0]))
    assert not adv[1].any()
    # group 1: length 3 is below the interval for both -> flat too
    assert not adv[2:].any()


def test_registered():
    assert rlgen.registry().advantages["relate.credit"] is CreditAssignment
