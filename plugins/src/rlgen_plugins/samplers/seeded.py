"""Per-sample seeded sampling inside ``transformers``' ``generate``.

``generate`` samples every row from one global RNG, so a sample's tokens would depend on the
rest of the batch. Instead this logits processor, the last in the chain, warps the scores
(temperature, top-k, top-p, repetition penalty, using transformers' own warpers), draws each
row's token with that row's own ``torch.Generator`` (Gumbel-max, exact sampling from the
warped distribution) and returns scores that allow only that token, so greedy decoding in
``generate`` emits it. On the way it records each token and its log-probability.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch


def sample_seeds(seed: int, n_prompts: int, group_size: int) -> list[int]:
    """One independent 63-bit seed per sample (prompt k, sample j), derived from ``seed`` with numpy's SeedSequence."""
    return [
        int(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, k, j]).generate_state(2, np.uint64)[0] >> 1)
        for k in range(n_prompts)
        for j in range(group_size)
    ]


class SeededSampler:
    """Sample row ``i`` with generator ``i``; record tokens and log-probs under ``softmax(logits / T)``.

    Args:
        seeds: one seed per row.
        temperature: 0 means greedy (argmax, log-probs at temperature 1).
        top_k: keep the k most likely tokens (0: off).
        top_p: nucleus sampling mass (1.0: off).
        repetition_penalty: CTRL-style penalty on tokens already in the sequence (1.0: off).

    The recorded log-probs are those of the temperature-scaled model distribution *before*
    top-k / top-p truncation and the repetition penalty: what a trainer recomputes from the
    policy's logits divided by the same temperature.
    """

    def __init__(
        self,
        seeds: list[int],
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
    ) -> None:
        # imported here so that plugin discovery does not pay for transformers' generation stack
        from transformers.generation.logits_process import (
            RepetitionPenaltyLogitsProcessor,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature = float(temperature)
        warpers: list[Callable[[Any, torch.Tensor], torch.Tensor]] = []
        if repetition_penalty != 1.0:
            warpers.append(RepetitionPenaltyLogitsProcessor(penalty=repetition_penalty))
        if top_k > 0:
            warpers.append(TopKLogitsWarper(top_k=top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=top_p))
        self.warpers = warpers
        self.tokens: list[torch.Tensor] = []  # per step: [B] sampled ids
        self.logprobs: list[torch.Tensor] = []  # per step: [B] log-probs of those ids

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """One decoding step (the ``LogitsProcessor`` protocol of transformers' ``generate``)."""
        scores = scores.float()
        t = self.temperature if self.temperature > 0 else 1.0
        scaled = scores / t
        logp = torch.log_softmax(scaled, dim=-1)
        if self.temperature > 0:
            warped = scaled
            for warp in self.warpers:
                warped = warp(input_ids, warped)
            # Gumbel-max: argmax(logits + G), G = -log(-log U), samples from softmax(logits).
            # Noise is drawn on the CPU per row, so a seed gives the same tokens on any device.
            u = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators])
            gumbel = -torch.log(-torch.log(u.clamp(min=1e-20, max=1.0 - 1e-7)))
            tokens = (warped + gumbel.to(scores.device)).argmax(dim=-1)
        else:
            tokens = scores.argmax(dim=-1)
        self.tokens.append(tokens.cpu())
        self.logprobs.append(logp.gather(1, tokens[:, None])[:, 0].cpu())
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, tokens[:, None], 0.0)
        return forced

    def sampled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, steps] sampled ids, [B, steps] their log-probs)."""
        if not self.tokens:
            return torch.zeros(len(self.generators), 0, dtype=torch.long), torch.zeros(len(self.generators), 0)
        return torch.stack(self.tokens, dim=1), torch.stack(self.logprobs, dim=1)
