"""RELATE evaluation metrics: Eq. 11 compliance (overall and per vertical), Eq. 12 diversity, fluent rate,
distinct-2 and self-BLEU with bootstrap CIs and paired differences."""

from __future__ import annotations

import pytest

import rlgen
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


def test_distinct_and_self_bleu_compare_what_the_ads_say_not_the_layout_labels():
    """Four different ads in the layout: their labels are shared by all four, and with them in, the same
    words would look more alike than when written without the layout."""
    said = ["Cheap Flights to Lisbon\nNonstop fares from $89 this spring.", "Oak Dining Tables\nFree delivery, handmade in Vermont.",
            "Math Tutors Online\nFirst lesson free with a certified tutor.", "Roof Repair in Tucson\nFree inspection, same-week crews."]
    laid_out = ["Title: " + t.replace("\n", "\nDescription: ") for t in said]
    metrics = evaluation.rlgen_eval_metrics(texts=laid_out, meta=[{}] * 4, group=[0, 1, 2, 3], config=config())
    bare = evaluation.rlgen_eval_metrics(texts=said, meta=[{}] * 4, group=[0, 1, 2, 3], config=config())
    for key in ("relate/distinct_2", "relate/self_bleu"):
        assert metrics[key] == bare[key]
    # the labels would have counted: as plain text, the laid-out ads share bigrams and BLEU n-grams
    assert evaluation.self_bleu(laid_out) > 1.2 * evaluation.self_bleu(said)
    assert evaluation.distinct_n(laid_out, 2) < evaluation.distinct_n(said, 2)
    assert evaluation.without_labels(["  Description : free"], config()) == ["  free"]


def test_hook_only_speaks_for_relate_runs():
    plain = load_config({"data": {"path": "x.jsonl", "prompt_template": "{q}"}, "rewards": [{"name": "toy.count"}]})
    assert evaluation.rlgen_eval_metrics(texts=[GOOD], meta=[{}], group=[0], config=plain) is None
    out = evaluation.rlgen_eval_metrics(texts=[GOOD, RISKY], meta=[{}, {}], group=[0, 1], config=config())
    assert out["relate/compliance_rate"] == [1.0, 0.0]
    assert set(out) == {"relate/compliance_rate", "relate/format_pass_rate", "relate/risk_pass_rate",
                        "relate/fluent_rate", "relate/consistent_rate", "relate/factual_rate", "relate/diversity",
                        "relate/distinct_2", "relate/self_bleu"}


def test_consistent_rate_marks_an_ad_that_denies_the_advertisers_fact():
    facts = {"bid_word": "urgent care", "selling_points": ["Free parking at every location"]}
    ads = ["Title: Urgent Care\nDescription: Self-pay visits from $139. Free parking.",
           "Title: Urgent Care\nDescription: Self-pay visits from $139. No parking."]
    out = evaluation.rlgen_eval_metrics(texts=ads, meta=[facts, facts], group=[0, 1], config=config())
    assert out["relate/consistent_rate"] == [1.0, 0.0]


def test_factual_rate_marks_an_offer_the_advertiser_does_not_make():
    facts = {"bid_word": "transmission repair", "selling_points": ["Free transmission diagnostic", "Rebuilds from $1,200"]}
    ads = ["Title: Transmission Repair\nDescription: Free transmission diagnostic. Rebuilds from $1,200.",
           "Title: Transmission Repair\nDescription: Free transmission repair. Rebuilds from $1,200.",
           "Title: Transmission Repair\nDescription: Free transmission diagnostic. Rebuilds from $900."]
    out = evaluation.rlgen_eval_metrics(texts=ads, meta=[facts] * 3, group=[0, 1, 2], config=config())
    assert out["relate/factual_rate"] == [1.0, 0.0, 0.0]


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


STUTTER = [
    "Title: Transmission Transmission\nDescription: Free transmission transmission diagnostics.",
    "Title: Honda Civic Lease Lease Lease Leasing\nDescription: Low monthly payments on every Civic trim.",
    "Title: Emergency Plumbers\nDescription: Emergency emergency. 24/7 call-out.",
    "Title: Rome Flights\nDescription: Cheap Rome flights and cheap Rome flights from $49.",
]
CLEAN = [
    "Title: Transmission Repair\nDescription: Free transmission diagnostics. Same-day service in town.",
    "Title: Honda Civic Lease Deals\nDescription: Low monthly payments on every Civic trim.",
    "Title: Emergency Plumbers\nDescription: Licensed plumbers on call 24/7. Call 555 555 0100.",
    GOOD,
]


def test_fluent_rate_flags_stutter_and_repeated_phrases():
    assert evaluation.fluent_scores(STUTTER, config()) == [0.0] * 4
    assert evaluation.fluent_scores(CLEAN, config()) == [1.0] * 4  # repeated numbers and a field label are fine


def test_fluent_rate_uses_the_runs_repetition_params():
    lenient = config(rewards=[{"name": "relate.risk"}, {"name": "repetition", "params": {"ngram_min": 4}}])
    # "cheap rome flights" (3 words) is a repeated phrase by default, not with ngram_min 4
    assert evaluation.fluent_scores(STUTTER[3:], config()) == [0.0]
    assert evaluation.fluent_scores(STUTTER[3:], lenient) == [1.0]


def weighted_mean(values, weights):
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


