"""Full policy weights out of a DeepSpeed engine: ZeRO-3 gathered, LoRA merged, HF folder written.

Samplers that keep their own copy of the policy (another process, vLLM) need plain weights
under the model's own parameter names, whatever the engine does internally: ZeRO-3 shards
every parameter across ranks, and LoRA keeps the base weights frozen beside low-rank factors.
The same full state also becomes the servable ``save_pretrained`` export.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

from ..models import hf_model, is_peft_model

LORA_MARKERS = (".lora_", ".lora_magnitude_vector")


@contextlib.contextmanager
def gathered(module: torch.nn.Module, zero_stage: int) -> Iterator[None]:
    """Make every parameter of ``module`` whole on every rank for the duration (ZeRO-3 only; collective)."""
    if zero_stage != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        yield


def merged_lora_state(peft_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the base model with every active LoRA adapter merged: W + (alpha / r) B A.

    Names are the base model's own (``...q_proj.weight``), the adapters' tensors are dropped,
    and the live weights are not touched (merge/unmerge in place would round them).
    """
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    state: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if any(marker in key for marker in LORA_MARKERS):
            continue
        state[key.replace(".base_layer.", ".")] = value.detach()
    for path, layer in base.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        key = f"{path}.weight"
        weight = state[key]
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A or adapter in getattr(layer, "lora_embedding_A", {}):
                weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
        state[key] = weight
    return state


def full_state(module: torch.nn.Module, zero_stage: int) -> dict[str, torch.Tensor]:
    """Whole, unsharded weights by the HF model's names (LoRA merged); collective under ZeRO-3.

    Tensors may share storage with the live module when nothing had to be gathered or merged.
    """
    with gathered(module, zero_stage):
        if is_peft_model(module):
            state = merged_lora_state(module)
        else:
            state = {k: v.detach() for k, v in module.state_dict().items()}
        if zero_stage == 3:
            # the gathered storage is released when the context closes
            state = {k: v.clone() for k, v in state.items()}
    return state


def save_hf_folder(module: torch.nn.Module, state: dict[str, torch.Tensor], folder: Path, tokenizer: Any = None) -> None:
    """Write ``state`` as a ``save_pretrained`` folder (safetensors, config, generation config, tokenizer).

    The folder is written under ``<folder>.tmp`` and renamed into place when complete, so a
    killed run never leaves a half-written export behind a valid name.
    """
    folder = Path(folder)
    staging = folder.with_name(folder.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    model = hf_model(module)
    cpu_state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    model.save_pretrained(staging, state_dict=cpu_state, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    replace_dir(staging, folder)


def replace_dir(staging: Path, final: Path) -> None:
    """Move the complete folder ``staging`` to ``final``, replacing an older ``final``."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)
