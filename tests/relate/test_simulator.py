"""The click/conversion simulator: each feature moves the probabilities the documented way, review, fatigue,
logs (aggregated == per-impression summed), measurement and determinism."""

from __future__ import annotations

import collections
import json
import time

import numpy as np
import pytest

from rlgen.data import read_records
from rlgen_relate.searchads import generate_contexts
from rlgen_relate.lab.simulator import (
    KINDS,
    Simulator,
    SimulatorConfig,
    candidate_ads,
    measure,
    true_probabilities,
    write_logs,
)
from rlgen_relate.lab.simulator.cli import main as simulate_main, measure_file
from rlgen_relate.lab.simulator.fatigue import fatigue_multipliers, near_duplicate_share
from rlgen_relate.lab.simulator.features import REJECT_RE

CTX = {
    "id": "hand-1",
    "vertical": "dental",
    "query": "teeth whitening near me",
    "bid_word": "teeth whitening",
    "selling_points": [
        "In-office whitening from $249",
        "Visible results in one 60-minute visit",
        "Custom take-home trays included",
    ],
    "landing_page": (
        "Brightside Dental | Teeth whitening in Austin. In-office whitening from $249. Visible results in one "
        "60-minute visit. Custom take-home trays included. Book online."
    ),
}
GOOD = "Title: Teeth Whitening from $249\nDescription: Visible results in one 60-minute visit. Book online today."
VAGUE = "Title: Quality You Can Trust\nDescription: We offer great solutions for all your needs. Learn more."
# without per-ad noise, a single feature's effect is exact; the default model adds seeded noise on top
NO_NOISE = SimulatorConfig(ad_sigma=0.0, context_sigma=0.0)


def probs(*ads: str, config: SimulatorConfig = NO_NOISE, fatigue: bool = False) -> tuple[np.ndarray, np.ndarray]:
    return true_probabilities([CTX] * len(ads), list(ads), config=config, fatigue=fatigue)


def test_good_ad_beats_vague_ad():
    for config in (NO_NOISE, SimulatorConfig()):
        p_click, p_conv = probs(GOOD, VAGUE, config=config)
        assert p_click[0] > 2.5 * p_click[1]
        assert p_conv[0] > 1.5 * p_conv[1]
    # within the per-vertical base-rate ranges the docs state (CTR 1-8%, CVR 2-15% for an ordinary ad)
    base_ctr, base_cvr = SimulatorConfig().base_rates["dental"]
    assert 0.01 <= base_ctr <= 0.08 and 0.02 <= base_cvr <= 0.15


def test_query_match_raises_clicks():
    on = "Title: Teeth Whitening Today\nDescription: Results in one 60-minute visit. Book online today."
    off = "Title: Gentle Family Dentistry\nDescription: Results in one 60-minute visit. Book online today."
    p_click, p_conv = probs(on, off)
    assert p_click[0] > 1.2 * p_click[1] and p_conv[0] > p_conv[1]
    f = Simulator(NO_NOISE).features([CTX, CTX], [on, off])
    assert f[0].bid_in_title and not f[1].bid_in_title and f[0].relevance > f[1].relevance + 0.2


def test_concrete_selling_points_raise_clicks_and_conversions():
    concrete = "Title: Teeth Whitening\nDescription: In-office whitening from $249, results in one 60-minute visit."
    generic = "Title: Teeth Whitening\nDescription: Professional whitening with friendly and caring dental staff."
    p_click, p_conv = probs(concrete, generic)
    assert p_click[0] > 1.2 * p_click[1] and p_conv[0] > 1.1 * p_conv[1]
    f = Simulator(NO_NOISE).features([CTX, CTX], [concrete, generic])
    assert (f[0].cited, f[0].concrete) == (2, 2) and (f[1].cited, f[1].concrete) == (0, 0)


def test_call_to_action_raises_clicks():
    base = "Title: Teeth Whitening from $249\nDescription: Visible results in one 60-minute visit."
    p_click, p_conv = probs(base + " Book online today.", base + " Learn more.", base)
    assert p_click[0] > p_click[1] > p_click[2]
    assert p_conv[0] > p_conv[2]


