"""relate.risk: Eq. 5 first term on hand-built texts, with real tokenizers (MiniLM WordPiece, tiny-llama byte BPE)."""

from __future__ import annotations

import pytest
import torch

import rlgen
from rlgen.reward import check_reward_result
from rlgen_plugins.models import load_tokenizer
from rlgen_relate.rewards import RiskReward


@pytest.fixture(scope="module")
def wordpiece():
    return load_tokenizer("builtin:minilm-l6", padding_side="right")


@pytest.fixture(scope="module")
def bytebpe():
    return load_tokenizer("builtin:tiny-llama", padding_side="right")


def score(provider, tokenizer, texts, groups=None):
    rollout = rlgen.Rollout.from_texts(tokenizer, texts, groups or list(range(len(texts))))
    result = check_reward_result(provider.score(rollout), plugin=provider.name, granularity="token", rollout=rollout)
    return rollout, result


def test_eq5_hand_computed_wordpiece(wordpiece):
    # tokens: this is un ##beat ##able , guaranteed !  ||  plain words only
    rollout, result = score(RiskReward(RiskReward.Params(penalty=0.5)), wordpiece,
                            ["this is unbeatable, guaranteed!", "a calm morning walk"])
    assert rollout.completion_ids.shape == (2, 8)
    lam = -0.5
    expected = torch.tensor([
        [0, 0, lam, lam, lam, 0, lam, 0],  # the split word marks all three pieces; "guaranteed" touches "!"
        [0, 0, 0, 0, 0, 0, 0, 0],           # 4 real tokens, then padding stays zero
    ])
    assert torch.equal(result.values, expected.float())
    assert result.details[0]["phrases"] == ["unbeatable", "guaranteed"]
    assert result.details[0]["matches"] == ["unbeatable", "guaranteed"]
    assert result.details[1] == {"phrases": [], "matches": []}
    assert result.metrics["hit_rate"] == 0.5
    # Eq. 4 view: the sentence-level sum is -lambda_1 per penalised token
    assert torch.equal(result.to_sentence(rollout.completion_mask), torch.tensor([4 * lam, 0.0]))


def test_word_split_over_byte_tokens_and_cjk_bytes(bytebpe):
    texts = ["Best shoes", "全网最低价"]
    rollout, result = score(RiskReward(), bytebpe, texts)
    offsets = rollout.token_offsets
    # "Best" is two tokens here ('B', 'est'): both are penalised, " shoes" is not
    best = (offsets[0, :, 1] <= 4) & rollout.completion_mask[0]
    assert int(best.sum()) >= 2
    assert torch.equal(result.values[0] != 0, best)
    # byte-level tokens of a CJK character all carry that character's span: the 12 byte tokens of 全网最低 are hit,
    # the 3 of 价 are not
    hit = result.values[1] != 0
    assert int(hit.sum()) == 12
    assert torch.equal(hit, (offsets[1, :, 1] <= 4) & rollout.completion_mask[1])
    assert result.details[1]["phrases"] == ["全网最低"]


def test_cjk_substrings_without_spaces(wordpiece):
    _, result = score(RiskReward(), wordpiece, ["这是国家级的第一品牌", "根治失眠", "普通的好产品"])
    assert result.details[0]["matches"] == ["国家级", "第一品牌"]  # the longest entry wins where entries overlap
    assert result.details[1]["matches"] == ["根治"]
    assert result.details[2]["matches"] == []
    # WordPiece maps each CJK character to one token (some to [UNK]); offsets still point at the character
    assert torch.equal(result.values[0, :10] != 0, torch.tensor([0, 0, 1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool))


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("bestow betterment", []),  # whole words only
        ("the BEST deal", ["the BEST"]),  # case folding; "the best" is a longer entry than "best"
        ("ＢＥＳＴ price", ["ＢＥＳＴ"]),  # NFKC: full-width letters
        ("Straße is best", ["best"]),  # case folding that changes the length keeps offsets right
        ("we are No.1", ["No.1"]),
        ("we are no. 1!", ["no. 1"]),
        ("ranked No. 10", []),
        ("#1 choice, not #10", ["#1"]),
        ("1100% sure", []),
        ("100% natural", ["100%"]),
        ("最好的best产品", ["最好", "best"]),  # an English word touching CJK text
        ("a best-selling book", ["best-selling"]),
        ("cure.", ["cure"]),  # at the very end, touching punctuation
    ],
)
def test_boundaries_and_normalisation(text, matches):
    spans, _ = RiskReward().find_spans([text])
    assert [text[s:e] for s, e in spans[0]] == matches


def test_user_lexicon_merged_on_top(tmp_path, wordpiece):
    extra = tmp_path / "brand.txt"
    extra.write_text("# banned by our brand guide\n#1\nsuper deal\n\nmagic\n", encoding="utf-8")
    provider = RiskReward(RiskReward.Params(lexicon_files=[str(extra)], phrases=["crazy cheap"], allow=["best"]))
    assert "super deal" in provider.blacklist and "#1" in provider.blacklist and "magic" in provider.blacklist
    assert "best" not in provider.blacklist and "cure" in provider.blacklist  # shipped entries stay
    _, result = score(provider, wordpiece, ["super deal and crazy cheap, best magic cure"])
    assert result.details[0]["phrases"] == ["super deal", "crazy cheap", "magic", "cure"]
    only_mine = RiskReward(RiskReward.Params(languages=[], phrases=["magic"]))
    assert only_mine.blacklist == ["magic"]
    _, result = score(only_mine, wordpiece, ["best magic cure"])
    assert result.details[0]["phrases"] == ["magic"]


def test_config_errors_name_plugin_and_field(tmp_path):
    with pytest.raises(rlgen.PluginError, match=r"relate\.risk: params\.languages: no shipped lexicon for 'fr' \(have: \['en', 'zh'\]\)"):
        RiskReward(RiskReward.Params(languages=["fr"]))
    with pytest.raises(rlgen.PluginError, match=r"relate\.risk: params\.lexicon_files: cannot read lexicon file"):
        RiskReward(RiskReward.Params(lexicon_files=[str(tmp_path / "missing.txt")]))
    with pytest.raises(Exception, match="penalty"):
        RiskReward.Params(penalty=-1)


def test_registered_under_its_public_name():
    assert rlgen.registry().rewards["relate.risk"] is RiskReward
    assert RiskReward.granularity == "token"
