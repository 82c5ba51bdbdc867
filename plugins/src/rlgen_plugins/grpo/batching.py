"""From a rollout to model inputs: prompt + completion, position ids, micro-batches.

A rollout holds left-padded prompts and right-padded completions. Concatenated, every real
token must see the same positions it had when it was sampled, so position ids count real
tokens only (padding on the left would otherwise shift them). The model then runs on
micro-batches, each trimmed to its own real columns, and only the completion tokens' log-probs
are kept.

Ranks must run the same number of forward/backward passes (ZeRO-2 reduces gradients inside
every backward, ZeRO-3 gathers parameters inside every forward), so the number of
micro-batches per mini-batch is agreed across ranks, and a rank with fewer rows runs
zero-weight passes instead of skipping them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlgen import PluginError, Rollout


@dataclass
class PolicyBatch:
    """A whole (local) rollout as model inputs, on CPU."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T] long
    position_ids: torch.Tensor  # [B, P + T]
    prompt_len: int  # P
    completion_ids: torch.Tensor  # [B, T]
    completion_mask: torch.Tensor  # [B, T] bool
    advantages: torch.Tensor  # [B, T] float32

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_completion_tokens(self) -> int:
        return int(self.completion_mask.sum())

    @property
    def num_tokens(self) -> int:
        """Real (prompt + completion) tokens, the unit of the trainer's tokens/s."""
        return int(self.attention_mask.sum())

    def micro(self, rows: torch.Tensor) -> "MicroBatch":
        """The rows ``rows`` as a micro-batch, trimmed to the columns any of them uses."""
        return MicroBatch.from_rows(self, rows)


@dataclass
class MicroBatch:
    """Model inputs for some rows of a :class:`PolicyBatch`, trimmed to their real columns."""

    rows: torch.Tensor  # indices into the PolicyBatch
    input_ids: torch.Tensor  # [b, p + t]
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor  # [b, t] completion ids
    mask: torch.Tensor  # [b, t] bool
    advantages: torch.Tensor  # [b, t]
    width: int  # t: completion columns kept (columns past it are padding in every row)

    @classmethod
    def from_rows(cls, batch: PolicyBatch, rows: torch.Tensor) -> "MicroBatch":
        p = batch.prompt_len
        prompt_mask = batch.attention_mask[rows, :p].bool()
        comp_mask = batch.completion_mask[rows]
        used_prompt = prompt_mask.any(0).nonzero()
        # left padding shared by every row carries no information: drop it
        first = int(used_prompt[0]) if used_prompt.numel() else 0
        used_comp = comp_mask.any(0).nonzero()
        # keep at least one completion column so the pass exists (and its collectives run)
        width = int(used_comp[-1]) + 1 if used_comp.numel() else 1
        cols = slice(first, p + width)
        return cls(
            rows=rows,
            input_ids=batch.input_ids[rows, cols],
            attention_mask=batch.attention_mask[rows, cols],
            position_ids=batch.position_ids[rows, cols],
            targets=batch.completion_ids[rows, :width],
            mask=comp_mask[:, :width],
            advantages=batch.advantages[rows, :width],
            width=width,
        )

    def to(self, device: torch.device | str) -> "MicroBatch":
        return MicroBatch(
            rows=self.rows,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            position_ids=self.position_ids.to(device),
            targets=self.targets.to(device),
            mask=self.mask.to(device),
            advantages=self.advantages.to(device),
            width=self.width,
        )


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only: 0 at each row's first real token (left padding safe)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def build_policy_batch(rollout: Rollout, advantages: torch.Tensor, *, plugin: str) -> PolicyBatch:
    """Concatenate left-padded prompts and right-padded completions of ``rollout``.

    Raises:
        PluginError naming ``plugin`` when the rollout has no prompt tokens, or a row has an
        empty prompt (nothing would predict its first completion token).
    """
    if rollout.prompt_ids is None:
        raise PluginError(
            f"trainer '{plugin}' needs rollout.prompt_ids (the tokens the completions were sampled from); "
            "use a sampler that fills them"
        )
    prompt_ids = rollout.prompt_ids.long()
    prompt_mask = (
        rollout.prompt_mask.bool() if rollout.prompt_mask is not None else torch.ones_like(prompt_ids, dtype=torch.bool)
    )
    if prompt_ids.shape[1] == 0 or not bool(prompt_mask.any(1).all()):
        raise PluginError(f"trainer '{plugin}': every rollout row needs at least one prompt token")
    if tuple(advantages.shape) != tuple(rollout.completion_ids.shape):
        raise PluginError(
            f"trainer '{plugin}': advantages {tuple(advantages.shape)} do not match completions "
            f"{tuple(rollout.completion_ids.shape)}"
        )
    comp_mask = rollout.completion_mask.bool()
    input_ids = torch.cat([prompt_ids, rollout.completion_ids.long()], dim=1)
    attention_mask = torch.cat([prompt_mask, comp_mask], dim=1).long()
    return PolicyBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        prompt_len=int(prompt_ids.shape[1]),
        completion_ids=rollout.completion_ids.long(),
        completion_mask=comp_mask,
        # advantages are zero on padding by contract; the mask makes sure of it
        advantages=advantages.float() * comp_mask.float(),
    )


def split_rows(indices: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """``parts`` contiguous chunks of ``indices`` whose sizes differ by at most one (some may be empty)."""
    return list(torch.tensor_split(indices, parts))


def micro_batch_count(rows: int, micro_batch_size: int) -> int:
    """Passes needed for ``rows`` rows at ``micro_batch_size`` rows per pass (at least one)."""
    return max(1, -(-rows // micro_batch_size))