@pytest.mark.parametrize(
    "claim",
    ["Best Teeth Whitening", "No. 1 Whitening Clinic", "Guaranteed White Teeth", "100% Whiter Teeth", "Cure Stains Today", "#1 Whitening"],
)
def test_risky_claims_fail_review(claim):
    ad = f"Title: {claim}\nDescription: Visible results in one 60-minute visit. Book online today."
    a = Simulator(NO_NOISE).assess([CTX, CTX], [ad, GOOD], fatigue=False)
    assert a.p_click[0] == 0.0 and a.p_conv[0] == 0.0 and a.p_ctcvr[0] == 0.0
    assert a.features[0].rejected == ["risky_claim"]
    assert a.p_click[1] > 0 and a.features[1].rejected == []
    assert REJECT_RE.search("bestseller") is None  # whole words only


@pytest.mark.parametrize(
    ("ad", "reason"),
    [
        ("Teeth whitening from $249. Book online today.", "layout"),
        ("Title: Teeth Whitening\n", "layout"),
        ("Title: Teeth Whitening ✨\nDescription: From $249. Book online today.", "emoji"),
        ("**Title:** Teeth Whitening\nDescription: From $249. Book online today.", "markup"),
        ("Title: Teeth Whitening in [City]\nDescription: From $249. Book online today.", "placeholder"),
    ],
)
def test_malformed_ads_fail_review(ad, reason):
    a = Simulator(NO_NOISE).assess([CTX], [ad], fatigue=False)
    assert reason in a.features[0].rejected and a.p_click[0] == 0.0


def test_length_and_format():
    fits = "Title: Teeth Whitening from $249\nDescription: Visible results in one 60-minute visit. Book online today."
    too_long = (
        "Title: Professional Teeth Whitening at Brightside Dental\nDescription: Visible results in one 60-minute "
        "visit with custom take-home trays and friendly staff. Book online today."
    )
    thin = "Title: Whitening\nDescription: Call us."
    chatter = "Sure! Here is your ad:\n" + fits
    f = Simulator(NO_NOISE).features([CTX] * 4, [fits, too_long, thin, chatter])
    assert not f[0].truncated and f[1].truncated and f[2].thin and f[3].sloppy
    assert len(f[1].title) <= 30 and f[1].title.endswith("…") and len(f[1].description) <= 90
    assert f[1].cta == 0  # the call to action fell past the cut: users never see it
    p_click, _ = probs(fits, too_long, thin, chatter)
    assert p_click[0] > p_click[1] and p_click[0] > p_click[2] and p_click[0] > p_click[3] > 0


def test_unsupported_numbers_and_hype_cost_conversions():
    made_up = "Title: Teeth Whitening from $99\nDescription: Save 50% this week. Results in 30 minutes. Book online today."
    hype = "Title: Amazing Teeth Whitening!!\nDescription: Incredible results, act now! From $249. Book online today."
    p_click, p_conv = probs(GOOD, made_up, hype)
    f = Simulator(NO_NOISE).features([CTX] * 2, [made_up, hype])
    assert f[0].unsupported == 3 and f[1].hype >= 3
    assert p_conv[1] < 0.5 * p_conv[0] and p_conv[2] < 0.5 * p_conv[0]
    assert p_click[2] < p_click[0]


def test_shouting_costs_clicks():
    shouting = "Title: TEETH WHITENING\nDescription: Visible results in one 60-minute visit. BOOK ONLINE TODAY."
    p_click, _ = probs(GOOD.replace("from $249", ""), shouting)
    assert p_click[1] < p_click[0]


def test_stutter_costs_clicks_and_gimmicky_repetition_fails_review():
    clean = "Title: Teeth Whitening Today\nDescription: Visible results in one 60-minute visit. Book online today."
    stutters = [
        "Title: Teeth Whitening Whitening\nDescription: Visible results in one 60-minute visit. Book online today.",
        "Title: Teeth Whitening Today\nDescription: Visible visible results in one 60-minute visit. Book online today.",
        "Title: Teeth Whitening Today\nDescription: Book online book online. Visible results in one 60-minute visit.",
    ]
    p_click, p_conv = probs(clean, *stutters)
    f = Simulator(NO_NOISE).features([CTX] * 4, [clean, *stutters])
    assert [x.stutter for x in f] == [0, 1, 1, 1]
    for i in (1, 2, 3):
        assert p_click[i] < 0.75 * p_click[0] and p_conv[i] < p_conv[0]
    # two stutters cost more than one; an inflection of the same word is a stutter too
    both = "Title: Whitening Whitening\nDescription: Visible visible results in one 60-minute visit. Book online today."
    inflected = "Title: Teeth Whitening Whiten\nDescription: Visible results in one 60-minute visit. Book online today."
    p2, _ = probs(stutters[0], both, inflected)
    assert p2[1] < p2[0] and Simulator(NO_NOISE).features([CTX], [inflected])[0].stutter == 1
    # the same word three times in a row is the gimmicky repetition editorial review disapproves
    gimmick = "Title: Whitening Whitening Whitening\nDescription: Visible results in one 60-minute visit. Book online."
    a = Simulator(NO_NOISE).assess([CTX], [gimmick], fatigue=False)
    assert a.features[0].rejected == ["repetition"] and a.p_click[0] == 0.0
    # numbers and words that only share letters are not stutter
    fine = "Title: Care Careers in Dentistry\nDescription: Call 555 555 0100. Visible results in one 60-minute visit."
    assert Simulator(NO_NOISE).features([CTX], [fine])[0].stutter == 0


