"""length: reward_inside inside [min, max], a capped penalty growing with the distance outside; tokens or chars."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rlgen
from rlgen.reward import check_reward_result
from rlgen_plugins.models import load_tokenizer
from rlgen_plugins.rewards import LengthReward


@pytest.fixture(scope="module")
def tok(tiny_llama: Path):
    return load_tokenizer(tiny_llama, padding_side="right")


def score(params, rollout):
    provider = LengthReward(LengthReward.Params(**params))
    return check_reward_result(provider.score(rollout), plugin=provider.name, granularity="sentence", rollout=rollout)


def test_token_interval_and_growing_penalty(tok):
    texts = ["book now", "book a free quote online today", "a " * 40]
    r = rlgen.Rollout.from_texts(tok, texts, [0, 1, 2])
    n = LengthReward().lengths(r)
    visible = [sum(1 for a, b in r.token_offsets[i].tolist() if b > a) for i in range(3)]
    assert n.tolist() == visible  # tokens that produce text; padding does not count
    lo, hi = int(n[0]) + 2, int(n[1])
    res = score({"min": lo, "max": hi, "penalty_per_unit": 0.1, "max_penalty": 100.0}, r)
    assert res.values[0].item() == pytest.approx(-0.2)  # two tokens short
    assert res.values[1].item() == 1.0  # exactly at max: inside
    assert res.values[2].item() == pytest.approx(-0.1 * (n[2].item() - hi))
    assert res.metrics["inside_fraction"] == pytest.approx(1 / 3)
    capped = score({"min": lo, "max": hi, "penalty_per_unit": 0.1, "max_penalty": 0.5}, r)
    assert capped.values[2].item() == -0.5 and capped.values[0].item() == pytest.approx(-0.2)
    assert score({"min": 0, "max": None}, r).values.eq(1.0).all()


def test_character_unit_for_cjk(tok):
    texts = ["  立即预约上门服务  ", "标题：紧急维修，二十四小时上门服务，立即预约"]
    r = rlgen.Rollout.from_texts(tok, texts, [0, 1])
    res = score({"unit": "chars", "min": 8, "max": 12, "penalty_per_unit": 0.02}, r)
    assert [d["length"] for d in res.details] == [8, len(texts[1])]
    assert res.values[0].item() == 1.0 and res.values[1].item() == pytest.approx(-0.02 * (len(texts[1]) - 12))


def test_no_negative_zero_and_params_checked(tok):
    r = rlgen.Rollout.from_texts(tok, ["hi"], [0])
    v = score({"min": 10, "penalty_per_unit": 0.0}, r).values
    assert v.item() == 0.0 and not torch.signbit(v).any()
    with pytest.raises(Exception, match="max"):
        LengthReward.Params(min=5, max=3)


def test_registered_and_sentence_level():
    assert rlgen.registry().rewards["length"] is LengthReward
    assert LengthReward.granularity == "sentence"
