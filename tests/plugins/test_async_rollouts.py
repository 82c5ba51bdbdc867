"""``run.async_rollouts`` in the real loop: builtin:tiny-llama, the ``hf`` sampler, the DeepSpeed ``grpo`` trainer.

0 must be exactly the on-policy loop it always was; 1 samples rollout k+1 in a second process
while the trainer updates on rollout k, trains on the sampler's log-probs as pi_old, still
learns, and resumes from a checkpoint (which carries the rollout in flight) bit for bit.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rlgen
from rlgen import session
from rlgen.config import load_config
from rlgen.discovery import registry as discover
from rlgen.loop import train
from rlgen.seeding import seed_everything, step_seed

LETTERS = set(string.ascii_lowercase)


class LetterShare(rlgen.RewardProvider):
    """Fraction of the completion's characters that are lower-case ASCII letters (see test_training.py)."""

    name = "test.async_letter_share"
    description = "share of lower-case ASCII letters in the completion"
    granularity = "sentence"

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        values = [sum(c in LETTERS for c in t) / max(len(t), 1) for t in rollout.texts]
        return rlgen.RewardResult(torch.tensor(values, dtype=torch.float32))


@rlgen.hookimpl
def rlgen_reward_providers():
    return [LetterShare]


def config(tmp_path: Path, out: str, *, async_rollouts: int, steps: int = 5, **run) -> rlgen.config.RunConfig:
    data = tmp_path / "queries.jsonl"
    data.write_text("".join(json.dumps({"query": q}) + "\n" for q in ["shoes", "cheap flights", "coffee", "laptops"]))
    return load_config({
        "model": {"path": "builtin:tiny-llama"},
        "data": {"path": str(data), "prompt_template": "Write an ad for {query}", "prompts_per_step": 2},
        "group_size": 3,
        "sampler": {"name": "hf", "params": {"max_new_tokens": 10}},
        "rewards": [{"name": "length", "params": {"min": 4, "max": 6}}],
        "trainer": {"name": "grpo", "params": {"learning_rate": 1e-3, "beta": 0.05, "micro_batch_size": 6}},
        "run": {"steps": steps, "seed": 7, "output_dir": str(tmp_path / out), "async_rollouts": async_rollouts, **run},
    })


def comparable(metrics: dict) -> dict:
    """Everything but wall-clock readings (time/*, *_s, *_seconds, tokens per second)."""
    return {k: v for k, v in metrics.items()
            if not (k.startswith("time/") or k.endswith(("_s", "_seconds", "tokens_per_s")))}


def policy(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "policy" / "model.safetensors"))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_switch_off_is_the_on_policy_loop_bit_for_bit(tmp_path):
    """async_rollouts: 0 against the on-policy loop written out by hand with the same plugins:
    seed, generate with the trainer's weights, score, combine, update, sync, step after step."""
    steps = 4
    got = train(config(tmp_path, "loop", async_rollouts=0, steps=steps), progress=False)

    cfg = config(tmp_path, "by-hand", async_rollouts=0, steps=steps)
    prepared = session.prepare(cfg)
    plan = prepared.plan
    context = session.run_context(cfg, prepared.registry, tmp_path / "by-hand")
    trainer, sampler, advantage = plan.trainer.build(), plan.sampler.build(), plan.advantage.build()
    rewards, weights = session.build_rewards(plan), session.reward_weights(plan)
    torch.set_num_threads(context.threads)
    seed_everything(cfg.run.seed)
    with session.plugins_set_up(context, [trainer, sampler, *rewards.values(), advantage]):
        sampler.sync_weights(trainer)
        for step in range(1, steps + 1):
            seed = step_seed(cfg.run.seed, step, 0)
            seed_everything(seed)
            rollout = sampler.generate(prepared.source.batch(step, 0, 1), cfg.group_size, seed)
            scores = {key: provider.score(rollout) for key, provider in rewards.items()}
            trainer_metrics = trainer.step(rollout, advantage.combine(rollout, scores, weights))
            sampler.sync_weights(trainer)
            logged = got.metrics[step - 1]
            assert logged["reward/length/mean"] == float(scores["length"].values.mean())
            assert comparable({f"trainer/{k}": v for k, v in trainer_metrics.items()}) == \
                comparable({k: v for k, v in logged.items() if k.startswith("trainer/")})
        by_hand = {k: v.clone() for k, v in trainer.export_weights()}
    exported = policy(tmp_path / "loop")
    assert exported and all(exported[k].equal(by_hand[k]) for k in exported)
    assert not any("staleness" in k or "generate_worker" in k for k in got.metrics[0])


