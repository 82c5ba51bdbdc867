"""relate.relevance with the real all-MiniLM-L6-v2 embedder (builtin:minilm-l6, offline)."""

from __future__ import annotations

import pytest
import torch

import rlgen
from rlgen.reward import check_reward_result
from rlgen_plugins.models import load_tokenizer
from rlgen_relate.rewards import RelevanceReward

META = [
    {"query": "running shoes", "bid_word": "sneakers", "selling_points": ["lightweight", "free returns"]},
    {"query": "coffee beans", "bid_word": "espresso", "selling_points": ["fresh roast", "single origin"]},
]
TEXTS = [
    "Title: Light running sneakers\nDescription: Shoes for your daily run, free returns.",
    "Title: Fresh espresso beans\nDescription: Single origin coffee, roasted this week.",
]


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("relevance")
    return rlgen.RunContext(config=None, registry=rlgen.registry(), output_dir=tmp, cache_dir=tmp, seed=0)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("builtin:minilm-l6", padding_side="right")


@pytest.fixture(scope="module")
def provider(context):
    p = RelevanceReward()
    p.setup(context)  # resolves builtin:minilm-l6 through the registry's rlgen_builtin_model hook
    return p


def run(provider, tok, texts, meta):
    r = rlgen.Rollout.from_texts(tok, texts, list(range(len(texts))), meta)
    return check_reward_result(provider.score(r), plugin=provider.name, granularity="sentence", rollout=r)


def test_relevant_ads_score_higher(provider, tok):
    # each ad against its own context, then against the other prompt's context
    own = run(provider, tok, TEXTS, META).values
    swapped = run(provider, tok, TEXTS, META[::-1]).values
    assert (own > swapped + 0.2).all(), (own, swapped)
    assert ((own <= 1.0) & (own >= -1.0)).all()


def test_value_is_the_cosine_of_the_embeddings(provider, tok, context):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(context.resolve_model("builtin:minilm-l6"), device="cpu")
    ctx = "running shoes\nsneakers\nlightweight; free returns"
    e = model.encode([TEXTS[0], ctx], convert_to_tensor=True, normalize_embeddings=True)
    expected = float(e[0] @ e[1])
    assert float(run(provider, tok, TEXTS[:1], META[:1]).values[0]) == pytest.approx(expected, abs=1e-5)


def test_context_embeddings_are_cached(provider, tok):
    misses = provider.cache_misses
    run(provider, tok, TEXTS * 3, META * 3)  # six samples, two contexts
    run(provider, tok, TEXTS, META)
    assert provider.cache_misses - misses <= 2
    assert provider.cache_hits >= 2


def test_per_field_combination(context, tok):
    mean = RelevanceReward(RelevanceReward.Params(combine="mean"))
    best = RelevanceReward(RelevanceReward.Params(combine="max", context_fields=["query", "bid_word"]))
    for p in (mean, best):
        p.setup(context)
    m = run(mean, tok, TEXTS, META)
    x = run(best, tok, TEXTS, META)
    assert len(m.details[0]["cosine"]) == 3 and len(x.details[0]["cosine"]) == 2
    assert float(x.values[0]) == pytest.approx(max(x.details[0]["cosine"]), abs=1e-4)


def test_missing_context(provider, tok):
    res = run(provider, tok, TEXTS, [{"query": ""}, {"other": "x"}])
    assert torch.equal(res.values, torch.zeros(2)) and res.details[0] == {"context": "missing"}
    r = rlgen.Rollout.from_texts(tok, TEXTS, [0, 1])
    with pytest.raises(rlgen.PluginError, match=r"relate\.relevance: the rollout has no meta"):
        provider.score(r)
    with pytest.raises(rlgen.PluginError, match=r"setup\(\) was not called"):
        RelevanceReward().score(rlgen.Rollout.from_texts(tok, TEXTS, [0, 1], META))


def test_bad_model_is_one_clear_error(context, tmp_path):
    p = RelevanceReward(RelevanceReward.Params(model=str(tmp_path / "no-such-model")))
    with pytest.raises(rlgen.PluginError, match=r"relate\.relevance: cannot load embedder params\.model="):
        p.setup(context)


def test_registered():
    assert rlgen.registry().rewards["relate.relevance"] is RelevanceReward
