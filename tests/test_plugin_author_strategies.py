"""Swapping the advantage strategy is config only: `--set advantage.name=...` changes the combiner used.

The run uses the toy policy of tests/core/toy_plugins.py (registered through RLGEN_PLUGINS) with
one sentence-level and one token-level reward, and the real `grpo`, `rloo` and `relate.credit`
combiners found through their entry points. The `samples` logger writes each completion's
rewards and mean advantage; each run's advantages must follow its own combiner's formula and
not the others' (docs/strategies.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import rlgen
from rlgen.cli import main

ROOT = Path(__file__).resolve().parents[1]
ALPHA = 1.0  # relate.credit's default
W_COUNT, W_PENALTY = 1.0, 0.5


@pytest.fixture
def run_config(tmp_path, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("RLGEN_PLUGINS", "tests.core.toy_plugins")
    monkeypatch.delenv("RLGEN_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    reg = rlgen.registry()
    for kind, name in (("advantage", "grpo"), ("advantage", "rloo"), ("advantage", "relate.credit"),
                       ("callback", "samples")):
        reg.get(kind, name)  # the real combiners and the samples logger are installed
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"query": f"q{i}"}) + "\n" for i in range(6)))
    config = {
        "model": {"path": "unused"},
        "data": {"path": str(data), "prompt_template": "write for {query}", "prompts_per_step": 3},
        "group_size": 4,
        "sampler": {"name": "toy.sampler", "params": {"max_new_tokens": 8}},
        "rewards": [
            {"name": "toy.count", "weight": W_COUNT, "params": {"letter": "a"}},  # sentence level
            {"name": "toy.penalty", "weight": W_PENALTY, "params": {"letter": "d"}},  # token level
        ],
        "advantage": {"name": "grpo"},  # the one line docs/strategies.md changes
        "trainer": {"name": "toy.trainer", "params": {"lr": 0.3}},
        "callbacks": [{"name": "samples", "params": {"every": 1, "show": 0}}],
        "run": {"steps": 3, "seed": 5, "output_dir": str(tmp_path / "runs" / "base")},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def group_normalized(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """(R - mean_G R) / std_G R with the unbiased std, zero for flat groups (Eq. 8)."""
    out = torch.zeros_like(values)
    for g in group.unique():
        idx = group == g
        v = values[idx]
        std = v.std()
        out[idx] = 0.0 if std < 1e-6 else (v - v.mean()) / std
    return out


def expected_advantages(records: list[dict]) -> dict[str, torch.Tensor]:
    """Each strategy's per-sample mean advantage over tokens, from the logged rewards."""
    count = torch.tensor([r["rewards"]["toy.count"] for r in records], dtype=torch.float64)
    penalty = torch.tensor([r["rewards"]["toy.penalty"] for r in records], dtype=torch.float64)  # token sum (Eq. 4)
    tokens = torch.tensor([r["tokens"] for r in records], dtype=torch.float64)
    group = torch.tensor([r["group"] for r in records])
    total = W_COUNT * count + W_PENALTY * penalty  # Eq. 2
    centred = torch.zeros_like(total)
    loo = torch.zeros_like(total)
    for g in group.unique():
        idx = group == g
        n = int(idx.sum())
        centred[idx] = total[idx] - total[idx].mean()
        loo[idx] = centred[idx] * n / (n - 1)
    return {
        "grpo": group_normalized(total, group),
        "rloo": loo,
        # sentence part from the sentence reward only; token penalties stay on their tokens (Eq. 7-9)
        "relate.credit": group_normalized(W_COUNT * count, group) + ALPHA * W_PENALTY * penalty / tokens,
    }


def run(config: Path, out: Path, *overrides: str) -> tuple[str, list[dict]]:
    """`rlgen train` through the CLI entry point; (combiner the run recorded, logged samples)."""
    args = ["train", str(config), "--set", f"run.output_dir={out}"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    used = yaml.safe_load((out / "config.yaml").read_text())["advantage"]["name"]
    records = [json.loads(ln) for ln in (out / "samples.jsonl").read_text().splitlines()]
    return used, records


def test_set_advantage_name_switches_the_combiner_the_run_uses(run_config, tmp_path):
    runs = {
        "grpo": run(run_config, tmp_path / "grpo"),  # the file's own choice
        "rloo": run(run_config, tmp_path / "rloo", "advantage.name=rloo"),
        "relate.credit": run(run_config, tmp_path / "credit", "advantage.name=relate.credit"),
    }
    for strategy, (used, records) in runs.items():
        assert used == strategy
        assert len(records) == 3 * 12  # every step's completions were logged
        for step in (1, 2, 3):
            recs = [r for r in records if r["step"] == step]
            got = torch.tensor([r["advantage"] for r in recs], dtype=torch.float64)
            predicted = expected_advantages(recs)
            assert torch.allclose(got, predicted[strategy], atol=1e-4), (strategy, step)
        # and the others' formulas do not fit this run: the override changed the combiner
        for other in set(runs) - {strategy}:
            preds = torch.cat([expected_advantages([r for r in records if r["step"] == s])[other] for s in (1, 2, 3)])
            got = torch.tensor([r["advantage"] for r in sorted(records, key=lambda r: (r["step"], r["index"]))],
                               dtype=torch.float64)
            assert (got - preds).abs().max() > 1e-3, (strategy, other)


def test_switching_keeps_params_checked_against_the_new_combiner(run_config, tmp_path, capsys):
    # relate.credit's alpha is no parameter of rloo: the error names the plugin and the key
    code = main(["validate", str(run_config), "--set", "advantage.name=rloo", "--set", "advantage.params={alpha: 0.5}"])
    assert code == 2
    assert "plugin 'rloo': unknown key 'advantage.params.alpha'" in capsys.readouterr().err
    assert main(["validate", str(run_config), "--set", "advantage.name=relate.credit",
                 "--set", "advantage.params={alpha: 0.5}"]) == 0
    assert "advantage relate.credit" in capsys.readouterr().out
    assert main(["validate", str(run_config), "--set", "advantage.name=nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown advantage plugin 'nope'" in err and all(n in err for n in ("grpo", "rloo", "relate.credit"))


def test_the_run_in_docs_strategies_validates_under_each_strategy(tmp_path, monkeypatch, capsys):
    doc = (ROOT / "docs" / "strategies.md").read_text()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = yaml.safe_load(block)
    assert config["advantage"] == {"name": "grpo"}
    path = tmp_path / "run.yaml"
    path.write_text(block)
    monkeypatch.delenv("RLGEN_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    for strategy in ("grpo", "rloo", "relate.credit"):
        if strategy != "grpo":
            assert f"--set advantage.name={strategy}" in doc
        assert main(["validate", str(path), "--set", f"advantage.name={strategy}"]) == 0
        assert f"advantage {strategy};" in capsys.readouterr().out
