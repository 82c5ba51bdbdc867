"""The ``relate.ctcvr`` reward: predicted CTCVR of each generated text (paper 3.3.3).

A trained CTCVR model (``rlgen-relate ctcvr train``) scores every completion together with
its prompt's context fields, read from ``rollout.meta[i]``. Completions are embedded once per
step; context fields repeat across the G samples of a prompt and across steps, so their
embeddings are kept in a bounded cache. The reward is sentence-level: one value per text.

Scales: ``raw`` is the probability itself, ``log`` its logarithm (differences become ratios,
which keeps a 1% -> 2% improvement as visible as 10% -> 20%), ``standardised`` the log
z-scored with the training data's mean and spread, so its size is comparable to other
rewards whatever the base rate.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

import rlgen
from rlgen import field_text
from rlgen import PluginError

from .embedder import FrozenEmbedder
from .model import CtcvrModel


class CtcvrReward(rlgen.RewardProvider):
    """Sentence-level reward from a trained shared-bottom ESMM model."""

    name = "relate.ctcvr"
    description = "predicted CTCVR (pCTR x pCVR) of each text from a trained ESMM model on frozen text embeddings"
    granularity = "sentence"

    class Params(rlgen.Params):
        model: str = Field(..., description="folder of a trained CTCVR model (written by `rlgen-relate ctcvr train --out`)")
        embedder: str | None = Field(
            None, description="embedder to load instead of the one saved with the model (the same model elsewhere)"
        )
        context_fields: dict[str, str] = Field(
            default_factory=dict,
            description="model context field -> key in the prompt's meta; fields not listed use their own name",
        )
        target: Literal["ctcvr", "ctr"] = Field(
            "ctcvr", description="which prediction is the reward (a CTR-only model gives pCTR for both)"
        )
        scale: Literal["raw", "log", "standardised"] = Field(
            "raw", description="raw probability, its log, or the log standardised with training statistics"
        )
        batch_size: int = Field(64, ge=1, description="texts per embedder forward pass")
        context_cache_size: int = Field(4096, ge=0, description="how many context-field embeddings to keep")
        device: str = Field("auto", description="torch device for the embedder and the model: cpu, cuda, cuda:N, "
                            "or auto (cuda when available)")

    def __init__(self, params: rlgen.Params | None = None) -> None:
        super().__init__(params)
        self.model: CtcvrModel | None = None
        self._ctx_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def setup(self, context: rlgen.RunContext) -> None:
        p = self.params
        folder = Path(p.model).expanduser()
        try:
            self.model = CtcvrModel.load(
                folder,
                embedder_spec=p.embedder,
                resolver=context.resolve_model,
                device=p.device if p.device != "auto" else rlgen.detect_compute(device="auto").device,
                embed_batch_size=p.batch_size,
            )
        except rlgen.RlgenError as exc:
            raise PluginError(f"reward '{self.name}' (params.model={p.model!r}): {exc}") from exc
        unknown = sorted(set(p.context_fields) - set(self.model.config.context_fields))
        if unknown:
            raise PluginError(
                f"reward '{self.name}': params.context_fields names {unknown}, but the model's context fields are "
                f"{self.model.config.context_fields}"
            )
        stats = self.model.config.score_stats
        key = "log_pctcvr" if p.target == "ctcvr" else "log_pctr"
        if p.scale == "standardised" and f"{key}_mean" not in stats:
            raise PluginError(f"reward '{self.name}': params.scale='standardised' needs score statistics, which {folder} lacks")

    # -- embeddings -----------------------------------------------------------------------

    def _context_embeddings(self, embedder: FrozenEmbedder, values: list[str]) -> torch.Tensor:
        missing = [v for v in dict.fromkeys(values) if v not in self._ctx_cache]
        if missing:
            for v, e in zip(missing, embedder.encode(missing, cache=False)):
                self._ctx_cache[v] = e
        out = torch.stack([self._ctx_cache[v] for v in values])
        for v in dict.fromkeys(values):
            self._ctx_cache.move_to_end(v)
        while len(self._ctx_cache) > self.params.context_cache_size:
            self._ctx_cache.popitem(last=False)
        return out

    # -- scoring --------------------------------------------------------------------------

    def score(self, rollout: rlgen.Rollout) -> rlgen.RewardResult:
        if self.model is None:
            raise PluginError(f"reward '{self.name}' was not set up (call setup(context) first)")
        model, p = self.model, self.params
        embedder = model.embedder
        embeddings = [embedder.encode(list(rollout.texts), cache=False)]
        for field in model.config.context_fields:
            key = p.context_fields.get(field, field)
            values = []
            for i in range(rollout.batch_size):
                meta = rollout.meta[i] if rollout.meta is not None else {}
                if key not in meta or meta[key] is None:
                    raise PluginError(
                        f"reward '{self.name}': sample {i} has no meta field {key!r} (model context field {field!r}); "
                        "add it to the prompt records or map it with params.context_fields"
                    )
                values.append(field_text(meta[key]))
            embeddings.append(self._context_embeddings(embedder, values))
        pred = model.predict_embeddings(embeddings)
        if p.target == "ctr":
            prob, logp, key = pred.pctr, pred.log_pctr, "log_pctr"
        else:
            prob, logp, key = pred.pctcvr, pred.log_pctcvr, "log_pctcvr"
        if p.scale == "raw":
            values = prob
        elif p.scale == "log":
            values = logp
        else:
            stats = model.config.score_stats
            values = (logp - stats[f"{key}_mean"]) / stats[f"{key}_std"]
        details = [
            {"pctr": float(a), "pcvr": float(b), "pctcvr": float(c)}
            for a, b, c in zip(pred.pctr, pred.pcvr, pred.pctcvr)
        ]
        metrics = {"pctr_mean": float(pred.pctr.mean()), "pctcvr_mean": float(pred.pctcvr.mean())}
        return rlgen.RewardResult(values=values.float(), details=details, metrics=metrics)

    def close(self) -> None:
        self.model = None
        self._ctx_cache.clear()


@rlgen.hookimpl
def rlgen_reward_providers():
    return [CtcvrReward]
