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