def test_switch_on_trains_on_stale_rollouts_and_raises_a_simple_reward(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"query": q}) + "\n" for q in ["shoes", "coffee", "flights", "a hotel", "music"]))
    steps = 16
    cfg = load_config({
        "model": {"path": "builtin:tiny-llama"},
        "data": {"path": str(data), "prompt_template": "Write an ad for {query}", "prompts_per_step": 2},
        "group_size": 6,
        "sampler": {"name": "hf", "params": {"max_new_tokens": 12}},
        "rewards": [{"name": LetterShare.name}],
        "trainer": {"name": "grpo", "params": {"learning_rate": 2e-2, "beta": 0.0, "micro_batch_size": 12}},
        "run": {"steps": steps, "seed": 0, "output_dir": str(tmp_path / "run"), "save_final": False, "async_rollouts": 1},
    })
    result = train(cfg, registry=discover(plugins=[sys.modules[__name__]]), progress=False)
    rewards = [m[f"reward/{LetterShare.name}/mean"] for m in result.metrics]
    print("letter share per step:", [round(r, 3) for r in rewards])
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.1, f"reward did not rise: {[round(r, 3) for r in rewards]}"
    # rollouts 1 and 2 come from the initial weights, rollout k from those of step k - 2
    assert [m["rollout/staleness"] for m in result.metrics] == [0.0] + [1.0] * (steps - 1)
    # sampler and trainer agree on the same weights (step 1); later the diff includes one update
    first_step = result.metrics[0]
    assert first_step["trainer/logprob_diff_max"] < 1e-3
    assert all(m["trainer/logprob_diff_mean"] > first_step["trainer/logprob_diff_mean"] for m in result.metrics[1:])
    assert all(m["time/generate_worker_s"] > 0 for m in result.metrics)


class Kill:
    """Stops the run like a crash at the end of step 3, after the checkpoint of step 2."""

    @rlgen.hookimpl
    def rlgen_on_step_end(self, step):
        if step == 3:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.parametrize("async_rollouts", [0, 1])
def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path, async_rollouts):
    straight = train(config(tmp_path, "straight", async_rollouts=async_rollouts, checkpoint_every=2), progress=False)
    cfg = config(tmp_path, "killed", async_rollouts=async_rollouts, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, registry=discover(plugins=[Kill()]), progress=False)
    checkpoint = tmp_path / "killed" / "checkpoints" / "step-000002"
    manifest = json.loads((checkpoint / "manifest.json").read_text())["files"]
    # the rollout of step 3 was sampled with the weights of step 1: only the checkpoint still has it
    assert ("rollout/rollout.safetensors" in manifest) == bool(async_rollouts)
    resumed = train(cfg, resume=True, progress=False)
    assert [m["step"] for m in resumed.metrics] == [3, 4, 5]
    for got, want in zip(resumed.metrics, straight.metrics[2:]):
        assert comparable(got) == comparable(want)
    assert same_weights(policy(tmp_path / "killed"), policy(tmp_path / "straight"))
    if async_rollouts:
        assert [m["rollout/staleness"] for m in straight.metrics] == [0.0, 1.0, 1.0, 1.0, 1.0]


def test_a_run_the_time_limit_stopped_resumes_to_the_uninterrupted_run(tmp_path):
    straight = train(config(tmp_path, "straight", async_rollouts=1), progress=False)
    # the limit stops the run after step 1, while the sampler process already samples step 2's rollout
    stopped = train(config(tmp_path, "stopped", async_rollouts=1, time_limit_s=1e-6), progress=False)
    assert stopped.last_step == 1
    manifest = json.loads((tmp_path / "stopped" / "checkpoints" / "step-000001" / "manifest.json").read_text())["files"]
    assert "rollout/rollout.safetensors" in manifest
    resumed = train(config(tmp_path, "stopped", async_rollouts=1), resume=True, progress=False)
    assert [m["step"] for m in resumed.metrics] == [2, 3, 4, 5]
    for got, want in zip(resumed.metrics, straight.metrics[1:]):
        assert comparable(got) == comparable(want)
    assert same_weights(policy(tmp_path / "stopped"), policy(tmp_path / "straight"))


def test_switch_on_refuses_several_ranks(tmp_path, monkeypatch):
    # `rlgen train --nproc 2`: refused once, before any rank starts
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(json.dumps(config(tmp_path, "cli", async_rollouts=1).model_dump(mode="json")))
    cli = subprocess.run([sys.executable, "-m", "rlgen.cli", "train", str(yaml_file), "--nproc", "2"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2
    assert [ln for ln in cli.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: {yaml_file}: run.async_rollouts: 1 runs on one rank only, this run has 2 (sampler 'hf'); "
        "set run.async_rollouts: 0 for distributed runs"]
    assert not (tmp_path / "cli").exists()
    # a rank started by a launcher
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(rlgen.ConfigError, match=r"run.async_rollouts: 1 runs on one rank only, this run has 2"):
        train(config(tmp_path, "ranks", async_rollouts=1), progress=False)


class KillSamplerProcess:
    """SIGKILLs the sampler process at the end of step 1, while it samples rollout 2."""

    @rlgen.hookimpl
    def rlgen_on_step_end(self, step):
        if step == 1:
            (child,) = [p for p in multiprocessing.active_children() if p.name.startswith("rlgen-sampler-")]
            os.kill(child.pid, signal.SIGKILL)


def test_a_dead_sampler_process_stops_the_run_with_one_clear_error(tmp_path):
    cfg = config(tmp_path, "dead", async_rollouts=1)
    with pytest.raises(rlgen.PluginError, match=r"sampler 'hf': its process \(run.async_rollouts: 1\) died \(exit code -9\)"):
        train(cfg, registry=discover(plugins=[KillSamplerProcess()]), progress=False)
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("rlgen-sampler-")]
