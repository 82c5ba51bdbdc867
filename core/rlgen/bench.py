"""`rlgen bench CONFIG`: the speed of any config, measured by training it for a few steps.

Speed claims need one instrument that every config, sampler and trainer is measured with. This
runs the real loop (nothing skipped, nothing synthetic) into a scratch folder and reads what
the run already logs: the loop's phase timings (``time/*``) and whatever split a trainer
reports (``trainer/time/*``, e.g. reference, forward, backward, optimizer). The first steps are
warm-up (allocators, lazy imports, caches) and left out of the medians.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .errors import ConfigError
from .logs import get_logger
from .loop import train

log = get_logger(__name__)

#: the loop's own phases, in the order a step runs them
LOOP_PHASES = ("time/sample_s", "time/reward_s", "time/advantage_s", "time/train_s", "time/sync_s")
#: with run.async_rollouts: 1, publishing weights (part of time/sample_s) and the sampler process's own
#: generation time, which overlaps the other phases
ASYNC_PHASES = ("time/publish_s", "time/generate_worker_s")


@dataclass
class BenchResult:
    """Medians over the measured steps (warm-up excluded), with min and max of the step time."""

    config: str
    steps: int
    warmup: int
    threads: int
    load_average: tuple[float, float, float]
    step_s_median: float
    step_s_min: float
    step_s_max: float
    split_s: dict[str, float] = field(default_factory=dict)
    completion_tokens_per_step: float = 0.0
    tokens_per_s: float = 0.0
    peak_rss_mb: float = 0.0
    #: torch.cuda.max_memory_allocated over the whole run (warm-up included), None without CUDA
    peak_gpu_mb: float | None = None
    device: str = "cpu"
    #: the largest child process (the sampler process of run.async_rollouts: 1; 0 without one)
    peak_rss_children_mb: float = 0.0
    wall_s: float = 0.0
    step_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        lines = [
            f"{self.config}: {self.steps} measured steps after {self.warmup} warm-up, {self.threads} thread(s), "
            f"load average before {self.load_average[0]:.2f}",
            f"step  median {self.step_s_median:.3f} s  [min {self.step_s_min:.3f}, max {self.step_s_max:.3f}]",
        ]
        for key, value in self.split_s.items():
            lines.append(f"  {key:<32} {value:8.3f} s")
        lines.append(f"completion tokens/step {self.completion_tokens_per_step:.1f}; {self.tokens_per_s:.1f} tokens/s; "
                     f"peak RSS {self.peak_rss_mb:.0f} MB"
                     + (f" (+ sampler process {self.peak_rss_children_mb:.0f} MB)" if self.peak_rss_children_mb else "")
                     + f"; wall {self.wall_s:.1f} s")
        if self.peak_gpu_mb is not None:
            lines.append(f"device {self.device}; peak GPU memory allocated {self.peak_gpu_mb:.0f} MB")
        return "\n".join(lines)


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rows)


def run_bench(config: RunConfig, *, steps: int = 5, warmup: int = 1, output_dir: Path | None = None) -> BenchResult:
    """Train ``config`` for ``warmup + steps`` steps (no checkpoints, no export, no warm start) and summarise
    the timings."""
    if steps < 1 or warmup < 0:
        raise ConfigError("rlgen bench: --steps must be at least 1 and --warmup at least 0")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rlgen-bench-") as scratch:
        out = Path(output_dir) if output_dir else Path(scratch) / "run"
        run = config.run.model_copy(update={"steps": steps + warmup, "output_dir": str(out), "checkpoint_every": 0,
                                            "save_final": False})
        eval_section = config.eval.model_copy(update={"every": 0})
        # a warm start is a stage before training, minutes long: the steps it would be timed with start from
        # model.path instead (point it at RUN/warm_start/policy to time RL from a warm start)
        if config.warm_start.prompts:
            log.info("rlgen bench: the config's warm start is not run; the steps start from model.path",
                     model=config.model.path)
        warm_start = config.warm_start.model_copy(update={"prompts": 0})
        cfg = config.model_copy(update={"run": run, "eval": eval_section, "warm_start": warm_start})
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = train(cfg, progress=False)
        wall = time.perf_counter() - t0
        peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    rows = result.metrics[warmup:]
    keys = [k for k in LOOP_PHASES + ASYNC_PHASES if k in rows[0]]
    keys += sorted(k for k in rows[0] if k.startswith("trainer/time/"))
    step_times = [float(r["time/step_s"]) for r in rows]
    tokens = statistics.mean(float(r["completion/tokens_mean"]) for r in rows)
    median_step = statistics.median(step_times)
    batch = config.data.sampled_prompts_per_step * config.group_size  # completions sampled a step
    return BenchResult(
        config=config.origin, steps=steps, warmup=warmup, threads=torch.get_num_threads(), load_average=load,
        step_s_median=median_step, step_s_min=min(step_times), step_s_max=max(step_times),
        split_s={k: _median(rows, k) for k in keys},
        completion_tokens_per_step=tokens * batch,
        tokens_per_s=tokens * batch / median_step if median_step > 0 else 0.0,
        # ru_maxrss is in KiB on Linux: the whole process, models, optimizer states and all
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peak_gpu_mb=peak_gpu, device=torch.cuda.get_device_name() if cuda else "cpu",
        peak_rss_children_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if config.run.async_rollouts else 0.0,
        wall_s=wall, step_s=step_times,
    )


def write_json(result: BenchResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.as_dict(), indent=2))
