"""The `Rollout` contract: what a sampler hands to rewards, combiners and trainers.

One batch of B = prompts x G completions, padded to T tokens on the right, with enough
side information (character offsets, groups, prompt metadata) for a reward to point at the
exact tokens it is about.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

Span = tuple[int, int]


@dataclass
class Rollout:
    """A batch of sampled completions.

    Required:
        texts: decoded completions, exactly the strings rewards judge.
        completion_ids: LongTensor [B, T], right-padded.
        completion_mask: BoolTensor [B, T], True on real completion tokens (up to and
            including the first EOS). It may have gaps: tokens a post-processor removed
            from the text (e.g. a leading quote) are masked out where they stand.
        group: LongTensor [B], index of the prompt each sample answers; samples of one
            prompt share a value.

    Optional:
        prompt_ids / prompt_mask: [B, P], left-padded prompt tokens (what the trainer
            conditions on).
        prompt_texts: the rendered prompts.
        meta: per-sample prompt metadata (query, bid word, selling points, ...).
        token_offsets: LongTensor [B, T, 2], character span ``[start, end)`` of each
            completion token inside ``texts[i]``; ``(0, 0)`` for padding and for tokens
            that produce no visible text.
        logprobs: FloatTensor [B, T], log-probabilities of the sampled tokens under the
            sampling policy.
        temperature: the temperature the completions were drawn at. Trainers divide the
            policy's logits by it, so their log-probs are those of the distribution the
            sampler drew from (and ``logprobs`` recorded); greedy decoding records 1.0.
        staleness: trainer steps between the weights that sampled this rollout and the
            weights the trainer updates from. The loop sets it; samplers leave it at 0.
            0 (on-policy): the sampling policy is the trainer's current one, so a trainer
            may take pi_old of Eq. 6 from its own forward pass. > 0 (``run.async_rollouts``):
            the sampling (behaviour) policy is older, ``logprobs`` are its only record, and
            a trainer must use them as pi_old.
    """

    texts: list[str]
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    group: torch.Tensor
    prompt_ids: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None
    prompt_texts: list[str] | None = None
    meta: list[dict[str, Any]] | None = None
    token_offsets: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    temperature: float = 1.0
    extras: dict[str, Any] = field(default_factory=dict)
    staleness: int = 0

    def __post_init__(self) -> None:
        self.validate()

    @property
    def batch_size(self) -> int:
        return len(self.texts)

    @property
    def num_tokens(self) -> int:
        return int(self.completion_ids.shape[1])

    def validate(self) -> None:
        """Check shapes and dtypes once, so every consumer can trust them."""
        b = len(self.texts)
        ids, mask, group = self.completion_ids, self.completion_mask, self.group
        if ids.dim() != 2 or ids.shape[0] != b:
            raise ValueError(f"Rollout.completion_ids must be [B={b}, T], got {tuple(ids.shape)}")
        if ids.dtype != torch.long:
            raise ValueError(f"Rollout.completion_ids must be int64, got {ids.dtype}")
        if mask.shape != ids.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"Rollout.completion_mask must be bool {tuple(ids.shape)}, got {mask.dtype} {tuple(mask.shape)}"
            )
        if group.shape != (b,) or group.dtype != torch.long:
            raise ValueError(f"Rollout.group must be int64 [B={b}], got {group.dtype} {tuple(group.shape)}")
        if self.meta is not None and len(self.meta) != b:
            raise ValueError(f"Rollout.meta has {len(self.meta)} entries for {b} samples")
        if self.token_offsets is not None and self.token_offsets.shape != (*ids.shape, 2):
            raise ValueError(
                f"Rollout.token_offsets must be [B, T, 2] = {(*ids.shape, 2)}, got {tuple(self.token_offsets.shape)}"
            )
        if self.logprobs is not None and self.logprobs.shape != ids.shape:
            raise ValueError(f"Rollout.logprobs must be {tuple(ids.shape)}, got {tuple(self.logprobs.shape)}")
        if not self.temperature > 0:
            raise ValueError(f"Rollout.temperature must be > 0 (greedy records 1.0), got {self.temperature}")
        if self.staleness < 0:
            raise ValueError(f"Rollout.staleness must be >= 0, got {self.staleness}")
        if self.staleness > 0 and self.logprobs is None:
            raise ValueError(f"Rollout.staleness is {self.staleness}: the behaviour policy's logprobs are required")
        if self.prompt_ids is not None and self.prompt_ids.shape[0] != b:
            raise ValueError(f"Rollout.prompt_ids must have B={b} rows, got {tuple(self.prompt_ids.shape)}")

    def spans_to_tokens(self, spans: Sequence[Sequence[Span]]) -> torch.Tensor:
        """Map per-sample character spans to the completion tokens that overlap them.

        Args:
            spans: for each sample, a list of ``(start, end)`` character spans (end
                exclusive) into ``texts[i]``.

        Returns:
            BoolTensor [B, T]: True where a real token's character range overlaps at
            least one span. A word split over several tokens marks all of them; a token
            that covers a span and its neighbouring punctuation is marked too.
        """
        if len(spans) != self.batch_size:
            raise ValueError(f"spans_to_tokens got spans for {len(spans)} samples, rollout has {self.batch_size}")
        if self.token_offsets is None:
            raise ValueError("this Rollout has no token_offsets; build it with a sampler or Rollout.from_texts")
        b, t = self.completion_ids.shape
        counts = [len(s) for s in spans]
        if not any(counts):
            return torch.zeros(b, t, dtype=torch.bool)
        starts = self.token_offsets[..., 0]
        ends = self.token_offsets[..., 1]
        nonempty = (ends > starts) & self.completion_mask
        flat = torch.tensor([sp for sample in spans for sp in sample], dtype=torch.long).view(-1, 2)
        owner = torch.repeat_interleave(torch.arange(b), torch.tensor(counts))
        # token [a, b) overlaps span [s, e) iff a < e and s < b: one [S, T] comparison for all spans at once
        overlap = (starts[owner] < flat[:, 1:]) & (flat[:, :1] < ends[owner]) & nonempty[owner]
        return torch.zeros(b, t, dtype=torch.int32).index_add_(0, owner, overlap.int()) > 0

    def select(self, rows: Sequence[int]) -> "Rollout":
        """The samples at ``rows``, in that order, with their groups renumbered 0.. by first appearance.

        Every per-sample field is kept; ``logprobs`` too, so a selection of a fresh rollout is still
        on-policy. Of ``extras``, lists with one entry per sample (a sampler's ``finish_reason``) are
        selected the same way; the others describe the whole batch and are not carried over."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        firsts: dict[int, int] = {}
        group = torch.tensor([firsts.setdefault(int(g), len(firsts)) for g in self.group[index]], dtype=torch.long)

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        return Rollout(
            texts=[self.texts[i] for i in index.tolist()], completion_ids=self.completion_ids[index],
            completion_mask=self.completion_mask[index], group=group, prompt_ids=take(self.prompt_ids),
            prompt_mask=take(self.prompt_mask),
            prompt_texts=None if self.prompt_texts is None else [self.prompt_texts[i] for i in index.tolist()],
            meta=None if self.meta is None else [self.meta[i] for i in index.tolist()],
            token_offsets=take(self.token_offsets), logprobs=take(self.logprobs), temperature=self.temperature,
            staleness=self.staleness,
            extras={key: [value[i] for i in index.tolist()] for key, value in self.extras.items()
                    if isinstance(value, list) and len(value) == self.batch_size},
        )

    @classmethod
    def concat(cls, parts: Sequence["Rollout"]) -> "Rollout":
        """One rollout of the samples of ``parts``, in order, each part's groups kept apart.

        Completions are re-padded on the right and prompts on the left (with id 0 under a False
        mask, which no consumer reads). An optional field is kept only when every part has it, and
        all parts must share one temperature and staleness."""
        if not parts:
            raise ValueError("Rollout.concat needs at least one rollout")
        temps = {p.temperature for p in parts}
        stale = {p.staleness for p in parts}
        if len(temps) > 1 or len(stale) > 1:
            raise ValueError(f"Rollout.concat: parts differ in temperature {sorted(temps)} or staleness {sorted(stale)}")
        width = max(p.num_tokens for p in parts)

        def right(ts: list[torch.Tensor], fill: Any) -> torch.Tensor:
            return torch.cat([torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]), value=fill)
                              for t in ts])

        def optional(name: str) -> list[Any] | None:
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else values

        prompt_ids, prompt_mask = optional("prompt_ids"), optional("prompt_mask")
        if prompt_ids is not None and prompt_mask is not None:
            p_width = max(t.shape[1] for t in prompt_ids)
            prompt_ids = torch.cat([torch.nn.functional.pad(t, (p_width - t.shape[1], 0), value=0) for t in prompt_ids])
            prompt_mask = torch.cat([torch.nn.functional.pad(t, (p_width - t.shape[1], 0), value=False)
                                     for t in prompt_mask])
        else:
            prompt_ids = prompt_mask = None
        offsets, logprobs = optional("token_offsets"), optional("logprobs")
        groups, base = [], 0
        for p in parts:
            groups.append(p.group + base)
            base += int(p.group.max()) + 1 if p.batch_size else 0
        texts_of = optional("prompt_texts")
        meta_of = optional("meta")
        return cls(
            texts=[t for p in parts for t in p.texts],
            completion_ids=right([p.completion_ids for p in parts], 0),
            completion_mask=right([p.completion_mask for p in parts], False),
            group=torch.cat(groups), prompt_ids=prompt_ids, prompt_mask=prompt_mask,
            prompt_texts=None if texts_of is None else [t for ts in texts_of for t in ts],
            meta=None if meta_of is None else [m for ms in meta_of for m in ms],
            token_offsets=None if offsets is None else right(offsets, 0),
            logprobs=None if logprobs is None else right(logprobs, 0.0),
            temperature=parts[0].temperature, staleness=parts[0].staleness,
        )

    @classmethod
    def from_texts(
        cls,
        tokenizer: Any,
        texts: Sequence[str],
        group: Sequence[int] | torch.Tensor,
        meta: Sequence[dict[str, Any]] | None = None,
    ) -> "Rollout":
        """Build a rollout from plain strings, so a reward can be tested without a sampler.

        ``tokenizer`` is any Hugging Face-style tokenizer: called on one string with
        ``add_special_tokens=False`` it must return ``input_ids``; if it is a fast
        tokenizer its offset mapping is used, otherwise offsets come from incremental
        decoding (:func:`token_char_offsets`).
        """
        ids_list: list[list[int]] = []
        offsets_list: list[list[Span]] = []
        for text in texts:
            try:
                enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                ids = list(enc["input_ids"])
                offs = [tuple(map(int, o)) for o in enc["offset_mapping"]]
            except (NotImplementedError, TypeError, KeyError, ValueError):
                ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
                offs = token_char_offsets(tokenizer, ids)
            ids_list.append(ids)
            offsets_list.append(offs)
        t = max((len(x) for x in ids_list), default=0)
        pad_id = getattr(tokenizer, "pad_token_id", None)
        pad_id = 0 if pad_id is None else int(pad_id)
        b = len(texts)
        ids_t = torch.full((b, t), pad_id, dtype=torch.long)
        mask = torch.zeros(b, t, dtype=torch.bool)
        offsets = torch.zeros(b, t, 2, dtype=torch.long)
        for i, (ids, offs) in enumerate(zip(ids_list, offsets_list)):
            n = len(ids)
            if n:
                ids_t[i, :n] = torch.tensor(ids, dtype=torch.long)
                mask[i, :n] = True
                offsets[i, :n] = torch.tensor(offs, dtype=torch.long)
        return cls(
            texts=list(texts),
            completion_ids=ids_t,
            completion_mask=mask,
            group=torch.as_tensor(list(group) if not isinstance(group, torch.Tensor) else group, dtype=torch.long),
            meta=[dict(m) for m in meta] if meta is not None else None,
            token_offsets=offsets,
        )


def token_char_offsets(tokenizer: Any, ids: Sequence[int], skip_special_tokens: bool = True) -> list[Span]:
    """Character span of each token in ``tokenizer.decode(ids)``, by incremental decoding.

    Works for any tokenizer with ``decode``; a token that only completes a multi-byte
    character gets the span of the whole character, and tokens that decode to nothing
    (special tokens when skipped) get an empty span at the current position.
    """
    offsets: list[Span] = []
    prev = ""
    for k in range(1, len(ids) + 1):
        cur = tokenizer.decode(list(ids[:k]), skip_special_tokens=skip_special_tokens)
        # a partial multi-byte character decodes to U+FFFD; it is not text yet
        stable = cur.rstrip("\ufffd")
        start = len(_common_prefix(prev, stable))
        if len(stable) <= len(prev) and stable == prev[: len(stable)]:
            offsets.append((len(stable), len(stable)))
        else:
            offsets.append((min(start, len(prev)), len(stable)))
        prev = stable
    return offsets


def _common_prefix(a: str, b: str) -> str:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return a[:i]
