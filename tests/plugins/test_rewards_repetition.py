"""repetition: the penalty lands on the tokens of each repeat (never the first mention), with real tokenizers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import rlgen
from rlgen.reward import check_reward_result
from rlgen_plugins.models import load_tokenizer, resolve_builtin_model
from rlgen_plugins.rewards import RepetitionReward

# ad -> (repeats as (word, occurrence), first mentions as (word, occurrence)); occurrences count exact-case matches
STUTTER_ADS = {
    "Title: Transmission Transmission\nDescription: Free transmission transmission diagnostics.": (
        [("Transmission", 1), ("transmission", 1)], [("Transmission", 0), ("transmission", 0)],
    ),
    "Title: Honda Civic Lease Lease Lease Leasing\nDescription: Low monthly payments. Book a test drive.": (
        [("Lease", 1), ("Lease", 2), ("Leasing", 0)], [("Lease", 0)],
    ),
    "Title: 24/7 Plumber in Austin\nDescription: Emergency emergency. 24/7 call-out.": (
        [("emergency", 0)], [("Emergency", 0)],
    ),
}
CLEAN_ADS = [
    "Title: Transmission Repair in Austin\nDescription: Free transmission diagnostics. Book online today.",
    "Title: Honda Civic Lease Deals\nDescription: Lease a 2024 Civic from $199/month. Book a test drive.",
    "Title: Free 4.9 transmission\nDescription: Call 555 555 1234 for a free quote, open 24/7.",
]


@pytest.fixture(scope="module")
def llama_tok(tiny_llama: Path):
    return load_tokenizer(tiny_llama, padding_side="right")


@pytest.fixture(scope="module")
def smol_tok(cache_dir: Path):
    return load_tokenizer(resolve_builtin_model("smollm2-135m-instruct", cache_dir), padding_side="right")


def score(provider, rollout):
    return check_reward_result(provider.score(rollout), plugin=provider.name, granularity="token", rollout=rollout)


def word_span(text: str, word: str, occurrence: int) -> tuple[int, int]:
    """Span of the ``occurrence``-th (0-based) whole-word match of ``word`` in ``text``."""
    m = list(re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", text))[occurrence]
    return m.span()


def tokens_over(rollout: rlgen.Rollout, i: int, spans: list[tuple[int, int]]) -> set[int]:
    """Indices of the real tokens of sample ``i`` whose characters overlap one of ``spans`` (computed by hand)."""
    out = set()
    for t, (a, b) in enumerate(rollout.token_offsets[i].tolist()):
        if rollout.completion_mask[i, t] and b > a and any(a < e and s < b for s, e in spans):
            out.add(t)
    return out


@pytest.mark.parametrize("tokenizer", ["llama_tok", "smol_tok"])
def test_penalty_lands_on_the_repeats_tokens_only(tokenizer, request):
    tok = request.getfixturevalue(tokenizer)
    texts = list(STUTTER_ADS)
    r = rlgen.Rollout.from_texts(tok, texts, list(range(len(texts))))
    res = score(RepetitionReward(RepetitionReward.Params(penalty=0.5)), r)
    for i, (text, (repeats, firsts)) in enumerate(STUTTER_ADS.items()):
        expected = tokens_over(r, i, [word_span(text, w, k) for w, k in repeats])
        penalised = set(torch.nonzero(res.values[i]).flatten().tolist())
        assert penalised == expected, (text, [text[a:b] for a, b in r.token_offsets[i, sorted(penalised)].tolist()])
        assert torch.all(res.values[i][sorted(penalised)] == -0.5)
        assert not penalised & tokens_over(r, i, [word_span(text, w, k) for w, k in firsts])
    assert [d["repeats"] for d in res.details] == [["Transmission", "transmission"], ["Lease", "Lease", "Leasing"], ["emergency"]]
    assert res.metrics["repeat_rate"] == 1.0 and res.metrics["stutter_rate"] == 1.0


@pytest.mark.parametrize("tokenizer", ["llama_tok", "smol_tok"])
def test_clean_ads_get_no_penalty(tokenizer, request):
    tok = request.getfixturevalue(tokenizer)
    r = rlgen.Rollout.from_texts(tok, CLEAN_ADS, [0, 1, 2])
    res = score(RepetitionReward(), r)
    assert not res.values.any(), [d["repeats"] for d in res.details]
    assert res.metrics["repeat_rate"] == 0.0


def test_repeated_phrase_at_a_distance_and_its_options(llama_tok):
    text = "Title: Book a free quote\nDescription: Fast repairs, book a free quote online, fast repairs."
    r = rlgen.Rollout.from_texts(llama_tok, [text], [0])
    res = score(RepetitionReward(), r)
    # within the description line: the second "fast repairs" is a phrase repeat; the title line is another line
    assert res.details[0]["repeats"] == ["fast", "repairs"] and res.details[0]["kinds"] == ["phrase", "phrase"]
    res = score(RepetitionReward(RepetitionReward.Params(cross_lines=True)), r)
    assert res.details[0]["repeats"] == ["book", "a", "free", "quote", "fast", "repairs"]
    # stop-word-only phrases and a lone number said twice are no repeats; a number of several parts said twice is
    r = rlgen.Rollout.from_texts(llama_tok, ["Title: Open 24/7\nDescription: In the city, in the suburbs, 1 on 1, 2 for 2."], [0])
    assert not score(RepetitionReward(), r).values.any()
    r = rlgen.Rollout.from_texts(llama_tok, ["Title: Rated 4.9 for 4.9\nDescription: Open 24/7, 24/7 support."], [0])
    assert [d["repeats"] for d in score(RepetitionReward(), r).details] == [["4", "9", "24", "7"]]
    # word_gap: one word between two mentions still stutters when allowed
    r = rlgen.Rollout.from_texts(llama_tok, ["Title: Lease deals lease\nDescription: Honda lease."], [0])
    assert not score(RepetitionReward(), r).values.any()
    assert score(RepetitionReward(RepetitionReward.Params(word_gap=1)), r).details[0]["repeats"] == ["lease"]


def test_inflection_needs_a_real_shared_stem(llama_tok):
    texts = ["Title: Care career\nDescription: News new.", "Title: Repair repairs\nDescription: Clean cleaning."]
    res = score(RepetitionReward(), rlgen.Rollout.from_texts(llama_tok, texts, [0, 1]))
    assert res.details[0]["repeats"] == []
    assert res.details[1]["repeats"] == ["repairs", "cleaning"]


@pytest.mark.parametrize("tokenizer", ["llama_tok", "smol_tok"])
def test_cjk(tokenizer, request):
    tok = request.getfixturevalue(tokenizer)
    texts = ["标题：紧急紧急维修\n描述：天天营业，立即预约，上门服务立即预约。", "标题：天天营业的维修店\n描述：上门服务，立即预约。"]
    r = rlgen.Rollout.from_texts(tok, texts, [0, 1])
    res = score(RepetitionReward(), r)
    # a doubled phrase stutters, a 4-character phrase repeats at a distance; 天天 (reduplication) is grammar
    assert res.details[0]["repeats"] == ["紧", "急", "立", "即", "预", "约"]
    second = texts[0].index("紧急", texts[0].index("紧急") + 1)
    later = texts[0].rindex("立即预约")
    expected = tokens_over(r, 0, [(second, second + 2), (later, later + 4)])
    assert set(torch.nonzero(res.values[0]).flatten().tolist()) == expected
    assert not res.values[1].any()


def test_labels_are_no_part_of_a_repeat(llama_tok):
    r = rlgen.Rollout.from_texts(llama_tok, ["Title: Title loans fast\nDescription: Description of terms."], [0])
    assert not score(RepetitionReward(), r).values.any()
    assert score(RepetitionReward(RepetitionReward.Params(labels=None)), r).details[0]["repeats"] == ["Title", "Description"]
    with pytest.raises(Exception, match="labels"):
        RepetitionReward.Params(labels="(")


def test_registered_and_token_level():
    assert rlgen.registry().rewards["repetition"] is RepetitionReward
    assert RepetitionReward.granularity == "token"
