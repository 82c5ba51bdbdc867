"""The ``tensorboard`` and ``samples`` callbacks, driven through pluggy as the loop drives them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rlgen
from rlgen.discovery import registry as discover
from rlgen_plugins.loggers import SamplesLogger, TensorBoardLogger
from rlgen_plugins.models import load_tokenizer

TEXTS = ["Fast shoes, free shipping!", "Cheap shoes.", "Fly to London for 20 dollars.", "Book now"]


@pytest.fixture
def step_data(tiny_llama: Path):
    ro = rlgen.Rollout.from_texts(load_tokenizer(tiny_llama), TEXTS, [0, 0, 1, 1], meta=[{"query": q} for q in "ab" * 2])
    ro.extras["finish_reason"] = ["eos", "length", "eos", "eos"]
    token_values = torch.zeros(ro.completion_ids.shape)
    token_values[0, 1] = -1.0
    token_values[2, 0] = -0.5
    rewards = {
        "length": rlgen.RewardResult(torch.tensor([1.0, 0.5, 0.25, 0.0]), granularity="sentence"),
        "risk": rlgen.RewardResult(
            token_values, details=[{"words": ["shoes"]}, {}, {"words": ["Fly"]}, {}], granularity="token"
        ),
    }
    adv = rlgen.broadcast_to_tokens(torch.tensor([0.5, -0.5, 1.0, -1.0]), ro.completion_mask)
    return ro, rewards, adv


def run_steps(callback: rlgen.Callback, context: rlgen.RunContext, steps, step_data) -> None:
    """Register the configured instance and fire the hooks the way the loop does."""
    reg = discover()
    callback.setup(context)
    reg.pm.register(callback, name=f"callback:{callback.name}")
    ro, rewards, adv = step_data
    try:
        for step in steps:
            metrics = {"step": step, "reward/total/mean": 0.1 * step, "time/step_s": 1.5, "trainer/loss": -0.01 * step}
            reg.pm.hook.rlgen_on_step_end(step=step, metrics=metrics, rollout=ro, rewards=rewards, advantages=adv)
        reg.pm.hook.rlgen_on_run_end(step=steps[-1], metrics={}, output_dir=context.output_dir)
    finally:
        reg.pm.unregister(callback)
        callback.close()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_registered(registry) -> None:
    assert registry.callbacks["tensorboard"] is TensorBoardLogger and registry.callbacks["samples"] is SamplesLogger


def test_samples_every_n_steps_with_per_reward_scores(make_context, tiny_llama, step_data) -> None:
    ctx = make_context(str(tiny_llama))
    run_steps(SamplesLogger(SamplesLogger.Params(every=2, show=1)), ctx, [1, 2, 3, 4, 5], step_data)
    recs = read_jsonl(ctx.output_dir / "samples.jsonl")
    assert [r["step"] for r in recs] == [1] * 4 + [2] * 4 + [4] * 4
    first = recs[0]
    assert first["text"] == TEXTS[0] and first["group"] == 0 and first["meta"] == {"query": "a"}
    assert first["rewards"] == {"length": 1.0, "risk": -1.0}  # token rewards summed to the sentence score
    assert first["details"] == {"risk": {"words": ["shoes"]}} and "details" not in recs[1]
    assert first["advantage"] == pytest.approx(0.5) and first["finish_reason"] == "eos"
    assert first["tokens"] == int(step_data[0].completion_mask[0].sum())
    assert recs[2]["rewards"] == {"length": 0.25, "risk": -0.5}

    # a resumed run from step 2 replaces what the first run logged from step 2 on
    run_steps(SamplesLogger(SamplesLogger.Params(every=2, first=False, max_samples=2)), ctx, [2, 3, 4], step_data)
    assert [r["step"] for r in read_jsonl(ctx.output_dir / "samples.jsonl")] == [1] * 4 + [2, 2, 4, 4]


def test_a_torn_last_samples_line_is_trimmed_on_resume(make_context, tiny_llama, step_data) -> None:
    ctx = make_context(str(tiny_llama))
    run_steps(SamplesLogger(SamplesLogger.Params(every=1, max_samples=1)), ctx, [1, 2], step_data)
    path = ctx.output_dir / "samples.jsonl"
    path.write_text(path.read_text(encoding="utf-8") + '{"step": 3, "te', encoding="utf-8")  # power loss mid-line
    run_steps(SamplesLogger(SamplesLogger.Params(every=1, max_samples=1)), ctx, [3], step_data)
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
    # damage before the last line is not guessed away
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n", encoding="utf-8")
    with pytest.raises(rlgen.PluginError, match=r"samples.jsonl:2: not a samples line"):
        run_steps(SamplesLogger(SamplesLogger.Params(every=1, max_samples=1)), ctx, [3], step_data)


def test_samples_only_on_the_main_rank(make_context, tiny_llama, step_data) -> None:
    ctx = make_context(str(tiny_llama))
    ctx.rank = 1
    run_steps(SamplesLogger(), ctx, [1], step_data)
    assert not (ctx.output_dir / "samples.jsonl").exists()


def test_tensorboard_scalars_and_histograms(make_context, tiny_llama, step_data) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ctx = make_context(str(tiny_llama))
    run_steps(TensorBoardLogger(TensorBoardLogger.Params(histograms=True)), ctx, [1, 2, 3], step_data)
    acc = EventAccumulator(str(ctx.output_dir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    assert set(tags["scalars"]) == {"reward/total/mean", "time/step_s", "trainer/loss"}
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("reward/total/mean")] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert {"reward/length", "reward/risk", "advantage/tokens"} <= set(tags["histograms"])
