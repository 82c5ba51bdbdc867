"""A tiny-llama that has learnt, in a few seconds of supervised training, to end its answers.

The random builtin model almost never samples EOS, so the sampler's EOS, stop-string and
post-processor paths would go untested. Teaching it short chat answers (some quoted, some on
two lines) gives real generated text with all of those, in a real model, at test scale.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from rlgen_plugins.models import load_causal_lm, load_tokenizer
from rlgen_plugins.models.tiny_llama import corpus_text

TOPICS = ["shoes", "coffee", "flights", "a hotel", "a phone", "insurance", "a laptop", "music", "a bike kit", "games"]


def answers() -> list[str]:
    """Short answers of varied length and shape built from the tokenizer's own corpus."""
    lines = [ln.strip() for ln in corpus_text().splitlines() if ln.strip()]
    out = []
    for line in lines:
        first = line.split(". ")[0].rstrip(".") + "."
        words = first.split()
        out.append(" ".join(words[:4]))
        out.append(first)
        out.append(f'"{" ".join(words[:6])}"')
        out.append(f"{' '.join(words[:3])}\n{' '.join(words[3:7])}")
    return out


def train_chatty(source: Path, target: Path, steps: int = 60, seed: int = 0) -> Path:
    """Fine-tune the model in ``source`` on ChatML (prompt, short answer<|im_end|>) pairs; save to ``target``."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    tok = load_tokenizer(source, padding_side="right")
    model = load_causal_lm(source)
    model.train()
    pairs = [(f"Write an ad for {rng.choice(TOPICS)}", a) for a in answers()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        batch = rng.sample(pairs, 16)
        prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True) for q, _ in batch]
        full = [p + a + tok.eos_token for p, (_, a) in zip(prompts, batch)]
        enc = tok(full, padding=True, return_tensors="pt", add_special_tokens=False)
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        for i, p in enumerate(prompts):  # learn the answers, not the prompts
            labels[i, : len(tok(p, add_special_tokens=False)["input_ids"])] = -100
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(target)
    tok.padding_side = "left"
    tok.save_pretrained(target)
    return target


def chatty_model(cache_dir: Path, source: Path, name: str, steps: int = 60, seed: int = 0) -> Path:
    """``source`` taught to give short answers ending with EOS, built once into the test cache under ``name``."""
    from rlgen_plugins.models.cache import materialise, spec_key

    spec = {"name": name, "version": 1, "steps": steps, "seed": seed, "source": source.name}
    target = cache_dir / "test-models" / f"{name}-{spec_key(spec)}"
    return materialise(target, spec, lambda folder: train_chatty(source, folder, steps=steps, seed=seed))
