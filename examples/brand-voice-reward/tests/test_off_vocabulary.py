"""brand.off_vocabulary through the public rlgen API: which tokens pay, and how much."""

from __future__ import annotations

import pydantic
import pytest
import torch

import rlgen
from rlgen_brand_voice import OffVocabulary


def span(text: str, word: str, nth: int = 0) -> tuple[int, int]:
    start = -1
    for _ in range(nth + 1):
        start = text.index(word, start + 1)
    return start, start + len(word)


def test_banned_words_and_phrases_penalise_exactly_their_tokens(tokenizer):
    texts = [
        "Cheap coffee at the best price!",
        "Roasted daily, never CHEAP.",
        "The cheapest beans in town",  # whole words only: "cheapest" is not "cheap"
    ]
    rollout = rlgen.Rollout.from_texts(tokenizer, texts, group=[0, 0, 1])
    reward = OffVocabulary(OffVocabulary.Params(banned=["cheap", "best   price"], banned_penalty=2.0))
    result = reward.score(rollout)

    assert result.values.shape == rollout.completion_ids.shape
    assert bool((result.values[~rollout.completion_mask] == 0).all())
    expected = rollout.spans_to_tokens([
        [span(texts[0], "Cheap"), span(texts[0], "best price")],
        [span(texts[1], "CHEAP")],
        [],
    ])
    assert torch.equal(result.values != 0, expected)
    assert bool((result.values[expected] == -2.0).all())
    assert [d["banned"] for d in result.details] == [["Cheap", "best price"], ["CHEAP"], []]
    # "best price" spans several tokens, all of them penalised; the sum is the sentence penalty (Eq. 4)
    assert int(expected[0].sum()) >= 4
    assert result.to_sentence(rollout.completion_mask)[0] == pytest.approx(-2.0 * int(expected[0].sum()))
    assert result.metrics["banned_per_sample"] == pytest.approx(1.0)
    assert result.metrics["clean_fraction"] == pytest.approx(1 / 3)


def test_vocabulary_mode_penalises_words_off_it_but_not_prompt_words_or_numbers(tokenizer):
    text = "Northwind espresso: smooth, bold, only 5 dollars. Cheap!"
    rollout = rlgen.Rollout.from_texts(tokenizer, [text], group=[0], meta=[{"query": "espresso"}])
    reward = OffVocabulary(OffVocabulary.Params(
        vocabulary=["northwind", "smooth", "bold", "only"], banned=["cheap"],
        off_vocabulary_penalty=0.25, banned_penalty=1.0,
    ))
    result = reward.score(rollout)
    # "espresso" comes from the prompt's metadata, "5" is a number: neither is off the vocabulary
    assert result.details[0] == {"banned": ["Cheap"], "off_vocabulary": ["dollars"]}
    dollars = rollout.spans_to_tokens([[span(text, "dollars")]])[0]
    cheap = rollout.spans_to_tokens([[span(text, "Cheap")]])[0]
    assert bool((result.values[0][dollars] == -0.25).all())
    assert bool((result.values[0][cheap] == -1.0).all())  # banned: the larger penalty, once
    assert bool((result.values[0][~(dollars | cheap)] == 0).all())

    strict = OffVocabulary(OffVocabulary.Params(vocabulary=["northwind", "smooth", "bold", "only"],
                                                allow_prompt_words=False))
    assert strict.score(rollout).details[0]["off_vocabulary"] == ["espresso", "dollars", "Cheap"]


def test_lists_from_files(tokenizer, tmp_path):
    banned = tmp_path / "banned.txt"
    banned.write_text("# words legal told us to avoid\nguaranteed\n\nmiracle cure  # never\n")
    rollout = rlgen.Rollout.from_texts(tokenizer, ["A miracle cure, guaranteed."], group=[0])
    result = OffVocabulary(OffVocabulary.Params(banned_file=str(banned))).score(rollout)
    assert result.details[0]["banned"] == ["miracle cure", "guaranteed"]


def test_params_are_validated_with_the_field_named(tmp_path):
    with pytest.raises(pydantic.ValidationError, match="nothing to check"):
        OffVocabulary.Params()
    with pytest.raises(pydantic.ValidationError, match="banned_penalty"):
        OffVocabulary.Params(banned=["x"], banned_penalty=-1)
    with pytest.raises(pydantic.ValidationError, match="banned_file"):
        OffVocabulary.Params(banned_file=str(tmp_path / "missing.txt"))
    with pytest.raises(pydantic.ValidationError, match="banned_words"):
        OffVocabulary.Params(banned_words=["x"])  # a typo is an error, not a silent default


def test_registered_through_the_entry_point():
    registry = rlgen.registry()
    assert registry.rewards["brand.off_vocabulary"] is OffVocabulary
    assert OffVocabulary.granularity == "token"
