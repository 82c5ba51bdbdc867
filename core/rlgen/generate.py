"""`rlgen generate`: run a policy over a file of contexts with the same prompts and sampler as training.

This is how a trained policy is used, and how anyone checks it on contexts of their own: the
prompt template, chat template and post-processing all come from the run's config, so what is
generated here is what the rewards saw during training.
"""

from __future__ import annotations

import json
from pathlib import Path

import tqdm

from . import session
from .config import RunConfig
from .discovery import Registry
from .errors import ConfigError
from .seeding import seed_everything, step_seed


def generate_file(
    config: RunConfig,
    *,
    policy: str | None,
    data: str | None,
    out: Path,
    n: int = 1,
    batch_prompts: int = 8,
    seed: int | None = None,
    registry: Registry | None = None,
    progress: bool = True,
) -> int:
    """Write one JSON line per context: its fields plus ``ads`` (``n`` completions). Returns the line count."""
    if n < 1:
        raise ConfigError("--n must be at least 1")
    config, plan, registry = session.with_policy(config, policy, registry)
    seed = config.run.seed if seed is None else seed
    source = session.contexts_source(config, registry, data, split=None)
    sampler = plan.sampler.build()
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    tmp = out.with_name(out.name + ".tmp")
    context = session.run_context(config, registry, out.parent, seed=seed)
    try:
        with session.plugins_set_up(context, [sampler]), tmp.open("w", encoding="utf-8") as fh, \
                tqdm.tqdm(total=len(source.records), unit="ctx", desc="generate", disable=not progress) as bar:
            for start in range(0, len(source.records), batch_prompts):
                chunk = source.records[start : start + batch_prompts]
                prompts = [source.prompt(r) for r in chunk]
                batch_seed = step_seed(seed, start // batch_prompts + 1, 0)
                seed_everything(batch_seed)
                rollout = sampler.generate(prompts, n, batch_seed)
                for k, record in enumerate(chunk):
                    ads = [rollout.texts[i] for i in range(rollout.batch_size) if int(rollout.group[i]) == k]
                    fh.write(json.dumps({**record, "ads": ads}, ensure_ascii=False) + "\n")
                    written += 1
                bar.update(len(chunk))
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return written
