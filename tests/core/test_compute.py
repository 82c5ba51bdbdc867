"""What ``auto`` resolves to for the device and dtype, for every machine capability, and on this CPU machine."""

from __future__ import annotations

import pytest
import torch

import rlgen
from rlgen import choose_compute


@pytest.mark.parametrize(
    ("cuda", "bf16", "expected"),
    [
        (False, False, rlgen.Compute("cpu", "float32")),
        (True, True, rlgen.Compute("cuda", "bfloat16")),  # Ampere and later
        (True, False, rlgen.Compute("cuda", "float32")),  # older GPUs: no silent fp16 (it needs loss scaling)
    ],
)
def test_auto_follows_the_machine(cuda, bf16, expected):
    assert choose_compute("auto", "auto", cuda_available=cuda, bf16_supported=bf16) == expected


def test_explicit_choices_are_kept():
    assert choose_compute("float16", "auto", cuda_available=True, bf16_supported=True) == rlgen.Compute("cuda", "float16")
    assert choose_compute("auto", "cpu", cuda_available=True, bf16_supported=True) == rlgen.Compute("cpu", "float32")
    assert choose_compute("auto", "cuda:1", cuda_available=True, bf16_supported=True) == rlgen.Compute("cuda", "bfloat16")
    assert choose_compute("float32", "cuda", cuda_available=True, bf16_supported=True).dtype == "float32"


def test_impossible_choices_are_config_errors():
    with pytest.raises(rlgen.ConfigError, match="no CUDA device"):
        choose_compute("auto", "cuda", cuda_available=False, bf16_supported=False)
    with pytest.raises(rlgen.ConfigError, match="unknown dtype 'int8'"):
        choose_compute("int8", "auto", cuda_available=False, bf16_supported=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU resolution; tests/gpu checks the CUDA one")
def test_auto_is_float32_on_this_cpu_machine():
    assert rlgen.detect_compute() == rlgen.Compute("cpu", "float32")
    assert rlgen.resolve_dtype("auto") == "float32"
    assert rlgen.resolve_dtype("bfloat16") == "bfloat16"
    config = rlgen.load_config({"model": {"dtype": "auto"}, "data": {"path": "p.jsonl"}, "rewards": [{"name": "len"}]})
    assert config.model.dtype == "auto"
    # the default is unchanged: a run written before `auto` existed resumes with the same config
    assert rlgen.load_config({"data": {"path": "p.jsonl"}, "rewards": [{"name": "len"}]}).model.dtype == "float32"
