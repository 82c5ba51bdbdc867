"""``builtin:search-ads``: the bundled English search-ad contexts (train and eval splits) and their prompt.

The data is generated from curated vocabularies (see :mod:`.generate`, docs/search-ads.md) into the rlgen cache
the first time it is asked for, then reused; the cache folder is keyed by the data version, the seed and a hash
of the vocabulary files, so editing a vocabulary regenerates it. :func:`write_dataset` writes the same files to
any folder (the ``rlgen-relate data`` command calls it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import rlgen
from rlgen import BuiltinDataset
from rlgen import ConfigError

from .generate import generate_contexts
from .vocabulary import vocabulary_fingerprint

DATASET_NAME = "search-ads"
DATA_VERSION = 1
SPLITS = ("train", "eval")
DEFAULT_SEED = 0

SYSTEM_PROMPT = (
    "You write search ads. Match what the searcher is looking for, use only facts from the advertiser's "
    "information, and avoid superlatives and promises the advertiser cannot back up."
)

# The layout matches relate.format's default (rewards/_layout.py): a "Title:" line then a "Description:" line,
# 30 and 90 characters at most.
PROMPT_TEMPLATE = (
    "Write one search ad for this advertiser.\n"
    "Search query: {query}\n"
    "Bid keyword: {bid_word}\n"
    "Selling points: {selling_points}\n"
    "Landing page: {landing_page}\n\n"
    "Reply with exactly two lines and nothing else:\n"
    "Title: <headline, at most 30 characters>\n"
    "Description: <at most 90 characters>"
)


def _write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        _make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_dataset(
    out_dir: str | Path,
    seed: int = DEFAULT_SEED,
    contexts_per_vertical: int = 48,
    advertisers_per_vertical: int = 14,
    eval_fraction: float = 0.1,
) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``eval.jsonl`` (one context per line) to ``out_dir``; returns split -> path.

    Each file is written to a temporary name and renamed, so a reader never sees a half-written file.
    """
    rows = generate_contexts(seed, contexts_per_vertical, advertisers_per_vertical, eval_fraction)
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    for split in SPLITS:
        paths[split] = out / f"{split}.jsonl"
        _write_jsonl_atomic(paths[split], [r for r in rows if r["split"] == split])
    return paths


def dataset_dir(cache_dir: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Folder of the cached default dataset inside ``cache_dir``."""
    return Path(cache_dir) / "data" / f"{DATASET_NAME}-v{DATA_VERSION}-s{seed}-{vocabulary_fingerprint()}"


def ensure_dataset(cache_dir: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Generate the default dataset into the cache once and return its folder.

    Generation happens in a private temporary folder that is renamed into place, so concurrent processes (ranks of
    one run) either see the complete folder or build their own copy and discard it.
    """
    final = dataset_dir(cache_dir, seed)
    if all((final / f"{s}.jsonl").is_file() for s in SPLITS):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        write_dataset(tmp, seed=seed)
        _make_readable(tmp, directory=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not all((final / f"{s}.jsonl").is_file() for s in SPLITS):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@rlgen.hookimpl
def rlgen_builtin_dataset(name: str, split: str, cache_dir: Path) -> BuiltinDataset | None:
    if name != DATASET_NAME:
        return None
    if split not in SPLITS:
        raise ConfigError(f"builtin:{DATASET_NAME} has splits {list(SPLITS)}, not '{split}' (data.split)")
    folder = ensure_dataset(cache_dir)
    return BuiltinDataset(path=folder / f"{split}.jsonl", prompt_template=PROMPT_TEMPLATE, system_prompt=SYSTEM_PROMPT)


def _make_readable(path: str | Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private entries; give the result the permissions of an ordinary new one."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


__all__ = [
    "DATASET_NAME",
    "PROMPT_TEMPLATE",
    "SYSTEM_PROMPT",
    "dataset_dir",
    "ensure_dataset",
    "generate_contexts",
    "write_dataset",
]
