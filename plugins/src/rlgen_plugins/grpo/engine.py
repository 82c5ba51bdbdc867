"""DeepSpeed as the training engine on CPU and GPU alike: process group, config, schedule.

One code path: the communication backend comes from the DeepSpeed accelerator (gloo on CPU,
nccl on CUDA), the DeepSpeed config is generated from the trainer's params (ZeRO stage,
precision, offload, optimizer implementation, clipping), and a single process without a
launcher gets the environment a launcher would have given it.

Two slow JIT builds are kept out of the default path on purpose:

- DeepSpeed's CPU accelerator builds a shared-memory all-reduce op (``deepspeed_shm_comm``,
  75-90 s) in its first ``init_distributed``. Only AutoTP inference uses that op
  (``inference_all_reduce``); training collectives go through gloo. DeepSpeed consults the
  module-level dict ``deepspeed.ops.__compatible_ops__`` before building it, so marking the op
  incompatible there skips the build; ``shm_comm: true`` restores DeepSpeed's default.
- The config optimizer ``AdamW`` JIT-builds FusedAdam (GPU) or DeepSpeedCPUAdam (offload)
  unless ``"torch_adam": true``; ``optimizer: torch`` (the default) sets it, and asks
  ``torch.optim.AdamW`` for its fused kernel where torch has one for the device: on CPU the
  default single-tensor loop makes about ten passes over every parameter per update (0.5-0.8 s
  for 135M fp32 parameters on one thread), the fused kernel one (0.16 s).

deepspeed is imported inside the functions, so importing this module (and listing plugins)
never needs it.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import socket
from typing import Any, Callable, Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["constant", "linear", "cosine"]
OptimizerImpl = Literal["torch", "torch-fused", "deepspeed"]
#: devices torch.optim.AdamW(fused=True) runs on (torch >= 2.4)
FUSED_ADAM_DEVICES = ("cpu", "cuda", "xpu", "mps")

#: set by a launcher (torchrun, the deepspeed launcher); a single process gets defaults
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: MPI launchers set these instead; DeepSpeed's own MPI discovery then fills DIST_ENV
MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_dist_env() -> dict[str, str]:
    """Give a process started without a launcher the environment of a 1-rank launch.

    Without RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, ``deepspeed.init_distributed`` falls back
    to MPI discovery (and fails without mpi4py). Variables a launcher set are left alone. The
    ones set here stay set, as DeepSpeed's own MPI discovery leaves them: they describe the
    process group this process now belongs to, and ZeRO-3 reads ``LOCAL_RANK`` while training;
    :func:`init_distributed` drops the rendezvous address it set once the group exists.

    Returns:
        the variables this call set.
    """
    if any(k in os.environ for k in MPI_ENV) and "RANK" not in os.environ:
        return {}  # an MPI launch: DeepSpeed discovers ranks itself
    set_now: dict[str, str] = {}
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for key, value in defaults.items():
        if key not in os.environ:
            set_now[key] = value
    if "LOCAL_RANK" not in os.environ:
        # torchrun and the deepspeed launcher set it; a launcher that does not is taken as one node
        set_now["LOCAL_RANK"] = os.environ.get("RANK", "0")
    if "MASTER_PORT" not in os.environ:
        set_now["MASTER_PORT"] = str(free_port())
    os.environ.update(set_now)
    return set_now


def disable_shm_comm_build() -> None:
    """Keep DeepSpeed's CPU backend from JIT-compiling its shared-memory all-reduce op (see module doc)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(*, shm_comm: bool = False, log_level: int = logging.WARNING) -> tuple[int, int, torch.device]:
    """Join (or create) the process group with the accelerator's backend.

    Returns:
        (rank, world size, device this rank computes on).
    """
    set_here = ensure_dist_env()
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    logging.getLogger("DeepSpeed").setLevel(log_level)
    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        if not shm_comm:
            disable_shm_comm_build()
    else:
        accelerator.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name(), verbose=False)
    import deepspeed.comm as dist

    # The rendezvous address is spent once the group exists; left set, a child process (a
    # `rlgen train` started from this one) would inherit it and fail to bind the same port.
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key in set_here:
            os.environ.pop(key, None)

    return dist.get_rank(), dist.get_world_size(), torch.device(accelerator.current_device_name())


