"""relate.length: interval in tokens (or CJK characters), growing capped penalty outside, per-field limits."""

from __future__ import annotations

import pytest
import torch

import rlgen
from rlgen.reward import check_reward_result
from rlgen_plugins.models import load_tokenizer
from rlgen_relate.rewards import LengthReward


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("builtin:minilm-l6", padding_side="right")


def values(provider, tok, texts):
    r = rlgen.Rollout.from_texts(tok, texts, list(range(len(texts))))
    res = check_reward_result(provider.score(r), plugin=provider.name, granularity="sentence", rollout=r)
    return res.values.tolist(), res


def test_token_interval_and_growing_penalty(tok):
    p = LengthReward(LengthReward.Params(unit="tokens", tokens={"min": 3, "max": 5}, penalty_per_token=0.25, max_penalty=0.6))
    # WordPiece: one token per word here
    texts = ["one two three", "one two three four five", "one", "one two", "a b c d e f", "a b c d e f g h i j"]
    vals, res = values(p, tok, texts)
    assert vals == pytest.approx([1.0, 1.0, -0.5, -0.25, -0.25, -0.6])  # 2 short, 1 short, 1 long, capped
    assert [d["length"] for d in res.details] == [3, 5, 1, 2, 6, 10]
    assert res.metrics["inside_fraction"] == pytest.approx(2 / 6)


def test_invisible_tokens_do_not_count(tok):
    r = rlgen.Rollout.from_texts(tok, ["one two three"], [0])
    # append an EOS-like token with an empty span, as a sampler does
    r = rlgen.Rollout(
        texts=r.texts,
        completion_ids=torch.cat([r.completion_ids, torch.tensor([[102]])], dim=1),
        completion_mask=torch.ones(1, 4, dtype=torch.bool),
        group=r.group,
        token_offsets=torch.cat([r.token_offsets, torch.zeros(1, 1, 2, dtype=torch.long)], dim=1),
    )
    p = LengthReward(LengthReward.Params(unit="tokens", tokens={"min": 0, "max": 3}))
    assert p.score(r).details[0]["length"] == 3


def test_cjk_counts_characters(tok):
    p = LengthReward(LengthReward.Params(chars={"min": 4, "max": 8}, penalty_per_char=0.1))
    vals, res = values(p, tok, ["全网低价好物推荐", "好物", "这是一个非常非常长的句子啊", "ok fine"])
    assert [d["unit"] for d in res.details] == ["chars", "chars", "chars", "tokens"]
    assert vals[:3] == pytest.approx([1.0, -0.2, -0.5])


def test_per_field_character_limits(tok):
    p = LengthReward(LengthReward.Params(
        unit="tokens", tokens={"min": 1, "max": 100}, field_chars={"title": {"max": 10}, "description": {"min": 5, "max": 20}},
        penalty_per_char=0.1,
    ))
    ok = "Title: Fresh tea\nDescription: Hand picked leaves"
    long_title = "Title: Fresh tea from the hills\nDescription: Hand picked leaves"  # title 24 chars: 14 over
    no_desc = "Title: Fresh tea"  # a missing field is relate.format's business: only the present ones count
    vals, res = values(p, tok, [ok, long_title, no_desc])
    assert vals == pytest.approx([1.0, (1.0 - 1.0 + 1.0) / 3, 1.0])
    assert res.details[1]["fields"] == {"title": 24, "description": 18}
    with pytest.raises(rlgen.PluginError, match=r"relate\.length: params\.field_chars names fields \['headline'\]"):
        LengthReward(LengthReward.Params(field_chars={"headline": {"max": 3}}))
    with pytest.raises(Exception, match="max"):
        LengthReward.Params(tokens={"min": 5, "max": 2})


def test_registered():
    assert rlgen.registry().rewards["relate.length"] is LengthReward
