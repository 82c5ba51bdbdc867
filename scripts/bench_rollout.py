"""Rollout throughput of the ``hf`` and ``vllm`` samplers on the same model, prompts and sampling settings.

Each sampler is set up as a run would set it up, generates once to warm up, then generates
the same batch ``--repeats`` times; throughput is completion tokens (the rollout's mask:
tokens up to and including EOS) per second of ``generate``. ``hf`` runs first, since
importing vllm changes the process. Needs an environment with vllm (``.venv-vllm`` on CPU,
see docs/vllm.md); ``--samplers hf`` runs anywhere.

    .venv-vllm/bin/python scripts/bench_rollout.py --model builtin:smollm2-135m-instruct \
        --prompts 8 --group 8 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct", help="model spec (builtin:NAME, folder or hub id)")
    ap.add_argument("--samplers", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    ap.add_argument("--mode", default="colocate", choices=["colocate", "server"], help="vllm sampler mode")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per batch")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=3, help="timed generate calls per sampler")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")), help="torch CPU threads")
    ap.add_argument("--vllm-params", default="{}", help="extra vllm sampler params as JSON (e.g. '{\"kv_cache_gb\": 2}')")
    ap.add_argument("--output-dir", default="runs/bench_rollout", help="run folder (vLLM caches, server log)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    return ap.parse_args(argv)


def make_prompts(n: int) -> list[Any]:
    import rlgen

    topics = ["running shoes", "cheap flights to London", "a coffee subscription", "a city hotel", "car insurance",
              "a gaming laptop", "a music festival", "a bike repair kit", "noise-cancelling headphones", "a language course"]
    return [
        rlgen.Prompt([{"role": "user", "content": f"Write a short ad for {topics[k % len(topics)]} (variant {k})."}], {"k": k})
        for k in range(n)
    ]


def bench(name: str, args: argparse.Namespace, context: Any, registry: Any) -> dict[str, Any]:
    import torch

    common = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    params = {**common, "threads": args.threads} if name == "hf" else {**common, "mode": args.mode, **json.loads(args.vllm_params)}
    cls = registry.get("sampler", name)
    sampler = cls(cls.Params(**params))
    t0 = time.perf_counter()
    sampler.setup(context)
    setup_s = time.perf_counter() - t0
    prompts = make_prompts(args.prompts)
    try:
        sampler.generate(prompts[:2], 2, seed=0)  # warm-up: first-call allocations, lazy loading
        runs = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            ro = sampler.generate(prompts, args.group, seed=100 + r)
            seconds = time.perf_counter() - t0
            tokens = int(ro.completion_mask.sum())
            runs.append({"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds})
    finally:
        sampler.close()
    tokens = sum(x["tokens"] for x in runs)
    seconds = sum(x["seconds"] for x in runs)
    return {
        "sampler": name if name == "hf" else f"vllm-{args.mode}",
        "setup_s": round(setup_s, 2),
        "batch": args.prompts * args.group,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "runs": runs,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    import rlgen
    from rlgen.config import load_config
    from rlgen.discovery import registry as discover
    from rlgen_plugins.models import default_cache_dir

    torch.set_num_threads(args.threads)
    registry = discover()
    config = load_config({
        "model": {"path": args.model, "dtype": args.dtype},
        "data": {"path": "unused.jsonl", "prompt_template": "{query}"},
        "rewards": [{"name": "relate.length"}],
        "run": {"threads": args.threads, "output_dir": args.output_dir},
    })
    context = rlgen.RunContext(config=config, registry=registry, output_dir=Path(args.output_dir),
                               cache_dir=default_cache_dir(), seed=0)
    results = [bench(name, args, context, registry) for name in args.samplers]
    device = "cuda " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    print(f"model {args.model}  batch {args.prompts}x{args.group}  max_new_tokens {args.max_new_tokens}  "
          f"temperature {args.temperature}  dtype {args.dtype}  threads {args.threads}  device {device}")
    print(f"{'sampler':16} {'setup s':>8} {'tokens':>8} {'gen s':>8} {'tokens/s':>10}")
    for r in results:
        print(f"{r['sampler']:16} {r['setup_s']:8.1f} {r['tokens']:8d} {r['seconds']:8.2f} {r['tokens_per_s']:10.1f}")
    if len(results) == 2:
        print(f"speed-up {results[1]['sampler']} / {results[0]['sampler']}: {results[1]['tokens_per_s'] / results[0]['tokens_per_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": device, "results": results}, indent=2))
    return 0


if __name__ == "__main__":  # vLLM's worker processes re-import the main module: keep the work behind this guard
    sys.exit(main())
