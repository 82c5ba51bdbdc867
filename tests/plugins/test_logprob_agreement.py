"""The grpo trainer's log-probs of sampled tokens equal the hf sampler's recorded ones (fp32, tiny Llama).

pi_old in Eq. 6 is the sampling policy; if the trainer's forward disagreed with the sampler's on
the same weights, the ratio would be off before any update. The trainer logs the disagreement
per step (``logprob_diff_max`` / ``logprob_diff_mean``); these tests hold it under 1e-3 per token
on left-padded prompts of mixed lengths, with stop strings and EOS, at a temperature other than 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rlgen
from rlgen.config import load_config
from rlgen_plugins.grpo import GrpoTrainer
from rlgen_plugins.samplers import HFSampler

PROMPTS = [
    rlgen.Prompt([{"role": "user", "content": "Write an ad for shoes"}], {}),
    rlgen.Prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write an ad for cheap flights to London"}], {}),
    rlgen.Prompt([{"role": "user", "content": "Write an ad for coffee"}], {}),
]


def make_trainer(registry, cache_dir: Path, model: Path, tmp_path: Path, **params) -> GrpoTrainer:
    params = {"learning_rate": 1e-3, "micro_batch_size": 5, "zero_stage": 0, **params}
    config = load_config({
        "model": {"path": str(model)}, "data": {"path": "unused.jsonl"}, "rewards": [{"name": "unused"}],
        "trainer": {"name": "grpo", "params": params}, "run": {"steps": 2, "output_dir": str(tmp_path)},
    })
    trainer = GrpoTrainer(GrpoTrainer.Params(**params))
    trainer.setup(rlgen.RunContext(config=config, registry=registry, output_dir=tmp_path, cache_dir=cache_dir, seed=0))
    return trainer


@pytest.mark.parametrize("decode", ["loop", "generate"])
@pytest.mark.parametrize("mini_batches", [1, 2], ids=["first-pass", "frozen-old"])
def test_trainer_logprobs_equal_the_samplers(
    registry, cache_dir: Path, chatty_llama: Path, make_context, tmp_path: Path, decode: str, mini_batches: int
) -> None:
    trainer = make_trainer(registry, cache_dir, chatty_llama, tmp_path, mini_batches=mini_batches)
    sampler = HFSampler(HFSampler.Params(max_new_tokens=16, temperature=0.7, stop=["\n"], decode=decode))
    sampler.setup(make_context(str(chatty_llama)))
    sampler.sync_weights(trainer)
    ro = sampler.generate(PROMPTS, 4, seed=3)
    lengths = ro.prompt_mask.sum(1)
    assert lengths.min() < lengths.max(), "mixed prompt lengths: some rows are left-padded"
    reasons = set(ro.extras["finish_reason"])
    assert {"stop", "eos"} <= reasons, reasons
    assert ro.temperature == 0.7

    zero = torch.zeros(ro.completion_ids.shape)  # no update: the comparison is all that happens
    metrics = trainer.step(ro, zero)
    assert metrics["logprob_diff_max"] < 1e-3, metrics
    assert metrics["logprob_diff_mean"] <= metrics["logprob_diff_max"]

    # the metric sees a disagreement where there is one: one token off by 0.05
    i, k = (ro.completion_mask.nonzero()[7]).tolist()
    ro.logprobs[i, k] += 0.05
    off = trainer.step(ro, zero)
    assert off["logprob_diff_max"] == pytest.approx(0.05, abs=1e-3)
    assert off["logprob_diff_mean"] > metrics["logprob_diff_mean"]


def test_no_metric_without_sampler_logprobs(registry, cache_dir: Path, tiny_llama: Path, tmp_path: Path) -> None:
    trainer = make_trainer(registry, cache_dir, tiny_llama, tmp_path)
    ro = rlgen.Rollout(
        texts=["x"] * 2, completion_ids=torch.full((2, 3), 5), completion_mask=torch.ones(2, 3, dtype=torch.bool),
        group=torch.zeros(2, dtype=torch.long), prompt_ids=torch.full((2, 2), 7), prompt_mask=torch.ones(2, 2, dtype=torch.bool),
    )
    metrics = trainer.step(ro, torch.zeros(2, 3))
    assert "logprob_diff_max" not in metrics and "logprob_diff_mean" not in metrics


def test_a_lora_policy_decodes_through_the_loop_as_generate_does(
    registry, cache_dir: Path, chatty_llama: Path, make_context, tmp_path: Path
) -> None:
    """The sampler shares the trainer's PEFT module: the loop decodes it with each adapter merged into its
    weight (W + scaling * B A), generate runs base and adapter apart; same tokens, log-probs within 1e-4 (the
    merged and the separate products round apart: up to 1.0e-5 seen, on one machine just over 1e-5), and the
    trainer's forward agrees with what the loop recorded."""
    trainer = make_trainer(registry, cache_dir, chatty_llama, tmp_path, lora={"r": 4, "alpha": 8})
    # B starts at zero (the adapter would be the identity): give it weights that change what is sampled
    with torch.no_grad():
        for name, q in trainer.engine.module.named_parameters():
            if "lora_B" in name:
                q.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(5))
    rollouts = {}
    for decode in ("generate", "loop"):
        sampler = HFSampler(HFSampler.Params(max_new_tokens=16, temperature=0.7, stop=["\n"], decode=decode))
        sampler.setup(make_context(str(chatty_llama)))
        sampler.sync_weights(trainer)
        rollouts[decode] = sampler.generate(PROMPTS, 4, seed=3)
        assert rollouts[decode].extras["decode"] == decode
    a, b = rollouts["generate"], rollouts["loop"]
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=0)
    # the adapters matter: without them the same seeds sample something else
    with trainer.engine.module.disable_adapter():
        base = sampler.generate(PROMPTS, 4, seed=3)
    assert base.texts != b.texts
    metrics = trainer.step(b, torch.zeros(b.completion_ids.shape))
    assert metrics["logprob_diff_max"] < 1e-3, metrics
