"""warm_start in the real loop (hf sampler, grpo trainer, builtin:tiny-llama): fine-tune on accepted samples, then RL from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import rlgen
from rlgen.config import load_config
from rlgen.discovery import registry
from rlgen.loop import train
from rlgen.warm_start import WarmStartError

TEMPLATE = "Write an ad for {query}"


def config(tmp_path: Path, out: str, **warm) -> rlgen.config.RunConfig:
    data = tmp_path / "queries.jsonl"
    data.write_text("".join(json.dumps({"query": q}) + "\n" for q in ["shoes", "cheap flights", "coffee", "laptops"]))
    return load_config({
        "model": {"path": "builtin:tiny-llama"},
        "data": {"path": str(data), "prompt_template": TEMPLATE, "prompts_per_step": 2},
        "group_size": 2,
        "sampler": {"name": "hf", "params": {"max_new_tokens": 10, "chat_template": False}},
        # random tiny-llama text: between 20 and 40 characters is true of some completions, not all
        "rewards": [{"name": "length", "weight": 1.0, "params": {"unit": "chars", "min": 20, "max": 40}}],
        "trainer": {"name": "grpo", "params": {"learning_rate": 1e-12, "beta": 0.05, "micro_batch_size": 4}},
        "warm_start": {"prompts": 4, "samples_per_prompt": 4, "batch_prompts": 2, "accept": {"length": 1.0},
                       "epochs": 3, "batch_size": 2, "trainer_params": {"learning_rate": 5e-3, "beta": 0.0}, **warm},
        "run": {"steps": 1, "seed": 3, "output_dir": str(tmp_path / out)},
    })


def mean_logprob(model_dir: Path, records: list[dict]) -> float:
    """Mean log-probability per token of the kept completions after their prompts, under ``model_dir``."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for r in records:
        prompt = tok(TEMPLATE.format(**r["context"]))["input_ids"]
        text = tok(r["text"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + text])
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].log_softmax(-1)
        picked = logp[len(prompt) - 1:].gather(1, ids[0, len(prompt):, None])
        total, count = total + float(picked.sum()), count + len(text)
    return total / count


def test_rl_starts_from_a_policy_fine_tuned_on_its_accepted_samples(tmp_path, tiny_llama):
    result = train(config(tmp_path, "run"), progress=False)
    run = tmp_path / "run"
    summary = json.loads((run / "warm_start" / "summary.json").read_text())
    kept = [json.loads(line) for line in (run / "warm_start" / "kept.jsonl").read_text().splitlines()]
    assert summary["sampled"] == 16 and 0 < summary["kept"] == len(kept) <= min(4, summary["accepted"])
    assert summary["passed"] == {"length": summary["accepted"]}
    # only accepted completions, at most one per context
    assert all(r["length"] >= 1.0 and 20 <= len(r["text"].strip()) <= 40 for r in kept)
    assert len({r["context"]["query"] for r in kept}) == len(kept)
    assert summary["updates"] == 3 * -(-len(kept) // 2)
    # the fine-tuning made exactly those completions more likely
    policy = run / "warm_start" / "policy"
    assert mean_logprob(policy, kept) > mean_logprob(tiny_llama, kept) + 0.1
    # RL started from the warm-start policy (its step at lr 1e-12 moves nothing), not from the base
    warm, final, base = (load_file(str(d / "model.safetensors")) for d in (policy, run / "policy", tiny_llama))
    assert all(torch.allclose(final[k], warm[k], atol=1e-6) for k in warm)
    assert any(not torch.allclose(warm[k], base[k], atol=1e-4) for k in warm)
    # the run records the user's config: the base model, with its warm_start section
    saved = load_config(run / "config.yaml")
    assert saved.model.path == "builtin:tiny-llama" and saved.warm_start.prompts == 4
    assert result.last_step == 1


class Kill:
    """Stops the run at the end of step 1, before any checkpoint."""

    @rlgen.hookimpl
    def rlgen_on_step_end(self, step):
        raise KeyboardInterrupt("simulated kill")


def test_a_finished_warm_start_is_reused_and_a_changed_one_redone(tmp_path, tiny_llama):
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, "run"), registry=registry(plugins=[Kill()]), progress=False)
    kept = tmp_path / "run" / "warm_start" / "kept.jsonl"
    stamp = kept.stat().st_mtime_ns
    train(config(tmp_path, "run"), progress=False)
    assert kept.stat().st_mtime_ns == stamp  # same settings: not sampled again
    before = json.loads((tmp_path / "run" / "warm_start" / "summary.json").read_text())
    train(config(tmp_path, "other", epochs=1), progress=False)
    after = json.loads((tmp_path / "other" / "warm_start" / "summary.json").read_text())
    assert after["fingerprint"] != before["fingerprint"] and after["updates"] * 3 == before["updates"]


def test_a_gate_nothing_passes_stops_with_a_clear_error(tmp_path, tiny_llama):
    with pytest.raises(WarmStartError, match=r"warm_start.accept .* accepted none of 16 completions"):
        train(config(tmp_path, "run", accept={"length": 5.0}), progress=False)


def test_an_accept_key_that_names_no_reward_is_a_config_error(tmp_path):
    with pytest.raises(rlgen.ConfigError, match="warm_start.accept.relevance"):
        rlgen.config.plan_run(config(tmp_path, "run", accept={"relevance": 0.5}), registry())


def test_rlgen_warm_start_makes_the_stage_alone_and_ranks_refuse_to_make_it(tmp_path, tiny_llama, monkeypatch):
    import yaml

    from rlgen.cli import main

    raw = config(tmp_path, "run").model_dump(mode="json")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    # a rank of a multi-rank run does not make the warm start itself
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(rlgen.ConfigError, match="rlgen warm-start"):
        train(load_config(path), progress=False)
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["warm-start", str(path)]) == 0
    run = tmp_path / "run"
    assert (run / "warm_start" / "policy" / "model.safetensors").is_file() and not (run / "metrics.jsonl").exists()
    stamp = (run / "warm_start" / "kept.jsonl").stat().st_mtime_ns
    train(load_config(path), progress=False)
    assert (run / "warm_start" / "kept.jsonl").stat().st_mtime_ns == stamp and (run / "policy").is_dir()


def test_a_second_round_samples_new_contexts_with_the_first_rounds_policy_and_fine_tunes_it_further(tmp_path, tiny_llama):
    rlgen.make_warm_start(config(tmp_path, "run", prompts=2, rounds=2), progress=False)
    folder = tmp_path / "run" / "warm_start"
    summary = json.loads((folder / "summary.json").read_text())
    first, second = summary["rounds"]
    assert first["sampled_from"] == "builtin:tiny-llama" and second["sampled_from"] == str(folder / "policy")
    assert summary["sampled"] == first["sampled"] + second["sampled"] == 16
    assert summary["updates"] == first["updates"] + second["updates"]
    kept = [[json.loads(line) for line in (d / "kept.jsonl").read_text().splitlines()] for d in (folder, folder / "round-2")]
    assert [len(k) for k in kept] == [first["kept"], second["kept"]] and all(kept)
    # round 2 took the next block of contexts
    assert not {r["context"]["query"] for r in kept[0]} & {r["context"]["query"] for r in kept[1]}
    # one policy is left, the last round's, and it was fine-tuned on both rounds' completions
    assert not (folder / "round-2" / "policy").exists() and (folder / "policy" / "model.safetensors").is_file()
    for records in kept:
        assert mean_logprob(folder / "policy", records) > mean_logprob(tiny_llama, records) + 0.1
