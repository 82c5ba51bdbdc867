"""Seeds derived from (run seed, step, rank): every step reseeds all RNGs, so a resumed run repeats."""

from __future__ import annotations

import random

import torch


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 10_007 + rank * 101) % (2**31 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed % (2**32))
