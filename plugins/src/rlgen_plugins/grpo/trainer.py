"""The ``grpo`` trainer: RELATE paper Eq. 6 with token-level advantages on DeepSpeed.

One ``step`` is one rollout: the log-probs of the sampling policy (pi_old) and of the
reference policy are taken once, then ``epochs`` (mu) passes over the rollout update the
policy, each split into ``mini_batches`` optimizer updates of gradient-accumulated
micro-batches. Every rank trains on its own rollout (its shard of the global batch) and
DeepSpeed averages the gradients; the losses are normalised by counts over all ranks, so N
ranks give the same update as one process on the concatenated batch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import pydantic
import torch
from pydantic import Field

import rlgen
from rlgen import PluginError, Rollout, RunContext

from . import engine as ds
from . import safe_load
from .batching import PolicyBatch, build_policy_batch, micro_batch_count, split_rows
from .export import full_state, replace_dir, save_hf_folder
from .loss import Aggregation, grpo_loss, token_logprobs, token_logprobs_and_entropy
from .shared_prompt import SharedPromptMicroBatch, cache_keyword, shared_prompt_logits

CHECKPOINT_FORMAT = 1
STATE_FILE = "trainer.json"
DS_DIR = "deepspeed"
DS_TAG = "state"
EXPORT_DIR = "policy"


class LoraParams(rlgen.Params):
    """Low-rank adapters (PEFT) instead of full fine-tuning."""

    r: int = Field(16, ge=1, description="rank of the adapter matrices")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator: updates are scaled by alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt, or 'all-linear' (every linear layer but the output head)"
    )


class GrpoParams(rlgen.Params):
    """Parameters of ``grpo``."""

    # -- objective (Eq. 6) --
    beta: float = Field(0.04, ge=0.0, description="weight of the k3 KL penalty to the reference policy; 0 loads no reference model")
    clip_eps_low: float = Field(0.2, ge=0.0, lt=1.0, description="rho is clipped below at 1 - clip_eps_low")
    clip_eps_high: float = Field(0.2, ge=0.0, description="rho is clipped above at 1 + clip_eps_high (> low: DAPO clip-higher)")
    loss_aggregation: Aggregation = Field(
        "seq-mean-token-mean",
        description="seq-mean-token-mean (GRPO: mean over sequences of per-sequence token means), "
        "token-mean (DAPO: mean over all tokens), seq-mean-token-sum (Eq. 6 as written: mean over sequences of token sums)",
    )
    temperature: float | None = Field(
        None, gt=0.0, description="deprecated: the trainer divides logits by Rollout.temperature, which the sampler sets; "
        "when given, it must equal the sampler's (configs written before the field moved keep working)"
    )
    # -- optimisation --
    epochs: int = Field(1, ge=1, description="mu: optimisation passes over each rollout (pi_old log-probs are taken once before the first)")
    mini_batches: int = Field(1, ge=1, description="optimizer updates per pass: the rollout is split into this many contiguous parts")
    micro_batch_size: int = Field(8, ge=1, description="rows per forward/backward; gradients accumulate over the micro-batches of an update")
    learning_rate: float = Field(1e-6, gt=0.0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW decoupled weight decay")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    adam_eps: float = Field(1e-8, gt=0.0, description="AdamW epsilon")
    max_grad_norm: float = Field(1.0, ge=0.0, description="clip the global gradient norm to this (0: no clipping)")
    warmup_updates: int = Field(0, ge=0, description="optimizer updates of linear learning-rate warm-up")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="learning rate after warm-up")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="final learning rate of linear/cosine decay, as a fraction of the peak")
    total_updates: int | None = Field(
        None, ge=1, description="updates the decay spans; default run.steps x epochs x mini_batches"
    )
    # -- model --
    lora: LoraParams | None = Field(None, description="train LoRA adapters instead of all weights; the reference is then the adapter-disabled model")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")
    disable_dropout: bool = Field(True, description="set every dropout to 0 so pi_theta and pi_old agree on the first pass")
    log_entropy: bool = Field(True, description="log the policy entropy on completion tokens (one extra softmax per pass)")
    share_prompt: bool = Field(
        True, description="forward each distinct prompt of a micro-batch once and run its completions on its KV cache "
        "(pi_old, reference, policy forward and backward): exact up to float rounding; falls back to prompt + completion "
        "per row under ZeRO-3, gradient checkpointing, or a model that takes no cache (a warning when set explicitly)"
    )
    # -- engine --
    zero_stage: Literal[0, 1, 2, 3, "auto"] = Field(
        "auto", description="DeepSpeed ZeRO stage 0-3 (the paper trains with 2); auto: 0 on one rank in fp32, where "
        "partitioning buys nothing and costs an extra copy of the gradients, 2 on several or in bf16/fp16, 2 or 3 when "
        "offloading asks for it"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="compute precision; auto follows model.dtype. Master weights stay fp32 in every case"
    )
    optimizer: Literal["torch", "torch-fused", "deepspeed"] = Field(
        "torch",
        description="AdamW implementation: torch (torch.optim.AdamW, nothing to build; its fused kernel on CPU/CUDA/XPU/MPS), "
        "torch-fused (the fused kernel, required), deepspeed (FusedAdam on GPU, DeepSpeedCPUAdam with offload; "
        "JIT-compiled on first use)",
    )
    offload_optimizer: bool = Field(False, description="keep optimizer states in CPU memory (ZeRO stage >= 1)")
    offload_params: bool = Field(False, description="keep parameters in CPU memory between uses (ZeRO stage 3)")
    shm_comm: bool = Field(
        False, description="let DeepSpeed build its CPU shared-memory all-reduce op (used only by AutoTP inference; a 75-90 s compile)"
    )
    deepspeed_config: dict[str, Any] = Field(
        default_factory=dict, description="merged (recursively) over the generated DeepSpeed config, for options not covered here"
    )
    checkpoint_export: bool = Field(True, description="also write a save_pretrained export of the policy into every checkpoint")

    @pydantic.model_validator(mode="after")
    def _check_engine(self) -> "GrpoParams":
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        if self.offload_params and self.zero_stage not in (3, "auto"):
            raise ValueError("offload_params needs zero_stage 3")
        return self


@dataclass
class StepPlan:
    """How one rank walks its rollout: per mini-batch, the rows of each pass (None: a zero-weight pass)."""

    passes: list[list[torch.Tensor | None]]
    sequences: list[float]  # per mini-batch, over all ranks
    tokens: list[float]  # completion tokens per mini-batch, over all ranks


_PRECISION_OF_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_DTYPE_OF_PRECISION = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_zero_stage(params: GrpoParams, world_size: int, precision: str = "fp32") -> int:
    """The ZeRO stage ``auto`` stands for: partition only where there is someone to share with, or offloading
    needs it; and 2 for bf16/fp16 on one rank too, where ZeRO-0 would hand the update to DeepSpeed's
    FP16_(Unfused)Optimizer, whose first update on a bf16 batch was 0.54x the fp32 reference's (same direction,
    CPU, deepspeed 0.19.8), while ZeRO-2's was within 0.7% (tests/gpu/test_grpo_gpu.py, docs/gpu.md)."""
    if params.zero_stage != "auto":
        return int(params.zero_stage)
    if params.offload_params:
        return 3
    return 2 if params.offload_optimizer or world_size > 1 or precision != "fp32" else 0


