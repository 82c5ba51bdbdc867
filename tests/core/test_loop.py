"""The loop end to end on a real (tiny) policy: learning, metrics, hooks, checkpoints, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rlgen
from rlgen.config import load_config
from rlgen.errors import ConfigError
from rlgen.loop import train

from . import toy_plugins


def make_config(tmp_path: Path, **run) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"query": f"q{i}"}) + "\n" for i in range(6)))
    return {
        "model": {"path": "unused"},
        "data": {"path": str(data), "prompt_template": "write for {query}", "prompts_per_step": 3},
        "group_size": 4,
        "sampler": {"name": "toy.sampler", "params": {"max_new_tokens": 8}},
        "rewards": [
            {"name": "toy.count", "weight": 1.0, "params": {"letter": "a"}},
            {"name": "toy.penalty", "weight": 0.5},
        ],
        "advantage": {"name": "toy.centred"},
        "trainer": {"name": "toy.trainer", "params": {"lr": 0.3}},
        "callbacks": [{"name": "toy.recorder", "params": {"path": str(tmp_path / "events.txt")}}],
        "run": {"steps": 12, "seed": 3, "output_dir": str(tmp_path / "run"), **run},
    }


@pytest.fixture
def reg():
    return rlgen.registry(plugins=[toy_plugins], autoload=False)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_raises_the_reward_and_writes_the_run_folder(tmp_path, reg):
    result = train(load_config(make_config(tmp_path, steps=25)), registry=reg, progress=False)
    metrics = read_metrics(result.output_dir)
    assert [m["step"] for m in metrics] == list(range(1, 26))
    first = sum(m["reward/toy.count/mean"] for m in metrics[:5]) / 5
    last = sum(m["reward/toy.count/mean"] for m in metrics[-5:]) / 5
    assert last > first + 1.0, (first, last)
    # the token-level penalty drives its letter out
    assert metrics[-1]["reward/toy.penalty/mean"] > metrics[0]["reward/toy.penalty/mean"]
    for key in ("trainer/loss", "advantage/zero_var_groups", "reward/total/mean", "time/step_s", "reward/toy.penalty/seen"):
        assert key in metrics[-1]
    assert (result.output_dir / "policy" / "model.safetensors").exists()
    assert (result.output_dir / "config.yaml").exists()
    events = (tmp_path / "events.txt").read_text().splitlines()
    assert events[0] == "start rank=0"
    assert events[1] == "step 1 ['toy.count', 'toy.penalty']"
    assert events[-2:] == ["checkpoint 25 step-000025", "end 25"]


@pytest.mark.parametrize("oversample", [1, 2])
def test_resume_repeats_an_uninterrupted_run(tmp_path, reg, oversample):
    def make(path, **run):
        cfg = make_config(path, **run)
        cfg["data"]["oversample"] = oversample
        return cfg

    straight = train(load_config(make(tmp_path / "a", steps=8)), registry=reg, progress=False)

    cfg = make(tmp_path / "b", steps=8, checkpoint_every=3)
    # a run killed after step 5: it checkpointed at 3 only
    train(load_config({**cfg, "run": {**cfg["run"], "steps": 5, "save_final": False}}), registry=reg, progress=False)
    run_dir = Path(cfg["run"]["output_dir"])
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-000003"]
    # a half-written checkpoint from the kill must be ignored
    (run_dir / "checkpoints" / "step-000005.tmp").mkdir()
    with pytest.raises(ConfigError, match="--resume"):
        train(load_config(cfg), registry=reg, progress=False)
    resumed = train(load_config(cfg), resume=True, registry=reg, progress=False)

    a = load_file(str(straight.output_dir / "policy" / "model.safetensors"))["logits"]
    b = load_file(str(resumed.output_dir / "policy" / "model.safetensors"))["logits"]
    assert torch.equal(a, b)
    ma, mb = read_metrics(straight.output_dir), read_metrics(resumed.output_dir)
    assert [m["step"] for m in mb] == list(range(1, 9))
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("time/") and not k.startswith("sampler/")}  # noqa: E731
    assert [strip(m) for m in ma] == [strip(m) for m in mb]


@pytest.mark.parametrize("rank", ["total", "per_reward"])
def test_oversampling_trains_on_the_groups_whose_reward_spreads_most(tmp_path, reg, rank):
    cfg = make_config(tmp_path, steps=25)
    cfg["data"]["oversample"] = 2
    cfg["data"]["oversample_rank"] = rank
    metrics = read_metrics(train(load_config(cfg), registry=reg, progress=False).output_dir)
    for m in metrics:
        # 6 prompts sampled, the 3 most spread groups of 4 trained on
        assert m["data/groups_sampled"] == 6 and m["trainer/rows"] == 12
        assert m["data/kept_spread_mean"] >= m["data/dropped_spread_mean"]
    assert any(m["data/kept_spread_mean"] > m["data/dropped_spread_mean"] for m in metrics)
    first = sum(m["reward/toy.count/mean"] for m in metrics[:5]) / 5
    last = sum(m["reward/toy.count/mean"] for m in metrics[-5:]) / 5
    assert last > first + 1.0, (first, last)
    plain = read_metrics(train(load_config(make_config(tmp_path / "plain", steps=2)), registry=reg,
                               progress=False).output_dir)
    assert plain[0]["trainer/rows"] == 12 and "data/groups_sampled" not in plain[0]


def test_a_time_limit_stops_between_steps_saves_and_resume_goes_on(tmp_path, reg):
    straight = train(load_config(make_config(tmp_path / "a", steps=6)), registry=reg, progress=False)

    cfg = make_config(tmp_path / "b", steps=6)
    # a limit no second step fits in: the first step always runs, then the loop stops and saves as at its end
    limited = train(load_config({**cfg, "run": {**cfg["run"], "time_limit_s": 1e-6}}), registry=reg, progress=False)
    assert limited.last_step == 1 and [m["step"] for m in read_metrics(limited.output_dir)] == [1]
    assert [p.name for p in (limited.output_dir / "checkpoints").iterdir()] == ["step-000001"]
    assert (limited.output_dir / "policy" / "model.safetensors").exists()
    # resumed without the limit, it finishes as if never stopped
    resumed = train(load_config(cfg), resume=True, registry=reg, progress=False)
    assert resumed.last_step == 6
    a = load_file(str(straight.output_dir / "policy" / "model.safetensors"))["logits"]
    b = load_file(str(resumed.output_dir / "policy" / "model.safetensors"))["logits"]
    assert torch.equal(a, b)


def test_output_folder_is_not_created_when_validation_fails(tmp_path, reg):
    cfg = make_config(tmp_path)
    cfg["rewards"][0]["params"] = {"letter": "a", "colour": "red"}
    with pytest.raises(ConfigError, match=r"plugin 'toy.count': unknown key 'rewards.0.params.colour'"):
        train(load_config(cfg), registry=reg, progress=False)
    assert not (tmp_path / "run").exists()


def test_reward_contract_violation_names_the_plugin(tmp_path, reg):
    class Broken(rlgen.RewardProvider):
        name = "toy.broken"
        granularity = "token"

        def score(self, rollout):
            return rlgen.RewardResult(torch.ones(rollout.batch_size))

    class Extra:
        @rlgen.hookimpl
        def rlgen_reward_providers(self):
            return [Broken]

    reg = rlgen.registry(plugins=[toy_plugins, Extra()], autoload=False)
    cfg = make_config(tmp_path)
    cfg["rewards"] = [{"name": "toy.broken"}]
    with pytest.raises(rlgen.PluginError, match=r"reward 'toy.broken' is token-level: values must be \[B=12, T=8\]"):
        train(load_config(cfg), registry=reg, progress=False)