def test_distinct_contributions_average_to_the_set_measure():
    texts = ["a b c a b", "a b d", "x y z w", "", "z w q"]
    values, weights = evaluation.distinct_n_contributions(texts, 2)
    assert weights == [4.0, 2.0, 3.0, 0.0, 2.0]
    assert weighted_mean(values, weights) == pytest.approx(evaluation.distinct_n(texts, 2))
    # "x y", "y z" are used once; "z w" twice (with "z w q"): 1 + 1 + 1/2 over 3
    assert values[2] == pytest.approx(2.5 / 3)


def test_self_bleu_scores_average_to_the_set_measure_and_skip_empty_ads():
    texts = ["the quick brown fox jumps over", "", "the quick brown dog naps under", "pay less for fast cars now"]
    values, weights = evaluation.self_bleu_scores(texts)
    assert weights == [1.0, 0.0, 1.0, 1.0]
    assert weighted_mean(values, weights) == pytest.approx(evaluation.self_bleu(texts))
    assert values[0] > values[3]


def test_compliance_by_vertical_weighs_only_its_own_ads():
    meta = [{"vertical": "travel"}, {"vertical": "travel"}, {"vertical": "auto"}]
    out = evaluation.compliance_by_vertical([1.0, 0.0, 1.0], meta)
    assert set(out) == {"relate/compliance_by_vertical/auto", "relate/compliance_by_vertical/travel"}
    travel = out["relate/compliance_by_vertical/travel"]
    assert travel["weights"] == [1.0, 1.0, 0.0] and weighted_mean(travel["values"], travel["weights"]) == 0.5
    assert evaluation.compliance_by_vertical([1.0], [{}]) == {}  # contexts without verticals: no breakdown


def evaluate(texts, meta, cfg):
    """The hook's metrics on a hand-made set, gathered and summarised as ``rlgen eval`` does (one ad per context)."""
    group = list(range(len(texts)))
    per_sample, weights = {}, {}
    for name, value in evaluation.rlgen_eval_metrics(texts=texts, meta=meta, group=group, config=cfg).items():
        if isinstance(value, dict):
            per_sample[name], weights[name] = value["values"], value["weights"]
        else:
            per_sample[name] = value
    return rlgen.EvalResult(per_sample, {}, texts, meta, group, weights=weights)


WORDS = ("bagel kayak piano sofa laptop violin tent drone helmet candle mattress bicycle espresso garden "
         "roofing tutoring yoga dental wedding moving storage tiles solar pet").split()
CITIES = ("Austin Boston Denver Miami Seattle Dallas Tampa Reno Omaha Tulsa Boise Fresno Akron Salem Provo Macon "
          "Ogden Yuma Erie Flint Utica Joplin Dover Butte").split()


def test_summary_gives_cis_and_paired_differences_for_fluent_distinct_and_self_bleu():
    """Base: 24 clean, different ads. Trained: the same products with a stutter and one pasted slogan."""
    cfg = config()
    verticals = ["auto", "auto", "home", "travel"] * 6
    meta = [{"query": "q", "vertical": v} for v in verticals]
    clean = [f"Title: {w.title()} Deals in {c}\nDescription: Compare {w} offers from local {c} sellers."
             for w, c in zip(WORDS, CITIES)]
    stutter = [f"Title: {w.title()} {w.title()} Deals\nDescription: Free {w} {w} checks. Shop now and save big today."
               for w in WORDS]
    base, trained = evaluate(clean, meta, cfg), evaluate(stutter, meta, cfg)
    base.summary = rlgen.summarize(base)
    trained.summary = rlgen.summarize(trained, base)

    for key in ("relate/fluent_rate", "relate/distinct_2", "relate/self_bleu", "relate/compliance_by_vertical/auto"):
        row = trained.summary[key]
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
        assert {"baseline", "diff", "diff_ci_low", "diff_ci_high"} <= set(row)
    clean_words, stutter_words = evaluation.without_labels(clean, cfg), evaluation.without_labels(stutter, cfg)
    assert trained.summary["relate/distinct_2"]["mean"] == pytest.approx(evaluation.distinct_n(stutter_words, 2))
    assert base.summary["relate/self_bleu"]["mean"] == pytest.approx(evaluation.self_bleu(clean_words))
    fluent = trained.summary["relate/fluent_rate"]
    assert (fluent["mean"], fluent["baseline"], fluent["diff"]) == (0.0, 1.0, -1.0)
    assert fluent["diff_ci_high"] == -1.0  # every context got worse: the CI is the point
    # the pasted slogan makes the trained set's bigrams less unique and its ads more alike
    distinct = trained.summary["relate/distinct_2"]
    assert distinct["diff"] < 0 and distinct["diff_ci_low"] <= distinct["diff"] <= distinct["diff_ci_high"]
    assert distinct["diff"] == pytest.approx(evaluation.distinct_n(stutter_words, 2) - evaluation.distinct_n(clean_words, 2))
    # the report's paired difference is the core's
    diff = rlgen.paired_difference(trained, base, "relate/distinct_2")
    assert diff["diff"] == pytest.approx(distinct["diff"]) and diff["ci_high"] < 0
    bleu = trained.summary["relate/self_bleu"]
    assert bleu["diff_ci_low"] > 0  # more alike, with confidence
    # compliance by vertical: auto is 12 of the 24 ads, each vertical's rate is its own ads' mean
    auto = [c for c, v in zip(trained.per_sample["relate/compliance_rate"], verticals) if v == "auto"]
    assert trained.summary["relate/compliance_by_vertical/auto"]["mean"] == pytest.approx(sum(auto) / len(auto))
    from rlgen.evaluate import markdown_table

    table = markdown_table(trained.summary)
    assert "| relate/fluent_rate | 0 | [0, 0] | 1 | -1 [-1, -1] |" in table
