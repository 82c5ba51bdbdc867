"""``relate.relevance``: sentence-level semantic relevance to the ad context (paper 3.3.1, Relevance Reward).

The value is the cosine similarity between the embedding of the completion and the embedding of the ad
context (query, bid word, selling points by default; field names configurable) under a sentence-transformers
embedder: ``builtin:minilm-l6`` (all-MiniLM-L6-v2, offline) by default, any model id or folder otherwise (the
paper uses Qwen3-Embedding-0.6B). Contexts repeat across the G samples of a prompt and across epochs, so their
embeddings are kept in an LRU cache; completions are always embedded afresh.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import torch
from pydantic import Field

import rlgen

from ._text import context_text, field_text


class RelevanceReward(rlgen.RewardProvider):
    name = "relate.relevance"
    description = "Cosine similarity of completion and ad context (query, bid word, selling points) under a sentence embedder."
    granularity = "sentence"

    class Params(rlgen.Params):
        model: str = Field("builtin:minilm-l6", description="sentence-transformers model: builtin:NAME, hub id or local folder")
        context_fields: list[str] = Field(
            default_factory=lambda: ["query", "bid_word", "selling_points"],
            description="rollout.meta fields that make up the ad context (missing ones are skipped)",
        )
        combine: Literal["joined", "mean", "max"] = Field(
            "joined",
            description="joined: one embedding of all fields together; mean/max: cosine per field, then averaged / maxed",
        )
        device: str = Field("cpu", description="device of the embedder")
        batch_size: int = Field(64, ge=1, description="texts per embedder forward pass")
        trust_remote_code: bool = Field(False, description="allow custom model code (only for models you trust)")
        text_prompt_name: str | None = Field(None, description="sentence-transformers prompt name for completions")
        context_prompt_name: str | None = Field(
            None, description="sentence-transformers prompt name for contexts (e.g. 'query' for Qwen3-Embedding)"
        )
        cache_size: int = Field(50_000, ge=0, description="context embeddings kept in the LRU cache")

    def __init__(self, params: rlgen.Params | None = None) -> None:
        super().__init__(params)
        self.embedder: Any = None
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    def setup(self, context: rlgen.RunContext) -> None:
        self.load(context.resolve_model(self.params.model))

    def load(self, path: str) -> None:
        """Load the embedder from a resolved folder or model id (``setup`` resolves ``builtin:`` names first)."""
        from rlgen_plugins.models import load_embedder

        try:
            self.embedder = load_embedder(path, device=self.params.device, trust_remote_code=self.params.trust_remote_code)
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one message naming the plugin
            raise rlgen.PluginError(f"{self.name}: cannot load embedder params.model={self.params.model!r} ({path}): {exc}") from exc

    def _encode(self, texts: list[str], prompt_name: str | None) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, 0)
        emb = self.embedder.encode(
            texts,
            batch_size=self.params.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
            prompt_name=prompt_name,
        )
        return emb.detach().to("cpu", torch.float32)

    def embed_contexts(self, contexts: list[str]) -> dict[str, torch.Tensor]:
        """Unit-norm embeddings of the distinct ``contexts``, through the cache."""
        out: dict[str, torch.Tensor] = {}
        missing: list[str] = []
        for c in dict.fromkeys(contexts):
            hit = self._cache.get(c)
            if hit is None:
                missing.append(c)
            else:
                self._cache.move_to_end(c)
                out[c] = hit
        self.cache_hits += len(out)
        self.cache_misses += len(missing)
        for c, e in zip(missing, self._encode(missing, self.params.context_prompt_name)):
            out[c] = e
            if self.params.cache_size:
                self._cache[c] = e
        while len(self._cache) > self.params.cache_size:
            self._cache.popitem(last=False)
        return out

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        p = self.params
        if self.embedder is None:
            raise rlgen.PluginError(f"{self.name}: setup() was not called (the embedder is not loaded)")
        if rollout.meta is None:
            raise rlgen.PluginError(
                f"{self.name}: the rollout has no meta; relevance needs the context fields {p.context_fields}"
            )
        if p.combine == "joined":
            per_sample = [[context_text(m, p.context_fields)] for m in rollout.meta]
        else:
            per_sample = [[field_text(m.get(f)) for f in p.context_fields if m and field_text(m.get(f)).strip()] for m in rollout.meta]
        per_sample = [[c for c in cs if c.strip()] for cs in per_sample]
        table = self.embed_contexts([c for cs in per_sample for c in cs])
        texts = self._encode(rollout.texts, p.text_prompt_name)
        values = torch.zeros(rollout.batch_size, dtype=torch.float32)
        details: list[dict[str, Any]] = []
        for i, cs in enumerate(per_sample):
            if not cs:
                details.append({"context": "missing"})
                continue
            sims = torch.stack([texts[i] @ table[c] for c in cs])
            values[i] = sims.max() if p.combine == "max" else sims.mean()
            details.append({"cosine": [round(float(s), 4) for s in sims]})
        metrics = {
            "mean_cosine": float(values.mean()) if rollout.batch_size else 0.0,
            "missing_context_fraction": sum(1 for cs in per_sample if not cs) / max(rollout.batch_size, 1),
        }
        return rlgen.RewardResult(values=values, details=details, metrics=metrics)
