"""The beginning that several left-padded prompts share, so it can run through the model once.

Prompts built from one template (few-shot examples, a system prompt) start with the same tokens:
the RELATE preset's 155-token prompts share their first 117. The ``grpo`` trainer's shared-prompt
forward and the ``hf`` sampler's decode loop both run that prefix once for all prompts of a pass
and each prompt's rest on its cache. This module finds the prefix and lays the rest out.
"""

from __future__ import annotations

import torch

#: the shortest shared beginning that gets a pass of its own: a shorter one saves less than the extra pass and its
#: smaller matrix shapes cost. Measured with 2 prompts a pass at 2 threads: ../shared/bench's chat prompts (33 of
#: ~53 tokens shared) took 6% longer a step split than whole; the RELATE preset's (117 of ~155) 3% less
MIN_SHARED_PREFIX = 64


def shared_prefix_length(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> int:
    """How many leading real tokens all ``u`` left-padded prompts [u, p] share, leaving each at least one of its own
    (its last position predicts the first completion token); 0 for a single prompt or a beginning shorter than
    ``MIN_SHARED_PREFIX``, which is not worth a pass of its own."""
    if prompt_ids.shape[0] < 2:
        return 0
    lengths = prompt_mask.sum(1)
    shortest = int(lengths.min())
    # realign each prompt to start at column 0 over the shortest prompt's length, then compare with the first
    starts = prompt_ids.shape[1] - lengths
    columns = starts[:, None] + torch.arange(shortest, device=prompt_ids.device)
    heads = prompt_ids.gather(1, columns)
    same = (heads == heads[:1]).all(0)
    differ = (~same).nonzero()
    common = int(differ[0]) if differ.numel() else shortest
    length = min(common, shortest - 1)
    return length if length >= MIN_SHARED_PREFIX else 0


def split_prefix(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``length`` real tokens of left-padded prompts [u, p] as one prefix [1, L], and the rest of each
    prompt left-padded in the remaining p - L columns. Returns prefix ids, rest ids, the mask over prefix and
    rest [u, p], and the rest's positions (counting real tokens from the prefix's start)."""
    u, p = prompt_ids.shape
    lengths = prompt_mask.sum(1)
    start = int(p - lengths[0])
    prefix = prompt_ids[:1, start : start + length]
    rest_len = lengths - length  # >= 1
    width = p - length
    # a prompt and its rest have the same left padding, so the rest is the prompt shifted left by the prefix;
    # what shifts into the padding columns (pads, prefix tokens) is masked
    rest_mask = (torch.arange(width, device=prompt_ids.device) >= (width - rest_len)[:, None]).to(prompt_mask.dtype)
    rest = prompt_ids[:, length:] * rest_mask
    mask = torch.cat([torch.ones(u, length, dtype=prompt_mask.dtype, device=prompt_ids.device), rest_mask], dim=1)
    positions = length + (rest_mask.long().cumsum(1) - 1).clamp(min=0)
    return prefix, rest, mask, positions
