"""Public helpers that load tokenizers, causal LMs and embedders the same way in every plugin.

The sampler here and the trainers in other distributions (e.g. ``rlgen_relate``'s DeepSpeed
GRPO trainer) call these so that a model spec means the same thing everywhere: ``builtin:NAME``
is one of the embedded offline models, anything else is a local folder or a Hugging Face model
id loaded the ordinary way. ``trust_remote_code`` stays off unless the caller turns it on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from rlgen import ConfigError, PluginError

from .cache import default_cache_dir

BUILTIN_PREFIX = "builtin:"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def _builtin_builders() -> dict[str, Callable[[Path], Path]]:
    from .minilm import minilm_folder
    from .smollm2 import ensure_smollm2
    from .tiny_llama import ensure_tiny_llama

    return {
        "tiny-llama": ensure_tiny_llama,
        "smollm2-135m-instruct": ensure_smollm2,
        "minilm-l6": lambda cache_dir: minilm_folder(),
    }


def builtin_model_names() -> list[str]:
    """Names this distribution resolves after ``builtin:``."""
    return sorted(_builtin_builders())


def resolve_builtin_model(name: str, cache_dir: Path | str | None = None) -> Path | None:
    """Local folder of the embedded model ``name`` (built or converted on first use), or None if unknown.

    Args:
        name: e.g. ``tiny-llama``, ``smollm2-135m-instruct``, ``minilm-l6`` (without ``builtin:``).
        cache_dir: where built/converted copies are kept; defaults to :func:`default_cache_dir`.
    """
    builder = _builtin_builders().get(name)
    if builder is None:
        return None
    return Path(builder(Path(cache_dir) if cache_dir is not None else default_cache_dir()))


def resolve_model_path(spec: str | Path, cache_dir: Path | str | None = None) -> str:
    """``builtin:NAME`` -> local folder; any other spec (local path or hub id) is returned unchanged.

    Plugins running inside a run should prefer ``context.resolve_model(spec)``, which also
    knows builtin names that other installed distributions provide.
    """
    spec = str(spec)
    if not spec.startswith(BUILTIN_PREFIX):
        return spec
    name = spec[len(BUILTIN_PREFIX) :]
    folder = resolve_builtin_model(name, cache_dir)
    if folder is None:
        raise PluginError(f"unknown builtin model {spec!r}; rlgen-plugins provides {builtin_model_names()}")
    return str(folder)


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """Map a config dtype name (``float32``, ``bf16``, ``float16``, ...) to a torch dtype; ``auto`` passes through."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise PluginError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'") from None


def load_tokenizer(
    path: str | Path,
    trust_remote_code: bool = False,
    padding_side: str = "left",
    cache_dir: Path | str | None = None,
) -> Any:
    """Load a Hugging Face tokenizer ready for batched generation.

    Args:
        path: ``builtin:NAME``, a local folder, or a hub id.
        trust_remote_code: allow custom tokenizer code shipped with the model (off by default).
        padding_side: ``left`` for generation (the default), ``right`` for training batches.
        cache_dir: cache for builtin models (default :func:`default_cache_dir`).

    A tokenizer without a pad token gets its EOS token as pad token, which is what causal LMs
    that never saw padding expect (the attention mask hides it anyway).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_path(path, cache_dir), trust_remote_code=trust_remote_code
    )
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise PluginError(f"tokenizer of {path!r} has neither a pad nor an EOS token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    path: str | Path,
    dtype: str | torch.dtype = "float32",
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
    cache_dir: Path | str | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Load a causal LM (``AutoModelForCausalLM``) from safetensors, in eval mode.

    Args:
        path: ``builtin:NAME``, a local folder, or a hub id.
        dtype: ``float32`` (default), ``bfloat16``, ``float16`` or ``auto``.
        trust_remote_code: allow custom modelling code shipped with the model (off by default).
        device: where to put the model (default: CPU, where from_pretrained loads it).
        cache_dir: cache for builtin models (default :func:`default_cache_dir`).
        **kwargs: passed to ``from_pretrained`` (e.g. ``attn_implementation``).
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(path, cache_dir),
        dtype=torch_dtype(dtype),
        trust_remote_code=trust_remote_code,
        use_safetensors=kwargs.pop("use_safetensors", None),
        **kwargs,
    )
    if device is not None:
        model.to(device)
    align_cpu_weights(model)
    return model.eval()


def is_peft_model(module: torch.nn.Module) -> bool:
    return hasattr(module, "get_base_model") and hasattr(module, "peft_config")


def hf_model(module: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside ``module`` (PEFT wrapper removed; LoRA layers stay injected)."""
    return module.get_base_model() if is_peft_model(module) else module


def align_cpu_weights(model: torch.nn.Module, alignment: int = 64) -> None:
    """Give every CPU parameter and buffer of ``model`` memory of its own, ``alignment``-byte aligned.

    Weights loaded straight from a safetensors file sit at the file's header offset (24 bytes past a
    64-byte boundary here), and the CPU matmul kernels round differently on such a buffer than on an
    aligned copy of the same numbers. The trainer's reference model and the sampler's weights are
    aligned copies, so an unaligned policy would disagree with them in the last bits before any
    update, and the KL term's gradient of that noise, normalised by Adam, is a full-size step.
    """
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.device.type == "cpu" and tensor.data_ptr() % alignment:
            tensor.data = tensor.data.clone()  # torch's CPU allocator aligns to 64 bytes


def load_embedder(
    path: str | Path = "builtin:minilm-l6",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    cache_dir: Path | str | None = None,
) -> Any:
    """Load a sentence-transformers embedder (default: the embedded all-MiniLM-L6-v2), offline for builtins."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(
        resolve_model_path(path, cache_dir), device=str(device), trust_remote_code=trust_remote_code
    )


#: files one of which a folder needs for AutoTokenizer to load (fast, sentencepiece, BPE, WordPiece)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def check_model_folder(path: str, key: str, *, model: bool = True, tokenizer: bool = True) -> None:
    """Raise ConfigError naming ``key`` when ``path`` (a resolved spec) is a local path that cannot
    be a model: missing, a file, (with ``model``) no ``config.json``, (with ``tokenizer``) no tokenizer files.
    A spec that is no local path is a hub id; :func:`load_checked_tokenizer` finds out whether it loads."""
    folder = Path(path).expanduser()
    if not folder.exists():
        if str(path).startswith(("/", ".", "~")) or str(path).count("/") > 1:
            raise ConfigError(f"{key} {path}: no such folder (a model folder, an HF model id, or builtin:NAME)")
        return
    if not folder.is_dir():
        raise ConfigError(f"{key} {path}: is a file, not a model folder")
    if model and not (folder / "config.json").is_file():
        raise ConfigError(f"{key} {path}: the folder has no config.json, so it is not a Hugging Face model folder")
    if tokenizer and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"{key} {path}: the folder has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                          "copy them from the base model, or point model.tokenizer at them")


def load_checked_tokenizer(path: str, key: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of ``path`` (a resolved spec), or a ConfigError naming ``key`` that says why it does not load."""
    check_model_folder(path, key, model=False)
    folder = Path(path).expanduser()
    try:
        return load_tokenizer(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # OSError, HF id validation, sentencepiece: each means the same to the user
        text = str(exc).strip()
        reason = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
        offline = ""
        if not folder.exists() and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
            offline = " (it is not a local folder, and HF_HUB_OFFLINE is set: only models already in the Hugging Face cache load)"
        raise ConfigError(f"{key} {path}: its tokenizer does not load{offline}; {reason}") from None
