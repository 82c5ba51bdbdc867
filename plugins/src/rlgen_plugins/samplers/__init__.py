"""Samplers of the standard distribution (registered as ``standard_samplers``): ``hf``.

The post-processors that ``hf`` (and any other sampler) can apply live in :mod:`.postprocess`.
"""

from __future__ import annotations

import rlgen

from .hf import HFSampler
from .postprocess import POSTPROCESSORS, PostProcessor, PostProcessStep, apply_chain, build_postprocessor
from .vllm import VLLMSampler


@rlgen.hookimpl
def rlgen_samplers() -> list[type[rlgen.Sampler]]:
    return [HFSampler, VLLMSampler]


__all__ = [
    "HFSampler",
    "POSTPROCESSORS",
    "PostProcessStep",
    "PostProcessor",
    "apply_chain",
    "build_postprocessor",
    "rlgen_samplers",
]
