"""The grpo trainer on CUDA (nccl, one rank): bf16 against an fp32 reference on the same batch, LoRA, exact resume.

Gradients are compared through the first AdamW update with a large epsilon: with bias correction
that update is ``-lr * g / (|g| + eps)``, about ``-lr * g / eps`` when ``eps >> |g|``, so the change of
the fp32 master weights (``deepspeed.utils.safe_get_full_fp32_param`` under bf16) is the gradient up
to a known scale, read after a real ``step`` without reaching into the engine's buffers.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS reductions (exact resume)

import rlgen  # noqa: E402
from rlgen_plugins.grpo import GrpoTrainer  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (docs/gpu.md)")]

LR, ADAM_EPS = 1e-2, 1.0
# bf16 keeps 8 mantissa bits (relative rounding 2^-9): a 2-layer model's gradient lands within a few percent
GRAD_REL_TOL, GRAD_COSINE_MIN = 0.08, 0.995
METRICS = ("loss", "clip_fraction", "grad_norm", "lr", "kl", "entropy", "completion_tokens", "updates")


def make_rollout(seed: int, b: int = 6, p: int = 6, t: int = 8, vocab: int = 600):
    """Left-padded prompts, right-padded completions of varied lengths, token-level advantages."""
    g = torch.Generator().manual_seed(seed)
    plen, clen = torch.randint(1, p + 1, (b,), generator=g), torch.randint(1, t + 1, (b,), generator=g)
    pid, pm = torch.zeros(b, p, dtype=torch.long), torch.zeros(b, p, dtype=torch.bool)
    cid, cm = torch.zeros(b, t, dtype=torch.long), torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        pid[i, p - plen[i]:] = torch.randint(3, vocab, (int(plen[i]),), generator=g)
        pm[i, p - plen[i]:] = True
        cid[i, : clen[i]] = torch.randint(3, vocab, (int(clen[i]),), generator=g)
        cm[i, : clen[i]] = True
    adv = torch.randn(b, t, generator=g) * cm
    return rlgen.Rollout(texts=["x"] * b, completion_ids=cid, completion_mask=cm, group=torch.arange(b) // 3,
                         prompt_ids=pid, prompt_mask=pm), adv


def make_trainer(tmp_path: Path, cache_dir: Path, *, dtype: str = "auto", steps: int = 4, **params) -> GrpoTrainer:
    params = {"learning_rate": LR, "adam_eps": ADAM_EPS, "micro_batch_size": 3, "beta": 0.04,
              "max_grad_norm": 1e6, **params}  # no clipping, but DeepSpeed still reports the norm
    config = rlgen.load_config({
        "model": {"path": "builtin:tiny-llama", "dtype": dtype}, "data": {"path": "unused.jsonl"},
        "rewards": [{"name": "unused"}], "trainer": {"name": "grpo", "params": params},
        "run": {"steps": steps, "output_dir": str(tmp_path)},
    })
    ctx = rlgen.RunContext(config=config, registry=rlgen.registry(), output_dir=tmp_path, cache_dir=cache_dir, seed=0)
    trainer = GrpoTrainer(GrpoTrainer.Params(**params))
    trainer.setup(ctx)
    return trainer


def master_weights(trainer: GrpoTrainer) -> dict[str, torch.Tensor]:
    """fp32 weights the optimizer updates: DeepSpeed's master copies under bf16, the parameters themselves in fp32."""
    from deepspeed.utils import safe_get_full_fp32_param

    # bf16 on ZeRO-0 runs DeepSpeed's FP16_Optimizer or FP16_UnfusedOptimizer (bf16 gradients, fp32
    # masters), which link no _hp_mapping: their masters are per-group lists (unfused) or flat copies
    # (fused) in the order of ``fp16_groups``
    flat_masters: dict[int, torch.Tensor] = {}
    optimizer = trainer.engine.optimizer
    for group, flat in zip(getattr(optimizer, "fp16_groups", []), getattr(optimizer, "fp32_groups_flat", [])):
        offset = 0
        for param in group:
            flat_masters[id(param)] = flat[offset: offset + param.numel()].view_as(param)
            offset += param.numel()
    for group, masters in zip(getattr(optimizer, "fp16_groups", []), getattr(optimizer, "fp32_groups", [])):
        flat_masters.update({id(param): master for param, master in zip(group, masters)})
    out = {}
    for name, param in trainer.engine.module.named_parameters():
        if not param.requires_grad:
            continue
        master = safe_get_full_fp32_param(param)
        if master is None:
            master = flat_masters.get(id(param), param.detach())
        assert master.dtype == torch.float32, f"{name}: no fp32 master weights found"
        out[name] = master.float().cpu().clone()
    return out


def one_update(tmp_path: Path, cache_dir: Path, **params) -> tuple[dict[str, float], torch.Tensor, GrpoTrainer]:
    """Metrics of one step and the gradient it applied (flattened, from the master-weight change)."""
    trainer = make_trainer(tmp_path, cache_dir, **params)
    before = master_weights(trainer)
    metrics = trainer.step(*make_rollout(0))
    after = master_weights(trainer)
    # AdamW step 1: w -= lr * g / (|g| + eps); undo the scale (the |g| << eps term is in both runs alike)
    grad = torch.cat([((before[k] - after[k]) * (ADAM_EPS / LR)).flatten() for k in before])
    return metrics, grad, trainer


