"""`rlgen bench`: the real loop on the tiny Llama, its medians and split read back from the run's own metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_reports_the_median_step_its_split_and_peak_memory(tmp_path):
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rlgen.cli", "bench", str(ROOT / "examples" / "tiny-grpo.yaml"), "--steps", "3",
         "--warmup", "1", "--json", str(out_json), "--out", str(tmp_path / "run"),
         # a warm start is a stage before training: the bench times steps and does not run it
         "--set", "warm_start.prompts=2", "--set", "warm_start.accept={}"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out_json.read_text())
    assert result["steps"] == 3 and len(result["step_s"]) == 3
    assert result["step_s_min"] <= result["step_s_median"] <= result["step_s_max"]
    split = result["split_s"]
    assert {"time/sample_s", "time/reward_s", "time/train_s"} <= set(split)
    # the grpo trainer reports its own split of time/train_s
    assert {"trainer/time/forward_s", "trainer/time/backward_s", "trainer/time/optimizer_s"} <= set(split)
    assert result["peak_rss_mb"] > 100 and result["tokens_per_s"] > 0
    # 4 steps were trained (1 warm-up + 3), nothing was checkpointed or exported
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(ln) for ln in lines]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # the split nests within each step (medians of the parts need not add up to the median of the whole)
    for r in rows:
        assert sum(v for k, v in r.items() if k.startswith("trainer/time/")) <= r["time/train_s"]
        assert sum(r[k] for k in ("time/sample_s", "time/reward_s", "time/advantage_s", "time/train_s", "time/sync_s")) <= r["time/step_s"] * (1 + 1e-9)
    assert sorted(result["step_s"]) == sorted(r["time/step_s"] for r in rows[1:])
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "policy").exists()
    assert not (tmp_path / "run" / "warm_start").exists() and "warm start is not run" in proc.stdout + proc.stderr
    assert "step  median" in proc.stdout and "load average before" in proc.stdout
