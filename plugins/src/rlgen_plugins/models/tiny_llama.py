"""``builtin:tiny-llama``: a small random Llama with a locally trained tokenizer, for tests and smoke runs.

It has the shape of a real chat model (byte-level BPE fast tokenizer with offsets, a ChatML
chat template, ``<|im_end|>`` as EOS, tied embeddings, grouped-query attention) so every code
path a real model takes is exercised, yet a GRPO step on it takes about a second on one CPU
core. Everything is built from a seed and a corpus shipped with this package: no network.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from .cache import materialise, spec_key

# Same special tokens and ids as SmolLM2, so both builtin chat models behave alike.
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

# ChatML, as SmolLM2 and Qwen use, without a default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Bump `version` whenever the build below changes, so cached folders are rebuilt.
TINY_LLAMA_SPEC: dict[str, Any] = {
    "version": 1,
    "seed": 0,
    "vocab_size": 1024,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "initializer_range": 0.02,
}


def corpus_text() -> str:
    """The English text the tokenizer is trained on (shipped with the package)."""
    return resources.files("rlgen_plugins.models").joinpath("tiny_corpus.txt").read_text(encoding="utf-8")


def build_tokenizer(vocab_size: int = 1024) -> Any:
    """Train a byte-level BPE tokenizer on the bundled corpus and wrap it as a fast HF tokenizer.

    Byte-level means any string (digits, punctuation, any Unicode) encodes and decodes back
    exactly; offsets are not trimmed, so token spans tile the text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_text().splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=ENDOFTEXT,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=TINY_LLAMA_SPEC["max_position_embeddings"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_llama(folder: Path, spec: dict[str, Any] | None = None) -> None:
    """Write tokenizer, config and safetensors weights of a random Llama described by ``spec`` into ``folder``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    spec = {**TINY_LLAMA_SPEC, **(spec or {})}
    tokenizer = build_tokenizer(spec["vocab_size"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        initializer_range=spec["initializer_range"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    # A private generator state: building must not disturb (or depend on) the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec["seed"]))
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def ensure_tiny_llama(cache_dir: Path, **overrides: Any) -> Path:
    """Folder of the tiny Llama built from ``TINY_LLAMA_SPEC`` updated with ``overrides`` (built once, then cached)."""
    unknown = set(overrides) - set(TINY_LLAMA_SPEC)
    if unknown:
        raise ValueError(f"tiny-llama: unknown spec fields {sorted(unknown)}; known: {sorted(TINY_LLAMA_SPEC)}")
    spec = {**TINY_LLAMA_SPEC, **overrides}
    # The corpus is part of what the build depends on.
    key = spec_key({**spec, "corpus": spec_key({"text": corpus_text()})})
    target = Path(cache_dir) / "models" / f"tiny-llama-{key}"
    return materialise(target, spec, lambda folder: build_tiny_llama(folder, spec))
