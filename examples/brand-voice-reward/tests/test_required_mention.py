"""brand.required_mention through the public rlgen API."""

from __future__ import annotations

import pydantic
import pytest
import torch

import rlgen
from rlgen_brand_voice import RequiredMention


def test_brand_or_phrase_present_scores_present_else_absent(tokenizer):
    texts = ["Northwind's new roast is here", "Fresh beans, roasted daily.", "Wake up with NORTHWIND", "Northwinds"]
    rollout = rlgen.Rollout.from_texts(tokenizer, texts, group=[0, 0, 1, 1])
    reward = RequiredMention(RequiredMention.Params(brand="Northwind", meta_field=None, present=1.0, absent=-0.5))
    result = reward.score(rollout)
    assert result.values.dtype == torch.float32 and result.values.shape == (4,)
    # whole words, any case; a possessive counts, a longer word does not
    assert result.values.tolist() == [1.0, -0.5, 1.0, -0.5]
    assert result.details[2] == {"mention": "NORTHWIND", "position": 13}
    assert result.metrics["mention_rate"] == 0.5

    phrases = RequiredMention(RequiredMention.Params(phrases=["fresh beans"], meta_field=None))
    assert phrases.score(rollout).values.tolist() == [0.0, 1.0, 0.0, 0.0]


def test_each_sample_accepts_its_own_prompts_brand(tokenizer):
    texts = ["Acme shoes for you", "Acme shoes for you", "Zest tea", "Zest tea"]
    meta = [{"brand": "Acme"}, {"brand": "Zest"}, {"brand": ["Zest", "Zest Tea Co"]}, {"brand": "Acme"}]
    rollout = rlgen.Rollout.from_texts(tokenizer, texts, group=[0, 1, 2, 3], meta=meta)
    assert RequiredMention().score(rollout).values.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_within_chars_asks_for_the_mention_up_front(tokenizer):
    texts = ["Northwind: coffee", "Great coffee from Northwind"]
    rollout = rlgen.Rollout.from_texts(tokenizer, texts, group=[0, 0])
    reward = RequiredMention(RequiredMention.Params(brand="Northwind", within_chars=10))
    assert reward.score(rollout).values.tolist() == [1.0, 0.0]


def test_missing_brand_is_a_clear_error(tokenizer):
    rollout = rlgen.Rollout.from_texts(tokenizer, ["no brand here"], group=[0], meta=[{"query": "shoes"}])
    with pytest.raises(rlgen.PluginError, match="brand.required_mention.*no 'brand' in its prompt metadata"):
        RequiredMention().score(rollout)
    with pytest.raises(pydantic.ValidationError, match="no mention to look for"):
        RequiredMention.Params(meta_field=None)
    with pytest.raises(pydantic.ValidationError, match="within_chars"):
        RequiredMention.Params(brand="x", within_chars=0)


def test_registered_through_the_entry_point():
    registry = rlgen.registry()
    assert registry.rewards["brand.required_mention"] is RequiredMention
    assert RequiredMention.granularity == "sentence"
