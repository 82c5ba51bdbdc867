"""`rlgen-relate ctcvr train|score`: fit a CTCVR model from logs, and score a file with one.

Registered by :mod:`rlgen_relate.cli`; heavy imports (torch, sentence-transformers) happen in
the handlers so that building the parser stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pydantic

from rlgen import ConfigError


def _int_list(text: str) -> list[int]:
    """'256,64' -> [256, 64]; '' -> [] (no hidden layer)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _field_map(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected MODEL_FIELD=COLUMN, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _set_threads(n: int) -> None:
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    torch.set_num_threads(n)


def _cmd_train(args: argparse.Namespace) -> int:
    from .data import LogFields, read_logs
    from .train import TrainConfig, format_report, save_training, train

    _set_threads(args.threads)
    fields = LogFields(
        text=args.text_field, context=args.context_field or [], group=args.group_field, format=args.format,
        click=args.click_field, conversion=args.conversion_field, impressions=args.impressions_field,
        clicks=args.clicks_field, conversions=args.conversions_field,
    )
    cache_dir = args.cache_dir
    if cache_dir is None:
        cache_dir = str(Path(os.environ.get("RLGEN_CACHE_DIR", "~/.cache/rlgen")).expanduser() / "ctcvr")
    try:
        cfg = TrainConfig(
            embedder=args.embedder, embedder_pooling=args.embedder_pooling, embed_batch_size=args.embed_batch_size,
            cache_dir=cache_dir or None, interactions=not args.no_interactions, feature_scaling=args.feature_scaling,
            hidden=args.hidden, tower_hidden=args.tower_hidden, dropout=args.dropout, lr=args.lr,
            weight_decay=args.weight_decay, batch_size=args.batch_size, epochs=args.epochs, patience=args.patience,
            select=args.select, entire_space_weight=args.entire_space_weight, group_loss=args.group_loss,
            group_loss_weight=args.group_loss_weight, members=args.members, val_fraction=args.val_fraction,
            seed=args.seed, device=args.device, progress=not args.no_progress,
        )
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(str(x) for x in e['loc']).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"ctcvr train: {problems}") from None
    table = read_logs(args.data, fields, max_bad_fraction=args.max_bad_fraction)
    val = read_logs(args.val_data, fields, max_bad_fraction=args.max_bad_fraction) if args.val_data else None
    if val is not None:
        validation = f"{len(val)} rows of --val-data"
    else:
        validation = f"{cfg.members}-fold" if cfg.members > 1 else f"{cfg.val_fraction:.0%} of the groups/rows"
    towers = "CTR and CVR towers (ESMM)" if table.has_conversions else "no conversion labels: CTR only"
    print(f"training rows {len(table)} (bad rows skipped {len(table.bad_rows)}); validation {validation}; {towers}")
    model, result = train(table, val, fields, cfg)
    result["bad_rows"] = {"count": len(table.bad_rows), "first": [str(b) for b in table.bad_rows[:20]]}
    folder = save_training(model, result, args.out)
    print(format_report(result))
    print(f"model written to {folder}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from .model import CtcvrModel
    from .score import score_file

    _set_threads(args.threads)
    model = CtcvrModel.load(args.model, embedder_spec=args.embedder or None, device=args.device,
                            embed_batch_size=args.embed_batch_size)
    if args.embedder is None:
        model.embedder  # noqa: B018  (load now, so a missing embedder fails before reading data)
    summary = score_file(model, args.data, args.out, text_field=args.text_field,
                         context_fields=_field_map(args.context_map), max_bad_fraction=args.max_bad_fraction)
    print(json.dumps(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ctcvr`` with its ``train`` and ``score`` subcommands."""
    top = sub.add_parser("ctcvr", help="train or apply the CTCVR (ESMM) reward model")
    cmds = top.add_subparsers(dest="ctcvr_command", required=True, metavar="ACTION")

    t = cmds.add_parser(
        "train", help="fit a CTCVR model on impression logs",
        description="Fit a shared-bottom ESMM model on frozen text embeddings from JSONL/Parquet logs: one row "
                    "per impression (click, conversion 0/1) or aggregated rows (impressions, clicks, conversions).",
    )
    t.add_argument("--data", required=True, nargs="+", type=Path, help="training log files (.jsonl or .parquet)")
    t.add_argument("--out", required=True, type=Path, help="output model folder")
    t.add_argument("--val-data", nargs="+", type=Path, help="validation log files (default: a split of --data)")
    t.add_argument("--val-fraction", type=float, default=0.1,
                   help="without --val-data: share of groups (rows) held out for early stopping (one member; "
                        "with --members K the data are split in K folds instead)")
    g = t.add_argument_group("fields")
    g.add_argument("--text-field", default="text", help="ad text column")
    g.add_argument("--context-field", action="append", help="context column (query, ad metadata); repeat for several")
    g.add_argument("--group-field", help="group column (A/B test, query): group objectives and within-group accuracy")
    g.add_argument("--format", choices=["auto", "impression", "aggregated"], default="auto", help="row shape")
    g.add_argument("--click-field", default="click", help="per-impression click label")
    g.add_argument("--conversion-field", default="conversion", help="per-impression conversion label")
    g.add_argument("--impressions-field", default="impressions", help="aggregated impressions count")
    g.add_argument("--clicks-field", default="clicks", help="aggregated clicks count")
    g.add_argument("--conversions-field", default="conversions", help="aggregated conversions count")
    g.add_argument("--max-bad-fraction", type=float, default=0.5, help="fail when a file has more malformed rows")
    m = t.add_argument_group("model")
    m.add_argument("--embedder", default="builtin:minilm-l6", help="sentence-transformers id, folder or builtin:minilm-l6")
    m.add_argument("--embedder-pooling", choices=["sentence", "layer_mean"], default="sentence",
                   help="the embedder's own sentence embedding, or the mean over its layers' mean-pooled states")
    m.add_argument("--hidden", type=_int_list, default=[256], help="shared-bottom widths, e.g. 256,128")
    m.add_argument("--tower-hidden", type=_int_list, default=[64], help="tower widths, e.g. 64")
    m.add_argument("--dropout", type=float, default=0.1, help="dropout")
    m.add_argument("--feature-scaling", choices=["block", "feature"], default="block",
                   help="standardise each embedding/product block as a whole, or every feature on its own")
    m.add_argument("--no-interactions", action="store_true", help="omit element-wise products of field embeddings")
    o = t.add_argument_group("optimisation")
    o.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    o.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    o.add_argument("--batch-size", type=int, default=256, help="rows per step")
    o.add_argument("--epochs", type=int, default=30, help="maximum epochs")
    o.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs")
    o.add_argument("--select", choices=["loss", "ctr_auc", "ctcvr_auc", "group_accuracy"], default="loss",
                   help="validation criterion for early stopping")
    o.add_argument("--entire-space-weight", type=float, default=1.0, help="weight of the ESMM entire-space loss")
    o.add_argument("--group-loss", choices=["none", "listwise", "pairwise"], default="none",
                   help="extra within-group CTR objective (needs --group-field)")
    o.add_argument("--group-loss-weight", type=float, default=1.0, help="weight of the group objective")
    o.add_argument("--members", type=int, default=1,
                   help="ensemble members, each trained on a bootstrap sample of the groups/rows; logits averaged")
    o.add_argument("--seed", type=int, default=0, help="random seed")
    r = t.add_argument_group("runtime")
    r.add_argument("--device", default="cpu", help="torch device")
    r.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    r.add_argument("--embed-batch-size", type=int, default=64, help="texts per embedder pass")
    r.add_argument("--cache-dir", default=None,
                   help="embedding cache folder ('' for none; default $RLGEN_CACHE_DIR/ctcvr or ~/.cache/rlgen/ctcvr)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=_cmd_train)

    s = cmds.add_parser("score", help="write per-row predictions of a trained model",
                        description="Score every row of a JSONL/Parquet file; writes the rows with pctr, pcvr, "
                                    "pctcvr added (.jsonl or .parquet, by the --out suffix).")
    s.add_argument("--model", required=True, type=Path, help="model folder written by `ctcvr train`")
    s.add_argument("--data", required=True, type=Path, help="rows to score (.jsonl or .parquet)")
    s.add_argument("--out", required=True, type=Path, help="output file (.jsonl or .parquet)")
    s.add_argument("--text-field", help="ad text column (default: the model's)")
    s.add_argument("--context-map", action="append", metavar="FIELD=COLUMN",
                   help="read model context FIELD from COLUMN; repeat for several")
    s.add_argument("--embedder", help="load this embedder instead of the saved one (same model elsewhere)")
    s.add_argument("--max-bad-fraction", type=float, default=0.5, help="fail when the file has more malformed rows")
    s.add_argument("--device", default="cpu", help="torch device")
    s.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    s.add_argument("--embed-batch-size", type=int, default=64, help="texts per embedder pass")
    s.set_defaults(func=_cmd_score)
