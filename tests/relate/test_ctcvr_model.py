"""CTCVR model: the ESMM loss, the two log shapes, bad rows, and save/load (real MiniLM embeddings)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rlgen_relate.ctcvr.data import DataError, LogFields, read_logs
from rlgen_relate.ctcvr.embedder import FrozenEmbedder
from rlgen_relate.ctcvr.losses import esmm_loss, listwise_group_loss, pairwise_group_loss
from rlgen_relate.ctcvr.metrics import binary_metrics, group_pairwise_accuracy
from rlgen_relate.ctcvr.model import CtcvrConfig, CtcvrModel, EsmmEnsemble, EsmmNet
from rlgen_relate.ctcvr.train import TrainConfig, _Encoded, _objective, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def embedder() -> FrozenEmbedder:
    return FrozenEmbedder("builtin:minilm-l6")


def _write_jsonl(path: Path, rows: list) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


ADS = [
    ("Cheap flights to Paris this weekend", "travel deals"),
    ("Paris hotels with free breakfast", "travel deals"),
    ("Learn Python in 30 days", "programming course"),
    ("Master machine learning online", "programming course"),
]


# -- ESMM loss --------------------------------------------------------------------------------


def test_esmm_loss_matches_hand_computation():
    # row 1: pCTR = 0.5, pCVR = 0.5 -> pCTCVR = 0.25; clicked and converted
    # row 2: pCTR = 0.75, pCVR = 0.25 -> pCTCVR = 0.1875; not clicked
    ctr_logit = torch.tensor([0.0, math.log(3.0)])
    cvr_logit = torch.tensor([0.0, -math.log(3.0)])
    out = esmm_loss(ctr_logit, cvr_logit, torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))
    ctr = -(math.log(0.5) + math.log(0.25)) / 2
    ctcvr = -(math.log(0.25) + math.log(1 - 0.1875)) / 2
    assert out["ctr"].item() == pytest.approx(ctr, rel=1e-6)
    assert out["ctcvr"].item() == pytest.approx(ctcvr, rel=1e-6)
    assert out["loss"].item() == pytest.approx(ctr + ctcvr, rel=1e-6)

    # aggregated: 4 impressions, 2 clicks, 1 conversion on row 1; 2 impressions, 1 click, 0 conversions on row 2
    agg = esmm_loss(ctr_logit, cvr_logit, torch.tensor([4.0, 2.0]), torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.0]))
    ctr_a = -(2 * math.log(0.5) + 2 * math.log(0.5) + 1 * math.log(0.75) + 1 * math.log(0.25)) / 6
    ctcvr_a = -(1 * math.log(0.25) + 3 * math.log(0.75) + 0 + 2 * math.log(1 - 0.1875)) / 6
    assert agg["loss"].item() == pytest.approx(ctr_a + ctcvr_a, rel=1e-6)

    # CTR only: no CVR term at all
    only = esmm_loss(ctr_logit, None, torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]))
    assert set(only) == {"ctr", "loss"} and only["loss"].item() == pytest.approx(ctr, rel=1e-6)


def test_esmm_loss_is_stable_for_extreme_logits():
    out = esmm_loss(torch.tensor([30.0, -30.0]), torch.tensor([30.0, -30.0]), torch.tensor([5.0, 5.0]),
                    torch.tensor([5.0, 0.0]), torch.tensor([5.0, 0.0]))
    assert torch.isfinite(out["loss"]) and out["loss"].item() < 1e-6


def test_group_losses_prefer_the_observed_order():
    group = torch.tensor([0, 0, 1, 1])
    imp = torch.tensor([1000.0, 1000.0, 500.0, 500.0])
    clk = torch.tensor([30.0, 10.0, 5.0, 20.0])  # winners: row 0 in group 0, row 3 in group 1
    right = torch.tensor([-3.0, -4.0, -5.0, -3.5])
    wrong = torch.tensor([-4.0, -3.0, -3.5, -5.0])
    for fn in (listwise_group_loss, pairwise_group_loss):
        assert fn(right, imp, clk, group) < fn(wrong, imp, clk, group)
    # a shift of a whole group's logits changes nothing in the within-group objectives (small CTRs)
    shifted = right + torch.tensor([2.0, 2.0, -1.0, -1.0])
    assert pairwise_group_loss(shifted, imp, clk, group).item() == pytest.approx(
        pairwise_group_loss(right, imp, clk, group).item(), rel=1e-6)
    assert listwise_group_loss(shifted, imp, clk, group).item() == pytest.approx(
        listwise_group_loss(right, imp, clk, group).item(), rel=1e-2)


# -- data: the two row shapes give the same gradients ---------------------------------------


def _grads(net: EsmmNet, data: _Encoded, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    net.zero_grad()
    net.eval()  # no dropout: both passes must see the same network
    rows = torch.arange(data.n)
    out = net(net.features(data.embeddings(rows)))
    _objective(out, data, rows, cfg)["objective"].backward()
    return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("group_loss", ["none", "listwise"])
def test_aggregated_and_per_impression_logs_give_the_same_gradients(tmp_path, embedder, group_loss):
    counts = [(5, 3, 1), (4, 1, 0), (3, 0, 0), (6, 2, 2)]  # impressions, clicks, conversions per ad
    agg_rows, imp_rows = [], []
    for (text, query), (n, c, v) in zip(ADS, counts):
        agg_rows.append({"ad": text, "q": query, "impressions": n, "clicks": c, "conversions": v})
        for k in range(n):
            imp_rows.append({"ad": text, "q": query, "click": int(k < c), "conversion": int(k < v)})
    fields = LogFields(text="ad", context=["q"], group="q")
    agg = read_logs(_write_jsonl(tmp_path / "agg.jsonl", agg_rows), fields)
    per = read_logs(_write_jsonl(tmp_path / "imp.jsonl", imp_rows), fields)
    assert len(agg) == 4 and len(per) == sum(n for n, _, _ in counts)
    assert agg.has_conversions and per.has_conversions

    cfg_model = CtcvrConfig(embedding_dim=embedder.dim, text_field="ad", context_fields=["q"], hidden=[16],
                            tower_hidden=[8], has_cvr=True)
    torch.manual_seed(0)
    net = EsmmNet(cfg_model)
    cfg = TrainConfig(group_loss=group_loss)
    g_agg = _grads(net, _Encoded(agg, cfg_model.fields, embedder, "ad"), cfg)
    g_per = _grads(net, _Encoded(per, cfg_model.fields, embedder, "ad"), cfg)
    assert g_agg.keys() == g_per.keys() and len(g_agg) > 0
    for k in g_agg:
        torch.testing.assert_close(g_agg[k], g_per[k], rtol=1e-4, atol=1e-7, msg=k)


# -- data: malformed rows ------------------------------------------------------------------


def test_bad_rows_are_reported_with_file_and_line(tmp_path):
    lines = [
        {"text": "good ad one", "impressions": 10, "clicks": 2},
        {"text": "good ad two", "impressions": 10, "clicks": 0},
        "{not json",
        {"text": "clicks exceed impressions", "impressions": 3, "clicks": 5},
        {"impressions": 4, "clicks": 1},
        {"text": "negative", "impressions": -1, "clicks": 0},
        {"text": "good ad three", "impressions": 7, "clicks": 1},
        {"text": "fractional clicks", "impressions": 7, "clicks": 1.5},
        {"text": "good ad four", "impressions": 7, "clicks": 3},
        {"text": "good ad five", "impressions": 9, "clicks": 3},
    ]
    path = _write_jsonl(tmp_path / "logs.jsonl", lines)
    table = read_logs(path, LogFields())
    assert len(table) == 5 and table.total_rows == 10 and not table.has_conversions
    bad = {b.line: b.reason for b in table.bad_rows}
    assert sorted(bad) == [3, 4, 5, 6, 8]
    assert all(b.file == str(path) for b in table.bad_rows)
    assert "JSON" in bad[3]
    assert "exceeds" in bad[4]
    assert "missing field 'text'" in bad[5]
    assert "integer" in bad[8]
    assert str(table.bad_rows[0]).startswith(f"{path}:3:")
    assert [s[1] for s in table.sources] == [1, 2, 7, 9, 10]


def test_mostly_bad_file_fails_loudly(tmp_path):
    rows = [{"headline": f"ad {i}", "impressions": 5, "clicks": 1} for i in range(4)]  # wrong text field name
    rows.append({"text": "only good row", "impressions": 5, "clicks": 1})
    path = _write_jsonl(tmp_path / "wrong_fields.jsonl", rows)
    with pytest.raises(DataError, match=r"4 of 5 rows are malformed.*wrong_fields.jsonl:1: missing field 'text'"):
        read_logs(path, LogFields())


def test_parquet_rows_and_conversion_rules(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"text": "a", "click": 1, "conversion": 1},
        {"text": "b", "click": 0, "conversion": 1},  # conversion without click
        {"text": None, "click": 0, "conversion": 0},
        {"text": "c", "click": 0, "conversion": 0},
    ]
    path = tmp_path / "logs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    table = read_logs(path, LogFields())
    assert len(table) == 2 and table.has_conversions
    assert {b.line: b.reason for b in table.bad_rows}.keys() == {2, 3}
    assert "without a click" in table.bad_rows[0].reason
    # some rows with conversion labels and some without is an error, not "no conversion"
    partial = _write_jsonl(tmp_path / "partial.jsonl", [{"text": "a", "click": 1, "conversion": 0}, {"text": "b", "click": 0}])
    with pytest.raises(DataError, match="lack a conversion label"):
        read_logs(partial, LogFields())


def test_folds_keep_groups_whole():
    from rlgen_relate.ctcvr.data import LogTable
    from rlgen_relate.ctcvr.train import _folds

    n = 40
    table = LogTable(texts=[f"t{i}" for i in range(n)], contexts={}, impressions=np.ones(n), clicks=np.zeros(n),
                     conversions=None, groups=[f"g{i // 4}" for i in range(n)], sources=[("x", i) for i in range(n)])
    folds = _folds(table, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(n))
    for idx in folds:
        inside = {table.groups[i] for i in idx}
        outside = {table.groups[i] for i in range(n) if i not in set(idx.tolist())}
        assert len(inside) == 2 and inside.isdisjoint(outside)


# -- metrics ------------------------------------------------------------------------------------


def test_metrics_treat_aggregated_rows_as_impressions():
    pred = np.array([0.2, 0.5, 0.8])
    agg = binary_metrics(pred, np.array([2.0, 2.0, 2.0]), np.array([0.0, 1.0, 2.0]))
    flat = binary_metrics(np.repeat(pred, 2), np.ones(6), np.array([0, 0, 1, 0, 1, 1.0]))
    assert agg["auc"] == pytest.approx(flat["auc"]) and agg["log_loss"] == pytest.approx(flat["log_loss"])
    assert agg["calibration_ratio"] == pytest.approx(1.0)

    acc = group_pairwise_accuracy(np.array([3.0, 2.0, 1.0, 1.0, 2.0]), np.full(5, 100.0),
                                  np.array([9.0, 5.0, 1.0, 4.0, 4.0]), ["a", "a", "a", "b", "b"], bootstrap=50)
    # group a: 3 pairs all right; group b: equal CTRs -> no pair
    assert acc["accuracy"] == 1.0 and acc["pairs"] == 3 and acc["groups"] == 1 and acc["ci"] == [1.0, 1.0]


# -- training, save and load -----------------------------------------------------------------


def _tiny_logs(tmp_path: Path, conversions: bool) -> Path:
    rows = []
    for i, (text, query) in enumerate(ADS * 3):
        n, c = 50 + 10 * i, 5 + (i % 4) * 3
        row = {"ad": f"{text} #{i}", "query": query, "test": f"t{i % 6}", "impressions": n, "clicks": c}
        if conversions:
            row["conversions"] = c // 2
        rows.append(row)
    return _write_jsonl(tmp_path / "train.jsonl", rows)


@pytest.mark.parametrize("conversions,members", [(True, 2), (False, 1)])
def test_train_save_load_round_trip_gives_identical_predictions(tmp_path, embedder, conversions, members):
    fields = LogFields(text="ad", context=["query"], group="test")
    table = read_logs(_tiny_logs(tmp_path, conversions), fields)
    cfg = TrainConfig(hidden=[32], tower_hidden=[8], epochs=3, patience=2, progress=False, batch_size=4,
                      group_loss="listwise", members=members, val_fraction=0.34)
    model, report = train(table, None, fields, cfg, embedder=embedder)
    assert model.config.has_cvr is conversions and model.config.members == members
    # K members: K-fold, every row scored out of fold; one member: a held-out share of the tests
    assert report["val"]["rows"] == (len(table) if members > 1 else 4)  # 2 of 6 tests, 2 rows each
    assert len(report["best_epochs"]) == members
    assert {"ctr", "group_pairwise_accuracy"} <= set(report["val"]) and ("ctcvr" in report["val"]) is conversions
    assert report["val"]["ctr"]["auc"] == report["val"]["ctr"]["auc"]  # defined (not NaN) on this data

    folder = model.save(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = CtcvrModel.load(folder, embedder=embedder)
    texts = ["Cheap flights to Rome", "A brand new headline"]
    ctx = [{"query": "travel deals"}, {"query": "programming course"}]
    a, b = model.predict(texts, ctx), loaded.predict(texts, ctx)
    for name in ("pctr", "pcvr", "pctcvr"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.all((a.pctr > 0) & (a.pctr < 1))
    if conversions:
        torch.testing.assert_close(a.pctcvr, a.pctr * a.pcvr)  # ESMM: pCTCVR = pCTR x pCVR
    else:
        assert torch.equal(a.pctcvr, a.pctr) and torch.all(a.pcvr == 1)


def test_load_rejects_a_mismatched_embedder(tmp_path, embedder):
    cfg = CtcvrConfig(embedding_dim=embedder.dim + 1, text_field="ad", has_cvr=False)
    CtcvrModel(cfg, EsmmEnsemble(cfg)).save(tmp_path / "m")
    from rlgen.errors import ConfigError

    with pytest.raises(ConfigError, match="dimension|-d embeddings"):
        CtcvrModel.load(tmp_path / "m", embedder=embedder)
    with pytest.raises(ConfigError, match="not a CTCVR model folder"):
        CtcvrModel.load(tmp_path)


def test_embedding_cache_file_round_trip(tmp_path):
    from rlgen_relate.ctcvr.embedder import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "c.safetensors")
    cache.put("hello", np.arange(4, dtype=np.float32))
    cache.put("world", np.ones(4, dtype=np.float32))
    cache.save()
    again = EmbeddingCache(tmp_path / "c.safetensors")
    assert len(again) == 2 and np.array_equal(again.get("hello"), np.arange(4, dtype=np.float32))
    assert again.get("unseen") is None


def test_layer_mean_pooling_ignores_padding_and_is_normalised():
    emb = FrozenEmbedder("builtin:minilm-l6", pooling="layer_mean", batch_size=8)
    texts = ["Short one", "A considerably longer headline that forces padding on the short one", "Short one!"]
    together = emb.encode(texts, cache=False)
    alone = torch.cat([emb.encode([t], cache=False) for t in texts])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together.norm(dim=1), torch.ones(3))
    assert emb.dim == 384 and not torch.allclose(together[0], together[2])


def test_block_scaling_keeps_the_geometry_inside_each_block():
    cfg = CtcvrConfig(embedding_dim=3, text_field="ad", context_fields=["q"], has_cvr=False, hidden=[4])
    net = EsmmNet(cfg)
    torch.manual_seed(0)
    feats = torch.randn(500, cfg.feature_dim) * torch.tensor([1.0, 0.1, 0.01] * 3)  # 3 blocks of 3
    net.fit_standardizer(feats)
    scale = net.feature_std.view(3, 3)
    assert torch.allclose(scale, scale[:, :1].expand(3, 3))  # one scale per block: weak directions stay weak
    per_feature = EsmmNet(cfg.model_copy(update={"feature_scaling": "feature"}))
    per_feature.fit_standardizer(feats)
    torch.testing.assert_close(per_feature.feature_std, feats.std(0, unbiased=False), rtol=1e-4, atol=1e-6)


def test_list_context_fields_read_as_the_prompt_shows_them(tmp_path):
    # simulator logs carry selling points as a list; prompts join them with "; " (rlgen.data.field_text)
    path = _write_jsonl(tmp_path / "logs.jsonl", [
        {"text": "ad", "selling_points": ["Free returns", "Ships in 24 hours"], "impressions": 5, "clicks": 1},
    ])
    table = read_logs(path, LogFields(context=["selling_points"]))
    assert not table.bad_rows
    assert table.contexts["selling_points"] == ["Free returns; Ships in 24 hours"]
