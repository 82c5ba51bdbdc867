"""A decode loop for Llama-architecture models that does what ``generate`` does, faster on CPU.

``transformers.generate`` spends most of a CPU decode step in ``F.linear`` on a few rows, where
the BLAS kernel reads the weights at a third of the memory bandwidth, and it prefills every
one of the G samples of a prompt although they share the prompt. This loop runs the model's
own modules (embedding, RMSNorm, rotary embedding, activation) and weights, but

- prefills each distinct prompt once and copies its KV cache to the G rows that sample from it, and
  the beginning all distinct prompts share (a few-shot template) once for all of them;
- multiplies with weights pre-packed by oneDNN for the decode batch size, which reads them
  near the memory bandwidth (on CPU, where torch has oneDNN; elsewhere plain ``F.linear``),
  with the layers that read the same input stacked into one product (q, k, v; gate, up);
- drops rows that finished from the batch;
- keeps the KV cache in one preallocated tensor per layer and attends from the single new
  position with two small matmuls.

A PEFT LoRA model (the ``grpo`` trainer's module under ``trainer.params.lora``, which the sampler
shares) decodes through the same loop: each adapted linear layer's weight is packed merged with
its active adapters, ``W + scaling * B A`` (PEFT's own ``get_delta_weight``), once per call, while
``generate`` would run the base and adapter products separately at every step.

Token choice, end-of-row handling and stop criteria are ``generate``'s own: the same logits
processor chain (the :class:`.seeded.SeededSampler`), a greedy pick of what it allows, pad
tokens after a row finished, and transformers' ``StoppingCriteria`` objects. So given the same
logits the token stream is the same; logits differ from ``generate``'s only by float rounding
of the matmul kernels (~1e-6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..models import hf_model
from ..prompt_prefix import shared_prefix_length, split_prefix

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)


def _is_adapted(module: torch.nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A")


def effective_weight(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of a linear layer as it acts now: a PEFT LoRA layer's base weight plus the
    delta of each active adapter (none when adapters are disabled or already merged into the base)."""
    if not _is_adapted(module):
        return module.weight.detach(), None if module.bias is None else module.bias.detach()
    base = module.base_layer
    weight = base.weight.detach()
    if not module.disable_adapters and not module.merged:
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                weight = weight + module.get_delta_weight(adapter).detach()
    return weight, None if base.bias is None else base.bias.detach()


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why :func:`decode` cannot run ``model`` (``None`` when it can)."""
    wrapper, model = model, hf_model(model)
    name = type(model).__name__
    if name not in SUPPORTED_ARCHITECTURES:
        return f"architecture {name} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
    config = model.config
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    if getattr(config, "hidden_act", "silu") not in ("silu", "swish"):
        return f"hidden_act {config.hidden_act}"
    if any(p.dtype != torch.float32 and p.device.type == "cpu" for p in wrapper.parameters()):
        return "non-fp32 weights on CPU"
    for module in model.modules():
        if _is_adapted(module):
            if not isinstance(module.base_layer, torch.nn.Linear):
                return f"an adapter on {type(module.base_layer).__name__} (only linear layers are merged)"
            if any(getattr(module, "use_dora", {}).get(a, False) for a in module.active_adapters):
                return "DoRA adapters"
    return None


def _onednn_usable(device: torch.device) -> bool:
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class Linear:
    """``y = x W^T + b`` for a decode batch of ``rows`` rows.

    On CPU with oneDNN the weight is copied once into oneDNN's blocked layout for that batch
    size: a step then reads it at about twice the speed of ``F.linear``'s BLAS call on a few
    rows (the copy costs about a third of one step's reads per weight, so it pays off after a
    few steps). Elsewhere it is plain ``F.linear``.
    """

    def __init__(self, modules: list[torch.nn.Module], rows: int, pack: bool) -> None:
        # several layers that read the same input (q, k, v; gate, up) are one product with their weights
        # stacked: one kernel call instead of three (about 2% of a SmolLM2 decode step), same logits
        parts = [effective_weight(m) for m in modules]
        weight = torch.cat([w for w, _ in parts]) if len(parts) > 1 else parts[0][0]
        if all(b is None for _, b in parts):
            self.bias = None
        else:
            self.bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in parts])
        self.packed = pack
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows) if pack else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


@dataclass
class _Layer:
    input_norm: Callable[[torch.Tensor], torch.Tensor]
    post_norm: Callable[[torch.Tensor], torch.Tensor]
    qkv: Linear  # q, k and v stacked
    o: Linear
    gate_up: Linear  # gate and up stacked
    down: Linear
    act: Callable[[torch.Tensor], torch.Tensor]


class LlamaDecoder:
    """The decode-step weights of one Llama model, packed for ``rows`` rows (build once per ``generate`` call)."""

    def __init__(self, model: torch.nn.Module, rows: int) -> None:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"decode loop does not support this model: {reason}")
        model = hf_model(model)
        self.model = model
        self.rope = apply_rotary_pos_emb
        config = model.config
        self.device = next(model.parameters()).device
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.scale = self.head_dim**-0.5
        pack = _onednn_usable(self.device)
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.norm = inner.norm
        self.layers = []
        for layer in inner.layers:
            att, mlp = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                input_norm=layer.input_layernorm,
                post_norm=layer.post_attention_layernorm,
                qkv=Linear([att.q_proj, att.k_proj, att.v_proj], rows, pack),
                o=Linear([att.o_proj], rows, pack),
                gate_up=Linear([mlp.gate_proj, mlp.up_proj], rows, pack),
                down=Linear([mlp.down_proj], rows, pack),
                act=mlp.act_fn,
            ))
        self.lm_head = Linear([model.lm_head], rows, pack)
        # prefill multiplies many rows, where plain F.linear on the model's own weights is as fast
        self.prefill_layers = [(layer.self_attn, layer.mlp) for layer in inner.layers]


    def prefill(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        capacity: int,
        past: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Run left-padded prompts ``ids`` [N, S]; return last-position logits [N, V] and per-layer KV caches
        [N, kv_heads, capacity, head_dim] holding the first L + S positions.

        ``past``: per-layer K/V [1, kv_heads, L, head_dim] of a prefix every prompt continues (a
        :func:`prefill` of it); it fills slots 0..L-1, ``ids`` go to the slots after it and their
        positions go on from L.
        """
        n, s = ids.shape
        length = 0 if past is None else past[0][0].shape[2]
        positions = length + (mask.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(s, s, dtype=torch.bool, device=ids.device).tril()
        # pad queries may see themselves, so no softmax row is empty (NaN would reach the pads' own
        # K/V); real queries never see a pad key
        attend = (causal & mask[:, None, :]) | torch.eye(s, dtype=torch.bool, device=ids.device)
        if length:  # every query sees the whole prefix
            attend = torch.cat([attend.new_ones(n, s, length), attend], dim=2)
        attend = attend[:, None]
        x = self.embed(ids)
        cos, sin = self.rotary(x, positions)
        caches = []
        hd, nh, nkv = self.head_dim, self.n_heads, self.n_kv
        end = length + s
        for i, (layer, (att, mlp)) in enumerate(zip(self.layers, self.prefill_layers)):
            h = layer.input_norm(x)
            q = att.q_proj(h).view(n, s, nh, hd).transpose(1, 2)
            k = att.k_proj(h).view(n, s, nkv, hd).transpose(1, 2)
            v = att.v_proj(h).view(n, s, nkv, hd).transpose(1, 2)
            q, k = self.rope(q, k, cos, sin)
            kc = x.new_zeros(n, nkv, capacity, hd)
            vc = x.new_zeros(n, nkv, capacity, hd)
            if length:
                kc[:, :, :length], vc[:, :, :length] = past[i]
            kc[:, :, length:end], vc[:, :, length:end] = k, v
            caches.append((kc, vc))
            keys, values = (k, v) if not length else (kc[:, :, :end], vc[:, :, :end])
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=attend, scale=self.scale, enable_gqa=nkv != nh)
            x = x + att.o_proj(a.transpose(1, 2).reshape(n, s, nh * hd))
            x = x + mlp(layer.post_norm(x))
        last = self.norm(x[:, -1])
        return self.model.lm_head(last), caches

    def step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        length: int,
        key_mask: torch.Tensor,
        caches: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """One decode step: ``tokens`` [B] at ``positions`` [B] written to cache slot ``length``;
        ``key_mask`` [B, capacity] says which cache slots a row attends to. Returns logits [B, V]."""
        b = tokens.shape[0]
        hd, nh, nkv = self.head_dim, self.n_heads, self.n_kv
        x = self.embed(tokens)
        cos, sin = self.rotary(x[:, None], positions[:, None])
        blocked = ~key_mask[:, None, None, :]
        group = nh // nkv
        nq = nh * hd
        for layer, (kc, vc) in zip(self.layers, caches):
            h = layer.input_norm(x)
            q, k, v = layer.qkv(h).split([nq, nkv * hd, nkv * hd], dim=-1)
            q, k, v = q.reshape(b, nh, 1, hd), k.reshape(b, nkv, 1, hd), v.reshape(b, nkv, 1, hd)
            q, k = self.rope(q, k, cos, sin)
            kc[:, :, length : length + 1] = k
            vc[:, :, length : length + 1] = v
            # GQA as one batched matmul per layer: the g query heads sharing a KV head are rows of one
            # product (SDPA's kernels cost ~10x more for a single query position). It spans the whole
            # cache, future slots masked: a slice of it would be copied to be multiplied.
            scores = torch.matmul(q.view(b, nkv, group, hd), kc.transpose(2, 3)) * self.scale
            scores = scores.masked_fill(blocked, float("-inf"))
            a = torch.matmul(torch.softmax(scores, dim=-1), vc)
            x = x + layer.o(a.reshape(b, nq))
            h = layer.post_norm(x)
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
            x = x + layer.down(layer.act(gate) * up)
        return self.lm_head(self.norm(x))


