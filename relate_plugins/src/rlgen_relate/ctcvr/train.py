"""Training the CTCVR model from logs: embed once, fit the ESMM head, stop early, report.

The embedder is frozen, so every distinct string of every field is embedded exactly once (and
cached on disk when a cache folder is given); training then touches only the small head.
Early stopping watches validation data: a file, a held-out share of the training groups, or,
for an ensemble of K members, the K folds of the training groups (each member early-stops on
its own fold, and the folds give out-of-fold predictions for an honest report). The report
has AUC, log loss and calibration for CTR and CTCVR on training and validation rows, and the
within-group pairwise accuracy when the logs have groups.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic
import torch
from pydantic import Field
from tqdm.auto import tqdm

from rlgen import ConfigError
from rlgen import get_logger

from .data import LogFields, LogTable
from .embedder import DEFAULT_EMBEDDER, FrozenEmbedder, cache_file_for
from .losses import esmm_loss, listwise_group_loss, pairwise_group_loss
from .metrics import binary_metrics, group_pairwise_accuracy
from .model import CtcvrConfig, CtcvrModel, EsmmEnsemble, EsmmNet, EsmmOutput

log = get_logger("rlgen_relate.ctcvr")


class TrainConfig(pydantic.BaseModel):
    """Hyperparameters of one training run (the CLI flags map onto these)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    embedder: str = Field(DEFAULT_EMBEDDER, description="sentence-transformers id, folder, or builtin:minilm-l6")
    embedder_pooling: Literal["sentence", "layer_mean"] = Field(
        "sentence", description="sentence: the embedder's own embedding; layer_mean: mean over its layers (embedder.py)"
    )
    embed_batch_size: int = Field(64, ge=1, description="texts per embedder forward pass")
    cache_dir: str | None = Field(None, description="folder for the embedding cache file (none: no disk cache)")
    interactions: bool = Field(True, description="append element-wise products of field embeddings")
    feature_scaling: Literal["block", "feature"] = Field(
        "block", description="standardise each embedding/product block as a whole, or every feature"
    )
    hidden: list[int] = Field(default_factory=lambda: [256], description="shared-bottom widths")
    tower_hidden: list[int] = Field(default_factory=lambda: [64], description="CTR/CVR tower widths")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout after hidden layers")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    batch_size: int = Field(256, ge=1, description="rows per step (whole groups when a group objective is on)")
    epochs: int = Field(30, ge=1, description="maximum epochs")
    patience: int = Field(5, ge=1, description="stop after this many epochs without validation improvement")
    select: Literal["loss", "ctr_auc", "ctcvr_auc", "group_accuracy"] = Field(
        "loss", description="validation criterion for early stopping and the kept checkpoint"
    )
    entire_space_weight: float = Field(1.0, ge=0, description="weight of the ESMM entire-space loss")
    group_loss: Literal["none", "listwise", "pairwise"] = Field(
        "none", description="extra within-group CTR objective (needs a group field)"
    )
    group_loss_weight: float = Field(1.0, ge=0, description="weight of the group objective")
    members: int = Field(1, ge=1, description="ensemble members; with more than one, each trains on a bootstrap "
                         "sample of the training groups (rows when there are none) and the logits are averaged")
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="share of groups (rows) held out for early stopping when no validation "
        "data is given and there is one member (K members: K-fold)"
    )
    seed: int = Field(0, description="seeds initialisation, shuffling, bagging and the validation split")
    device: str = Field("cpu", description="torch device for the embedder and the head")
    progress: bool = Field(True, description="show progress bars")


class _Encoded:
    """A table's fields as (unique-embedding matrix, row index) pairs, plus label tensors."""

    def __init__(self, table: LogTable, fields: list[str], embedder: FrozenEmbedder, text_field: str) -> None:
        self.tables: list[torch.Tensor] = []
        self.index: list[torch.Tensor] = []
        for name in fields:
            col = table.texts if name == text_field else table.contexts[name]
            uniq = list(dict.fromkeys(col))
            pos = {s: i for i, s in enumerate(uniq)}
            self.tables.append(embedder.encode(uniq))
            self.index.append(torch.tensor([pos[s] for s in col], dtype=torch.long))
        self.n = len(table)
        self.imp = torch.as_tensor(table.impressions, dtype=torch.float32)
        self.clk = torch.as_tensor(table.clicks, dtype=torch.float32)
        self.conv = torch.as_tensor(table.conversions, dtype=torch.float32) if table.conversions is not None else None
        gids = {g: i for i, g in enumerate(dict.fromkeys(table.groups))} if table.groups is not None else None
        self.group = torch.tensor([gids[g] for g in table.groups], dtype=torch.long) if gids else None

    def embeddings(self, rows: torch.Tensor) -> list[torch.Tensor]:
        return [t[i[rows]] for t, i in zip(self.tables, self.index)]


