"""Where built and converted models live, and how a folder is built once even under concurrency.

A builtin model is materialised into ``<cache>/models/<name>-<key>``, where ``key`` hashes
everything the build depends on, so changing a spec never reuses a stale folder. A folder is
built under a temporary name and renamed into place only when complete, and a file lock keeps
two processes (e.g. two DeepSpeed ranks) from converting the same model at the same time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

CACHE_ENV = "RLGEN_CACHE_DIR"
MARKER = "rlgen_build.json"


def default_cache_dir() -> Path:
    """``$RLGEN_CACHE_DIR`` if set, else ``~/.cache/rlgen``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlgen"


def spec_key(spec: dict[str, Any]) -> str:
    """Short, stable hash of a JSON-serialisable build spec."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: the atomic rename below still keeps the folder consistent
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def materialise(target: Path, spec: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Return ``target``, building it with ``build(tmp_folder)`` first if it is not complete yet.

    ``build`` writes the model into the folder it is given; the folder becomes ``target`` only
    after ``build`` returned, with a marker file recording ``spec`` and the build time.
    """
    target = Path(target)
    if is_complete(target):
        return target
    with _file_lock(target.parent / f".{target.name}.lock"):
        if is_complete(target):  # another process finished while we waited
            return target
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        started = time.perf_counter()
        try:
            build(tmp)
            record = {"spec": spec, "build_seconds": round(time.perf_counter() - started, 3)}
            (tmp / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True))
            if target.exists():  # a half-built folder from a killed run
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
