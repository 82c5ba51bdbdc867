"""The CTCVR model: a shared-bottom ESMM network on frozen text embeddings (paper 3.3.3).

Each field (the ad text first, then the context fields: query, ad metadata, ...) is embedded
by the frozen embedder; the feature vector is the field embeddings concatenated with the
element-wise products of every pair of them, standardised with statistics of the training
data. A shared-bottom MLP feeds two towers: CTR (click | impression) and CVR (conversion |
click). Following ESMM (Ma et al. 2018), pCTCVR = pCTR x pCVR is what the entire impression
space supervises, and it is the reward. Without conversion labels there is no CVR tower and
pCTCVR is pCTR.

On disk a model is a folder: ``config.json`` (architecture, fields, embedder spec, score
statistics) and ``model.safetensors`` (the head's weights). The embedder is referenced by its
spec, never copied, and nothing is pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import pydantic
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from rlgen import ConfigError

from .embedder import DEFAULT_EMBEDDER, FrozenEmbedder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "rlgen-relate/ctcvr-esmm"
FORMAT_VERSION = 1


class CtcvrConfig(pydantic.BaseModel):
    """Everything needed to rebuild a trained model besides its weights."""

    model_config = pydantic.ConfigDict(extra="forbid")

    format: str = Field(FORMAT, description="file format tag, checked on load")
    format_version: int = Field(FORMAT_VERSION, description="file format version, checked on load")
    embedder: str = Field(DEFAULT_EMBEDDER, description="sentence-transformers model id, folder, or builtin:NAME")
    embedder_pooling: Literal["sentence", "layer_mean"] = Field(
        "sentence", description="the embedder's own sentence embedding, or the mean over its layers' mean-pooled states"
    )
    embedding_dim: int = Field(..., ge=1, description="dimension of the embedder's sentence embeddings")
    text_field: str = Field("text", description="name of the ad-text field (the generated text at reward time)")
    context_fields: list[str] = Field(default_factory=list, description="context fields (query, ad metadata, ...)")
    interactions: bool = Field(True, description="append element-wise products of every pair of field embeddings")
    feature_scaling: Literal["block", "feature"] = Field(
        "block", description="standardise each field/product block as a whole, or every feature on its own"
    )
    hidden: list[int] = Field(default_factory=lambda: [256], description="shared-bottom MLP widths")
    tower_hidden: list[int] = Field(default_factory=lambda: [64], description="CTR and CVR tower MLP widths")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout after every hidden layer")
    has_cvr: bool = Field(True, description="whether a CVR tower exists (False: trained on clicks only)")
    members: int = Field(1, ge=1, description="ensemble members whose logits are averaged (bagged at training)")
    score_stats: dict[str, float] = Field(
        default_factory=dict,
        description="mean/std of log pCTCVR over the training rows (for the reward's 'standardised' scale)",
    )
    train_summary: dict[str, Any] = Field(default_factory=dict, description="how the model was trained (informative)")

    @property
    def fields(self) -> list[str]:
        return [self.text_field, *self.context_fields]

    @property
    def feature_dim(self) -> int:
        n = len(self.fields)
        pairs = n * (n - 1) // 2 if self.interactions else 0
        return (n + pairs) * self.embedding_dim


def build_features(embeddings: Sequence[torch.Tensor], interactions: bool = True) -> torch.Tensor:
    """[N, F] features: the field embeddings, then the products of each pair of them (i < j)."""
    parts = list(embeddings)
    if interactions:
        for i in range(len(embeddings)):
            for j in range(i + 1, len(embeddings)):
                parts.append(embeddings[i] * embeddings[j])
    return torch.cat(parts, dim=-1)


def _mlp(sizes: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


@dataclass
class EsmmOutput:
    """Logits of one batch; probabilities derive from them (ESMM: pCTCVR = pCTR x pCVR)."""

    ctr_logit: torch.Tensor  # [N]
    cvr_logit: torch.Tensor | None  # [N], None without a CVR tower

    @property
    def log_pctr(self) -> torch.Tensor:
        return F.logsigmoid(self.ctr_logit)

    @property
    def log_pctcvr(self) -> torch.Tensor:
        if self.cvr_logit is None:
            return self.log_pctr
        return F.logsigmoid(self.ctr_logit) + F.logsigmoid(self.cvr_logit)

    @property
    def pctr(self) -> torch.Tensor:
        return torch.sigmoid(self.ctr_logit)

    @property
    def pcvr(self) -> torch.Tensor:
        if self.cvr_logit is None:
            return torch.ones_like(self.ctr_logit)
        return torch.sigmoid(self.cvr_logit)

    @property
    def pctcvr(self) -> torch.Tensor:
        if self.cvr_logit is None:
            return self.pctr
        return self.pctr * self.pcvr  # ESMM: pCTCVR = pCTR x pCVR


class EsmmNet(nn.Module):
    """Shared bottom + CTR tower (+ CVR tower) over precomputed field embeddings."""

    def __init__(self, config: CtcvrConfig) -> None:
        super().__init__()
        self.config = config
        f = config.feature_dim
        # standardisation of the features, fitted on the training data (see fit_standardizer)
        self.register_buffer("feature_mean", torch.zeros(f))
        self.register_buffer("feature_std", torch.ones(f))
        self.bottom = _mlp([f, *config.hidden], config.dropout)
        width = config.hidden[-1] if config.hidden else f
        self.ctr_tower = nn.Sequential(_mlp([width, *config.tower_hidden], config.dropout),
                                       nn.Linear(config.tower_hidden[-1] if config.tower_hidden else width, 1))
        self.cvr_tower: nn.Module | None = None
        if config.has_cvr:
            self.cvr_tower = nn.Sequential(_mlp([width, *config.tower_hidden], config.dropout),
                                           nn.Linear(config.tower_hidden[-1] if config.tower_hidden else width, 1))

    def features(self, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(embeddings) != len(self.config.fields):
            raise ValueError(f"expected embeddings of {self.config.fields}, got {len(embeddings)} tensors")
        return build_features(embeddings, self.config.interactions)

    @torch.no_grad()
    def fit_standardizer(self, features: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Set the feature mean/scale from training features [N, F] (optionally row-weighted).

        ``feature_scaling='block'`` divides each block (one field's embedding, or one product of
        two fields) by its overall spread, keeping the geometry inside the block: weak
        directions stay weak, as in the embedding space itself. ``'feature'`` gives every
        dimension unit variance, which also amplifies the noisy low-variance ones.
        """
        w = torch.ones(features.shape[0]) if weights is None else weights.float()
        w = (w / w.sum()).to(features.device)
        mean = (features * w[:, None]).sum(0)
        std = (((features - mean) ** 2) * w[:, None]).sum(0).sqrt()
        if self.config.feature_scaling == "block":
            d = self.config.embedding_dim
            blocks = std.view(-1, d)
            std = blocks.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-6).expand_as(blocks).reshape(-1)
        else:
            # near-constant features (some embedders have dead dimensions) must not be blown up
            std = std.clamp_min(max(1e-6, 1e-2 * float(std.median())))
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def forward(self, features: torch.Tensor) -> EsmmOutput:
        h = self.bottom((features - self.feature_mean) / self.feature_std)
        ctr = self.ctr_tower(h).squeeze(-1)
        cvr = self.cvr_tower(h).squeeze(-1) if self.cvr_tower is not None else None
        return EsmmOutput(ctr, cvr)