def disable_dropout(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def apply_lora(model: torch.nn.Module, lora: LoraParams) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def rng_state() -> dict[str, Any]:
    """Every RNG this process may draw from, in tensors and plain values (loadable with weights_only)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)}
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        np.random.set_state(("MT19937", s["keys"].numpy().astype("uint32"), s["pos"], s["has_gauss"], s["cached"]))


class GrpoTrainer(rlgen.Trainer):
    """GRPO with token-level advantages (paper Eq. 6) on DeepSpeed ZeRO 0-3, CPU or GPU, LoRA optional."""

    name = "grpo"
    #: RELATE presets and every config written before the trainer moved out of rlgen-relate
    aliases = ("relate.grpo",)
    description = "GRPO, paper Eq. 6 with token-level advantages and k3 KL, on DeepSpeed ZeRO 0-3 (CPU/GPU, LoRA optional)"
    requires = ("deepspeed",)
    Params = GrpoParams

    def __init__(self, params: GrpoParams | None = None) -> None:
        super().__init__(params)
        self.params: GrpoParams
        self.engine: Any = None
        self.ref_model: torch.nn.Module | None = None
        self.tokenizer: Any = None
        self.steps_done = 0
        self.updates_done = 0
        self.rank, self.world_size = 0, 1
        self.device = torch.device("cpu")
        self.precision = "fp32"
        self.zero_stage = 0
        #: the KV-cache keyword of the model when prompts are shared (params.share_prompt and supported), else None
        self.shared_prompt_keyword: str | None = None

    # -- set-up -----------------------------------------------------------------------------

    def setup(self, context: RunContext) -> None:
        from ..models import load_causal_lm, load_tokenizer

        p = self.params
        self.rank, self.world_size, self.device = ds.init_distributed(shm_comm=p.shm_comm)
        if context.world_size != self.world_size:
            raise PluginError(
                f"trainer '{self.name}': the run context says {context.world_size} ranks, the process group has {self.world_size}"
            )
        mcfg = context.config.model
        # precision auto follows model.dtype, whose own auto is bf16 on a CUDA device that supports it
        dtype = rlgen.detect_compute(mcfg.dtype, self.device.type).dtype
        self.precision = _PRECISION_OF_DTYPE[dtype] if p.precision == "auto" else p.precision
        self.zero_stage = resolve_zero_stage(p, self.world_size, self.precision)
        path = context.resolve_model(mcfg.path)
        self.tokenizer = load_tokenizer(context.resolve_model(mcfg.tokenizer or mcfg.path),
                                        trust_remote_code=mcfg.trust_remote_code)
        # fp32 master weights: DeepSpeed casts the module for bf16/fp16 and keeps fp32 copies in the optimizer
        model = load_causal_lm(path, dtype="float32", trust_remote_code=mcfg.trust_remote_code)
        if p.lora is None and p.beta > 0:
            # the reference is the policy as loaded: a copy in memory, not a second read from disk
            ref = copy.deepcopy(model).to(_DTYPE_OF_PRECISION[self.precision])
            # its weights keep requires_grad like the policy's (it only ever runs under inference_mode): torch's
            # matmul folds a non-contiguous input differently when the weight requires grad, even under no_grad,
            # and the reference must round exactly as the policy does (see _frozen_logprobs)
            self.ref_model = ref.to(self.device).eval()
        if p.disable_dropout:
            disable_dropout(model)
        if p.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if p.lora is not None:
            # adapters initialise from the run seed alone: the same on every rank, whatever ran before
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(context.seed)
                model = apply_lora(model, p.lora)
        total = p.total_updates or context.config.run.steps * p.epochs * p.mini_batches
        config = ds.build_ds_config(
            zero_stage=self.zero_stage, precision=self.precision, micro_batch_size=p.micro_batch_size,
            world_size=self.world_size, learning_rate=p.learning_rate, betas=p.adam_betas, eps=p.adam_eps,
            weight_decay=p.weight_decay, max_grad_norm=p.max_grad_norm, optimizer=p.optimizer,
            offload_optimizer=p.offload_optimizer, offload_params=p.offload_params,
            pin_memory=self.device.type != "cpu", device_type=self.device.type, extra=p.deepspeed_config,
        )
        scheduler = ds.scheduler_factory(warmup=p.warmup_updates, total=total, schedule=p.lr_schedule,
                                         min_ratio=p.min_lr_ratio)
        self.engine = ds.initialize(model, config, scheduler)
        if p.share_prompt:
            self.shared_prompt_keyword = self._shared_prompt_support(model)
        # loads of our checkpoints run no code from the files (see safe_load)
        safe_load.install(self.engine, self.name)
        self.engine.module.eval()

    # -- the update ---------------------------------------------------------------------------

    def _plan(self, batch: PolicyBatch) -> StepPlan:
        p = self.params
        minis = split_rows(torch.arange(batch.size), p.mini_batches)
        local = torch.tensor(
            [[len(r), float(batch.completion_mask[r].sum()), micro_batch_count(len(r), p.micro_batch_size)] for r in minis],
            dtype=torch.float64,
        )
        counts = ds.all_reduce(local[:, :2].clone(), "sum")
        n_passes = ds.all_reduce(local[:, 2].clone(), "max")
        passes = []
        for rows, n in zip(minis, n_passes.long().tolist()):
            passes.append([chunk if len(chunk) else None for chunk in split_rows(rows, n)])
        return StepPlan(passes, counts[:, 0].tolist(), counts[:, 1].tolist())

    def _shared_prompt_support(self, model: torch.nn.Module) -> str | None:
        """The cache keyword when the prompt can be shared here, else None (and a log line saying why)."""
        keyword = cache_keyword(model)
        # ZeRO-3 gathers parameters inside each forward and expects balanced passes; checkpointed layers drop the cache
        why = ("ZeRO-3" if self.zero_stage == 3 else "gradient_checkpointing" if self.params.gradient_checkpointing
               else f"{type(model).__name__} takes no KV cache" if keyword is None else None)
        if why is not None:
            # the default needs no apology; a user who asked for it is told why it is off
            log = rlgen.get_logger("rlgen.trainer")
            report = log.warning if "share_prompt" in self.params.model_fields_set else log.info
            report(f"trainer '{self.name}': share_prompt is not supported with {why}; each row runs prompt + completion")
            return None
        return keyword

    def _logits(self, module: Any, batch: PolicyBatch, rows: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if self.shared_prompt_keyword is not None:
            shared = SharedPromptMicroBatch.from_rows(batch, rows).to(self.device)
            return shared_prompt_logits(module, shared, self.shared_prompt_keyword), shared
        mb = batch.micro(rows).to(self.device)
        out = module(
            input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
            logits_to_keep=mb.width + 1, use_cache=False,
        )
        # position P - 1 + t predicts completion token t
        return out.logits[:, :-1, :], mb

    @torch.no_grad()
    def _frozen_logprobs(self, batch: PolicyBatch, plan: StepPlan, which: str, temperature: float) -> torch.Tensor:
        """log-probs [B, T] of the completions under pi_old (``old``) or pi_ref (``ref``), taken once.

        The passes are the training micro-batches, not bigger no-grad ones: with the same rows the
        trimmed shapes and so the arithmetic are the same, so before any update pi_ref and pi_old
        equal pi_theta bitwise. Other shapes differ in the last bits, the k3 KL then has a gradient
        of pure noise, and Adam's normalisation turns that into a full-size step (0.003 on a
        log-prob after one update at lr 1e-3 on the tiny Llama).
        """
        out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32, device=self.device)
        separate_ref = which == "ref" and self.ref_model is not None
        # passes through the engine must be balanced across ranks under ZeRO-3 (forward gathers params)
        balance = not separate_ref and self.zero_stage == 3
        for rows in (rows for mini in plan.passes for rows in mini):
            if rows is None and not balance:
                continue
            if separate_ref:
                # no engine hooks on the reference: inference mode skips autograd's bookkeeping altogether
                with torch.inference_mode():
                    logits, mb = self._logits(self.ref_model, batch, rows)
                    logp = token_logprobs(logits, mb.targets, temperature)
            else:
                with self.engine.module.disable_adapter() if which == "ref" else contextlib.nullcontext():
                    # LoRA: the adapter-disabled base model is the reference
                    logits, mb = self._logits(self.engine, batch, rows if rows is not None else torch.tensor([0]))
                logp = token_logprobs(logits, mb.targets, temperature)
            if rows is not None:
                out[rows.to(self.device), : mb.width] = logp
        return out

    def _backward(self, loss: torch.Tensor) -> None:
        # On one rank at ZeRO-0 DeepSpeed would still flatten every gradient into one buffer,
        # all-reduce it with itself and copy it back at each update (twice the model's size in
        # memory traffic, and a buffer that size); the sum over one rank is the identity.
        alone = self.world_size == 1 and self.zero_stage == 0
        with self.engine.no_sync() if alone else contextlib.nullcontext():
            self.engine.backward(loss, scale_wrt_gas=False)

    def _grad_norm_before_step(self) -> float | None:
        """Global gradient norm where DeepSpeed does not report one (ZeRO stage 0; grads are already averaged)."""
        if self.zero_stage != 0:
            return None
        grads = [q.grad.detach().float().norm() for q in self.engine.module.parameters() if q.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    def step(self, rollout: Rollout, advantages: torch.Tensor) -> dict[str, float]:
        """mu epochs of Eq. 6 on this rank's rollout; returns metrics identical on every rank."""
        if self.engine is None:
            raise PluginError(f"trainer '{self.name}': step() before setup()")
        p = self.params
        t0 = time.perf_counter()
        batch = build_policy_batch(rollout, advantages, plugin=self.name)
        if batch.size == 0:
            raise PluginError(f"trainer '{self.name}': empty rollout")
        plan = self._plan(batch)
        self.engine.module.train()
        # pi_old of Eq. 6 is the policy that sampled the rollout. A stale rollout (run.async_rollouts) was
        # sampled by older weights than these: its own log-probs are the only record of that policy
        behaviour = rollout.staleness > 0
        if behaviour and rollout.logprobs is None:
            raise PluginError(f"trainer '{self.name}': the rollout is {rollout.staleness} step(s) stale and "
                              "carries no Rollout.logprobs to use as pi_old")
        # on-policy with one update per rollout, pi_old is the current policy: its log-probs are logp.detach()
        reuse_old = p.epochs == 1 and p.mini_batches == 1 and not behaviour
        # log-probs of the distribution the sampler drew from: logits / the rollout's temperature
        temperature = rollout.temperature
        if p.temperature is not None and abs(p.temperature - temperature) > 1e-9:
            raise PluginError(
                f"trainer '{self.name}': params.temperature is {p.temperature} but the sampler drew at {temperature}; "
                "remove trainer.params.temperature (the trainer reads the rollout's)"
            )
        # where the step's time goes (rlgen bench reads these as trainer/time/*)
        clock = dict.fromkeys(("old", "ref", "forward", "backward", "optimizer"), 0.0)
        tick = time.perf_counter()
        if behaviour:
            logp_old = rollout.logprobs.to(self.device, torch.float32)
        else:
            logp_old = None if reuse_old else self._frozen_logprobs(batch, plan, "old", temperature)
        clock["old"], tick = time.perf_counter() - tick, time.perf_counter()
        ref_logp = self._frozen_logprobs(batch, plan, "ref", temperature) if p.beta > 0 else None
        clock["ref"] = time.perf_counter() - tick
        # sampler/trainer agreement: |log-prob of a sampled token under the sampler - under this
        # forward on the same weights| (verl's rollout-vs-training probability difference), from the
        # first forward pass, before any update
        sampled = None if rollout.logprobs is None else rollout.logprobs.to(self.device, torch.float32)
        agreement = torch.zeros(3, dtype=torch.float64)  # sum |diff|, tokens, max |diff|
        compared = torch.zeros(batch.size, dtype=torch.bool)  # rows whose first pass was compared

        def compare(logp_rows: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor) -> None:
            diff = (logp_rows.detach().float() - sampled[rows, : logp_rows.shape[1]]).abs()[mask.bool()]
            if diff.numel():
                agreement[0] += float(diff.double().sum())
                agreement[1] += diff.numel()
                agreement[2] = max(float(agreement[2]), float(diff.max()))

        if sampled is not None and logp_old is not None and not behaviour:
            every = torch.arange(batch.size, device=self.device)
            compare(logp_old, every, batch.completion_mask.to(self.device))
        # local sums; reduced over ranks at the end
        sums = torch.zeros(5, dtype=torch.float64)  # loss, clipped, tokens, kl, entropy
        grad_norms: list[float] = []
        lr = 0.0
        for _ in range(p.epochs):
            for mini, n_seq, n_tok in zip(plan.passes, plan.sequences, plan.tokens):
                for k, rows in enumerate(mini):
                    last = k == len(mini) - 1
                    self.engine.set_gradient_accumulation_boundary(last)
                    tick = time.perf_counter()
                    if rows is None:
                        # this rank has fewer rows: a zero-weight pass keeps the collectives in step
                        logits, _ = self._logits(self.engine, batch, torch.tensor([0]))
                        loss = logits.float().sum() * 0.0
                    else:
                        logits, mb = self._logits(self.engine, batch, rows)
                        if p.log_entropy:
                            logp, entropy = token_logprobs_and_entropy(logits, mb.targets, temperature)
                        else:
                            logp = token_logprobs(logits, mb.targets, temperature)
                        d_rows = rows.to(self.device)
                        old = logp.detach() if logp_old is None else logp_old[d_rows, : mb.width]
                        # the first pass of the step: one update per rollout, or a stale rollout's pi_old
                        if sampled is not None and (logp_old is None or behaviour) and not compared[int(rows[0])]:
                            compare(logp, d_rows, mb.mask)
                            compared[rows] = True
                        ref = None if ref_logp is None else ref_logp[d_rows, : mb.width]
                        out = grpo_loss(
                            logp, old, mb.advantages, mb.mask, ref_logp=ref, beta=p.beta,
                            eps_low=p.clip_eps_low, eps_high=p.clip_eps_high, aggregation=p.loss_aggregation,
                            num_sequences=n_seq, num_tokens=n_tok,
                        )
                        # DeepSpeed averages gradients over ranks; each rank's share of the global loss is scaled back up
                        loss = out.loss * self.world_size
                        m = mb.mask.float()
                        sums[0] += float(out.loss.detach())
                        sums[1] += float(out.clipped.sum())
                        sums[2] += float(m.sum())
                        if out.kl is not None:
                            sums[3] += float((out.kl.detach() * m).sum())
                        if p.log_entropy:
                            sums[4] += float((entropy * m).sum())
                    clock["forward"] += time.perf_counter() - tick
                    tick = time.perf_counter()
                    self._backward(loss)
                    clock["backward"] += time.perf_counter() - tick
                    if last:
                        tick = time.perf_counter()
                        pre_norm = self._grad_norm_before_step()
                        lr = float(self.engine.get_lr()[0])
                        self.engine.step()
                        norm = self.engine.get_global_grad_norm()
                        grad_norms.append(float(norm) if norm is not None else float(pre_norm or 0.0))
                        self.updates_done += 1
                        clock["optimizer"] += time.perf_counter() - tick
        self.engine.module.eval()
        totals = ds.all_reduce(torch.cat([sums, torch.tensor([float(batch.num_tokens), float(batch.num_completion_tokens)],
                                                             dtype=torch.float64)]), "sum")
        loss_sum, clipped, tokens, kl_sum, ent_sum, all_tokens, completion_tokens = totals.tolist()
        self.steps_done += 1
        seconds = time.perf_counter() - t0
        updates = len(grad_norms)
        metrics = {
            "loss": loss_sum / max(updates, 1),
            "clip_fraction": clipped / max(tokens, 1.0),
            "grad_norm": sum(grad_norms) / max(updates, 1),
            "lr": lr,
            "tokens_per_s": all_tokens * p.epochs / seconds,
            "step_seconds": seconds,
            "completion_tokens": completion_tokens,
            "updates": float(updates),
            **{f"time/{phase}_s": value for phase, value in clock.items()},
        }
        if sampled is not None:
            diff_sum, diff_tokens = ds.all_reduce(agreement[:2].clone(), "sum").tolist()
            metrics["logprob_diff_mean"] = diff_sum / max(diff_tokens, 1.0)
            metrics["logprob_diff_max"] = float(ds.all_reduce(agreement[2:].clone(), "max")[0])
        if p.beta > 0:
            metrics["kl"] = kl_sum / max(tokens, 1.0)
        if p.log_entropy:
            metrics["entropy"] = ent_sum / max(tokens, 1.0)
        return metrics

    # -- weights --------------------------------------------------------------------------

    def policy_module(self) -> torch.nn.Module | None:
        """The live policy (a PEFT model under LoRA) when ZeRO keeps it whole (stage < 3), else None."""
        if self.engine is None or self.zero_stage == 3:
            return None
        return self.engine.module

    def export_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full weights by HF name, LoRA merged. Under ZeRO-3 this gathers: every rank must call it."""
        if self.engine is None:
            raise PluginError(f"trainer '{self.name}': export_weights() before setup()")
        yield from full_state(self.engine.module, self.zero_stage).items()

    def export_policy(self, directory: Path) -> None:
        """``save_pretrained`` folder (safetensors + tokenizer) of the policy, LoRA merged; collective, rank 0 writes."""
        state = full_state(self.engine.module, self.zero_stage)
        if self.rank == 0:
            Path(directory).parent.mkdir(parents=True, exist_ok=True)
            save_hf_folder(self.engine.module, state, Path(directory), self.tokenizer)
        ds.barrier()

    # -- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self, directory: Path) -> None:
        """DeepSpeed checkpoint (weights, optimizer, scheduler, step) + RNG per rank + HF export; collective.

        Each part is written aside and renamed into place; ``trainer.json`` comes last, so a
        folder without it is incomplete and :meth:`load_checkpoint` refuses it.
        """
        directory = Path(directory)
        staging = directory / f"{DS_DIR}.tmp"
        if self.rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / STATE_FILE).unlink(missing_ok=True)
            if staging.exists():
                import shutil

                shutil.rmtree(staging)
            staging.mkdir()
        ds.barrier()
        lora = self.params.lora is not None
        self.engine.save_checkpoint(str(staging), tag=DS_TAG, client_state={"trainer_steps": self.steps_done},
                                    save_latest=False, exclude_frozen_parameters=lora)
        torch.save(rng_state(), staging / f"rng_rank{self.rank}.pt")
        ds.barrier()
        if self.rank == 0:
            replace_dir(staging, directory / DS_DIR)
        if self.params.checkpoint_export:
            self.export_policy(directory / EXPORT_DIR)
        if self.rank == 0:
            meta = {
                "format": CHECKPOINT_FORMAT, "trainer": self.name, "steps": self.steps_done,
                "updates": self.updates_done, "world_size": self.world_size,
                "zero_stage": self.zero_stage, "lora": lora,
            }
            tmp = directory / f"{STATE_FILE}.tmp"
            tmp.write_text(json.dumps(meta, indent=2))
            os.replace(tmp, directory / STATE_FILE)
        ds.barrier()

    def load_checkpoint(self, directory: Path) -> None:
        """Restore what :meth:`save_checkpoint` wrote (same ZeRO stage and, for stage > 0, same rank count).

        Every file loads without running code from it: DeepSpeed's through the engine
        :mod:`.safe_load` installed, the RNG states through ``rlgen.load_tensors``.
        """
        directory = Path(directory)
        state_file = directory / STATE_FILE
        if not state_file.is_file():
            raise PluginError(f"trainer '{self.name}': {directory} is not a complete checkpoint (no {STATE_FILE})")
        try:
            meta = json.loads(state_file.read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise PluginError(f"trainer '{self.name}': {state_file} is unreadable ({exc})") from None
        p = self.params
        if meta.get("trainer") not in {self.name, *self.aliases} or meta.get("format") != CHECKPOINT_FORMAT:
            raise PluginError(f"trainer '{self.name}': {directory} was written by {meta.get('trainer')!r} format {meta.get('format')}")
        if meta["zero_stage"] != self.zero_stage or (self.zero_stage > 0 and meta["world_size"] != self.world_size):
            raise PluginError(
                f"trainer '{self.name}': checkpoint {directory} holds ZeRO-{meta['zero_stage']} state of "
                f"{meta['world_size']} ranks; resume with zero_stage={meta['zero_stage']} on {meta['world_size']} ranks"
            )
        if bool(meta["lora"]) != (p.lora is not None):
            raise PluginError(f"trainer '{self.name}': checkpoint {directory} lora={meta['lora']} but params.lora is "
                              f"{'set' if p.lora is not None else 'unset'}")
        try:
            loaded, _ = self.engine.load_checkpoint(
                str(directory / DS_DIR), tag=DS_TAG, load_module_strict=p.lora is None,
                load_optimizer_states=True, load_lr_scheduler_states=True,
            )
        except (KeyError, TypeError, ValueError, AttributeError, AssertionError, IndexError) as exc:
            # files that load safely but are not what DeepSpeed wrote (edited by hand or by another version)
            raise PluginError(
                f"trainer '{self.name}': DeepSpeed state in {directory / DS_DIR} is not what this trainer wrote "
                f"({type(exc).__name__}: {exc})"
            ) from None
        if loaded is None:
            raise PluginError(f"trainer '{self.name}': DeepSpeed found no checkpoint in {directory / DS_DIR}")
        rng_file = directory / DS_DIR / f"rng_rank{self.rank}.pt"
        if rng_file.is_file():
            state = rlgen.load_tensors(rng_file)
            try:
                set_rng_state(state)
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                raise PluginError(f"trainer '{self.name}': {rng_file} holds no RNG state ({type(exc).__name__}: {exc})") from None
        self.steps_done = int(meta["steps"])
        self.updates_done = int(meta["updates"])

    def close(self) -> None:
        if self.engine is not None and hasattr(self.engine, "destroy"):
            self.engine.destroy()
        self.engine = None
        self.ref_model = None
