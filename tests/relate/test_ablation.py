"""The ablation's Table 3 / Figure 3 writers on synthetic metrics, and its weight-0 reward monitors."""

from __future__ import annotations

import json

import pytest
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
    assert weights["relate.length"] > 0 and weights["relate.format"] > 0
    assert all(w == 0.0 for n, w in weights.items() if n not in ("relate.length", "relate.format"))

    # relate.credit with the zero-weight monitors gives exactly the advantages of the rewards alone
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    rollout = rlgen.Rollout(
        texts=["a b c"] * 6, completion_ids=torch.ones(6, 3, dtype=torch.long), completion_mask=torch.ones(6, 3, dtype=torch.bool),
        group=group, prompt_ids=torch.ones(6, 1, dtype=torch.long), prompt_mask=torch.ones(6, 1, dtype=torch.bool),
    )
    gen = torch.Generator().manual_seed(0)
    trained = {"relate.length": rlgen.RewardResult(torch.rand(6, generator=gen), granularity="sentence"),
               "relate.format": rlgen.RewardResult(torch.rand(6, generator=gen), granularity="sentence")}
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
    assert set(data["rows"]) == {"base", "model1", "relate"}
    assert (tmp_path / "figure3.png").read_bytes()[:4] == b"\x89PNG"
    # Model 1 trains on two rewards but logs all seven (weight 0), so Figure 3 has every curve for it
    metrics = json.loads((tmp_path / "model1" / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {f"reward/relate.{n}/mean" for n in ("length", "format", "ctcvr", "diversity")} <= set(metrics)
    assert "| Model 1 (step 1)" not in path.read_text() and "| Model ID (step 1)" in path.read_text()
