"""What ``auto`` means for the device and dtype of a run, decided in one place.

The sampler, the trainer and the run-start log line must agree on what ``model.dtype: auto``
and ``device: auto`` stand for, so the decision is a plain function of the machine's
capabilities (:func:`choose_compute`, testable without a GPU) and :func:`detect_compute`
feeds it what torch reports here. On a CPU machine ``auto`` is exactly what the defaults were
before it existed: float32 on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConfigError

#: the weight dtypes a run can ask for (``model.dtype``); ``auto`` resolves to one of the others
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Compute:
    """Where a run computes and in which dtype its model weights are."""

    device: str  # "cpu" or "cuda" (a rank's index is the launcher's business)
    dtype: str  # one of DTYPES

    def describe(self) -> str:
        return f"{self.device}/{self.dtype}"


def choose_compute(dtype: str = "auto", device: str = "auto", *, cuda_available: bool, bf16_supported: bool) -> Compute:
    """Resolve ``auto`` for ``device`` and ``dtype`` from the machine's capabilities.

    ``device: auto`` is CUDA when there is one; ``dtype: auto`` is bfloat16 on a CUDA device
    that computes in it (Ampere and later), else float32 (CPU, older GPUs: fp16 would need loss
    scaling, which a user should ask for explicitly). An explicit value is kept as given.
    """
    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigError(f"model.dtype: unknown dtype {dtype!r}; use auto or one of {', '.join(DTYPES)}")
    if device == "auto":
        device = "cuda" if cuda_available else "cpu"
    on_cuda = device.startswith("cuda")
    if on_cuda and not cuda_available:
        raise ConfigError(f"device {device!r} was asked for, but torch sees no CUDA device here")
    if dtype == "auto":
        dtype = "bfloat16" if on_cuda and bf16_supported else "float32"
    return Compute(device="cuda" if on_cuda else device, dtype=dtype)


def detect_compute(dtype: str = "auto", device: str = "auto") -> Compute:
    """:func:`choose_compute` with what torch reports on this machine."""
    cuda = torch.cuda.is_available()
    return choose_compute(dtype, device, cuda_available=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported())


def resolve_dtype(dtype: str) -> str:
    """``model.dtype`` with ``auto`` resolved for the device a run gets here (what samplers and trainers load)."""
    return dtype if dtype != "auto" else detect_compute(dtype).dtype
