"""The `rlgen` command: list plugins, validate and train a config, export the config schema.

Every expected failure is an RlgenError and becomes one message on stderr with exit code 2; a
plugin that raised mid-run becomes one message too, with exit code 1 (the traceback is in the run folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from .errors import PluginFault, RlgenError

EXIT_USAGE = 2
#: a run stopped by a plugin's unexpected exception (the input was fine)
EXIT_FAULT = 1


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .discovery import registry

    reg = registry()
    if args.json:
        print(json.dumps({
            "plugins": [i.as_dict() for i in reg.infos],
            "modules": [m.__dict__ for m in reg.modules],
        }, indent=2))
    else:
        rows = [("KIND", "NAME", "GRAN.", "DISTRIBUTION", "STATUS", "DESCRIPTION")]
        for i in sorted(reg.infos, key=lambda x: (x.kind, x.name)):
            status = i.status if not i.error else f"{i.status}: {i.error}"
            name = f"{i.name} (alias {', '.join(i.aliases)})" if i.aliases else i.name
            rows.append((i.kind, name, i.granularity or "", f"{i.distribution} {i.version}".strip(), status, i.description))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        for r in rows:
            print("  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4] + ("  " + r[5] if r[5] else ""))
        for m in reg.modules:
            if m.status != "ok":
                print(f"module {m.value} ({m.distribution} {m.version}): {m.status}: {m.error}", file=sys.stderr)
    return 1 if reg.duplicates else 0


def _load(args: argparse.Namespace):
    from .config import load_config

    return load_config(args.config, args.set or [])


def _cmd_validate(args: argparse.Namespace) -> int:
    from .session import prepare

    config = _load(args)
    prepared = prepare(config)
    plan, source = prepared.plan, prepared.source
    rewards = ", ".join(f"{p.alias or p.name} (w={p.weight:g})" for p in plan.rewards)
    print(f"{config.origin}: ok. {len(source.records)} prompts; sampler {plan.sampler.name}; rewards {rewards}; "
          f"advantage {plan.advantage.name}; trainer {plan.trainer.name}; {config.run.steps} steps -> {config.run.output_dir}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from .config import config_schema
    from .discovery import registry

    print(json.dumps(config_schema(None if args.no_plugins else registry()), indent=2))
    return 0


def _launch_ranks(args: argparse.Namespace, config) -> int:
    """Re-run this command under torchrun with ``--nproc`` ranks on this machine."""
    from . import run_lock

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "rlgen.cli", "train", str(args.config)]
    for s in args.set or []:
        cmd += ["--set", s]
    if args.resume:
        cmd.append("--resume")
    if args.allow_config_change:
        cmd.append("--allow-config-change")
    if args.log_json:
        cmd.append("--log-json")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # N ranks x many OpenMP threads thrash a small CPU
    # this process holds the run folder's lock while the ranks run, so it also covers the time
    # before rank 0 starts; rank 0 sees it is held for it and does not wait on it
    env[run_lock.ENV_HELD] = str(Path(config.run.output_dir).resolve())
    with run_lock.hold(Path(config.run.output_dir)):
        return subprocess.call(cmd, env=env)


def _cmd_train(args: argparse.Namespace) -> int:
    from .loop import check_async_rollouts, train
    from .session import prepare
    from .warm_start import make_warm_start
    from .validation import read_selection

    config = _load(args)
    # launch ranks unless this process already is one (torchrun / deepspeed set WORLD_SIZE)
    if args.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # fail here, once, before N processes start
        check_async_rollouts(config, args.nproc)
        prepare(config)
        if config.warm_start.prompts and not args.resume:
            # one process makes it; every rank then loads its policy
            make_warm_start(config)
        return _launch_ranks(args, config)
    result = train(config, resume=args.resume, allow_config_change=args.allow_config_change)
    print(f"done: {result.last_step} steps; run folder {result.output_dir}")
    if result.best_policy is not None:
        chosen = read_selection(result.output_dir)
        print(f"best validated policy: {result.best_policy} (step {chosen['step']}, {chosen['metric']} "
              f"{chosen['value']:.4g})" if chosen else f"best validated policy: {result.best_policy}")
    return 0


def _cmd_warm_start(args: argparse.Namespace) -> int:
    from .warm_start import make_warm_start

    config = _load(args)
    policy = make_warm_start(config)
    print(f"warm start: {policy} (summary: {policy.parent / 'summary.json'}); `rlgen train` on this config starts from it")
    return 0


def _policy_config(policy: str | None) -> Path:
    """The config.yaml beside a run's policy folder, for eval and generate without --config."""
    from .session import check_policy_exists, config_for_policy

    if not policy:
        raise RlgenError("--config is required unless --policy is a run's policy folder (with config.yaml beside it)")
    check_policy_exists(policy)
    found = config_for_policy(policy)
    if found is None:
        raise RlgenError(f"--config is required: --policy {policy} is not a run's policy folder "
                         "(no config.yaml beside it), so there is no run config to take the prompts and sampler from")
    return found


