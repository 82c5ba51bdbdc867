"""Validation during training and the best validated policy (``validation`` section), in the real loop
(hf sampler, relate.grpo, builtin:tiny-llama)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import rlgen
from rlgen.config import load_config
from rlgen.discovery import registry
from rlgen.errors import ConfigError
from rlgen.loop import train
from rlgen.validation import read_selection

STEPS = 4
METRIC = "reward/relate.length"


def _write(path: Path, queries: list[str]) -> str:
    path.write_text("".join(json.dumps({"query": q}) + "\n" for q in queries))
    return str(path)


def raw_config(tmp_path: Path, out: str, **validation) -> dict:
    train_data = _write(tmp_path / "train.jsonl", ["shoes", "cheap flights", "coffee", "laptops"])
    held_out = _write(tmp_path / "validation.jsonl", ["running socks", "hotel deals", "green tea"])
    test = _write(tmp_path / "eval.jsonl", ["garden chairs", "bike lights"])
    return {
        "model": {"path": "builtin:tiny-llama"},
        "data": {"path": train_data, "prompt_template": "Write an ad for {query}", "prompts_per_step": 2},
        "group_size": 3,
        "sampler": {"name": "hf", "params": {"max_new_tokens": 10}},
        "rewards": [{"name": "relate.length", "weight": 1.0, "params": {"tokens": {"min": 2, "max": 5}}}],
        "advantage": {"name": "grpo"},
        "trainer": {"name": "relate.grpo", "params": {"learning_rate": 3e-3, "micro_batch_size": 6}},
        "eval": {"data": test},
        "validation": {"data": held_out, "samples_per_context": 2, "every": 1, "keep_best": METRIC, **validation},
        "run": {"steps": STEPS, "seed": 3, "output_dir": str(tmp_path / out), "checkpoint_every": 1,
                "keep_checkpoints": STEPS},
    }


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


@pytest.mark.slow
def test_the_best_validated_policy_is_the_one_exported(tmp_path):
    result = train(load_config(raw_config(tmp_path, "run", mode="min")), progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scores = {m["step"]: m["validation/" + METRIC] for m in lines}
    assert sorted(scores) == [1, 2, 3, 4]
    assert len(set(scores.values())) > 1, "the policy should change what the validation sees"
    # the first step with the smallest value (mode min; a tie keeps the earlier policy)
    best_step = min(scores, key=lambda s: (scores[s], s))
    chosen = read_selection(tmp_path / "run")
    assert chosen == {"step": best_step, "metric": METRIC, "mode": "min", "value": scores[best_step]}
    assert result.best_policy == tmp_path / "run" / "best_policy"
    # the weights are those of that step: its checkpoint carries the same export
    step_export = tmp_path / "run" / "checkpoints" / f"step-{best_step:06d}" / "trainer" / "policy"
    assert same(weights(result.best_policy), weights(step_export))
    others = [s for s in scores if s != best_step]
    assert not any(same(weights(result.best_policy),
                        weights(tmp_path / "run" / "checkpoints" / f"step-{s:06d}" / "trainer" / "policy"))
                   for s in others)
    # the evaluation contexts were the validation file's, each sampled twice
    assert not (tmp_path / "run" / "best_policy.tmp").exists()


class Kill:
    """A crash in the middle of step 3, after the checkpoint of step 2."""

    @rlgen.hookimpl
    def rlgen_on_step_end(self, step):
        if step == 3:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.slow
def test_a_resumed_run_selects_what_the_uninterrupted_one_does(tmp_path):
    straight = train(load_config(raw_config(tmp_path, "straight")), progress=False)
    cfg = load_config(raw_config(tmp_path, "killed"))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, registry=registry(plugins=[Kill()]), progress=False)
    resumed = train(cfg, resume=True, progress=False)
    assert read_selection(tmp_path / "killed") == read_selection(tmp_path / "straight")
    assert same(weights(resumed.best_policy), weights(straight.best_policy))


def test_validation_needs_contexts_and_keep_best_needs_validation(tmp_path):
    raw = raw_config(tmp_path, "run")
    raw["validation"] = {"every": 2}
    with pytest.raises(ConfigError, match="validation.every needs validation.data or validation.split"):
        load_config(raw)
    raw["validation"] = {"data": str(tmp_path / "validation.jsonl"), "keep_best": METRIC}
    with pytest.raises(ConfigError, match="validation.keep_best needs validation.every > 0"):
        load_config(raw)


def test_a_split_needs_a_builtin_dataset(tmp_path):
    raw = raw_config(tmp_path, "run")
    raw["validation"] = {"split": "validation", "every": 2}
    with pytest.raises(ConfigError, match="validation.split 'validation' names a split of a builtin dataset"):
        train(load_config(raw), progress=False)


def test_selecting_on_the_eval_contexts_is_refused_before_training(tmp_path):
    raw = raw_config(tmp_path, "run")
    raw["validation"]["data"] = raw["eval"]["data"]
    with pytest.raises(ConfigError, match="shares 2 of its 2 contexts with the eval contexts"):
        train(load_config(raw), progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_unknown_keep_best_metric_names_the_ones_there_are(tmp_path):
    raw = raw_config(tmp_path, "run", keep_best="relate/compliance")
    raw["run"]["steps"] = 1
    with pytest.raises(ConfigError, match=r"validation.keep_best 'relate/compliance' is not a metric .*reward/relate.length"):
        train(load_config(raw), progress=False)
