"""The ablation's Table 3 / Figure 3 writers on synthetic metrics, and its weight-0 reward monitors."""

from __future__ import annotations

import json
import re

import pytest
import yaml
import torch

import rlgen
from rlgen_relate.lab import ablation
from rlgen_relate.credit import CreditAssignment
from rlgen_relate.presets import NAMES, preset


def summary(length, fmt, sim_ctcvr, diversity, correctness, relevance, risk, pred=None):
    s = {"reward/relate.length": length, "reward/relate.format": fmt, "relate/sim_ctcvr": sim_ctcvr,
         "relate/diversity": diversity, "reward/relate.correctness": correctness,
         "reward/relate.relevance": relevance, "reward/relate.risk": risk}
    if pred is not None:
        s["relate/pred_ctcvr"] = pred
    return {k: {"mean": v, "ci_low": v - 0.1, "ci_high": v + 0.1} for k, v in s.items()}


def paper_rows():
    return {n: dict(v) for n, v in ablation.PAPER_TABLE_3.items()}


def test_table3_row_uses_the_paper_groupings():
    row = ablation.table3_row(summary(1.0, 0.5, 0.004, 0.9, -0.2, 0.5, -0.3, pred=0.006))
    assert row["structural"] == pytest.approx(0.75)  # mean of length and format
    assert row["ctcvr"] == pytest.approx(0.4)  # simulator CTCVR in percent
    assert row["pred_ctcvr"] == pytest.approx(0.6)
    assert row["diversity"] == pytest.approx(0.9)
    assert row["semantic"] == pytest.approx(0.0)  # mean of correctness, relevance, risk


def test_table3_row_refuses_an_evaluation_without_the_full_reward_set():
    partial = summary(1, 1, 0.1, 1, 0, 0, 0)
    del partial["reward/relate.relevance"]
    with pytest.raises(rlgen.RlgenError, match="reward/relate.relevance"):
        ablation.table3_row(partial)


def test_same_ordering_as_the_paper_reports_no_disagreement():
    notes = ablation.compare_with_paper(paper_rows())
    assert len(notes) == 4
    assert all("same ordering as the paper" in n for n in notes)


def test_a_flipped_pair_is_named():
    rows = paper_rows()
    rows["relate"]["diversity"], rows["model4"]["diversity"] = 0.5, 0.99  # paper: RELATE > Model 4
    notes = dict(zip([c for c, _ in ablation.COLUMNS], ablation.compare_with_paper(rows)))
    assert "disagrees with the paper" in notes["diversity"]
    assert "RELATE > Model 4" in notes["diversity"]
    assert "same ordering" in notes["structural"]