def _objective(
    out: EsmmOutput, data: _Encoded, rows: torch.Tensor, cfg: TrainConfig, weight: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The weighted training objective; ``weight`` (per row) repeats rows, as a bootstrap sample does."""
    w = weight[rows] if weight is not None else torch.ones(len(rows))
    imp, clk = data.imp[rows] * w, data.clk[rows] * w
    conv = data.conv[rows] * w if data.conv is not None else None
    terms = esmm_loss(out.ctr_logit, out.cvr_logit, imp, clk, conv)
    loss = cfg.entire_space_weight * terms["loss"]
    if cfg.group_loss != "none" and data.group is not None:
        fn = listwise_group_loss if cfg.group_loss == "listwise" else pairwise_group_loss
        terms["group"] = fn(out.ctr_logit, imp, clk, data.group[rows])
        loss = loss + cfg.group_loss_weight * terms["group"]
    terms["objective"] = loss
    return terms


def _batches(data: _Encoded, cfg: TrainConfig, gen: torch.Generator, weight: torch.Tensor | None) -> list[torch.Tensor]:
    """Row-index batches of the rows with weight; whole groups stay together for group objectives."""
    keep = weight > 0 if weight is not None else torch.ones(data.n, dtype=torch.bool)
    if cfg.group_loss != "none" and data.group is not None:
        order = torch.randperm(int(data.group.max()) + 1, generator=gen)
        rows_of: list[list[int]] = [[] for _ in range(len(order))]
        for r, g in enumerate(data.group.tolist()):
            if keep[r]:
                rows_of[g].append(r)
        out, cur = [], []
        for g in order.tolist():
            cur.extend(rows_of[g])
            if len(cur) >= cfg.batch_size:
                out.append(torch.tensor(cur))
                cur = []
        if cur:
            out.append(torch.tensor(cur))
        return out
    rows = torch.nonzero(keep).squeeze(1)
    return list(rows[torch.randperm(len(rows), generator=gen)].split(cfg.batch_size))


def _bootstrap_weights(data: _Encoded, gen: torch.Generator) -> torch.Tensor:
    """Per-row repeat counts of a bootstrap sample of the groups (of the rows when there are none)."""
    if data.group is not None:
        n_groups = int(data.group.max()) + 1
        draw = torch.randint(0, n_groups, (n_groups,), generator=gen)
        counts = torch.bincount(draw, minlength=n_groups).float()
        return counts[data.group]
    draw = torch.randint(0, data.n, (data.n,), generator=gen)
    return torch.bincount(draw, minlength=data.n).float()


@torch.no_grad()
def _predict(net: EsmmNet | EsmmEnsemble, data: _Encoded, chunk: int = 4096) -> EsmmOutput:
    net.eval()
    dev = net.feature_mean.device
    outs = []
    for rows in torch.arange(data.n).split(chunk):
        outs.append(net(net.features([e.to(dev) for e in data.embeddings(rows)])))
    ctr = torch.cat([o.ctr_logit for o in outs]).cpu()
    cvr = torch.cat([o.cvr_logit for o in outs]).cpu() if outs[0].cvr_logit is not None else None
    return EsmmOutput(ctr, cvr)


def evaluate(out: EsmmOutput, table: LogTable, *, bootstrap: int = 0, seed: int = 0) -> dict[str, Any]:
    """CTR and CTCVR metrics (AUC, log loss, calibration) and group accuracy for predictions on ``table``."""
    report: dict[str, Any] = {"rows": len(table)}
    report["ctr"] = binary_metrics(out.pctr.numpy(), table.impressions, table.clicks)
    if table.conversions is not None:
        report["ctcvr"] = binary_metrics(out.pctcvr.numpy(), table.impressions, table.conversions)
    if table.groups is not None:
        report["group_pairwise_accuracy"] = group_pairwise_accuracy(
            out.ctr_logit.numpy(), table.impressions, table.clicks, table.groups, bootstrap=bootstrap, seed=seed
        )
    return report


def _criterion(cfg: TrainConfig, val_loss: float, report: dict[str, Any]) -> float:
    """Higher is better."""
    if cfg.select == "loss":
        return -val_loss
    if cfg.select == "group_accuracy":
        return report.get("group_pairwise_accuracy", {}).get("accuracy", float("nan"))
    key = "ctr" if cfg.select == "ctr_auc" else "ctcvr"
    return report.get(key, {}).get("auc", float("nan"))


def _calibrate_intercept(net: EsmmEnsemble, data: _Encoded) -> float:
    """Shift the CTR logit so the predicted click rate matches the training data (1-D Newton).

    A group objective alone fixes CTR only up to a constant; the reward scale and the
    calibration report need that constant.
    """
    logit = _predict(net, data).ctr_logit.double()
    n, c = data.imp.double(), data.clk.double()
    delta = torch.zeros((), dtype=torch.float64)
    for _ in range(50):
        p = torch.sigmoid(logit + delta)
        grad = (n * p - c).sum()
        hess = (n * p * (1 - p)).sum().clamp_min(1e-12)
        step = grad / hess
        delta = delta - step
        if abs(float(step)) < 1e-10:
            break
    with torch.no_grad():  # the ensemble averages logits: shifting every member shifts the mean
        for member in net.members:
            member.ctr_tower[-1].bias += float(delta)
    return float(delta)


def _fit_member(
    net: EsmmNet,
    tr: _Encoded,
    va: _Encoded,
    val_table: LogTable,
    cfg: TrainConfig,
    gen: torch.Generator,
    weight: torch.Tensor | None,
    k: int,
) -> tuple[int, list[dict[str, Any]]]:
    """Train one network with early stopping on the validation data; keep its best epoch."""
    with torch.no_grad():
        # start the CTR (and CVR) logits at the observed base rates: the towers then learn differences
        base = float(tr.clk.sum() / tr.imp.sum())
        net.ctr_tower[-1].bias.fill_(math.log(max(base, 1e-6) / max(1 - base, 1e-6)))
        if net.cvr_tower is not None and tr.conv is not None:
            cvr = float(tr.conv.sum() / tr.clk.sum().clamp_min(1.0))
            net.cvr_tower[-1].bias.fill_(math.log(max(cvr, 1e-6) / max(1 - cvr, 1e-6)))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_score, best_state, best_epoch, bad_epochs = -math.inf, copy.deepcopy(net.state_dict()), 0, 0
    history: list[dict[str, Any]] = []
    desc = "ctcvr train" if cfg.members == 1 else f"ctcvr train {k + 1}/{cfg.members}"
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, unit="epoch", disable=not cfg.progress)
    for epoch in bar:
        net.train()
        total, seen = 0.0, 0
        for rows in _batches(tr, cfg, gen, weight):
            out = net(net.features([e.to(cfg.device) for e in tr.embeddings(rows)]))
            terms = _objective(out, tr, rows, cfg, weight)
            opt.zero_grad(set_to_none=True)
            terms["objective"].backward()
            opt.step()
            total += terms["objective"].detach().item() * len(rows)
            seen += len(rows)
        val_out = _predict(net, va)
        with torch.no_grad():
            val_loss = float(_objective(val_out, va, torch.arange(va.n), cfg)["objective"])
        report = evaluate(val_out, val_table)
        score = _criterion(cfg, val_loss, report)
        if math.isnan(score):  # e.g. an AUC on validation rows of one class: fall back to the loss
            score = -val_loss
        row = {"epoch": epoch, "train_objective": total / max(seen, 1), "val_objective": val_loss,
               "val_ctr_auc": report["ctr"]["auc"]}
        if "group_pairwise_accuracy" in report:
            row["val_group_accuracy"] = report["group_pairwise_accuracy"]["accuracy"]
        history.append(row)
        bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "epoch"})
        if score > best_score:
            best_score, best_state, best_epoch, bad_epochs = score, copy.deepcopy(net.state_dict()), epoch, 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                log.info("early stopping", member=k, epoch=epoch, best_epoch=best_epoch)
                break
    bar.close()
    net.load_state_dict(best_state)
    return best_epoch, history


def _folds(table: LogTable, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint validation index sets covering the table, by group when there are groups."""
    rng = np.random.default_rng(seed)
    if table.groups is not None:
        uniq = sorted(set(table.groups))
        rng.shuffle(uniq)
        fold_of = {g: i % k for i, g in enumerate(uniq)}
        assign = np.array([fold_of[g] for g in table.groups])
    else:
        assign = rng.permutation(len(table)) % k
    return [np.nonzero(assign == i)[0] for i in range(k)]


def train(
    train_table: LogTable,
    val_table: LogTable | None,
    fields: LogFields,
    cfg: TrainConfig,
    *,
    embedder: FrozenEmbedder | None = None,
) -> tuple[CtcvrModel, dict[str, Any]]:
    """Fit the ESMM model (``cfg.members`` networks, logits averaged) with early stopping.

    Validation, by what is given:

    - ``val_table``: every member early-stops on it; with several members each trains on a
      bootstrap sample of the training groups (bagging). The report's ``val`` is the ensemble
      on ``val_table``.
    - no ``val_table``, one member: a ``cfg.val_fraction`` share of the groups (rows without
      groups) is held out for early stopping.
    - no ``val_table``, K > 1 members: K-fold by group; member k early-stops on fold k and
      trains on the rest, so every row is used for training and the report's ``val`` holds
      honest out-of-fold predictions (each row scored by the member that never saw it).

    Returns the model and a report: history, best epoch per member, and AUC / log loss /
    calibration (and group pairwise accuracy) on the training and validation rows.
    """
    if len(train_table) == 0 or (val_table is not None and len(val_table) == 0):
        raise ConfigError("ctcvr train: the training and validation data need at least one valid row each")
    has_cvr = train_table.conversions is not None
    groups_known = train_table.groups is not None
    if cfg.group_loss != "none" and not groups_known:
        raise ConfigError(f"ctcvr train: group_loss={cfg.group_loss!r} needs a group field (--group-field)")
    if cfg.entire_space_weight == 0 and (has_cvr or cfg.group_loss == "none"):
        raise ConfigError(
            "ctcvr train: entire_space_weight=0 leaves the CVR tower (or, without a group loss, everything) untrained"
        )
    if cfg.select == "group_accuracy" and not groups_known:
        raise ConfigError("ctcvr train: select=group_accuracy needs a group field")
    if cfg.select == "ctcvr_auc" and not has_cvr:
        raise ConfigError("ctcvr train: select=ctcvr_auc needs conversion labels")
    if val_table is not None and (val_table.conversions is not None) != has_cvr:
        raise ConfigError("ctcvr train: the training and validation logs must both have conversion labels, or neither")
    torch.manual_seed(cfg.seed)

    if embedder is None:
        from .embedder import resolve_embedder

        path = resolve_embedder(cfg.embedder)
        cache = cache_file_for(cfg.cache_dir, path, cfg.embedder_pooling) if cfg.cache_dir else None
        embedder = FrozenEmbedder(
            cfg.embedder, pooling=cfg.embedder_pooling, device=cfg.device, batch_size=cfg.embed_batch_size,
            cache_file=cache, show_progress=cfg.progress,
        )
    mcfg = CtcvrConfig(
        embedder=embedder.spec,
        embedder_pooling=embedder.pooling,  # type: ignore[arg-type]
        embedding_dim=embedder.dim,
        text_field=fields.text,
        context_fields=list(fields.context),
        interactions=cfg.interactions,
        feature_scaling=cfg.feature_scaling,
        hidden=list(cfg.hidden),
        tower_hidden=list(cfg.tower_hidden),
        dropout=cfg.dropout,
        has_cvr=has_cvr,
        members=cfg.members,
    )
    names = mcfg.fields
    log.info("embedding the logs", rows=len(train_table) + (len(val_table) if val_table is not None else 0),
             fields=names)
    tr = _Encoded(train_table, names, embedder, fields.text)
    va_shared = _Encoded(val_table, names, embedder, fields.text) if val_table is not None else None

    net = EsmmEnsemble(mcfg).to(cfg.device)
    with torch.no_grad():
        feats = torch.cat([net.features(tr.embeddings(r)) for r in torch.arange(tr.n).split(4096)])
        for member in net.members:
            member.fit_standardizer(feats.to(cfg.device))
        del feats
    gen = torch.Generator().manual_seed(cfg.seed)

    # what each member trains on (row weights) and validates on
    if val_table is not None:
        mode = "validation file"
        plans = [(_bootstrap_weights(tr, gen) if cfg.members > 1 else None, None) for _ in range(cfg.members)]
    else:
        if cfg.members > 1:
            mode = f"{cfg.members}-fold out-of-fold"
            folds = _folds(train_table, cfg.members, cfg.seed)
        else:
            mode = f"held-out {cfg.val_fraction:.0%} split"
            folds = _folds(train_table, max(2, round(1 / cfg.val_fraction)), cfg.seed)[:1]
        plans = []
        for idx in folds:
            if len(idx) == 0 or len(idx) == len(train_table):
                raise ConfigError(f"ctcvr train: too little data for {mode} validation; give --val-data")
            weight = torch.ones(tr.n)
            weight[torch.as_tensor(idx)] = 0.0
            plans.append((weight, idx))

    best_epochs: list[int] = []
    history: list[dict[str, Any]] = []
    oof_ctr = torch.zeros(tr.n)
    oof_cvr = torch.zeros(tr.n) if has_cvr else None
    val_rows: list[np.ndarray] = []
    for k, (member, (weight, idx)) in enumerate(zip(net.members, plans)):
        if idx is None:
            va, vt = va_shared, val_table
        else:
            vt = train_table.subset(idx)
            va = _Encoded(vt, names, embedder, fields.text)
        epoch, hist = _fit_member(member, tr, va, vt, cfg, gen, weight, k)
        best_epochs.append(epoch)
        history.extend(dict(row, member=k) for row in hist)
        if idx is not None:
            out = _predict(member, va)
            oof_ctr[torch.as_tensor(idx)] = out.ctr_logit
            if oof_cvr is not None and out.cvr_logit is not None:
                oof_cvr[torch.as_tensor(idx)] = out.cvr_logit
            val_rows.append(idx)
    shift = _calibrate_intercept(net, tr) if cfg.entire_space_weight == 0 else 0.0

    train_out = _predict(net, tr)
    if val_table is not None:
        val_report = evaluate(_predict(net, va_shared), val_table, bootstrap=1000, seed=cfg.seed)
    else:
        rows = np.concatenate(val_rows)
        sel = torch.as_tensor(rows)
        oof = EsmmOutput(oof_ctr[sel] + shift, oof_cvr[sel] if oof_cvr is not None else None)
        val_report = evaluate(oof, train_table.subset(rows), bootstrap=1000, seed=cfg.seed)
    val_report["mode"] = mode

    # the reward's 'standardised' scale: z-scores of log pCTR / log pCTCVR on the training rows
    mcfg.score_stats = {}
    for key, values in (("log_pctr", train_out.log_pctr), ("log_pctcvr", train_out.log_pctcvr)):
        v = values.numpy().astype(np.float64)
        mcfg.score_stats[f"{key}_mean"] = float(v.mean())
        mcfg.score_stats[f"{key}_std"] = float(v.std()) if v.std() > 0 else 1.0
    mcfg.train_summary = {
        "best_epochs": best_epochs,
        "train_rows": len(train_table),
        "validation": mode,
        "select": cfg.select,
        "objective": {"entire_space_weight": cfg.entire_space_weight, "group_loss": cfg.group_loss,
                      "group_loss_weight": cfg.group_loss_weight},
        "intercept_shift": shift,
    }
    model = CtcvrModel(mcfg, net.eval(), embedder)
    result = {
        "config": cfg.model_dump(),
        "fields": fields.model_dump(),
        "best_epochs": best_epochs,
        "history": history,
        "train": evaluate(train_out, train_table),
        "val": val_report,
    }
    return model, result


def format_report(result: dict[str, Any]) -> str:
    """A short human-readable table of the final metrics."""
    lines = [f"best epoch per member: {result['best_epochs']}"]
    lines.append(f"{'split':<6} {'target':<6} {'AUC':>7} {'logloss':>9} {'pred/obs':>9} {'ECE':>9}")
    for split in ("train", "val"):
        rep = result[split]
        for target in ("ctr", "ctcvr"):
            if target in rep:
                m = rep[target]
                lines.append(
                    f"{split:<6} {target:<6} {m['auc']:>7.4f} {m['log_loss']:>9.5f} "
                    f"{m['calibration_ratio']:>9.3f} {m['ece']:>9.5f}"
                )
        if "group_pairwise_accuracy" in rep:
            g = rep["group_pairwise_accuracy"]
            ci = f" 95% CI [{g['ci'][0]:.3f}, {g['ci'][1]:.3f}]" if "ci" in g else ""
            lines.append(f"{split:<6} within-group pairwise accuracy {g['accuracy']:.4f} over {g['pairs']} pairs{ci}")
    return "\n".join(lines)


def save_training(model: CtcvrModel, result: dict[str, Any], out: str | Path) -> Path:
    """Write the model folder plus ``metrics.json`` (the report) into ``out``."""
    import json

    folder = model.save(out)
    (folder / "metrics.json").write_text(json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8")
    return folder
