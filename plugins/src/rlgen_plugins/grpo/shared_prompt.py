"""Forward each distinct prompt of a micro-batch once and let its G completions reuse its KV cache.

The G samples of a group share their prompt, yet a plain forward over prompt + completion
computes that prompt G times (in the pi_old and reference passes, the policy forward and its
backward). Here a micro-batch's distinct prompts run first, keeping their key/value cache (with
grad when training: the prompt's activations are shared, and their gradients sum the
contributions of every completion that attends to them); the cache is then expanded to the rows
and the completions run on top of it. Attention sees the same keys at the same positions as in
the concatenated forward, so the log-probs are the same up to float rounding (the reductions
run over different shapes).

Rows are matched by their prompt tokens, not by ``Rollout.group``: a micro-batch that splits a
group simply holds fewer copies of that prompt, and two groups with the same prompt share it.

Distinct prompts often share a beginning too (a few-shot template: the RELATE preset's 155-token
prompts share their first 117 tokens). When they share at least ``MIN_SHARED_PREFIX`` tokens, that
prefix runs once for the whole micro-batch, each prompt's remainder runs on its cache, and the
completions run on theirs: three passes where the cache layout is [prefix | remainder, padded on
its left | completion]. Padding in the middle is masked and positions count real tokens, so every
query sees the keys and positions it sees in the concatenated forward.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from ..models import hf_model
from ..prompt_prefix import shared_prefix_length, split_prefix
from .batching import PolicyBatch


@dataclass
class SharedPromptMicroBatch:
    """Some rows of a :class:`PolicyBatch` as distinct prompts plus the completions that continue them.

    Without a shared prefix ``prompt_ids`` are the whole distinct prompts; with one (``prefix_ids``
    of length L), the rest of each prompt, and ``prompt_mask`` spans prefix and rest.
    """

    rows: torch.Tensor  # indices into the PolicyBatch
    prefix_ids: torch.Tensor | None  # [1, L] the tokens every distinct prompt starts with, or None
    prompt_ids: torch.Tensor  # [u, p - L] distinct prompts (after the prefix), left-padded, trimmed to used columns
    prompt_mask: torch.Tensor  # [u, p] long: prefix (all ones) and the rest
    prompt_positions: torch.Tensor  # [u, p - L]
    prompt_of_row: torch.Tensor  # [b] index into the u prompts
    completion_inputs: torch.Tensor  # [b, t - 1]: the last kept completion token predicts nothing we keep
    attention_mask: torch.Tensor  # [b, p + t - 1] long, prompt padding masked
    completion_positions: torch.Tensor  # [b, t - 1], continuing each row's prompt
    targets: torch.Tensor  # [b, t] completion ids
    mask: torch.Tensor  # [b, t] bool
    advantages: torch.Tensor  # [b, t]
    width: int  # t

    @classmethod
    def from_rows(cls, batch: PolicyBatch, rows: torch.Tensor) -> "SharedPromptMicroBatch":
        full = batch.micro(rows)  # the concatenated layout, already trimmed to the rows' real columns
        p = full.input_ids.shape[1] - full.width
        prompt_ids, prompt_mask = full.input_ids[:, :p], full.attention_mask[:, :p]
        # padding ids carry nothing (they are masked): rows are the same prompt when real tokens and mask agree
        key = torch.cat([prompt_ids * prompt_mask, prompt_mask], dim=1)
        distinct, prompt_of_row = torch.unique(key, dim=0, return_inverse=True)
        first_row = torch.zeros(len(distinct), dtype=torch.long).scatter_reduce(
            0, prompt_of_row, torch.arange(len(rows)), "amin", include_self=False
        )
        end = p + full.width - 1
        prompt_ids, prompt_mask = prompt_ids[first_row], prompt_mask[first_row]
        prompt_positions = full.position_ids[first_row, :p]
        attention_mask = full.attention_mask[:, :end]
        prefix_ids = None
        length = shared_prefix_length(prompt_ids, prompt_mask)
        if length:
            prefix_ids, prompt_ids, prompt_mask, prompt_positions = split_prefix(prompt_ids, prompt_mask, length)
            attention_mask = torch.cat([prompt_mask[prompt_of_row], attention_mask[:, p:]], dim=1)
        return cls(
            rows=rows,
            prefix_ids=prefix_ids,
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            prompt_positions=prompt_positions,
            prompt_of_row=prompt_of_row,
            completion_inputs=full.input_ids[:, p:end],
            attention_mask=attention_mask,
            completion_positions=full.position_ids[:, p:end],
            targets=full.targets,
            mask=full.mask,
            advantages=full.advantages,
            width=full.width,
        )

    def to(self, device: torch.device | str) -> "SharedPromptMicroBatch":
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) and k != "rows" else v for k, v in vars(self).items()}
        return SharedPromptMicroBatch(**moved)


def cache_keyword(model: torch.nn.Module) -> str | None:
    """The keyword the causal LM under ``model`` (a PEFT wrapper or not) takes its KV cache by, None if it takes none.

    transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name is deprecated).
    """
    parameters = inspect.signature(type(hf_model(model)).forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return None


def shared_prompt_logits(module: Any, mb: SharedPromptMicroBatch, keyword: str) -> torch.Tensor:
    """Logits [b, t, V] where position k predicts completion token k, as the concatenated forward gives them.

    ``module`` is anything called like the HF model (the DeepSpeed engine, a PEFT model, the
    reference model); ``keyword`` is what :func:`cache_keyword` found for it.
    """
    shared: dict[str, Any] = {}
    if mb.prefix_ids is not None:
        length = mb.prefix_ids.shape[1]
        prefix = module(
            input_ids=mb.prefix_ids, attention_mask=mb.prompt_mask[:1, :length],
            position_ids=torch.arange(length, device=mb.prefix_ids.device)[None], use_cache=True, logits_to_keep=1,
        )
        cache = prefix["cache"] if "cache" in prefix else prefix["past_key_values"]
        cache.batch_select_indices(torch.zeros(mb.prompt_ids.shape[0], dtype=torch.long, device=mb.prefix_ids.device))
        shared = {keyword: cache}
    prompt = module(
        input_ids=mb.prompt_ids, attention_mask=mb.prompt_mask, position_ids=mb.prompt_positions,
        use_cache=True, logits_to_keep=1, **shared,
    )
    # a prompt's last position is real (prompts are left-padded): it predicts completion token 0
    first = prompt.logits[mb.prompt_of_row]
    if mb.width == 1:
        return first
    cache = prompt["cache"] if "cache" in prompt else prompt["past_key_values"]
    # indexing builds a new tensor per layer inside the graph: gradients flow back to the shared prompt
    cache.batch_select_indices(mb.prompt_of_row)
    rest = module(
        input_ids=mb.completion_inputs, attention_mask=mb.attention_mask, position_ids=mb.completion_positions,
        use_cache=True, **{keyword: cache},
    )
    return torch.cat([first, rest.logits], dim=1)
