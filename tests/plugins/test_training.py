"""A short real training run: builtin:tiny-llama, the ``hf`` sampler, ``grpo``, ``relate.grpo`` on DeepSpeed.

The reward is the share of lower-case ASCII letters in the completion: the random policy writes
a mix of letters, digits, punctuation and stray bytes, so completions differ in it from the
first step, and a policy that learns from the group-relative advantage measurably writes more
letters within a few steps.
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

import pytest
import torch

import rlgen
from rlgen.config import load_config
from rlgen.discovery import registry as discover
from rlgen.loop import train

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


def test_grpo_run_on_tiny_llama_raises_a_simple_reward(tmp_path: Path, registry) -> None:
    if "relate.grpo" not in registry.trainers:
        pytest.fail("the relate.grpo trainer (rlgen-relate) is not installed")
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"query": q}) + "\n" for q in ["shoes", "coffee", "flights", "a hotel", "music"]))
    steps = 12
    config = load_config({
        "model": {"path": "builtin:tiny-llama"},
        "data": {"path": str(data), "prompt_template": "Write an ad for {query}", "prompts_per_step": 2},
        "group_size": 6,
        "sampler": {"name": "hf", "params": {"max_new_tokens": 12}},
        "rewards": [{"name": "test.letter_share"}],
        "advantage": {"name": "grpo"},
        "trainer": {"name": "relate.grpo", "params": {"learning_rate": 2e-2, "beta": 0.0, "micro_batch_size": 12, "zero_stage": 0}},
        "callbacks": [{"name": "samples", "params": {"every": 6}}, {"name": "tensorboard"}],
        "run": {"steps": steps, "seed": 0, "output_dir": str(tmp_path / "run"), "save_final": False},
    })
    reg = discover(plugins=[sys.modules[__name__]])
    result = train(config, registry=reg, progress=False)
    rewards = [m["reward/test.letter_share/mean"] for m in result.metrics]
    assert len(rewards) == steps
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    print("letter share per step:", [round(r, 3) for r in rewards])
    print("seconds per step:", [round(m["time/step_s"], 2) for m in result.metrics])
    assert last > first + 0.1, f"reward did not rise: {[round(r, 3) for r in rewards]}"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == steps and "advantage/zero_var_group_frac" in json.loads(lines[0])
    assert json.loads(lines[-1])["sampler/sync_shared"] == 1.0  # the sampler generated with the trainer's module
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 6, 12} and "test.letter_share" in samples[0]["rewards"]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
