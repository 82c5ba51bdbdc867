"""relate.claims: relate.correctness's rule checker at token level (the penalty on the unsupported claim's words)."""

from __future__ import annotations

import torch

import rlgen
from rlgen.reward import check_reward_result
from rlgen_plugins.models import load_tokenizer
from rlgen_relate.rewards import ClaimsReward, CorrectnessReward

FACTS = {"bid_word": "transmission repair",
         "selling_points": ["Free transmission diagnostic", "Rebuilds from $1,200", "Free towing within 15 miles"]}


def score(texts, params=None):
    tok = load_tokenizer("builtin:tiny-llama", padding_side="right")
    rollout = rlgen.Rollout.from_texts(tok, texts, list(range(len(texts))), [FACTS] * len(texts))
    provider = ClaimsReward(ClaimsReward.Params(**(params or {})))
    return rollout, check_reward_result(provider.score(rollout), plugin=provider.name, granularity="token", rollout=rollout)


def penalised_words(rollout, values, row):
    """The text of the tokens that carry a penalty, split on the characters no such token covers."""
    text = rollout.texts[row]
    covered = [False] * len(text)
    for (s, e), v in zip(rollout.token_offsets[row].tolist(), values[row].tolist()):
        if v:
            covered[s:e] = [True] * (e - s)
    return "".join(ch if c else " " for ch, c in zip(text, covered)).split()


def test_penalty_sits_on_the_unsupported_claims_only():
    ads = ["Title: Transmission Repair\nDescription: Free transmission repair. Rebuilds from $900. Free towing.",
           "Title: Transmission Repair\nDescription: Free transmission diagnostic. Rebuilds from $1,200."]
    rollout, res = score(ads, {"penalty": 0.5})
    assert penalised_words(rollout, res.values, 0) == ["Free", "transmission", "repair", "$900"]
    assert set(res.values[0].unique().tolist()) == {0.0, -0.5}
    assert not res.values[1].any()
    assert res.details[0]["unsupported"] == [{"kind": "price", "text": "$900"}, {"kind": "offer", "text": "Free transmission repair"}]
    assert res.metrics["unsupported_rate"] == 0.5


def test_same_verdicts_as_the_sentence_level_reward():
    ads = ["Save 30% on rebuilds", "Free towing within 15 miles", "Free oil change with every rebuild"]
    _, res = score(ads)
    sentence = CorrectnessReward().score(rlgen.Rollout.from_texts(
        load_tokenizer("builtin:tiny-llama", padding_side="right"), ads, [0, 1, 2], [FACTS] * 3))
    assert [bool(row.any()) for row in res.values] == [v < 0 for v in sentence.values.tolist()] == [True, False, True]
    assert torch.equal(res.values.new_tensor([len(d["unsupported"]) for d in res.details]) > 0, res.values.any(1))