def test_keyword_stuffing_does_not_raise_relevance():
    once = "Title: Teeth Whitening Near You\nDescription: In-office whitening from $249. Book online today."
    stuffed = "Title: Teeth Whitening Near You\nDescription: Teeth whitening, teeth whitening from $249. Whitening today."
    keywords_only = "Title: Teeth Whitening\nDescription: Teeth whitening teeth whitening whitening teeth near me."
    f = Simulator(NO_NOISE).features([CTX] * 3, [once, stuffed, keywords_only])
    assert f[0].stuffing == 0 and f[1].stuffing >= 2 and f[2].stuffing >= 2
    # using the searcher's words once already covers them: saying them again adds nothing
    assert f[1].relevance <= f[0].relevance + 1e-9 and f[2].relevance <= f[0].relevance + 1e-9
    p_click, _ = probs(once, stuffed, keywords_only)
    assert p_click[1] < p_click[0] and p_click[2] < p_click[0]


def _dealer(k: int, advertiser: str = "Brightside Dental") -> dict:
    return {**CTX, "id": f"ctx-{advertiser}-{k}", "advertiser": advertiser, "query": ["teeth whitening near me",
            "teeth whitening cost", "same day teeth whitening"][k]}


def test_boilerplate_across_an_advertisers_ads_costs_clicks():
    shared = "Custom take-home trays included."
    ads = [
        f"Title: Teeth Whitening Near You\nDescription: In-office whitening from $249. {shared}",
        f"Title: Teeth Whitening Prices\nDescription: Whitening from $249, results in 60 minutes. {shared}",
        "Title: Same-Day Teeth Whitening\nDescription: One 60-minute visit, from $249. Book online today.",
    ]
    contexts = [_dealer(k) for k in range(3)]
    a = Simulator(NO_NOISE).assess(contexts, ads)
    # 5 of the first ad's 14 displayed words are in a sentence the advertiser's second ad also shows
    assert a.features[0].boilerplate == pytest.approx(5 / 14) and a.features[1].boilerplate > 0
    assert a.features[2].boilerplate == 0.0
    # the same ads from three different advertisers: nobody sees the sentence twice
    apart = Simulator(NO_NOISE).assess([_dealer(k, f"Dentist {k}") for k in range(3)], ads)
    assert [x.boilerplate for x in apart.features] == [0.0, 0.0, 0.0]
    assert a.p_click[0] < apart.p_click[0] and a.p_click[2] == pytest.approx(apart.p_click[2])
    # short sentences ("Book online today.") are ordinary copy, and rejected ads show nothing to skim
    rejected = [ads[0], ads[1].replace("results in", "guaranteed results in"), ads[2]]
    b = Simulator(NO_NOISE).assess(contexts, rejected)
    assert b.features[1].rejected and b.features[0].boilerplate == 0.0
    # one context's ad repeated is fatigue's business, not boilerplate
    assert Simulator(NO_NOISE).assess([contexts[0]] * 2, [ads[0]] * 2).features[0].boilerplate == 0.0


def test_fatigue_penalises_near_duplicates():
    contexts = [c for c in generate_contexts(0)[:60]]
    same = [VAGUE] * len(contexts)
    mult = fatigue_multipliers(same)
    assert np.allclose(mult, np.exp(-2.0 * (1.0 - 0.02)))
    # a template with the bid word swapped in is still a near-duplicate
    template = [f"Title: {c['bid_word'].title()[:30]}\nDescription: Quality service at fair prices. Call today." for c in contexts]
    shares = near_duplicate_share(template)
    assert shares.mean() > 0.3
    distinct = [text for c in contexts for kind, text in candidate_ads(c, 0) if kind == "good"]
    assert near_duplicate_share(distinct).mean() < 0.05
    # the same ad earns fewer clicks in a set full of its duplicates than in a varied set
    mixed = distinct[: len(contexts) - 1] + [VAGUE]
    alone = Simulator().assess(contexts, mixed).p_click[-1]
    crowded = Simulator().assess(contexts, same).p_click[-1]
    assert crowded < 0.3 * alone
    # ads that review rejects are never shown, so they cause no fatigue
    risky = ["Title: Best Deals\nDescription: Guaranteed results. Book online today."] * (len(contexts) - 1) + [VAGUE]
    a = Simulator().assess(contexts, risky)
    assert a.fatigue[-1] == 1.0