def backend_name() -> str:
    """The communication backend DeepSpeed's accelerator picks here (gloo on CPU, nccl on CUDA)."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().communication_backend_name()


def lr_multiplier(update: int, *, warmup: int, total: int, schedule: Schedule, min_ratio: float = 0.0) -> float:
    """Factor of the base learning rate used by optimizer update ``update`` (0-based).

    Linear warm-up over ``warmup`` updates ((k + 1) / (warmup + 1): the first update already
    moves), then ``constant`` at 1, or ``linear`` / ``cosine`` decay to ``min_ratio`` at
    update ``total``.
    """
    if update < warmup:
        return (update + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (update - warmup) / max(1, total - warmup)))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}; use constant, linear or cosine")


def scheduler_factory(*, warmup: int, total: int, schedule: Schedule, min_ratio: float) -> Callable[[Any], Any]:
    """A callable DeepSpeed turns into the LR scheduler (stepped once per optimizer update).

    DeepSpeed's config schedulers (WarmupLR & co.) give the first update ``warmup_min_lr`` and
    force at least two warm-up steps, so warm-up 0 is impossible with them; a LambdaLR over
    :func:`lr_multiplier` has neither quirk and is saved in DeepSpeed checkpoints all the same.
    """

    def make(optimizer: Any) -> torch.optim.lr_scheduler.LambdaLR:
        def factor(update: int) -> float:
            return lr_multiplier(update, warmup=warmup, total=total, schedule=schedule, min_ratio=min_ratio)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    return make


def merge_config(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in recursively (``extra`` wins)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_ds_config(
    *,
    zero_stage: int,
    precision: Precision,
    micro_batch_size: int,
    world_size: int,
    learning_rate: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    max_grad_norm: float,
    optimizer: OptimizerImpl,
    offload_optimizer: bool,
    offload_params: bool,
    pin_memory: bool,
    device_type: str = "cpu",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config for the trainer's params.

    Gradient accumulation is driven by the trainer (it marks the accumulation boundary of
    every update itself, since a rollout's size varies), so ``gradient_accumulation_steps``
    stays 1 and ``train_batch_size`` only has to be consistent. ``device_type`` is where the
    optimizer states live (CPU when offloaded), which decides whether ``torch`` can be fused.
    """
    opt_params: dict[str, Any] = {
        "lr": learning_rate,
        "betas": list(betas),
        "eps": eps,
        "weight_decay": weight_decay,
    }
    if optimizer in ("torch", "torch-fused"):
        # torch.optim.AdamW: nothing to JIT-build (FusedAdam / DeepSpeedCPUAdam otherwise)
        opt_params["torch_adam"] = True
        states_on = "cpu" if offload_optimizer else device_type
        if optimizer == "torch-fused" or states_on in FUSED_ADAM_DEVICES:
            opt_params["fused"] = True
    zero: dict[str, Any] = {"stage": zero_stage}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    if zero_stage == 3:
        # export_weights() gathers the full parameters itself; no 16-bit copy at save time
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch_size * world_size,
        "gradient_clipping": max_grad_norm,
        "optimizer": {"type": "AdamW", "params": opt_params},
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }
    if offload_optimizer and optimizer != "deepspeed":
        # torch AdamW on offloaded (CPU) states: allowed, just not DeepSpeed's default
        config["zero_force_ds_cpu_optimizer"] = False
    return merge_config(config, extra or {})


def initialize(model: torch.nn.Module, config: dict[str, Any], scheduler: Callable[[Any], Any]) -> Any:
    """``deepspeed.initialize`` on the trainable parameters; returns the engine."""
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=config, lr_scheduler=scheduler)
    undo_state_initialising_step(engine.optimizer)
    return engine


def undo_state_initialising_step(optimizer: Any) -> None:
    """Undo the optimizer step DeepSpeed's bf16/fp16 ZeRO-0 optimizers take with zero gradients.

    FP16_Optimizer and FP16_UnfusedOptimizer (deepspeed 0.19.8) call ``step()`` on zero gradients
    when built, to allocate the optimizer's state. AdamW then counts one step too many: the first
    real update's bias corrections use step 2, which scales it by about 0.53 when |g| << eps and by
    0.74 when eps << |g| (measured against fp32: a 0.54x update), and weight decay has shrunk the
    fp32 master weights once. Empty states are allocated afresh at the next step, and the masters
    were copies of the low-precision weights, which that step did not touch.
    """
    masters, weights = getattr(optimizer, "fp32_groups_flat", None), getattr(optimizer, "fp16_groups_flat", None)
    if masters is None:
        masters, weights = getattr(optimizer, "fp32_groups", None), getattr(optimizer, "fp16_groups", None)
    inner = getattr(optimizer, "optimizer", None)
    if not masters or not weights or inner is None or not isinstance(inner, torch.optim.Optimizer):
        return  # fp32 or ZeRO 1-3: no such step
    inner.state.clear()
    with torch.no_grad():
        for master, weight in zip(masters, weights):
            for m, w in (zip(master, weight) if isinstance(master, list) else [(master, weight)]):
                m.copy_(w)


# -- collectives ---------------------------------------------------------------------------


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """All-reduce a small CPU tensor across ranks (on the comm device) and return it on CPU."""
    import deepspeed.comm as dist

    if dist.get_world_size() == 1:
        return tensor
    from deepspeed.accelerator import get_accelerator

    device = torch.device(get_accelerator().current_device_name())
    t = tensor.to(device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.cpu()


def barrier() -> None:
    import deepspeed.comm as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
