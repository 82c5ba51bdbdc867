"""Rollout throughput of the samplers on one model, prompts and sampling settings, in alternating runs.

Each variant (``generate``: the ``hf`` sampler through ``transformers.generate``; ``loop``: the
``hf`` sampler's decode loop; ``vllm``: the ``vllm`` sampler) is set up as a run would set it
up and warmed up once; then the variants take turns, ``--repeats`` rounds, each run preceded by
the load average (the machines are shared: compare variants within one sitting only).
Throughput is completion tokens (the rollout's mask: up to and including EOS) per second of
``generate``. ``vllm`` needs an environment with vllm (``.venv-vllm`` on CPU, see docs/vllm.md)
and is set up after the ``hf`` variants, since importing vllm changes the process.

    python -m rlgen_plugins.samplers.benchmark --model builtin:smollm2-135m-instruct \\
        --prompts 2 --group 5 --max-new-tokens 32 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = ("generate", "loop", "vllm")
TOPICS = [
    ("cheap train tickets to berlin", "train tickets berlin"), ("custom t-shirt printing", "t-shirt printing"),
    ("vegan meal kit subscription", "vegan meal kit"), ("pizza delivery near me", "pizza delivery"),
    ("pet insurance for cats", "cat insurance"), ("best coffee beans online", "coffee beans"),
    ("best vpn for streaming", "vpn"), ("noise-cancelling headphones", "headphones"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct", help="model spec (builtin:NAME, folder or hub id)")
    ap.add_argument("--variants", nargs="+", default=["generate", "loop"], choices=VARIANTS)
    ap.add_argument("--mode", default="colocate", choices=["colocate", "server"], help="vllm sampler mode")
    ap.add_argument("--prompts", type=int, default=2, help="prompts per batch")
    ap.add_argument("--group", type=int, default=5, help="completions per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=3, help="rounds of timed runs (each variant once per round)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")), help="torch CPU threads")
    ap.add_argument("--vllm-params", default="{}", help="extra vllm sampler params as JSON (e.g. '{\"kv_cache_gb\": 2}')")
    ap.add_argument("--output-dir", default="runs/bench_rollout", help="run folder (vLLM caches, server log)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    return ap.parse_args(argv)


def make_prompts(n: int) -> list[Any]:
    import rlgen

    return [
        rlgen.Prompt([{"role": "user", "content": f'Write a search ad title for the query "{q}" (keyword: {k}).'}], {"k": i})
        for i, (q, k) in enumerate(TOPICS[i % len(TOPICS)] for i in range(n))
    ]


def make_sampler(variant: str, args: argparse.Namespace, context: Any, registry: Any) -> Any:
    common = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    if variant == "vllm":
        params = {**common, "mode": args.mode, **json.loads(args.vllm_params)}
    else:
        params = {**common, "threads": args.threads, "decode": variant}
    cls = registry.get("sampler", "vllm" if variant == "vllm" else "hf")
    sampler = cls(cls.Params(**params))
    sampler.setup(context)
    return sampler


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    import rlgen
    from rlgen import load_config

    from ..models import default_cache_dir

    torch.set_num_threads(args.threads)
    registry = rlgen.registry()
    config = load_config({
        "model": {"path": args.model, "dtype": args.dtype},
        "data": {"path": "unused.jsonl", "prompt_template": "{query}"},
        "rewards": [{"name": "relate.length"}],
        "run": {"threads": args.threads, "output_dir": args.output_dir},
    })
    context = rlgen.RunContext(config=config, registry=registry, output_dir=Path(args.output_dir),
                               cache_dir=default_cache_dir(), seed=0)
    variants = sorted(args.variants, key=VARIANTS.index)  # vllm last: its import changes the process
    prompts = make_prompts(args.prompts)
    samplers: dict[str, Any] = {}
    setup_s: dict[str, float] = {}
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    try:
        for v in variants:
            t0 = time.perf_counter()
            samplers[v] = make_sampler(v, args, context, registry)
            samplers[v].generate(prompts, args.group, seed=0)  # warm-up: model load, first-call allocations
            setup_s[v] = time.perf_counter() - t0
        for r in range(args.repeats):
            for v in variants:
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                ro = samplers[v].generate(prompts, args.group, seed=100 + r)
                seconds = time.perf_counter() - t0
                tokens = int(ro.completion_mask.sum())
                runs[v].append({"round": r, "load_1m": load, "seconds": seconds, "tokens": tokens,
                                "tokens_per_s": tokens / seconds})
    finally:
        for s in samplers.values():
            s.close()
    device = ("cuda " + torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    print(f"model {args.model}  rows {args.prompts}x{args.group}  max_new_tokens {args.max_new_tokens}  "
          f"temperature {args.temperature}  dtype {args.dtype}  threads {args.threads}  device {device}")
    print(f"{'round':>5} {'variant':10} {'load 1m':>8} {'tokens':>7} {'gen s':>7} {'tokens/s':>9}")
    for r in range(args.repeats):
        for v in variants:
            x = runs[v][r]
            print(f"{r:5d} {v:10} {x['load_1m']:8.2f} {x['tokens']:7d} {x['seconds']:7.2f} {x['tokens_per_s']:9.1f}")
    median = {v: statistics.median(x["tokens_per_s"] for x in runs[v]) for v in variants}
    for v in variants:
        print(f"{v:10} median tokens/s {median[v]:8.1f}  (setup + warm-up {setup_s[v]:.1f} s)")
    for v in variants[1:]:
        print(f"speed-up {v} / {variants[0]}: {median[v] / median[variants[0]]:.2f}x (medians)")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "device": device, "setup_s": setup_s, "runs": runs, "median_tokens_per_s": median},
            indent=2,
        ))
    return 0


if __name__ == "__main__":  # vLLM's worker processes re-import the main module: keep the work behind this guard
    sys.exit(main())
