"""`rlgen-relate simulate logs|measure`: write simulated impression logs; measure the simulator CTCVR of ads.

- ``logs --out FILE [--contexts FILE] [--per-impression]``: logs for the CTCVR model (default contexts: the train
  split of builtin:search-ads).
- ``measure --ads FILE``: a JSONL of contexts with their ads (the ``ads`` list that ``rlgen generate`` writes,
  or one ad per row in ``--text-field``); prints overall CTR / CVR / CTCVR and optionally writes per-ad rows.
- ``kinds``: the calibration table of docs/simulator.md (each candidate-ad kind measured on the eval split).

Exposes ``register(subparsers)`` in the shape :mod:`rlgen_relate.cli` expects; :func:`main` runs it standalone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def _cache_dir() -> Path:
    return Path(os.environ.get("RLGEN_CACHE_DIR", "~/.cache/rlgen")).expanduser()


def _contexts(path: str | None, split: str) -> list[dict[str, Any]]:
    from rlgen import read_records

    if path:
        return read_records(path)
    from ...searchads import ensure_dataset

    return read_records(ensure_dataset(_cache_dir()) / f"{split}.jsonl")


def flatten_ads(rows: list[dict[str, Any]], ads_field: str = "ads", text_field: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """(context, ad) pairs from rows holding a list of ads (``ads_field``) or one ad (``text_field``)."""
    contexts: list[dict[str, Any]] = []
    ads: list[str] = []
    for i, row in enumerate(rows, 1):
        if text_field is not None:
            if text_field not in row:
                raise ValueError(f"row {i} has no field '{text_field}'")
            values = [row[text_field]]
        else:
            if ads_field not in row:
                raise ValueError(f"row {i} has no field '{ads_field}' (use --text-field for one ad per row)")
            values = row[ads_field] if isinstance(row[ads_field], list) else [row[ads_field]]
        ctx = {k: v for k, v in row.items() if k not in (ads_field, text_field)}
        for ad in values:
            contexts.append(ctx)
            ads.append(str(ad))
    return contexts, ads


def measure_file(
    path: str | Path,
    impressions_per_ad: int = 2000,
    seed: int = 0,
    ads_field: str = "ads",
    text_field: str | None = None,
    out: str | Path | None = None,
) -> dict[str, float]:
    """Overall simulator metrics of every ad in ``path``; per-ad rows (context id, ad, outcomes) to ``out``."""
    from rlgen import read_records

    from .measure import measure

    contexts, ads = flatten_ads(read_records(path), ads_field, text_field)
    m = measure(contexts, ads, impressions_per_ad=impressions_per_ad, seed=seed)
    if out is not None:
        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with out_path.open("w", encoding="utf-8") as fh:
            for ctx, ad, row in zip(contexts, ads, m.per_ad()):
                fh.write(json.dumps({"context_id": ctx.get("id"), "ad_text": ad, **row}, ensure_ascii=False) + "\n")
    return m.overall()


def kinds_table(
    contexts: list[dict[str, Any]], impressions_per_ad: int = 2000, seed: int = 0
) -> list[dict[str, float | str]]:
    """Simulator metrics of each candidate kind, each measured as one policy's set of ads over ``contexts``.

    The calibration table of docs/simulator.md: how the documented features rank well-made, vague, hyped,
    risky ... ads.
    """
    from .candidates import KINDS, candidate_ads
    from .measure import measure

    table = []
    # good_alt / good_third are further draws of "good" in a pool; generated alone they equal it
    for kind in (k for k in KINDS if k not in ("good_alt", "good_third")):
        ctx: list[dict[str, Any]] = []
        ads: list[str] = []
        for i, c in enumerate(contexts):
            other = contexts[(i + 11) % len(contexts)]
            for _, text in candidate_ads(c, seed, other=other, kinds=(kind,)):
                ctx.append(c)
                ads.append(text)
        table.append({"kind": kind, **measure(ctx, ads, impressions_per_ad=impressions_per_ad, seed=seed).overall()})
    return table


def _cmd_kinds(args: argparse.Namespace) -> int:
    rows = kinds_table(_contexts(args.contexts, args.split), args.impressions, args.seed)
    print("| candidate kind | shown | CTR | CVR | CTCVR (sampled) | CTCVR (true) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['kind']} | {r['shown_rate']:.0%} | {r['ctr']:.2%} | {r['cvr']:.2%} | {r['ctcvr']:.3%} "
            f"| {r['ctcvr_true']:.3%} |"
        )
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from .logs import write_logs

    summary = write_logs(
        args.out,
        _contexts(args.contexts, args.split),
        per_impression=args.per_impression,
        seed=args.seed,
        impressions_per_context=args.impressions,
    )
    print(json.dumps(summary.as_dict(), indent=2))
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    overall = measure_file(args.ads, args.impressions, args.seed, args.ads_field, args.text_field, args.out)
    print(json.dumps(overall, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("simulate", help="the click/conversion simulator: impression logs and simulator CTCVR")
    sub = p.add_subparsers(dest="simulate_command", required=True, metavar="ACTION")
    lg = sub.add_parser("logs", help="write simulated impression logs for the CTCVR model")
    lg.add_argument("--out", required=True, help="output .jsonl (or .parquet)")
    lg.add_argument("--contexts", help="JSONL/Parquet of contexts (default: builtin:search-ads, --split)")
    lg.add_argument("--split", default="train", help="split of builtin:search-ads when --contexts is not given")
    lg.add_argument("--per-impression", action="store_true", help="one row per impression (click, conversion)")
    lg.add_argument("--impressions", type=int, default=2000, help="mean impressions per context")
    lg.add_argument("--seed", type=int, default=0)
    lg.set_defaults(func=_cmd_logs)
    ms = sub.add_parser("measure", help="simulated CTR/CVR/CTCVR of ads in their contexts")
    ms.add_argument("--ads", required=True, help="JSONL: context fields plus 'ads' (a list) or --text-field")
    ms.add_argument("--ads-field", default="ads", help="field holding the list of ads (rlgen generate: ads)")
    ms.add_argument("--text-field", help="field holding a single ad per row instead")
    ms.add_argument("--impressions", type=int, default=2000, help="impressions per ad")
    ms.add_argument("--seed", type=int, default=0)
    ms.add_argument("--out", help="write per-ad results here (JSONL)")
    ms.set_defaults(func=_cmd_measure)
    kd = sub.add_parser("kinds", help="calibration table: simulator metrics of each candidate-ad kind")
    kd.add_argument("--contexts", help="JSONL/Parquet of contexts (default: builtin:search-ads, --split)")
    kd.add_argument("--split", default="eval", help="split of builtin:search-ads when --contexts is not given")
    kd.add_argument("--impressions", type=int, default=2000, help="impressions per ad")
    kd.add_argument("--seed", type=int, default=0)
    kd.set_defaults(func=_cmd_kinds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlgen_relate.lab.simulator.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["simulate", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
