"""RELATE evaluation metrics: Eq. 11 compliance, Eq. 12 diversity, distinct-2, self-BLEU."""

from __future__ import annotations

import pytest

from rlgen.config import load_config
from rlgen_relate import evaluation

GOOD = "Title: Rome Flights From $49\nDescription: Compare fares on 300 airlines. No booking fees. Book today."
RISKY = "Title: The Best Rome Flights\nDescription: Guaranteed lowest fares on 300 airlines. Book today."
NO_LAYOUT = "Cheap flights to Rome from $49, compare 300 airlines and book today"


def config(**extra):
    raw = {"data": {"path": "x.jsonl", "prompt_template": "{query}"},
           "rewards": [{"name": "relate.risk"}, {"name": "relate.format"}], **extra}
    return load_config(raw)


def test_compliance_needs_both_risk_and_format():  # Eq. 11
    meta = [{"query": "rome flights"}] * 3
    both, format_ok, risk_ok = evaluation.compliance([GOOD, RISKY, NO_LAYOUT], meta, config())
    assert risk_ok == [1.0, 0.0, 1.0]
    assert format_ok == [1.0, 1.0, 0.0]
    assert both == [1.0, 0.0, 0.0]


def test_compliance_uses_the_runs_own_reward_params():
    cfg = config()
    cfg.rewards[0].params = {"allow": ["best", "the best", "guaranteed"]}
    both, _, risk_ok = evaluation.compliance([RISKY], [{}], cfg)
    assert risk_ok == [1.0] and both == [1.0]


def test_diversity_is_one_for_unique_ads_and_lower_for_a_shared_template():  # Eq. 12
    unique = ["fresh bagels baked daily downtown", "licensed plumbers answer within the hour",
              "learn python with weekly mentor calls", "used hatchbacks with a full inspection"]
    assert evaluation.diversity_scores(unique, [{}] * 4, [0, 1, 2, 3], config()) == [1.0] * 4
    template = [t + " shop now and save big today" for t in unique]
    scores = evaluation.diversity_scores(template, [{}] * 4, [0, 1, 2, 3], config())
    assert all(0.0 <= s < 1.0 for s in scores)
    # the 6 shared words of 11 are penalised in the first ad
    assert scores[0] == pytest.approx(1 - 6 / 11)


def test_distinct_and_self_bleu():
    assert evaluation.distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    same = ["the quick brown fox jumps over"] * 3
    assert evaluation.self_bleu(same) == pytest.approx(1.0)
    different = ["the quick brown fox jumps over", "seven lazy dogs sleep all day", "pay less for fast cars now"]
    assert evaluation.self_bleu(different) < 0.1


def test_hook_only_speaks_for_relate_runs():
    plain = load_config({"data": {"path": "x.jsonl", "prompt_template": "{q}"}, "rewards": [{"name": "toy.count"}]})
    assert evaluation.rlgen_eval_metrics(texts=[GOOD], meta=[{}], group=[0], config=plain) is None
    out = evaluation.rlgen_eval_metrics(texts=[GOOD, RISKY], meta=[{}, {}], group=[0, 1], config=config())
    assert out["relate/compliance_rate"] == [1.0, 0.0]
    assert set(out) == {"relate/compliance_rate", "relate/format_pass_rate", "relate/risk_pass_rate",
                        "relate/diversity", "relate/distinct_2", "relate/self_bleu"}


def test_diversity_sees_the_set_in_training_sized_batches():  # Eq. 12
    """A phrase shared by 6 of 40 ads (15%) is below the reward's 20% share over the whole set, but frequent in
    the 2-prompt batches (plus window) that training shows the reward, so evaluation counts it."""
    unique = [f"offer number {i} for item{i} in town{i}" for i in range(40)]
    templated = [t + " shop now and save big" if i < 6 else t for i, t in enumerate(unique)]
    group = list(range(40))
    cfg = config(data={"path": "x.jsonl", "prompt_template": "{query}", "prompts_per_step": 2},
                 rewards=[{"name": "relate.diversity", "params": {"ngram_min": 3}}])
    scores = evaluation.diversity_scores(templated, [{}] * 40, group, cfg)
    assert all(s < 1.0 for s in scores[:6]) and scores[6:] == [1.0] * 34
    # one batch of 40 prompts: the threshold is 8 prompts, so nothing would count
    whole = config(data={"path": "x.jsonl", "prompt_template": "{query}", "prompts_per_step": 40},
                   rewards=[{"name": "relate.diversity", "params": {"ngram_min": 3}}])
    assert evaluation.diversity_scores(templated, [{}] * 40, group, whole) == [1.0] * 40