def test_writer_produces_table_figure_and_report(tmp_path):
    rows = paper_rows()
    rows["base"] = {"structural": 0.1, "ctcvr": 0.01, "diversity": 0.2, "semantic": 0.3, "pred_ctcvr": 0.02}
    rows["model2"]["ctcvr"] = 0.0  # now Model 1 beats Model 2 on CTCVR, against the paper
    curves = {}
    for k, name in enumerate(NAMES):
        curves[name] = [{"step": s, "reward/relate.length/mean": 0.1 * s + k, "reward/relate.format/mean": -1 + 0.2 * s,
                         "reward/total/mean": float(s)} for s in range(1, 6)]
    path = ablation.write_ablation_report(tmp_path, rows, curves, step=5, info={"seed": 3, "schedule": {"model": "m"}})
    table = (tmp_path / "table3.md").read_text()
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert len(lines) == 2 + 6  # header, separator, five configurations and the base
    assert "| Model 1 | **0.937** |" in table  # best structural quality of the five in bold
    assert "base policy" in table
    png = (tmp_path / "figure3.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "figure3.png").shape[0] > 300
    report = path.read_text()
    assert "CTCVR (%): disagrees with the paper" in report and "Model 2 > Model 1" in report
    assert "![figure 3](figure3.png)" in report
    data = json.loads((tmp_path / "ablation.json").read_text())
    assert data["step"] == 5 and data["rows"]["model1"]["structural"] == pytest.approx(0.937)


def test_monitor_rewards_do_not_change_the_training_signal(tmp_path):
    full = preset("relate", ctcvr_model=str(tmp_path))
    raw = ablation.with_monitors(preset("model1", ctcvr_model=str(tmp_path)), full)
    weights = {r["name"]: r["weight"] for r in raw["rewards"]}
    assert set(weights) == {r["name"] for r in full["rewards"]}
    model1 = {"relate.length", "relate.format", "relate.overflow"}
    assert all(weights[n] > 0 for n in model1)
    assert all(w == 0.0 for n, w in weights.items() if n not in model1)

    # relate.credit with the zero-weight monitors gives exactly the advantages of the rewards alone
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    rollout = rlgen.Rollout(
        texts=["a b c"] * 6, completion_ids=torch.ones(6, 3, dtype=torch.long), completion_mask=torch.ones(6, 3, dtype=torch.bool),
        group=group, prompt_ids=torch.ones(6, 1, dtype=torch.long), prompt_mask=torch.ones(6, 1, dtype=torch.bool),
    )
    gen = torch.Generator().manual_seed(0)
    trained = {"relate.length": rlgen.RewardResult(torch.rand(6, generator=gen), granularity="sentence"),
               "relate.format": rlgen.RewardResult(torch.rand(6, generator=gen), granularity="sentence"),
               "relate.overflow": rlgen.RewardResult(-torch.rand(6, 3, generator=gen), granularity="token")}
    monitors = {"relate.ctcvr": rlgen.RewardResult(torch.rand(6, generator=gen), granularity="sentence"),
                "relate.risk": rlgen.RewardResult(-torch.rand(6, 3, generator=gen), granularity="token")}
    combiner = CreditAssignment(CreditAssignment.Params(**raw["advantage"]["params"]))
    alone = combiner.combine(rollout, trained, {k: weights[k] for k in trained})
    with_mon = combiner.combine(rollout, {**trained, **monitors}, {k: weights[k] for k in {**trained, **monitors}})
    assert torch.equal(alone, with_mon)


def test_ablation_runs_end_to_end_at_toy_scale(tmp_path):
    """Two configurations, one step each, on the tiny Llama: every file of the report is written."""
    import dataclasses

    from rlgen_relate.lab.demo import QUICK

    toy = dataclasses.replace(QUICK, name="toy", log_contexts=8, impressions_per_context=300, ctcvr_epochs=1, steps=1,
                              eval_contexts=3, overrides=QUICK.overrides + ("sampler.params.max_new_tokens=8",))
    lines: list[str] = []
    path = ablation.run_ablation(tmp_path, configs=["model1", "relate"], schedule=toy, progress=False, echo=lines.append)
    data = json.loads((tmp_path / "ablation.json").read_text())
    assert set(data["rows"]) == {"base", "warm_start", "model1", "relate"}
    # the preset's warm start is made once and every configuration trains from it (the paper's shared cold start)
    start = tmp_path / "warm_start" / "run" / "warm_start" / "policy"
    assert (start / "model.safetensors").is_file()
    for name in ("model1", "relate"):
        trained = yaml.safe_load((tmp_path / name / "run" / "config.yaml").read_text())
        assert trained["model"]["path"] == str(start) and not trained["warm_start"]["prompts"]
    assert "| warm start (every model's start) |" in (tmp_path / "table3.md").read_text()
    assert (tmp_path / "figure3.png").read_bytes()[:4] == b"\x89PNG"
    # Model 1 trains on two rewards but logs all seven (weight 0), so Figure 3 has every curve for it
    metrics = json.loads((tmp_path / "model1" / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {f"reward/relate.{n}/mean" for n in ("length", "format", "ctcvr", "diversity")} <= set(metrics)
    assert "| Model 1 (step 1)" not in path.read_text() and "| Model ID (step 1)" in path.read_text()


@pytest.mark.slow
def test_parallel_runs_give_the_sequential_ablation(tmp_path):
    """--jobs 2 trains the runs in two pinned worker processes: the same rows, per seed, as one at a time."""
    import dataclasses
    import os

    from rlgen_relate.lab.demo import QUICK

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 usable cores")
    toy = dataclasses.replace(QUICK, name="toy", log_contexts=8, impressions_per_context=300, ctcvr_epochs=1, steps=2,
                              eval_contexts=3, overrides=QUICK.overrides + ("sampler.params.max_new_tokens=8",))
    data = {}
    for jobs in (1, 2):
        lines: list[str] = []
        ablation.run_ablation(tmp_path / f"jobs{jobs}", configs=["model1", "relate"], schedule=toy, seeds=2, jobs=jobs,
                              progress=False, echo=lines.append)
        data[jobs] = json.loads((tmp_path / f"jobs{jobs}" / "ablation.json").read_text())
        assert any("2 at a time" in line for line in lines) == (jobs == 2)
    assert data[2]["jobs"] == 2 and data[1]["jobs"] == 1
    # the same seeds and data give the same numbers up to float rounding: the MiniLM embedder sums in another order
    # in a worker (relevance differs by ~5e-8), and two training steps carry that into the loss at ~1e-4 relative
    for name, row in data[1]["rows"].items():
        assert data[2]["rows"][name] == pytest.approx(row, rel=1e-5, abs=1e-7)
    timing = ("time/", "_s", "seconds", "tokens_per_s")  # wall-clock readings differ; every value learned must not

    def metrics(jobs: int, name: str, s: int) -> list[dict]:
        lines = (tmp_path / f"jobs{jobs}" / name / f"seed-{s}" / "run" / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if not any(t in k for t in timing)} for x in lines]

    for name in ("model1", "relate"):
        for s in (0, 1):
            assert metrics(2, name, s) == [pytest.approx(row, rel=1e-3, abs=1e-6) for row in metrics(1, name, s)]
        # the tolerance still tells runs apart: a worker that trained the other seed would fail the check above
        assert metrics(1, name, 0) != [pytest.approx(row, rel=1e-3, abs=1e-6) for row in metrics(1, name, 1)]


def test_interval_over_seeds_and_contexts_and_its_paired_difference():
    from rlgen_relate.lab.seed_stats import interval, paired_interval

    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 40, generator=gen, dtype=torch.float64)  # per (seed, context): shared by both policies
    a, b = 1.0 + noise, 0.9 + noise + 0.01 * torch.randn(3, 40, generator=gen, dtype=torch.float64)
    ia, ib = interval(a), interval(b)
    assert ia.ci_low < ia.mean < ia.ci_high and ia.ci_low < ib.mean  # alone, the two intervals overlap
    d = paired_interval(a, b)
    assert d.mean == pytest.approx(float((a - b).mean())) and d.significant and d.ci_low > 0.09  # paired, they do not
    # a seed that disagrees widens the interval: seeds are resampled, not only contexts
    shifted = a.clone()
    shifted[2] += 2.0
    assert interval(shifted).ci_high - interval(shifted).ci_low > 3 * (ia.ci_high - ia.ci_low)
    with pytest.raises(ValueError, match="same"):
        paired_interval(a, b[:2])


def stats_for(means: dict[str, dict[str, float]], spread: float = 0.01):
    """Per-seed per-context values around given column means: 2 seeds x 30 contexts."""
    gen = torch.Generator().manual_seed(1)
    per_seed = {}
    for name, cols in means.items():
        per_seed[name] = [{c: v + spread * torch.randn(30, generator=gen, dtype=torch.float64) for c, v in cols.items()}
                          for _ in range(2)]
    return ablation.seed_statistics(per_seed)


def test_report_says_which_paper_orderings_hold_with_confidence(tmp_path):
    means = {n: {c: v for c, v in ablation.PAPER_TABLE_3[n].items()} for n in NAMES}
    means["relate"]["ctcvr"] = 0.05  # the paper has RELATE above Model 4 (0.184) on CTCVR
    means["model4"]["diversity"] = 0.96  # 0.005 below RELATE: within noise at this spread
    stats = stats_for(means, spread=0.05)
    rows = {n: {c: stats["intervals"][n][c].mean for c in cols} for n, cols in means.items()}
    notes = dict(zip([c for c, _ in ablation.COLUMNS], ablation.compare_with_paper(rows, stats["pairs"])))
    assert "are reversed (the paper has" in notes["ctcvr"] and "RELATE > Model 4" in notes["ctcvr"].split("are reversed")[1]
    assert "0 are reversed" in notes["structural"]
    diff = ablation.pair_difference(stats["pairs"], "relate", "model4", "ctcvr")
    assert diff.mean < 0 and diff.significant
    assert ablation.pair_difference(stats["pairs"], "model4", "relate", "ctcvr").mean == pytest.approx(-diff.mean)

    curves = {n: [[{"step": s, "reward/relate.length/mean": 0.1 * s + k + seed} for s in range(1, 4)] for seed in range(2)]
              for k, n in enumerate(NAMES)}
    path = ablation.write_ablation_report(tmp_path, rows, curves, step=3, info={"seed": 0, "seeds": [0, 1]}, stats=stats)
    report = path.read_text()
    assert "trained at 2 training seeds (0, 1" in report and "## RELATE vs Model 4" in report
    section = report.split("## RELATE vs Model 4")[1]
    ctcvr_line = next(ln for ln in section.splitlines() if ln.startswith("| CTCVR (%)"))
    assert "| RELATE higher | **Model 4 higher** |" in ctcvr_line  # the paper's sign, and ours with confidence
    diversity_line = next(ln for ln in section.splitlines() if ln.startswith("| Diversity |"))
    assert "no significant difference" in diversity_line
    table = (tmp_path / "table3.md").read_text()
    assert re.search(r"\| RELATE \| [\d.]+ \[[\d.]+, [\d.]+\] \|", table)  # every cell has its CI
    data = json.loads((tmp_path / "ablation.json").read_text())
    assert set(data["pairs"]["model4-relate"]["ctcvr"]) == {"mean", "ci_low", "ci_high"}


def test_ablation_with_two_seeds_at_toy_scale(tmp_path):
    """RELATE and Model 4 at training seeds 0 and 1, one step each: per-seed folders, CIs, the paired comparison."""
    import dataclasses

    from rlgen_relate.lab.demo import QUICK

    toy = dataclasses.replace(QUICK, name="toy", log_contexts=8, impressions_per_context=300, ctcvr_epochs=1, steps=1,
                              eval_contexts=3, overrides=QUICK.overrides + ("sampler.params.max_new_tokens=8",))
    path = ablation.run_ablation(tmp_path, configs=["model4", "relate"], schedule=toy, seeds=2, progress=False,
                                 echo=lambda s: None)
    for name in ("model4", "relate"):
        for seed in (0, 1):
            assert (tmp_path / name / f"seed-{seed}" / "eval" / "eval.json").exists()
    # the training seed differs, the eval contexts and sampling seed do not
    configs = [(tmp_path / "relate" / f"seed-{s}" / "run" / "config.yaml").read_text() for s in (0, 1)]
    assert "seed: 0" in configs[0] and "seed: 1" in configs[1]
    evals = [json.loads((tmp_path / "relate" / f"seed-{s}" / "eval" / "eval.json").read_text()) for s in (0, 1)]
    assert [x["context"] for x in evals[0]["samples"]] == [x["context"] for x in evals[1]["samples"]]
    data = json.loads((tmp_path / "ablation.json").read_text())
    assert data["seeds"] == [0, 1] and set(data["pairs"]) == {"model4-relate"}
    ci = data["intervals"]["relate"]["structural"]
    assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"]
    assert data["rows"]["relate"]["structural"] == pytest.approx(ci["mean"])
    report = path.read_text()
    assert "## RELATE vs Model 4" in report and "trained at 2 training seeds" in report
    assert (tmp_path / "figure3.png").read_bytes()[:4] == b"\x89PNG"
