"""The demo: simulator and predicted CTCVR as eval metrics, and the whole pipeline at toy scale.

data -> simulator logs -> CTCVR model -> base eval -> a few RELATE steps -> trained eval -> report, on the
tiny random Llama; the report files must exist and parse (about 20 s on two shared cores, so not marked
slow).
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

import rlgen
from rlgen.config import load_config
from rlgen_relate import evaluation
from rlgen_relate.lab.demo import QUICK, run_demo, spread

CONTEXT = {
    "id": "sa-travel-001", "vertical": "travel", "advertiser": "Harbor Air", "query": "cheap flights to rome",
    "bid_word": "rome flights", "selling_points": ["Fares from $49", "300 airlines compared", "No booking fees"],
    "landing_page": "Rome flights from $49. We compare 300 airlines. No booking fees. Book online today.",
}
GOOD = "Title: Rome Flights From $49\nDescription: Compare 300 airlines, no booking fees. Book online today."
RISKY = "Title: The Best Rome Flights\nDescription: Guaranteed lowest price on 300 airlines. Book online today."
NO_LAYOUT = "Cheap flights to Rome from $49, compare 300 airlines and book online today"


def relate_config(**ctcvr_params):
    rewards = [{"name": "relate.risk"}, {"name": "relate.format"}]
    if ctcvr_params:
        rewards.append({"name": "relate.ctcvr", "params": ctcvr_params})
    return load_config({"data": {"path": "x.jsonl", "prompt_template": "{query}"}, "rewards": rewards})


def test_simulator_ctcvr_is_zero_for_ads_review_rejects():
    out = evaluation.ctcvr_eval_metrics(texts=[GOOD, RISKY, NO_LAYOUT], meta=[CONTEXT] * 3, group=[0, 1, 2],
                                        rewards={}, config=relate_config())
    assert out["relate/sim_shown_rate"] == [1.0, 0.0, 0.0]
    assert out["relate/sim_ctcvr"][0] > 0.0 and out["relate/sim_ctcvr"][1:] == [0.0, 0.0]
    assert 0 < out["relate/sim_ctcvr"][0] < out["relate/sim_ctr"][0] < 0.5  # p_click * p_conv < p_click
    assert "relate/pred_ctcvr" not in out  # no relate.ctcvr reward in this run


def test_simulator_metrics_need_ad_contexts():
    assert evaluation.ctcvr_eval_metrics(texts=[GOOD], meta=[{}], group=[0], rewards={}, config=relate_config()) is None


@pytest.mark.parametrize("scale", ["raw", "log", "standardised"])
def test_predicted_ctcvr_undoes_the_reward_scale(tmp_path, scale):
    stats = {"log_pctr_mean": -3.0, "log_pctr_std": 0.5, "log_pctcvr_mean": -6.0, "log_pctcvr_std": 2.0}
    (tmp_path / "config.json").write_text(json.dumps({"score_stats": stats}))
    p = 0.004
    value = {"raw": p, "log": math.log(p), "standardised": (math.log(p) + 6.0) / 2.0}[scale]
    config = relate_config(model=str(tmp_path), scale=scale)
    out = evaluation.ctcvr_eval_metrics(texts=[GOOD], meta=[CONTEXT], group=[0], rewards={"relate.ctcvr": [value]},
                                        config=config)
    assert out["relate/pred_ctcvr"] == [pytest.approx(p)]


def test_both_hook_implementations_answer_rlgen_eval():
    results = rlgen.registry().pm.hook.rlgen_eval_metrics(texts=[GOOD, RISKY], meta=[CONTEXT] * 2, group=[0, 1],
                                                          rewards={}, config=relate_config())
    keys = set().union(*(r for r in results if r))
    assert {"relate/compliance_rate", "relate/diversity", "relate/sim_ctcvr", "relate/sim_ctr"} <= keys


def test_spread_spans_the_file():
    rows = [{"i": i} for i in range(10)]
    assert [r["i"] for r in spread(rows, 4)] == [0, 2, 5, 7]
    assert spread(rows, 20) == rows


TOY = dataclasses.replace(
    QUICK, name="toy", log_contexts=12, impressions_per_context=500, ctcvr_epochs=2, steps=2, eval_contexts=4,
    samples_per_context=1, overrides=QUICK.overrides + ("sampler.params.max_new_tokens=12", "data.prompts_per_step=2"),
)


def test_whole_pipeline_at_toy_scale(tmp_path):
    out = tmp_path / "demo"
    lines: list[str] = []
    record = run_demo(out, schedule=TOY, progress=False, echo=lines.append)
    assert record["status"] == "done"
    assert lines[0].startswith("RELATE demo (toy)") and "expected:" in lines[0]  # told up front what will happen

    # every stage's output exists and parses
    demo = json.loads((out / "demo.json").read_text())
    assert demo["status"] == "done" and set(demo["seconds"]) >= {"data", "logs", "ctcvr", "eval_base", "warm_start",
                                                                 "eval_warm_start", "train", "eval_trained"}
    # the preset's warm start: its own stage, evaluated, and the start of RL
    assert demo["warm_start"]["kept"] > 0 and (out / "eval" / "warm_start" / "eval.json").exists()
    assert (out / "run" / "warm_start" / "policy" / "model.safetensors").is_file()
    assert any(line.strip().startswith("[5/9] warm start") for line in lines)
    assert (out / "data" / "train.jsonl").stat().st_size > 0
    logs = [json.loads(ln) for ln in (out / "logs" / "impressions.jsonl").read_text().splitlines()]
    assert len(logs) == demo["logs"]["rows"] > 0 and {"ad_text", "impressions", "clicks", "conversions"} <= set(logs[0])
    assert (out / "ctcvr" / "config.json").exists() and (out / "ctcvr" / "model.safetensors").exists()
    metrics = [json.loads(ln) for ln in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    # the preset's dynamic sampling: twice the groups sampled, the step trained on the prompts_per_step that differ most
    assert all(m["data/groups_sampled"] == 4 for m in metrics)
    assert any("each on 2 prompts x G = 8 kept from 4 sampled by reward spread" in line for line in lines)
    for name in ("length", "format", "ctcvr", "relevance", "correctness", "risk", "diversity"):
        assert f"reward/relate.{name}/mean" in metrics[0]
    assert (out / "run" / "policy" / "config.json").exists()

    base = json.loads((out / "eval" / "base" / "eval.json").read_text())
    trained = json.loads((out / "eval" / "trained" / "eval.json").read_text())
    for key in ("relate/compliance_rate", "relate/format_pass_rate", "relate/sim_ctcvr", "relate/pred_ctcvr",
                "relate/diversity", "reward/relate.relevance"):
        assert key in base["summary"] and key in trained["summary"]
    assert "baseline" in trained["summary"]["relate/pred_ctcvr"]  # compared with the base (Eq. 10)
    # distinct-2 and self-BLEU come with CIs and paired differences; compliance per vertical of the contexts
    for key in ("relate/distinct_2", "relate/self_bleu", "relate/fluent_rate"):
        assert {"ci_low", "ci_high", "diff", "diff_ci_low", "diff_ci_high"} <= set(trained["summary"][key])
    verticals = {s["context"]["vertical"] for s in base["samples"]}
    assert {f"relate/compliance_by_vertical/{v}" for v in verticals} <= set(trained["summary"])
    assert len(base["weights"]["relate/distinct_2"]) == len(base["samples"])
    assert len(base["samples"]) == len(trained["samples"]) == 4

    for png in ("rewards.png", "training.png"):
        assert (out / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    pairs = (out / "ads_before_after.jsonl").read_text().splitlines()
    assert len(pairs) == 4 and {"context", "base", "trained"} == set(json.loads(pairs[0]))
    report = (out / "report.md").read_text()
    for section in ("## What was run", "## Does the trained policy beat the base?", "## Evaluation: base vs trained",
                    "## Base, warm start, trained",
                    "## Compliance by vertical", "## Predicted vs simulator CTCVR", "## Training curves", "## Sample ads, before and after"):
        assert section in report
    assert "![rewards](plots/rewards.png)" in report and "| Compliance rate" in report
    assert "kept from 4 sampled by reward spread (data.oversample 2, rank: total)" in report
    # the preset's two warm-start rounds, each accounted for
    assert [r["round"] for r in demo["warm_start"]["rounds"]] == [1, 2]
    assert "2 rounds: the base, then each round's fine-tuned policy" in report and "round 2: " in report
    assert "| Fluent (no stutter or repeated phrase) |" in report and "no CI: one number per set" not in report
    assert all(f"| {v} |" in report for v in verticals)

    # a second run into the same folder replaces the first instead of failing on its checkpoints; with a time
    # limit the earlier stages used up, training runs at least one of its 50 steps, stops, and the report says so
    again = run_demo(out, schedule=dataclasses.replace(TOY, steps=50), progress=False, echo=lines.append,
                     time_limit_s=1.0)
    assert again["status"] == "done" and 1 <= again["train"]["steps"] < 50
    assert len((out / "run" / "metrics.jsonl").read_text().splitlines()) == again["train"]["steps"]
    assert "of 50 planned: stopped by the time limit" in (out / "report.md").read_text()


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(rlgen.RlgenError, match="not a demo folder"):
        run_demo(tmp_path, schedule=TOY, progress=False, echo=lambda s: None)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_compliance_by_vertical_section_judges_only_verticals_with_enough_contexts():
    from rlgen_relate.lab import report

    meta = [{"query": "q", "vertical": "travel"}] * 6 + [{"query": "q", "vertical": "auto"}] * 2
    cfg = relate_config()

    def result(texts):
        out = evaluation.rlgen_eval_metrics(texts=texts, meta=meta, group=list(range(8)), config=cfg)
        per_sample = {k: v["values"] if isinstance(v, dict) else v for k, v in out.items()}
        weights = {k: v["weights"] for k, v in out.items() if isinstance(v, dict)}
        return rlgen.EvalResult(per_sample, {}, texts, meta, list(range(8)), weights=weights)

    base, trained = result([NO_LAYOUT] * 8), result([GOOD] * 8)  # every ad becomes compliant
    base.summary, trained.summary = rlgen.summarize(base), rlgen.summarize(trained, base)
    section = report.vertical_compliance_section(base, trained)
    assert "| travel | 6 | 0.0% | 100.0% | +100.0 pp [+100.0, +100.0] | **better** |" in section
    assert "| auto | 2 | 0.0% | 100.0% | +100.0 pp | too few contexts for a verdict (< 5) |" in section
    assert "better with confidence in 1 (travel)" in section