def test_sampled_fatigue_estimates_the_exact_share():
    texts = [VAGUE] * 300 + [f"Title: Ad {i}\nDescription: unique words number {i} here {i * 7}" for i in range(700)]
    exact = near_duplicate_share(texts)
    sampled = near_duplicate_share(texts, max_reference=400, seed=1)
    assert abs(exact[:300].mean() - sampled[:300].mean()) < 0.06
    assert sampled[300:].max() < 0.02


def test_noise_is_seeded():
    contexts = generate_contexts(0)[:40]
    ads = [text for c in contexts for kind, text in candidate_ads(c, 0) if kind == "good"]
    a1 = true_probabilities(contexts, ads, seed=5)
    a2 = true_probabilities(contexts, ads, seed=5)
    b = true_probabilities(contexts, ads, seed=6)
    assert np.array_equal(a1[0], a2[0]) and np.array_equal(a1[1], a2[1])
    assert not np.allclose(a1[0], b[0])
    assert np.all((a1[0] > 0) & (a1[0] <= 0.5)) and np.all((a1[1] > 0) & (a1[1] <= 0.6))
    with pytest.raises(ValueError, match="one context per ad"):
        true_probabilities(contexts, ads[:-1])


def test_candidate_pool_spans_quality():
    contexts = generate_contexts(0)
    sample = contexts[::13][:80]
    ctx, ads, kinds = [], [], []
    for i, c in enumerate(sample):
        for kind, text in candidate_ads(c, 0, other=sample[(i + 7) % len(sample)]):
            ctx.append(c)
            ads.append(text)
            kinds.append(kind)
    assert set(kinds) == set(KINDS)
    m = measure(ctx, ads, impressions_per_ad=4000, seed=0)
    by_kind = collections.defaultdict(list)
    for k, v in zip(kinds, m.p_ctcvr):
        by_kind[k].append(v)
    mean = {k: float(np.mean(v)) for k, v in by_kind.items()}
    assert mean["risky"] == 0.0
    assert mean["good"] > 2 * mean["hype"] and mean["good"] > 3 * mean["vague"] and mean["good"] > 3 * mean["off_topic"]
    assert mean["good"] > mean["no_cta"] and mean["good"] > mean["unsupported"] and mean["good"] > mean["too_long"]


def test_logs_aggregate_consistently_and_hide_internals(tmp_path):
    contexts = [c for c in generate_contexts(0) if c["split"] == "train"][::40]
    agg = write_logs(tmp_path / "agg.jsonl", contexts, seed=3, impressions_per_context=150)
    imp = write_logs(tmp_path / "imp.jsonl", contexts, per_impression=True, seed=3, impressions_per_context=150)
    agg_rows = read_records(agg.path)
    imp_rows = read_records(imp.path)
    assert len(imp_rows) == imp.rows == agg.impressions == imp.impressions
    summed = collections.defaultdict(lambda: [0, 0, 0])
    for r in imp_rows:
        s = summed[(r["context_id"], r["ad_id"])]
        s[0] += 1
        s[1] += r["click"]
        s[2] += r["conversion"]
        assert r["conversion"] <= r["click"]
    assert {(r["context_id"], r["ad_id"]): [r["impressions"], r["clicks"], r["conversions"]] for r in agg_rows} == dict(summed)
    base = {"context_id", "vertical", "query", "bid_word", "selling_points", "landing_page", "ad_id", "ad_text"}
    assert all(set(r) == base | {"impressions", "clicks", "conversions"} for r in agg_rows)
    assert all(set(r) == base | {"click", "conversion"} for r in imp_rows)
    # rejected candidates never reach the logs; everything else does, with outcomes in range
    assert agg.ads_rejected >= len(contexts)
    assert not any(REJECT_RE.search(r["ad_text"].lower()) for r in agg_rows)
    assert all(0 <= r["conversions"] <= r["clicks"] <= r["impressions"] and r["impressions"] > 0 for r in agg_rows)
    assert 0.01 < agg.clicks / agg.impressions < 0.2 and agg.conversions > 0
    # deterministic in the seed
    again = write_logs(tmp_path / "again.jsonl", contexts, seed=3, impressions_per_context=150)
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "agg.jsonl").read_bytes() and again.rows == agg.rows
    other = write_logs(tmp_path / "other.jsonl", contexts, seed=4, impressions_per_context=150)
    assert (tmp_path / "other.jsonl").read_bytes() != (tmp_path / "agg.jsonl").read_bytes() and other.rows > 0


