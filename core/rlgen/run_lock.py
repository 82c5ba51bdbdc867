"""One writer per run folder: a lock that a training run holds from before its first write to its end.

Two `rlgen train` on one folder would interleave checkpoints, ``config.yaml`` and ``metrics.jsonl``
lines; with the lock the second one stops before writing anything. It is an OS lock (``flock``
through the `filelock` library), so the kernel drops it when its holder dies, however it dies
(SIGKILL, OOM killer): a lock file left behind by a dead run never blocks the next one. Who holds
it (PID, host, start time) is kept in a small JSON file beside it, for the refusal message and
for the note printed when a run takes over from a dead one. ``flock`` is only as good as the file
system: local disks and most NFSv4 mounts honour it, some network file systems do not.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import filelock

from .errors import ConfigError, RlgenError
from .logs import get_logger

log = get_logger("rlgen.run_lock")

LOCK_FILE = ".rlgen.lock"
HOLDER_FILE = ".rlgen.lock.json"
#: set by ``rlgen train --nproc N`` for the ranks it launches: the launcher holds the lock for them
ENV_HELD = "RLGEN_RUN_LOCK_HELD"


class RunFolderInUse(RlgenError):
    """Another live process is training into the same run folder."""


def _read_holder(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "PID unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"PID {holder.get('pid')} on host {holder.get('host')}, since {since}"


@contextlib.contextmanager
def hold(folder: Path, *, rank: int = 0) -> Iterator[None]:
    """Hold the lock of run folder ``folder`` (created if missing) for the block.

    Only rank 0 of a multi-rank run takes it: the other ranks write only what rank 0 tells them
    to, between barriers, and a rank that waited on a lock would stall the collectives. When a
    launcher already holds the lock for this folder (``ENV_HELD``), rank 0 does not take it again.
    Raises :class:`RunFolderInUse` at once when another live process holds it.
    """
    folder = Path(folder)
    if rank != 0 or os.environ.get(ENV_HELD) == str(folder.resolve()):
        yield
        return
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"run.output_dir {folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(folder / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        holder = None
        for _ in range(10):  # the holder writes its name right after locking; give it a moment
            holder = _read_holder(folder)
            if holder:
                break
            time.sleep(0.1)
        raise RunFolderInUse(
            f"run folder {folder} is in use by another rlgen train ({_describe(holder)}); "
            "wait for it to end or choose another run.output_dir"
        ) from None
    try:
        stale = _read_holder(folder)
        if stale:
            # the lock was free, so its last holder ended without releasing it: it died
            log.warning("took over the lock of a run that ended without releasing it (killed or crashed)",
                        folder=str(folder), previous=_describe(stale))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        tmp = folder / (HOLDER_FILE + ".tmp")
        tmp.write_text(json.dumps(me))
        os.replace(tmp, folder / HOLDER_FILE)
        yield
    finally:
        with contextlib.suppress(OSError):
            (folder / HOLDER_FILE).unlink()
        # the lock file stays: unlinking it while another process waits on it would let two hold it
        lock.release()
