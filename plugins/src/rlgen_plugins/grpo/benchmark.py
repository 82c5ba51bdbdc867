"""Benchmark of the grpo trainer: step time, tokens/s and peak memory, full fine-tuning vs LoRA.

Not a test: numbers depend on the machine. Each mode runs in its own process (so peak memory
is that mode's alone) on a synthetic rollout of fixed shape (the trainer's cost depends on the
token counts, not on what the tokens say), through the real plugin: DeepSpeed engine, reference
model (beta > 0) or adapter-disabled reference (LoRA), checkpoint-free.

    python -m rlgen_plugins.grpo.benchmark                       # builtin:smollm2-135m-instruct, CPU
    python -m rlgen_plugins.grpo.benchmark --modes lora --steps 5 --set zero_stage=3
    python -m rlgen_plugins.grpo.benchmark --model builtin:tiny-llama --json out.json

Peak memory is the process's peak resident set (CPU) or torch's peak allocated device memory
(GPU), both including the model, the reference and the optimizer states.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct", help="model spec (builtin:NAME or folder)")
    ap.add_argument("--modes", default="full,lora", help="comma-separated: full, lora")
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step")
    ap.add_argument("--group-size", type=int, default=4, help="completions per prompt (G)")
    ap.add_argument("--prompt-tokens", type=int, default=32, help="longest prompt (others are shorter, left-padded)")
    ap.add_argument("--completion-tokens", type=int, default=48, help="longest completion (others shorter, right-padded)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")), help="torch CPU threads")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="trainer param override, YAML value (e.g. zero_stage=3, precision=bf16, lora.r=8)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def trainer_params(mode: str, overrides: list[str]) -> dict:
    from rlgen import apply_override

    params: dict = {"learning_rate": 1e-6, "beta": 0.04, "epochs": 1, "micro_batch_size": 8, "zero_stage": 2}
    if mode == "lora":
        params.update(learning_rate=1e-5, lora={"r": 16, "alpha": 32})
    for assignment in overrides:
        apply_override(params, assignment, origin="--set")
    return params


def synthetic_rollout(tokenizer, args: argparse.Namespace, step: int):
    """A rollout shaped like a real one: chat-templated prompts of varied length, completions ending in EOS."""
    import torch

    import rlgen

    g = torch.Generator().manual_seed(step)
    b = args.prompts * args.group_size
    p, t = args.prompt_tokens, args.completion_tokens
    vocab = len(tokenizer)
    pid = torch.full((b, p), tokenizer.pad_token_id, dtype=torch.long)
    pm = torch.zeros(b, p, dtype=torch.bool)
    cid = torch.full((b, t), tokenizer.pad_token_id, dtype=torch.long)
    cm = torch.zeros(b, t, dtype=torch.bool)
    for k in range(args.prompts):
        n = int(torch.randint(p // 2, p + 1, (1,), generator=g))
        prompt = torch.randint(0, vocab, (n,), generator=g)
        for j in range(args.group_size):
            i = k * args.group_size + j
            pid[i, p - n:] = prompt
            pm[i, p - n:] = True
            m = int(torch.randint(t // 2, t + 1, (1,), generator=g))
            cid[i, :m] = torch.randint(0, vocab, (m,), generator=g)
            cid[i, m - 1] = tokenizer.eos_token_id
            cm[i, :m] = True
    group = torch.arange(args.prompts).repeat_interleave(args.group_size)
    rewards = torch.randn(b, generator=g)
    adv, _ = rlgen.group_normalize(rewards, group)
    rollout = rlgen.Rollout(texts=[""] * b, completion_ids=cid, completion_mask=cm, group=group,
                            prompt_ids=pid, prompt_mask=pm)
    return rollout, rlgen.broadcast_to_tokens(adv, cm)


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(mode: str, args: argparse.Namespace) -> dict:
    import torch

    import rlgen

    from ..models import default_cache_dir
    from .trainer import GrpoTrainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    params = trainer_params(mode, args.set)
    out = Path.cwd() / "runs" / "bench_grpo"
    config = rlgen.load_config({
        "model": {"path": args.model}, "data": {"path": "unused.jsonl"}, "rewards": [{"name": "unused"}],
        "trainer": {"name": "grpo", "params": params}, "run": {"steps": args.steps + 1, "output_dir": str(out)},
    })
    ctx = rlgen.RunContext(config=config, registry=rlgen.registry(), output_dir=out, cache_dir=default_cache_dir(), seed=0)
    t0 = time.perf_counter()
    trainer = GrpoTrainer(GrpoTrainer.Params(**params))
    trainer.setup(ctx)
    setup_s = time.perf_counter() - t0
    module = trainer.engine.module
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    rows = []
    for step in range(args.steps + 1):
        rollout, adv = synthetic_rollout(trainer.tokenizer, args, step)
        metrics = trainer.step(rollout, adv)
        if step > 0:  # step 0 warms up allocators and caches
            rows.append(metrics)
    n = len(rows)
    result = {
        "mode": mode,
        "model": args.model,
        "device": str(trainer.device),
        "precision": trainer.precision,
        "zero_stage": params["zero_stage"],
        "threads": args.threads,
        "batch": f"{args.prompts}x{args.group_size} rows, prompt<={args.prompt_tokens}, completion<={args.completion_tokens}",
        "trainable_params": trainable,
        "total_params": total,
        "setup_s": setup_s,
        "step_s": sum(m["step_seconds"] for m in rows) / n,
        "tokens_per_s": sum(m["tokens_per_s"] for m in rows) / n,
        "completion_tokens_per_step": sum(m["completion_tokens"] for m in rows) / n,
        "peak_memory_mb": peak_memory_mb(trainer.device),
        "peak_memory_kind": "device max allocated" if trainer.device.type == "cuda" else "process peak RSS",
    }
    trainer.close()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print("BENCH " + json.dumps(run_worker(args.worker, args)), flush=True)
        return 0
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = []
    shared = ["--model", args.model, "--prompts", str(args.prompts), "--group-size", str(args.group_size),
              "--prompt-tokens", str(args.prompt_tokens), "--completion-tokens", str(args.completion_tokens),
              "--steps", str(args.steps), "--threads", str(args.threads)]
    for assignment in args.set:
        shared += ["--set", assignment]
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        cmd = [sys.executable, "-m", "rlgen_plugins.grpo.benchmark", *shared, "--worker", mode]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
        if proc.returncode != 0 or line is None:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
            print(f"mode {mode} failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        results.append(json.loads(line[len("BENCH "):]))
    print(f"grpo trainer benchmark on {platform.machine()} / {results[0]['device']}, {results[0]['threads']} thread(s), "
          f"{results[0]['batch']}")
    print(f"{'mode':<6} {'trainable':>12} {'step s':>8} {'tokens/s':>9} {'peak MiB':>9}  setup s")
    for r in results:
        print(f"{r['mode']:<6} {r['trainable_params']:>12,} {r['step_s']:>8.2f} {r['tokens_per_s']:>9.1f} "
              f"{r['peak_memory_mb']:>9.0f}  {r['setup_s']:.1f}   ({r['peak_memory_kind']}, {r['precision']}, ZeRO-{r['zero_stage']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
