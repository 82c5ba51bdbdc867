"""GPU tests: every module here sets ``pytestmark`` to the ``gpu`` marker and a skip where torch sees no CUDA device.

They run on the GPU check machine (``make gpu-check``, docs/gpu.md) with the same fixtures as the
CPU tests: the builtin tiny Llama is built locally, nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlgen_plugins.models import resolve_builtin_model





@pytest.fixture(scope="session")
def tiny_llama(cache_dir: Path) -> Path:
    return resolve_builtin_model("tiny-llama", cache_dir)


@pytest.fixture(autouse=True)
def _exact_fp32_matmuls():
    """fp32 references must be fp32: TF32 matmuls (10-bit mantissa) would put a bf16-sized error into them."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
