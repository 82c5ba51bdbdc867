"""The `relate.ctcvr` reward and the `rlgen-relate ctcvr` CLI, end to end on tiny logs with real MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rlgen
from rlgen.config import load_config
from rlgen.errors import PluginError
from rlgen.reward import check_reward_result
from rlgen_relate.cli import main as relate_main
from rlgen_relate.ctcvr.embedder import resolve_embedder
from rlgen_relate.ctcvr.reward import CtcvrReward

torch.set_num_threads(1)

ADS = [
    ("Cheap flights to Paris this weekend", "paris travel"),
    ("Paris hotels with free breakfast", "paris travel"),
    ("Book your Paris trip today", "paris travel"),
    ("Learn Python in 30 days", "python course"),
    ("Master Python with real projects", "python course"),
    ("Python for beginners, free trial", "python course"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A model trained through the CLI on per-impression logs with conversions, plus its logs."""
    root = tmp_path_factory.mktemp("ctcvr")
    logs = root / "logs.jsonl"
    with logs.open("w", encoding="utf-8") as fh:
        for i, (ad, query) in enumerate(ADS * 2):
            for k in range(8):
                click = int((k + i) % 3 == 0)
                fh.write(json.dumps({"creative": ad, "kw": query, "clk": click, "buy": int(click and k % 2 == 0)}) + "\n")
        fh.write("{broken json\n")  # reported, skipped
    out = root / "model"
    rc = relate_main([
        "ctcvr", "train", "--data", str(logs), "--out", str(out), "--text-field", "creative",
        "--context-field", "kw", "--click-field", "clk", "--conversion-field", "buy", "--hidden", "16",
        "--tower-hidden", "8", "--epochs", "2", "--val-fraction", "0.25", "--cache-dir", "", "--no-progress",
    ])
    assert rc == 0
    return out


def _context(tmp_path: Path) -> rlgen.RunContext:
    config = load_config({"data": {"path": "unused.jsonl"}, "rewards": [{"name": "relate.ctcvr"}]})
    return rlgen.RunContext(config=config, registry=rlgen.registry(), output_dir=tmp_path, cache_dir=tmp_path, seed=0)


def _rollout(meta_key: str = "kw") -> rlgen.Rollout:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_embedder("builtin:minilm-l6"))
    texts = ["Fly to Paris for less", "Paris weekend deals", "", "Python course with projects"]
    meta = [{meta_key: "paris travel"}, {meta_key: "paris travel"}, {meta_key: "paris travel"},
            {meta_key: "python course"}]
    return rlgen.Rollout.from_texts(tok, texts, group=[0, 0, 0, 1], meta=meta)


def test_cli_train_writes_model_and_metrics(model_dir):
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["has_cvr"] is True and cfg["text_field"] == "creative" and cfg["context_fields"] == ["kw"]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["bad_rows"]["count"] == 1 and ":97: not valid JSON" in metrics["bad_rows"]["first"][0]
    for key in ("auc", "log_loss", "calibration_ratio", "ece"):
        assert key in metrics["val"]["ctr"] and key in metrics["val"]["ctcvr"]


def test_cli_score_writes_predictions_per_row(model_dir, tmp_path):
    data = tmp_path / "ads.jsonl"
    data.write_text(
        json.dumps({"id": 1, "creative": "Paris for two", "keyword": "paris travel"}) + "\n"
        + json.dumps({"id": 2, "keyword": "python course"}) + "\n"  # no text: reported, skipped
        + json.dumps({"id": 3, "creative": "Python in a week", "keyword": "python course"}) + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "scores.jsonl"
    rc = relate_main(["ctcvr", "score", "--model", str(model_dir), "--data", str(data), "--out", str(out),
                      "--context-map", "kw=keyword"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 3] and [r["source_line"] for r in rows] == [1, 3]
    for r in rows:
        assert 0 < r["pctcvr"] <= r["pctr"] < 1 and r["pctcvr"] == pytest.approx(r["pctr"] * r["pcvr"])


def test_cli_reports_bad_input_as_one_message(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\nnot json either\n", encoding="utf-8")
    rc = relate_main(["ctcvr", "train", "--data", str(bad), "--out", str(tmp_path / "m"), "--no-progress"])
    assert rc == 2
    assert "2 of 2 rows are malformed" in capsys.readouterr().err
    rc = relate_main(["ctcvr", "train", "--data", str(bad), "--out", str(tmp_path / "m"), "--val-fraction", "1.5"])
    assert rc == 2 and "--val-fraction" in capsys.readouterr().err


def test_reward_scores_a_rollout(model_dir, tmp_path):
    reward = CtcvrReward(CtcvrReward.Params(model=str(model_dir), batch_size=2))
    reward.setup(_context(tmp_path))
    rollout = _rollout()
    result = check_reward_result(reward.score(rollout), plugin=reward.name, granularity="sentence", rollout=rollout)
    assert result.values.shape == (4,) and torch.isfinite(result.values).all()
    assert torch.all((result.values > 0) & (result.values < 1))
    assert result.details[0]["pctcvr"] == pytest.approx(result.details[0]["pctr"] * result.details[0]["pcvr"])
    assert set(reward._ctx_cache) == {"paris travel", "python course"}
    # the same texts score the same in another batch composition (context cache is exact)
    again = reward.score(rlgen.Rollout.from_texts(_tokenizer(), rollout.texts[::-1], group=[0, 1, 1, 1],
                                                  meta=rollout.meta[::-1]))
    torch.testing.assert_close(again.values, result.values.flip(0))

    log_reward = CtcvrReward(CtcvrReward.Params(model=str(model_dir), scale="log"))
    log_reward.setup(_context(tmp_path))
    torch.testing.assert_close(log_reward.score(rollout).values, result.values.log(), rtol=1e-5, atol=1e-6)

    std = CtcvrReward(CtcvrReward.Params(model=str(model_dir), scale="standardised", target="ctr"))
    std.setup(_context(tmp_path))
    stats = json.loads((model_dir / "config.json").read_text())["score_stats"]
    pctr = torch.tensor([d["pctr"] for d in result.details])
    expected = (pctr.log() - stats["log_pctr_mean"]) / stats["log_pctr_std"]
    torch.testing.assert_close(std.score(rollout).values, expected, rtol=1e-4, atol=1e-4)


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_embedder("builtin:minilm-l6"))


def test_reward_maps_meta_fields_and_names_missing_ones(model_dir, tmp_path):
    rollout = _rollout(meta_key="keyword")
    plain = CtcvrReward(CtcvrReward.Params(model=str(model_dir)))
    plain.setup(_context(tmp_path))
    with pytest.raises(PluginError, match="relate.ctcvr.*no meta field 'kw'"):
        plain.score(rollout)
    mapped = CtcvrReward(CtcvrReward.Params(model=str(model_dir), context_fields={"kw": "keyword"}))
    mapped.setup(_context(tmp_path))
    assert mapped.score(rollout).values.shape == (4,)

    with pytest.raises(PluginError, match="context fields are \\['kw'\\]"):
        CtcvrReward(CtcvrReward.Params(model=str(model_dir), context_fields={"query": "q"})).setup(_context(tmp_path))
    with pytest.raises(PluginError, match="not a CTCVR model folder"):
        CtcvrReward(CtcvrReward.Params(model=str(tmp_path))).setup(_context(tmp_path))


def test_reward_is_registered_through_the_entry_point():
    reg = rlgen.registry()
    assert reg.rewards["relate.ctcvr"] is CtcvrReward
    assert CtcvrReward.granularity == "sentence"