def _cmd_generate(args: argparse.Namespace) -> int:
    from .config import load_config
    from .generate import generate_file
    config_path = args.config or _policy_config(args.policy)
    config = load_config(config_path, args.set or [])
    count = generate_file(config, policy=args.policy, data=args.data, out=args.out, n=args.n,
                          batch_prompts=args.batch, seed=args.seed)
    print(f"wrote {count} contexts x {args.n} completions to {args.out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .config import load_config
    from .evaluate import evaluate_policy, load_evaluation, markdown_table, write_evaluation
    config_path = args.config or _policy_config(args.policy)
    config = load_config(config_path, args.set or [])
    baseline = load_evaluation(args.baseline) if args.baseline else None
    result = evaluate_policy(config, policy=args.policy, data=args.data, limit=args.limit, samples_per_context=args.n,
                             seed=args.seed, baseline=baseline, output_dir=args.out)
    write_evaluation(result, args.out)
    print(markdown_table(result.summary), end="")
    print(f"wrote {args.out / 'eval.json'} and {args.out / 'eval.md'}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench, write_json

    result = run_bench(_load(args), steps=args.steps, warmup=args.warmup, output_dir=args.out)
    print(result.table())
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def _cmd_new_plugin(args: argparse.Namespace) -> int:
    from .scaffold import new_plugin

    root = new_plugin(args.name, args.kind, args.dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        print(f"  {path}")
    print(f"wrote the {args.kind} plugin package {root}; next: cd {root} && pip install -e '.[test]' && pytest")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlgen", description="Reinforcement learning for text generation, built from plugins.")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of readable console lines")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list every discovered plugin")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_plugins)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", type=Path, help="run configuration (YAML)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. run.steps=10")

    p = sub.add_parser("validate", help="check a config, its plugins' params and its data without training")
    with_config(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("schema", help="print the JSON schema of the run config (with every plugin's params)")
    p.add_argument("--no-plugins", action="store_true", help="omit the installed plugins' params schemas")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("generate", help="generate completions for a file of contexts with a policy")
    p.add_argument("--policy", help="a run's policy folder, an HF model id or folder, or builtin:NAME (default: the config's model)")
    p.add_argument("--data", help="JSONL/Parquet contexts (default: the config's data; e.g. --set data.split=eval)")
    p.add_argument("--out", type=Path, required=True, help="output JSONL: each context's fields plus 'ads'")
    p.add_argument("--n", type=int, default=1, help="completions per context")
    p.add_argument("--config", type=Path, help="run config for prompt template, fields and sampler (default: RUN/config.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--batch", type=int, default=8, help="contexts per generation batch")
    p.add_argument("--seed", type=int, help="sampling seed (default: run.seed)")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("eval", help="evaluate a policy on held-out contexts, optionally against a baseline")
    p.add_argument("--policy", help="a run's policy folder, an HF model id or folder, or builtin:NAME (default: the config's model)")
    p.add_argument("--config", type=Path, help="run config (default: RUN/config.yaml beside --policy)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--data", help="JSONL/Parquet eval contexts (default: eval.data, else the eval split)")
    p.add_argument("--limit", type=int, help="first N contexts (default: eval.limit)")
    p.add_argument("--n", type=int, help="completions per context (default: eval.samples_per_context)")
    p.add_argument("--baseline", type=Path, help="eval.json (or its folder) of the baseline policy, for relative deltas")
    p.add_argument("--out", type=Path, required=True, help="folder for eval.json and eval.md")
    p.add_argument("--seed", type=int, help="sampling seed (default: run.seed)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("train", help="train a policy")
    with_config(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in run.output_dir")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: accept a config that changes the run's trajectory (recorded in RUN/config_changes.json)")
    p.add_argument("--nproc", type=int, default=1, help="ranks on this machine (torchrun); multi-node: docs/multinode.md")
    p.add_argument("--log-json", action="store_true", dest="log_json_sub", help=argparse.SUPPRESS)
    # the deepspeed launcher passes --local_rank; the rank is read from the environment instead
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("warm-start", help="only the config's warm_start: fine-tune on the policy's own accepted "
                       "samples into RUN/warm_start/ (train runs it first by itself; docs/warm-start.md)")
    with_config(p)
    p.set_defaults(func=_cmd_warm_start)

    p = sub.add_parser("bench", help="train a config for a few steps and print the median step time, its split, tokens/s, peak RSS")
    with_config(p)
    p.add_argument("--steps", type=int, default=5, help="measured steps (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="steps run first and left out of the medians (default 1)")
    p.add_argument("--out", type=Path, help="run folder to keep (default: a scratch folder, removed afterwards)")
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("new-plugin", help="write a new plugin package (pyproject with the entry point, class, test, README)")
    p.add_argument("name", help="distribution name, e.g. acme-rewards (import name acme_rewards)")
    p.add_argument("--kind", choices=["reward", "advantage", "sampler", "trainer"], default="reward",
                   help="what the plugin is (default: reward)")
    p.add_argument("--dir", type=Path, default=Path("."), help="folder to create the package in (default: .)")
    p.set_defaults(func=_cmd_new_plugin)
    return parser


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv``, set up logging, run the chosen handler (``args.func``).

    Expected failures (RlgenError) become one message and exit code 2; plugin CLIs such as
    ``rlgen-relate`` use this too, so every rlgen command fails the same way. The parser must
    define ``--log-json`` and ``--log-level``.
    """
    from .logs import configure_logging

    args = parser.parse_args(argv)
    configure_logging(json=args.log_json or getattr(args, "log_json_sub", False), level=args.log_level)
    try:
        return int(args.func(args) or 0)
    except PluginFault as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAULT
    except RlgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
