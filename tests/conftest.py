"""Test-wide settings (one torch thread, caches inside the checkout, no hub access) and the fixtures every folder shares."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RLGEN_CACHE_DIR", str(ROOT / ".cache" / "rlgen"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)


from typing import Any  # noqa: E402

import pytest  # noqa: E402

import rlgen  # noqa: E402


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The test cache (the checkout's ``.cache/rlgen``): models built once, never in the user's ~/.cache."""
    assert os.environ.get("RLGEN_CACHE_DIR"), "tests must not write the user's ~/.cache"
    return Path(os.environ["RLGEN_CACHE_DIR"])


@pytest.fixture(scope="session")
def registry() -> rlgen.Registry:
    return rlgen.registry()


@pytest.fixture(scope="session")
def make_context(registry: rlgen.Registry, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """RunContext for a model spec (plugins are set up against it as in a run)."""

    def make(path: str, **config: Any) -> rlgen.RunContext:
        """``config``: sections over a minimal run config; a ``model`` section is merged over ``{"path": path}``."""
        model = {"path": path, **config.pop("model", {})}
        raw = {"model": model, "data": {"path": "prompts.jsonl"}, "rewards": [{"name": "len"}], **config}
        return rlgen.RunContext(config=rlgen.load_config(raw), registry=registry,
                                output_dir=tmp_path_factory.mktemp("run"), cache_dir=cache_dir, seed=0)

    return make
