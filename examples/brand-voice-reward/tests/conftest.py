"""Test set-up: the distribution must be installed (its entry point is part of what is tested),
and the tests need a tokenizer.

``SubwordTokenizer`` cuts words into pieces of at most four characters and glues a leading
space to the next piece, like the byte-level BPE tokenizers of chat models, so that one word
can be several tokens. ``rlgen.Rollout.from_texts`` accepts any Hugging Face-style tokenizer;
with a real model at hand, use its tokenizer instead.
"""

from __future__ import annotations

import importlib.metadata
import re

import pytest

_PIECE = re.compile(r"\s*(?:\w{1,4}|[^\w\s])|\s+")


class SubwordTokenizer:
    pad_token_id = 0

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False) -> dict:
        ids, offsets = [], []
        for m in _PIECE.finditer(text):
            ids.append(self.vocab.setdefault(m.group(), len(self.vocab) + 1))  # 0 is padding
            offsets.append((m.start(), m.end()))
        out = {"input_ids": ids}
        if return_offsets_mapping:
            out["offset_mapping"] = offsets
        return out

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        pieces = {i: p for p, i in self.vocab.items()}
        return "".join(pieces[i] for i in ids if i != self.pad_token_id)


@pytest.fixture
def tokenizer() -> SubwordTokenizer:
    return SubwordTokenizer()


def pytest_configure(config: pytest.Config) -> None:
    try:
        importlib.metadata.distribution("rlgen-brand-voice")
    except importlib.metadata.PackageNotFoundError:
        pytest.exit('rlgen-brand-voice is not installed; run: pip install -e ".[test]"', returncode=4)