def decode(
    decoder: LlamaDecoder,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_of_row: torch.Tensor,
    max_new_tokens: int,
    logits_processor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    stopping_criteria: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    pad_token_id: int,
) -> torch.Tensor:
    """Generate a continuation for each row of ``prompt_of_row``, as greedy ``generate`` with
    ``logits_processor`` and ``stopping_criteria`` would.

    Args:
        decoder: the model's decoder, built for ``len(prompt_of_row)`` rows.
        prompt_ids / prompt_mask: [N, P] distinct left-padded prompts, each prefilled once.
        prompt_of_row: LongTensor [B], the prompt (row of ``prompt_ids``) each output row continues.
        logits_processor: ``(input_ids [B, P + t], scores [B, V]) -> scores``; the pick is their argmax.
        stopping_criteria: ``(input_ids, scores) -> BoolTensor [B]`` rows that are done (EOS, stop
            strings); the length limit is ``max_new_tokens``.

    Returns:
        LongTensor [B, P + steps]: prompts followed by the generated tokens, ``pad_token_id`` after a
        row finished, as ``generate`` returns them.
    """
    device = decoder.device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device).bool()
    index = prompt_of_row.to(device)
    b, p = index.shape[0], prompt_ids.shape[1]
    capacity = p + max_new_tokens
    length = shared_prefix_length(prompt_ids, prompt_mask)
    if length:
        # the beginning the prompts share runs once; the cache layout is [prefix | rest, left-padded]
        prefix, rest, layout, _ = split_prefix(prompt_ids, prompt_mask, length)
        _, past = decoder.prefill(prefix, torch.ones_like(prefix, dtype=torch.bool), length)
        logits, shared = decoder.prefill(rest, layout[:, length:].bool(), capacity, past=past)
        del past
    else:
        layout = prompt_mask
        logits, shared = decoder.prefill(prompt_ids, prompt_mask, capacity)
    caches = [(k.index_select(0, index), v.index_select(0, index)) for k, v in shared]
    del shared
    logits = logits.index_select(0, index)
    input_ids = prompt_ids.index_select(0, index)
    key_mask = torch.zeros(b, capacity, dtype=torch.bool, device=device)
    key_mask[:, :p] = layout.bool().index_select(0, index)
    positions = prompt_mask.long().sum(-1).index_select(0, index)  # a row's next position: its real tokens so far
    unfinished = torch.ones(b, dtype=torch.bool, device=device)
    active = torch.arange(b, device=device)  # the rows the decoder still runs, in order
    scores = logits.float()
    for t in range(max_new_tokens):
        chosen = logits_processor(input_ids, scores).argmax(dim=-1)
        chosen = torch.where(unfinished, chosen, torch.full_like(chosen, pad_token_id))
        input_ids = torch.cat([input_ids, chosen[:, None]], dim=1)
        unfinished &= ~stopping_criteria(input_ids, scores).to(device)
        if t == max_new_tokens - 1 or not bool(unfinished.any()):
            break
        key_mask[:, p + t] = True
        # generate keeps decoding a pad token for finished rows; on a CPU a step costs per row, so they
        # leave the batch (their cache rows too). The logits processor still sees every row, a finished
        # one with the scores it had last (its draws only advance its own generator; the pad is kept).
        still = unfinished.nonzero()[:, 0]
        if len(still) < len(active):
            keep = torch.searchsorted(active, still)
            caches = [(k.index_select(0, keep), v.index_select(0, keep)) for k, v in caches]
            positions = positions.index_select(0, keep)
            active = still
        logits = decoder.step(chosen.index_select(0, active), positions, p + t, key_mask.index_select(0, active), caches)
        scores = scores.index_copy(0, active, logits.float())
        positions = positions + 1
    return input_ids