class EsmmEnsemble(nn.Module):
    """``config.members`` ESMM networks whose CTR and CVR logits are averaged.

    With one member this is exactly one :class:`EsmmNet`. Members trained on bootstrap samples
    of the logs (bagging) disagree where the data are thin; averaging them gives a steadier
    ranking and a reward that is harder for a policy to exploit.
    """

    def __init__(self, config: CtcvrConfig) -> None:
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(EsmmNet(config) for _ in range(config.members))

    @property
    def feature_mean(self) -> torch.Tensor:
        return self.members[0].feature_mean

    def features(self, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.members[0].features(embeddings)

    def forward(self, features: torch.Tensor) -> EsmmOutput:
        outs = [m(features) for m in self.members]
        ctr = torch.stack([o.ctr_logit for o in outs]).mean(0)
        cvr = torch.stack([o.cvr_logit for o in outs]).mean(0) if outs[0].cvr_logit is not None else None
        return EsmmOutput(ctr, cvr)


@dataclass
class Predictions:
    """Per-row predictions as plain tensors [N]."""

    pctr: torch.Tensor
    pcvr: torch.Tensor
    pctcvr: torch.Tensor
    log_pctr: torch.Tensor
    log_pctcvr: torch.Tensor


class CtcvrModel:
    """A trained ESMM head plus the frozen embedder it was trained on; scores raw text.

    Args:
        config: the model's :class:`CtcvrConfig`.
        net: the :class:`EsmmEnsemble` (weights loaded).
        embedder: a :class:`FrozenEmbedder`; created lazily from ``config.embedder`` if omitted.
    """

    def __init__(self, config: CtcvrConfig, net: EsmmEnsemble, embedder: FrozenEmbedder | None = None) -> None:
        self.config = config
        self.net = net.eval()
        self._embedder = embedder

    @property
    def embedder(self) -> FrozenEmbedder:
        if self._embedder is None:
            self._embedder = FrozenEmbedder(self.config.embedder, pooling=self.config.embedder_pooling)
        return self._embedder

    # -- persistence ----------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
        (out / CONFIG_FILE).write_text(json.dumps(self.config.model_dump(), indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        embedder: FrozenEmbedder | None = None,
        embedder_spec: str | None = None,
        resolver: Callable[[str], str] | None = None,
        device: str = "cpu",
        embed_batch_size: int = 64,
    ) -> "CtcvrModel":
        """Load a model folder written by :meth:`save`.

        Args:
            embedder: an already loaded embedder to share (must match the saved dimension).
            embedder_spec: load this embedder instead of the saved spec (same model, other place).
            resolver: resolves ``builtin:`` embedder names (``RunContext.resolve_model``).
        """
        from safetensors.torch import load_file

        folder = Path(directory)
        cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise ConfigError(f"{folder} is not a CTCVR model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        try:
            config = CtcvrConfig.model_validate_json(cfg_path.read_text(encoding="utf-8"))
        except pydantic.ValidationError as exc:
            raise ConfigError(f"{cfg_path}: invalid CTCVR config: {exc}") from exc
        if config.format != FORMAT or config.format_version > FORMAT_VERSION:
            raise ConfigError(f"{cfg_path}: format {config.format} v{config.format_version} is not readable here")
        net = EsmmEnsemble(config)
        try:
            net.load_state_dict(load_file(str(w_path), device="cpu"), strict=True)
        except RuntimeError as exc:  # missing, extra or misshapen tensors
            raise ConfigError(f"{w_path} does not match {cfg_path}: {exc}") from exc
        net.to(device)
        if embedder is None and (embedder_spec is not None or resolver is not None):
            embedder = FrozenEmbedder(
                embedder_spec or config.embedder, pooling=config.embedder_pooling, resolver=resolver, device=device,
                batch_size=embed_batch_size,
            )
        if embedder is not None and embedder.pooling != config.embedder_pooling:
            raise ConfigError(
                f"{folder} was trained on {config.embedder_pooling!r} embeddings, the embedder given pools {embedder.pooling!r}"
            )
        if embedder is not None and embedder.dim != config.embedding_dim:
            raise ConfigError(
                f"embedder {embedder.spec!r} gives {embedder.dim}-d embeddings; {folder} was trained on "
                f"{config.embedding_dim}-d embeddings of {config.embedder!r}"
            )
        return cls(config, net, embedder)

    # -- scoring --------------------------------------------------------------------------

    @torch.no_grad()
    def predict_embeddings(self, embeddings: Sequence[torch.Tensor], batch_size: int = 1024) -> Predictions:
        """Predictions from field embeddings (ad text first, then the context fields)."""
        self.net.eval()
        device = self.net.feature_mean.device
        outs: list[EsmmOutput] = []
        n = embeddings[0].shape[0]
        for s in range(0, n, batch_size):
            feats = self.net.features([e[s : s + batch_size].to(device) for e in embeddings])
            outs.append(self.net(feats))
        ctr = torch.cat([o.ctr_logit for o in outs]).cpu() if outs else torch.zeros(0)
        cvr = torch.cat([o.cvr_logit for o in outs]).cpu() if outs and outs[0].cvr_logit is not None else None
        out = EsmmOutput(ctr, cvr)
        return Predictions(out.pctr, out.pcvr, out.pctcvr, out.log_pctr, out.log_pctcvr)

    def predict(self, texts: Sequence[str], contexts: Sequence[Mapping[str, Any]] | None = None) -> Predictions:
        """Score ad texts; ``contexts[i]`` holds the context fields of text i."""
        embeddings = [self.embedder.encode(list(texts))]
        for name in self.config.context_fields:
            if contexts is None:
                raise ValueError(f"this model needs the context fields {self.config.context_fields}")
            values = []
            for i, ctx in enumerate(contexts):
                if name not in ctx:
                    raise KeyError(f"context of row {i} lacks the field {name!r}")
                values.append(str(ctx[name]))
            embeddings.append(self.embedder.encode(values))
        return self.predict_embeddings(embeddings)
