"""A short training run whose config selects the ``vllm`` sampler: switching from ``hf`` is one line."""

from __future__ import annotations

import json
import os
import string
import sys
from pathlib import Path

import pytest
import torch

vllm = pytest.importorskip("vllm")

import rlgen  # noqa: E402
import torch_trainer  # noqa: E402
from rlgen.config import load_config  # noqa: E402
from rlgen.discovery import registry as discover  # noqa: E402
from rlgen.loop import train  # noqa: E402
from rlgen.session import prepare  # noqa: E402

LETTERS = set(string.ascii_lowercase)


class LetterShare(rlgen.RewardProvider):
    """Fraction of the completion's characters that are lower-case ASCII letters."""

    name = "test.letter_share"
    description = "share of lower-case ASCII letters in the completion"
    granularity = "sentence"

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        values = [sum(c in LETTERS for c in t) / max(len(t), 1) for t in rollout.texts]
        return rlgen.RewardResult(torch.tensor(values, dtype=torch.float32))


@rlgen.hookimpl
def rlgen_reward_providers():
    return [LetterShare]


def test_training_run_with_the_vllm_sampler(tmp_path: Path, vllm_llama: Path, monkeypatch) -> None:
    for key in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR"):  # earlier tests in this process set them
        monkeypatch.delenv(key, raising=False)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"query": q}) + "\n" for q in ["shoes", "coffee", "flights", "a hotel"]))
    run = tmp_path / "run"
    config = load_config({
        "model": {"path": str(vllm_llama)},
        "data": {"path": str(data), "prompt_template": "Write an ad for {query}", "prompts_per_step": 2},
        "group_size": 4,
        "sampler": {"name": "vllm", "params": {"max_new_tokens": 8}},
        "rewards": [{"name": "test.letter_share"}],
        "advantage": {"name": "grpo"},
        "trainer": {"name": "test.torch_pg", "params": {"learning_rate": 1e-3}},
        "run": {"steps": 2, "seed": 0, "output_dir": str(run), "save_final": False},
    })
    reg = discover(plugins=[sys.modules[__name__], torch_trainer])
    prepare(config, reg)  # what `rlgen validate` checks passes with vllm installed
    result = train(config, registry=reg, progress=False)
    assert [m["step"] for m in result.metrics] == [1, 2]
    for m in result.metrics:
        assert m["sampler/sync_shared"] == 0.0 and m["sampler/sync_tensors"] > 0 and m["time/sync_s"] >= m["sampler/sync_s"] > 0
        assert 0 < m["completion/tokens_mean"] <= 8
    assert os.environ["VLLM_CACHE_ROOT"] == str(run / "vllm" / "cache")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(run / "vllm" / "torchinductor")
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