def test_logs_carry_signal_on_quality(tmp_path):
    """Grouping the written logs by what the ads contain recovers the simulator's preferences."""
    contexts = [c for c in generate_contexts(0) if c["split"] == "train"][::6]
    summary = write_logs(tmp_path / "logs.jsonl", contexts, seed=0, impressions_per_context=1500)
    rows = read_records(summary.path)
    stock = [r for r in rows if r["ad_text"].startswith("Title: Great Deals Available")]
    on_query = [r for r in rows if r["bid_word"].lower() in r["ad_text"].lower() and "$" in r["ad_text"]]
    rate = lambda rs: sum(r["conversions"] for r in rs) / sum(r["impressions"] for r in rs)  # noqa: E731
    assert stock and on_query and rate(on_query) > 3 * rate(stock)


def test_measure_counts_and_expectations():
    contexts = generate_contexts(0)[:100]
    ads = [text for c in contexts for kind, text in candidate_ads(c, 0) if kind == "good"]
    m = measure(contexts, ads, impressions_per_ad=20000, seed=1)
    o = m.overall()
    assert o["ads"] == 100 and o["impressions"] == 2_000_000 and o["shown_rate"] == 1.0
    assert abs(o["ctcvr"] - o["ctcvr_true"]) < 0.15 * o["ctcvr_true"]
    assert abs(o["ctr"] - o["ctr_true"]) < 0.05 * o["ctr_true"]
    assert np.array_equal(measure(contexts, ads, 20000, seed=1).conversions, m.conversions)
    # a rejected ad keeps its impression opportunities but earns nothing
    risky = list(ads)
    risky[0] = "Title: Best Price Anywhere\nDescription: Guaranteed. Book online today."
    r = measure(contexts, risky, impressions_per_ad=1000, seed=1)
    assert r.clicks[0] == 0 and r.impressions[0] == 1000 and r.rejected[0] == ["risky_claim"]
    assert r.overall()["shown_rate"] == 0.99
    per_ad = r.per_ad()[1]
    assert set(per_ad) >= {"ctr", "cvr", "ctcvr", "p_click", "p_conv", "p_ctcvr", "rejected"}
    with pytest.raises(ValueError):
        measure(contexts, ads, impressions_per_ad=0)


def test_scores_thousands_of_ads_per_second():
    contexts = generate_contexts(0)[:200]
    ctx, ads = [], []
    for c in contexts:
        for _, text in candidate_ads(c, 0):
            ctx.append(c)
            ads.append(text)
    start = time.process_time()
    Simulator().assess(ctx, ads)
    rate = len(ads) / (time.process_time() - start)
    assert rate > 1000, f"{rate:.0f} ads/s"


def test_cli_and_measure_file(tmp_path, capsys):
    contexts = generate_contexts(0)[:12]
    (tmp_path / "ctx.jsonl").write_text("".join(json.dumps(c) + "\n" for c in contexts))
    assert simulate_main(["logs", "--contexts", str(tmp_path / "ctx.jsonl"), "--out", str(tmp_path / "l.jsonl"), "--impressions", "50"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"] == len(read_records(tmp_path / "l.jsonl")) and printed["contexts"] == 12
    # the shape `rlgen generate` writes: context fields plus a list of ads
    gen = [{**c, "ads": [GOOD, VAGUE]} for c in contexts]
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
    overall = measure_file(tmp_path / "gen.jsonl", impressions_per_ad=500, out=tmp_path / "per_ad.jsonl")
    assert overall["ads"] == 24
    per_ad = read_records(tmp_path / "per_ad.jsonl")
    assert len(per_ad) == 24 and per_ad[0]["context_id"] == contexts[0]["id"] and per_ad[0]["ad_text"] == GOOD
    assert simulate_main(["measure", "--ads", str(tmp_path / "gen.jsonl"), "--impressions", "100"]) == 0
    assert json.loads(capsys.readouterr().out)["ads"] == 24
    assert simulate_main(["kinds", "--contexts", str(tmp_path / "ctx.jsonl"), "--impressions", "50"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| candidate kind") and any(line.startswith("| risky | 0% |") for line in table)
