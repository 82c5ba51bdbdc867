"""`rlgen-relate data write --out DIR`: write the bundled search-ad contexts (train.jsonl, eval.jsonl) to a folder.

Exposes ``register(subparsers)`` in the shape :mod:`rlgen_relate.cli` expects; :func:`main` runs it standalone
(``python -m rlgen_relate.searchads.cli write --out DIR``).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys


def _cmd_write(args: argparse.Namespace) -> int:
    from . import write_dataset
    from rlgen import read_records

    paths = write_dataset(
        args.out,
        seed=args.seed,
        contexts_per_vertical=args.contexts_per_vertical,
        advertisers_per_vertical=args.advertisers_per_vertical,
        eval_fraction=args.eval_fraction,
    )
    summary = {}
    for split, path in paths.items():
        rows = read_records(path)
        summary[split] = {
            "path": str(path),
            "contexts": len(rows),
            "verticals": len(collections.Counter(r["vertical"] for r in rows)),
            "advertisers": len({(r["vertical"], r["advertiser"]) for r in rows}),
        }
    print(json.dumps(summary, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="the bundled search-ad data (builtin:search-ads)")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    w = sub.add_parser("write", help="write train.jsonl and eval.jsonl to a folder")
    w.add_argument("--out", required=True, help="folder to write to")
    w.add_argument("--seed", type=int, default=0, help="generation seed (the builtin dataset uses 0)")
    w.add_argument("--contexts-per-vertical", type=int, default=48, help="contexts per vertical (27 verticals)")
    w.add_argument("--advertisers-per-vertical", type=int, default=14, help="advertisers per vertical")
    w.add_argument("--eval-fraction", type=float, default=0.1, help="share of each vertical's contexts held out")
    w.set_defaults(func=_cmd_write)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlgen_relate.searchads.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["data", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
