"""Two ranks of relate.grpo (ZeRO-2, gloo) under torchrun equal one process on the same global batch.

The test launches this very file as a worker: ``python -m torch.distributed.run --standalone
--nproc_per_node 2 test_grpo_distributed.py OUT`` for two ranks, and plain ``python
test_grpo_distributed.py OUT`` (no launcher variables at all) for the single process. Each rank
trains on its own shard of one global batch of 7 rollouts rows, split unevenly (5 + 2) so the
rank with fewer rows runs zero-weight passes to keep the collectives in step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
STEPS = 3
GLOBAL_ROWS = 7
SHARDS = {0: slice(0, 5), 1: slice(5, 7)}
PARAMS = {
    "learning_rate": 1e-3, "beta": 0.05, "epochs": 2, "micro_batch_size": 2, "zero_stage": 2,
    "loss_aggregation": "token-mean", "clip_eps_high": 0.28,
}
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
                 "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def global_rollout(step: int):
    """The same 7-row rollout for a step on every rank (seeded), prompts left- and completions right-padded."""
    import rlgen

    g = torch.Generator().manual_seed(100 + step)
    b, p, t = GLOBAL_ROWS, 5, 7
    plen = torch.randint(1, p + 1, (b,), generator=g)
    clen = torch.randint(1, t + 1, (b,), generator=g)
    pid = torch.zeros(b, p, dtype=torch.long)
    pm = torch.zeros(b, p, dtype=torch.bool)
    cid = torch.zeros(b, t, dtype=torch.long)
    cm = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        pid[i, p - plen[i]:] = torch.randint(3, 600, (int(plen[i]),), generator=g)
        pm[i, p - plen[i]:] = True
        cid[i, : clen[i]] = torch.randint(3, 600, (int(clen[i]),), generator=g)
        cm[i, : clen[i]] = True
    adv = torch.randn(b, t, generator=g) * cm

    def take(rows: slice):
        r = rlgen.Rollout(texts=["x"] * (rows.stop - rows.start), completion_ids=cid[rows], completion_mask=cm[rows],
                          group=torch.arange(b)[rows] // 4, prompt_ids=pid[rows], prompt_mask=pm[rows])
        return r, adv[rows]

    return take


def worker(out: Path) -> None:
    """Train STEPS steps on this rank's shard (or the whole batch alone) and save params + metrics."""
    import rlgen
    from rlgen.config import load_config
    from rlgen.discovery import registry
    from rlgen_plugins.grpo import GrpoTrainer

    torch.set_num_threads(1)
    launched = "RANK" in os.environ
    config = load_config({
        "model": {"path": "builtin:tiny-llama"}, "data": {"path": "unused.jsonl"}, "rewards": [{"name": "unused"}],
        "trainer": {"name": "relate.grpo", "params": PARAMS}, "run": {"steps": STEPS, "output_dir": str(out)},
    })
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cache = Path(os.environ["RLGEN_CACHE_DIR"])
    ctx = rlgen.RunContext(config=config, registry=registry(), output_dir=out, cache_dir=cache, seed=0,
                           rank=rank, world_size=world)
    trainer = GrpoTrainer(GrpoTrainer.Params(**PARAMS))
    trainer.setup(ctx)
    assert trainer.world_size == world and trainer.rank == rank
    if not launched:  # the trainer gave itself the environment of a 1-rank launch ...
        assert os.environ["WORLD_SIZE"] == "1" and os.environ["LOCAL_RANK"] == "0"
        # ... and dropped the spent rendezvous address, so child processes do not inherit its port
        assert "MASTER_ADDR" not in os.environ and "MASTER_PORT" not in os.environ
    initial = {k: v.detach().clone() for k, v in trainer.export_weights()}
    metrics = []
    for step in range(STEPS):
        take = global_rollout(step)
        metrics.append(trainer.step(*take(SHARDS[rank] if world == 2 else slice(0, GLOBAL_ROWS))))
    params = {k: v.detach().clone() for k, v in trainer.export_weights()}
    torch.save({"initial": initial, "params": params, "metrics": metrics}, out / f"result_rank{rank}_of{world}.pt")
    trainer.close()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.setdefault("RLGEN_CACHE_DIR", str(ROOT / ".cache" / "rlgen"))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    return env


def _run(cmd: list[str], out: Path) -> None:
    proc = subprocess.run(cmd, env=_env(), cwd=out, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"


@pytest.mark.slow
def test_two_rank_zero2_equals_one_process_on_the_global_batch(tmp_path):
    two = tmp_path / "two"
    one = tmp_path / "one"
    two.mkdir()
    one.mkdir()
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HERE), str(two)], two)
    _run([sys.executable, str(HERE), str(one)], one)
    r0 = torch.load(two / "result_rank0_of2.pt", weights_only=True)
    r1 = torch.load(two / "result_rank1_of2.pt", weights_only=True)
    single = torch.load(one / "result_rank0_of1.pt", weights_only=True)
    # both ranks hold bit-identical parameters ...
    assert r0["params"].keys() == r1["params"].keys() == single["params"].keys()
    for name in r0["params"]:
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    # ... equal to one process on the concatenated batch, up to summation order (which Adam's
    # normalisation amplifies on near-zero gradient entries: hence a bound on the whole update)
    diff = moved = 0.0
    for name, value in single["params"].items():
        torch.testing.assert_close(r0["params"][name], value, rtol=1e-4, atol=2e-5, msg=name)
        update = value - single["initial"][name]
        diff += float((r0["params"][name] - r0["initial"][name] - update).pow(2).sum())
        moved += float(update.pow(2).sum())
    assert moved > 0  # training moved the weights
    assert (diff / moved) ** 0.5 < 1e-4
    # metrics are global on every rank and agree with the single process
    for m0, m1, ms in zip(r0["metrics"], r1["metrics"], single["metrics"]):
        for key in ("loss", "clip_fraction", "kl", "entropy", "grad_norm", "lr", "completion_tokens"):
            assert m0[key] == m1[key], key
            assert m0[key] == pytest.approx(ms[key], rel=1e-4, abs=1e-6), key


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
