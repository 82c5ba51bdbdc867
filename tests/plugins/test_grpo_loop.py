"""relate.grpo inside the real loop (hf sampler, builtin:tiny-llama): a killed run resumes to the same result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import rlgen
from rlgen.config import load_config
from rlgen.discovery import registry
from rlgen.loop import train

STEPS, KILL_AT = 4, 3


def config(tmp_path: Path, out: str) -> rlgen.config.RunConfig:
    data = tmp_path / "queries.jsonl"
    data.write_text("".join(json.dumps({"query": q}) + "\n" for q in ["shoes", "cheap flights", "coffee", "laptops"]))
    return load_config({
        "model": {"path": "builtin:tiny-llama"},
        "data": {"path": str(data), "prompt_template": "Write an ad for {query}", "prompts_per_step": 2},
        "group_size": 3,
        "sampler": {"name": "hf", "params": {"max_new_tokens": 10}},
        "rewards": [{"name": "relate.length", "weight": 1.0}],
        "advantage": {"name": "grpo"},
        "trainer": {"name": "relate.grpo", "params": {
            "learning_rate": 1e-3, "beta": 0.05, "epochs": 2, "micro_batch_size": 4,
            "warmup_updates": 2, "lr_schedule": "linear"}},
        "run": {"steps": STEPS, "seed": 7, "output_dir": str(tmp_path / out), "checkpoint_every": 2},
    })


class Kill:
    """Stops the run like a crash in the middle of step KILL_AT (after the checkpoint of step 2)."""

    @rlgen.hookimpl
    def rlgen_on_step_end(self, step):
        if step == KILL_AT:
            raise KeyboardInterrupt("simulated kill")


def comparable(metrics: dict) -> dict:
    """Everything but wall-clock readings (time/*, *_s, *_seconds, tokens per second)."""
    return {k: v for k, v in metrics.items() if not (k.startswith("time/") or k.endswith(("_s", "_seconds")))}


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    straight = train(config(tmp_path, "straight"), progress=False)
    assert straight.last_step == STEPS

    cfg = config(tmp_path, "killed")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, registry=registry(plugins=[Kill()]), progress=False)
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert ckpts == ["step-000002"]
    resumed = train(cfg, resume=True, progress=False)
    assert [m["step"] for m in resumed.metrics] == [3, 4]

    for got, want in zip(resumed.metrics, straight.metrics[2:]):
        assert comparable(got) == comparable(want)
    lines = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    a = load_file(str(tmp_path / "straight" / "policy" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "policy" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    # the checkpoint carries a servable export next to the DeepSpeed state
    trainer_dir = tmp_path / "killed" / "checkpoints" / "step-000004" / "trainer"
    assert (trainer_dir / "policy" / "model.safetensors").is_file()
    assert (trainer_dir / "deepspeed" / "state").is_dir() and (trainer_dir / "trainer.json").is_file()