def assert_same_gradient(grad: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    rel = float((grad - reference).norm() / reference.norm())
    cosine = float(torch.nn.functional.cosine_similarity(grad, reference, dim=0))
    assert reference.norm() > 0, "the reference update moved nothing"
    assert rel < GRAD_REL_TOL and cosine > GRAD_COSINE_MIN, f"{what}: relative error {rel:.4f}, cosine {cosine:.5f}"


def test_the_trainer_runs_on_cuda_over_nccl_and_auto_means_bf16(tmp_path, cache_dir):
    trainer = make_trainer(tmp_path, cache_dir)
    assert trainer.device.type == "cuda" and torch.distributed.get_backend() == "nccl"
    bf16 = torch.cuda.is_bf16_supported()
    # zero_stage auto on one rank: 2 in bf16 (DeepSpeed's ZeRO-0 bf16 optimizer scales the update), 0 in fp32
    assert (trainer.precision, trainer.zero_stage) == (("bf16", 2) if bf16 else ("fp32", 0))
    assert next(trainer.engine.module.parameters()).device.type == "cuda"
    trainer.close()


# ZeRO-0 in bf16 is what an explicit zero_stage: 0 gets; on CPU its first update was 0.54x the fp32 one
# (FP16_UnfusedOptimizer, deepspeed 0.19.8): this checks whether the GPU path (FP16_Optimizer) does the same
@pytest.mark.parametrize("zero_stage", [0, 2])
def test_bf16_loss_and_gradient_match_an_fp32_reference_on_the_same_batch(tmp_path, cache_dir, zero_stage):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU does not compute in bf16")
    ref_metrics, ref_grad, ref = one_update(tmp_path / "fp32", cache_dir, precision="fp32", zero_stage=0)
    ref.close()
    metrics, grad, trainer = one_update(tmp_path / "bf16", cache_dir, precision="bf16", zero_stage=zero_stage)
    assert trainer.precision == "bf16" and trainer.zero_stage == zero_stage
    assert next(trainer.engine.module.parameters()).dtype == torch.bfloat16
    trainer.close()
    assert math.isclose(metrics["loss"], ref_metrics["loss"], rel_tol=0.02, abs_tol=2e-3), (metrics, ref_metrics)
    assert math.isclose(metrics["grad_norm"], ref_metrics["grad_norm"], rel_tol=GRAD_REL_TOL), (metrics, ref_metrics)
    assert math.isclose(metrics["entropy"], ref_metrics["entropy"], rel_tol=0.01)
    assert metrics["kl"] == pytest.approx(ref_metrics["kl"], abs=1e-3)  # both ~0 on the first pass
    assert_same_gradient(grad, ref_grad, f"bf16 ZeRO-{zero_stage} against fp32")


def test_lora_in_bf16_trains_the_adapters_only_and_exports_a_model_that_matches(tmp_path, cache_dir):
    from transformers import AutoModelForCausalLM

    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU does not compute in bf16")
    lora = {"r": 4, "alpha": 8}
    ref_metrics, ref_grad, ref = one_update(tmp_path / "fp32", cache_dir, precision="fp32", zero_stage=0, lora=lora)
    ref.close()
    metrics, grad, trainer = one_update(tmp_path / "bf16", cache_dir, precision="bf16", zero_stage=2, lora=lora)
    trainable = [n for n, q in trainer.engine.module.named_parameters() if q.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert math.isclose(metrics["grad_norm"], ref_metrics["grad_norm"], rel_tol=GRAD_REL_TOL)
    assert_same_gradient(grad, ref_grad, "LoRA bf16 ZeRO-2 against fp32")
    trainer.export_policy(tmp_path / "policy")
    policy = trainer.policy_module()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy", dtype=torch.bfloat16).cuda().eval()
    ids = torch.tensor([[5, 17, 42, 99, 7]], device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits.float(), policy(input_ids=ids).logits.float(),
                                   rtol=0.02, atol=0.02)
    trainer.close()


def run_steps(trainer: GrpoTrainer, seeds: list[int]) -> list[dict[str, float]]:
    return [{k: m[k] for k in METRICS if k in m} for m in (trainer.step(*make_rollout(s)) for s in seeds)]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_on_gpu_repeats_the_uninterrupted_run_exactly(tmp_path, cache_dir, lora):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = dict(epochs=2, warmup_updates=2, lr_schedule="cosine", zero_stage=2, learning_rate=1e-3, adam_eps=1e-8)
    if lora:
        params["lora"] = {"r": 4, "alpha": 8}
    # the math attention kernel: the fused ones may accumulate in a varying order in backward
    with sdpa_kernel([SDPBackend.MATH]):
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            straight = make_trainer(tmp_path / "a", cache_dir, **params)
            expected = run_steps(straight, [20, 21, 22, 23])
            expected_weights = {k: v.detach().cpu().clone() for k, v in straight.export_weights()}
            straight.close()

            first = make_trainer(tmp_path / "b", cache_dir, **params)
            assert run_steps(first, [20, 21]) == expected[:2]
            first.save_checkpoint(tmp_path / "ckpt")
            first.close()
            assert json.loads((tmp_path / "ckpt" / "trainer.json").read_text())["steps"] == 2

            resumed = make_trainer(tmp_path / "c", cache_dir, **params)
            resumed.load_checkpoint(tmp_path / "ckpt")
            assert run_steps(resumed, [22, 23]) == expected[2:]
            final = {k: v.detach().cpu() for k, v in resumed.export_weights()}
            resumed.close()
        finally:
            torch.use_deterministic_algorithms(False)
    for name, value in expected_weights.items():
        assert torch.equal(final[name], value), name
