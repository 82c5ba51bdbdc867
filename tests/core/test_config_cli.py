"""Config validation and the CLI: one clear message, non-zero exit, nothing written on error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import rlgen
from rlgen.config import apply_override, load_config, plan_run
from rlgen.errors import ConfigError

from . import toy_plugins
from .test_loop import make_config


@pytest.fixture
def reg():
    return rlgen.registry(plugins=[toy_plugins], autoload=False)


def write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_unknown_plugin_lists_installed_ones(tmp_path, reg):
    cfg = make_config(tmp_path)
    cfg["advantage"]["name"] = "nope"
    with pytest.raises(ConfigError, match=r"run.yaml: advantage.name: unknown advantage plugin 'nope'; installed: toy.centred"):
        plan_run(load_config(write(tmp_path, cfg)), reg)


def test_ill_typed_param_names_plugin_and_field(tmp_path, reg):
    cfg = make_config(tmp_path)
    cfg["trainer"]["params"] = {"lr": "fast"}
    with pytest.raises(ConfigError, match=r"plugin 'toy.trainer': key 'trainer.params.lr': Input should be a valid number"):
        plan_run(load_config(write(tmp_path, cfg)), reg)


def test_unknown_top_level_key_names_the_file(tmp_path):
    cfg = make_config(tmp_path)
    cfg["run"]["stpes"] = 3
    with pytest.raises(ConfigError, match=r"run.yaml: unknown key 'run.stpes'"):
        load_config(write(tmp_path, cfg))


def test_overrides_parse_yaml_values_and_reach_lists():
    raw = {"run": {"steps": 1}, "rewards": [{"name": "a"}]}
    apply_override(raw, "run.steps=7")
    apply_override(raw, "rewards.0.weight=0.25")
    apply_override(raw, "advantage.name=rloo")
    assert raw == {"run": {"steps": 7}, "rewards": [{"name": "a", "weight": 0.25}], "advantage": {"name": "rloo"}}
    with pytest.raises(ConfigError, match="not an index"):
        apply_override(raw, "rewards.3.weight=1")


def test_an_override_under_a_yaml_alias_changes_only_the_place_it_names(tmp_path):
    cfg = make_config(tmp_path)
    shared = {"letter": "a"}
    cfg["rewards"] = [{"name": "toy.count", "params": shared}, {"name": "toy.count", "params": shared}]
    text = yaml.safe_dump(cfg)
    assert "&id001" in text and "*id001" in text  # the file holds an anchor and its alias
    config = load_config(write(tmp_path, cfg), ["rewards.1.params.letter=b"])
    assert [r.params for r in config.rewards] == [{"letter": "a"}, {"letter": "b"}]
    config = load_config(yaml.safe_load(text), ["rewards.0.params.letter=c"])
    assert [r.params for r in config.rewards] == [{"letter": "c"}, {"letter": "a"}]


ROOT = Path(__file__).resolve().parents[2]


def cli(*args):
    """The real CLI in a subprocess, with the toy plugins registered by import name."""
    env = {**os.environ, "RLGEN_PLUGINS": "tests.core.toy_plugins", "RLGEN_DISABLE_PLUGIN_AUTOLOAD": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "rlgen.cli", *args], capture_output=True, text=True, env=env)


def test_cli_errors_are_one_message_without_traceback(tmp_path):
    cfg = make_config(tmp_path)
    cfg["sampler"]["name"] = "nope"
    path = write(tmp_path, cfg)
    out = cli("train", str(path), "--set", "run.steps=2")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "error: " in out.stderr and "sampler.name: unknown sampler plugin 'nope'" in out.stderr
    assert not (tmp_path / "run").exists()
    bad = cli("validate", str(path), "--set", "group_size=zero")
    assert bad.returncode == 2 and "key 'group_size'" in bad.stderr and "Traceback" not in bad.stderr


def test_schema_is_json_schema_of_the_config():
    out = cli("schema", "--no-plugins")
    schema = json.loads(out.stdout)
    assert set(schema["properties"]) >= {"model", "data", "group_size", "sampler", "rewards", "advantage", "trainer", "run"}
    assert schema["required"] == ["data", "rewards"]
    with_plugins = json.loads(cli("schema").stdout)
    assert with_plugins["x-rlgen-plugin-params"]["trainer:toy.trainer"]["properties"]["lr"]["type"] == "number"


def test_validate_then_train_through_the_cli(tmp_path):
    path = write(tmp_path, make_config(tmp_path))
    ok = cli("validate", str(path))
    assert ok.returncode == 0 and "ok. 6 prompts" in ok.stdout
    run = cli("train", str(path), "--set", "run.steps=3", "--set", "advantage.name=toy.centred")
    assert run.returncode == 0, run.stderr
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_generate_uses_the_trained_policy_and_the_runs_config(tmp_path):
    cfg = make_config(tmp_path)
    cfg["rewards"] = [{"name": "toy.count", "params": {"letter": "a"}}]
    cfg["trainer"]["params"] = {"lr": 1.0}
    path = write(tmp_path, cfg)
    assert cli("train", str(path), "--set", "run.steps=30").returncode == 0
    contexts = tmp_path / "contexts.jsonl"
    contexts.write_text('{"query": "x"}\n{"query": "y"}\n{"query": "z"}\n')
    out = tmp_path / "ads.jsonl"
    # the config comes from RUN/config.yaml beside the policy folder
    res = cli("generate", "--policy", str(tmp_path / "run" / "policy"), "--data", str(contexts), "--out", str(out),
              "--n", "4", "--batch", "2")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["query"] for x in lines] == ["x", "y", "z"] and all(len(x["ads"]) == 4 for x in lines)
    # the trained policy writes mostly a's; an untrained one would not (1 in 6 letters)
    ads = "".join(a for x in lines for a in x["ads"])
    assert ads.count("a") / max(len(ads), 1) > 0.5


def test_eval_reports_metrics_with_intervals_and_deltas_against_a_baseline(tmp_path):
    cfg = make_config(tmp_path)
    cfg["rewards"] = [{"name": "toy.count", "params": {"letter": "a"}}]
    cfg["trainer"]["params"] = {"lr": 1.0}
    cfg["eval"] = {"data": str(tmp_path / "prompts.jsonl"), "samples_per_context": 4, "every": 10}
    path = write(tmp_path, cfg)
    assert cli("train", str(path), "--set", "run.steps=1", "--set", f"run.output_dir={tmp_path / 'base'}").returncode == 0
    assert cli("train", str(path), "--set", "run.steps=20").returncode == 0
    # periodic eval during training lands in the metrics
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "eval/reward/toy.count" in metrics[9] and "eval/reward/toy.count" not in metrics[8]

    base = cli("eval", "--policy", str(tmp_path / "base" / "policy"), "--out", str(tmp_path / "eval_base"))
    assert base.returncode == 0, base.stderr
    res = cli("eval", "--policy", str(tmp_path / "run" / "policy"), "--out", str(tmp_path / "eval_run"),
              "--baseline", str(tmp_path / "eval_base"))
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "eval_run" / "eval.json").read_text())["summary"]
    row = summary["reward/toy.count"]
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert row["mean"] > row["baseline"] and row["delta"] > 0 and row["delta_ci_low"] > 0
    assert set(summary) == {"reward/toy.count", "toy/length", "toy/distinct_texts"}
    assert "| reward/toy.count |" in (tmp_path / "eval_run" / "eval.md").read_text()


def test_a_weighted_metric_is_summarised_as_a_ratio_over_contexts_with_a_paired_difference():
    from rlgen import EvalResult, paired_difference, summarize

    group = [0, 0, 1, 2, 3]
    base = EvalResult({"m": [1.0, 0.0, 1.0, 0.0, 1.0]}, {}, [""] * 5, [{}] * 5, group,
                      weights={"m": [1.0, 1.0, 2.0, 0.0, 4.0]})
    run = EvalResult({"m": [0.5, 0.5, 0.0, 1.0, 0.0]}, {}, [""] * 5, [{}] * 5, group,
                     weights={"m": [1.0, 1.0, 2.0, 0.0, 4.0]})
    row = summarize(run, base)["m"]
    assert row["mean"] == pytest.approx(1.0 / 8) and row["baseline"] == pytest.approx(7.0 / 8)  # sum(w v) / sum(w)
    # no context improves; a resample of only the unchanged context 0 (and the weightless 2) gives 0
    assert row["diff"] == pytest.approx(-6.0 / 8) and row["diff_ci_low"] <= row["diff"] <= row["diff_ci_high"] <= 0
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert paired_difference(run, base, "m")["diff"] == pytest.approx(row["diff"])
    again = EvalResult.from_json(json.loads(json.dumps(run.to_json())))
    assert again.weights == run.weights  # eval.json keeps the weights, so a report can re-summarise


def test_a_relative_delta_whose_baseline_can_resample_to_zero_has_no_interval():
    """Four contexts of 0/1 outcomes (one vertical's compliance): some resamples hold only the base's zeros, so
    (x - base) / base has no value there and no interval, where a clamp printed +1e14 %."""
    from rlgen import EvalResult, summarize
    from rlgen.evaluate import markdown_table

    base = EvalResult({"m": [1.0, 0.0, 0.0, 0.0]}, {}, [""] * 4, [{}] * 4, [0, 1, 2, 3])
    run = EvalResult({"m": [1.0, 1.0, 1.0, 0.0]}, {}, [""] * 4, [{}] * 4, [0, 1, 2, 3])
    row = summarize(run, base)["m"]
    assert row["delta"] == pytest.approx(2.0) and "delta_ci_low" not in row
    assert "undefined" in markdown_table({"m": row}) and "e+" not in markdown_table({"m": row})
    always = EvalResult({"m": [1.0, 1.0, 1.0, 1.0]}, {}, [""] * 4, [{}] * 4, [0, 1, 2, 3])
    assert summarize(run, always)["m"]["delta_ci_low"] <= summarize(run, always)["m"]["delta"]
