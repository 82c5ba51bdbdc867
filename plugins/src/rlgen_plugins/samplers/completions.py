"""From generated token ids to what rewards see: lengths, texts, masks and character offsets.

Kept apart from the model code so the bookkeeping (where a completion ends, which tokens a
post-processor removed, where each token sits in the final text) can be reasoned about and
tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

import rlgen

from .postprocess import PostProcessor, apply_chain


@dataclass
class Completion:
    """One assembled completion (ids up to its end; offsets into ``text``)."""

    ids: list[int]
    mask: list[bool]
    offsets: list[tuple[int, int]]
    text: str
    raw_text: str
    finish_reason: str  # eos | stop | length


def _clip(span: tuple[int, int], start: int, length: int) -> tuple[int, int]:
    a = min(max(span[0] - start, 0), length)
    b = min(max(span[1] - start, 0), length)
    return a, max(a, b)


def assemble(
    tokenizer: Any,
    ids: Sequence[int],
    generated: int,
    eos_ids: set[int],
    stop: Sequence[str] = (),
    include_stop_str: bool = False,
    processors: Sequence[PostProcessor] = (),
    max_new_tokens: int | None = None,
) -> Completion:
    """Cut one generated row at its end and map it to the text rewards will judge.

    Args:
        tokenizer: the sampler's tokenizer (decodes with special tokens skipped).
        ids: the row's generated ids (padding after its end is ignored).
        generated: how many of ``ids`` the model really produced before ``generate`` finished the row.
        eos_ids: token ids that end a completion; the first one is kept (mask covers it).
        stop: stop strings; the completion ends with the token that completes the first one.
        include_stop_str: keep the stop string in the text (default: cut it off, as vLLM does).
        processors: post-processors applied in order to the text.
        max_new_tokens: the generation budget, to tell a length cut from an early stop.

    The mask covers every token up to and including the first EOS (or the token completing a
    stop string), minus tokens whose text a post-processor removed entirely. Offsets are
    ``[start, end)`` into the final text; removed, EOS and stop tokens get an empty span.
    """
    ids = list(ids)[:generated]
    n, reason = len(ids), "length"
    for k, tok in enumerate(ids):
        if tok in eos_ids:
            n, reason = k + 1, "eos"
            break
    ids = ids[:n]
    offsets = rlgen.token_char_offsets(tokenizer, ids)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cut = len(text)
    if stop:
        hits = [(text.find(s), s) for s in stop if s and s in text]
        if hits:
            pos, s = min(hits)
            end = pos + len(s)
            # the token that completes the stop string is the generation's last
            last = next(k for k, (_, b) in enumerate(offsets) if b >= end)
            n, reason = last + 1, "stop"
            ids, offsets = ids[:n], offsets[:n]
            cut = end if include_stop_str else pos
    if reason == "length" and max_new_tokens is not None and generated < max_new_tokens:
        reason = "stop"  # generate finished the row early for a reason of its own (a stop criterion)
    raw_text = text[:cut]
    start, end = apply_chain(list(processors), raw_text)
    final = raw_text[start:end]
    mask, new_offsets = [], []
    for a, b in offsets:
        # a token with text before the stop cut but none inside the kept slice was removed
        removed = b > a and a < cut and (b <= start or a >= end)
        mask.append(not removed)
        new_offsets.append((0, 0) if removed else _clip((a, b), start, len(final)))
    return Completion(ids=ids, mask=mask, offsets=new_offsets, text=final, raw_text=raw_text, finish_reason=reason)


def stack(completions: Sequence[Completion], logprobs: torch.Tensor, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad completions into ``completion_ids`` / ``completion_mask`` / ``token_offsets`` / ``logprobs``."""
    b = len(completions)
    t = max((len(c.ids) for c in completions), default=0)
    ids = torch.full((b, t), int(pad_id), dtype=torch.long)
    mask = torch.zeros(b, t, dtype=torch.bool)
    offsets = torch.zeros(b, t, 2, dtype=torch.long)
    lp = torch.zeros(b, t, dtype=torch.float32)
    for i, c in enumerate(completions):
        n = len(c.ids)
        if n == 0:
            continue
        ids[i, :n] = torch.tensor(c.ids, dtype=torch.long)
        mask[i, :n] = torch.tensor(c.mask, dtype=torch.bool)
        offsets[i, :n] = torch.tensor(c.offsets, dtype=torch.long)
        lp[i, :n] = logprobs[i, :n].float()
    lp = lp * mask.float()
    return {"completion_ids": ids, "completion_mask": mask, "token_offsets": offsets, "logprobs": lp}


@dataclass
class EncodedPrompts:
    """The distinct prompts of a batch, rendered and left-padded, and their G-fold repetition."""

    rendered: list[str]
    input_ids: torch.Tensor  # [P, L], one row per distinct prompt
    attention_mask: torch.Tensor  # [P, L]
    group_size: int

    @property
    def prompt_ids(self) -> torch.Tensor:
        """[P * G, L]: row k * G + g is sample g of prompt k."""
        return self.input_ids.repeat_interleave(self.group_size, dim=0)

    @property
    def prompt_mask(self) -> torch.Tensor:
        return self.attention_mask.repeat_interleave(self.group_size, dim=0).bool()


def encode_prompts(tokenizer: Any, rendered: list[str], group_size: int, chat: bool, **tokenizer_args: Any) -> EncodedPrompts:
    """Tokenise rendered prompts (left padding is the tokenizer's); a chat template brings its own special tokens.

    ``tokenizer_args`` go to the tokenizer call (e.g. truncation to ``data.max_prompt_tokens``).
    """
    enc = tokenizer(rendered, padding=True, return_tensors="pt", add_special_tokens=not chat, **tokenizer_args)
    return EncodedPrompts(rendered, enc["input_ids"], enc["attention_mask"], group_size)


def build_rollout(
    prompts: Sequence[rlgen.Prompt],
    encoded: EncodedPrompts,
    completions: Sequence[Completion],
    logprobs: torch.Tensor,
    *,
    pad_id: int,
    temperature: float,
    extras: dict[str, Any],
) -> rlgen.Rollout:
    """The :class:`rlgen.Rollout` every sampler hands over, whatever engine generated the completions.

    ``temperature`` is the sampling temperature (0: greedy, recorded as 1.0, the temperature the
    greedy log-probs are taken at); ``extras`` adds engine-specific entries to the raw texts and
    finish reasons every sampler reports.
    """
    g = encoded.group_size
    return rlgen.Rollout(
        texts=[c.text for c in completions],
        group=torch.arange(len(prompts)).repeat_interleave(g),
        prompt_ids=encoded.prompt_ids,
        prompt_mask=encoded.prompt_mask,
        prompt_texts=[r for r in encoded.rendered for _ in range(g)],
        meta=[dict(pr.meta) for pr in prompts for _ in range(g)],
        temperature=temperature if temperature > 0 else 1.0,
        extras={"raw_texts": [c.raw_text for c in completions],
                "finish_reason": [c.finish_reason for c in completions], **extras},
        **stack(completions, logprobs, pad_id),
    )
