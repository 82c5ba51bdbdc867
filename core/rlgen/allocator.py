"""Keep the memory a training step frees in the process, for the next step to reuse (``run.reuse_freed_memory``).

A step on a CPU allocates and frees the same large buffers every time: the logits of each pass ([rows, tokens,
vocabulary], 63 MB on the speed benchmark), the gradients (the 113 MB tied embedding's among them), activations.
glibc's malloc serves every block over 32 MB from ``mmap`` and unmaps it on ``free``, so the next step's
allocation is fresh memory, and the kernel faults in and zeroes each page again on first touch. On the speed
benchmark (SmolLM2-135M, docs/speed.md) that was about 400,000 minor page faults, some 1.6 GB of zeroed pages, per
step. With ``mmap`` off and heap trimming off, freed blocks stay in malloc's heap and the next step reuses them:
the faults go, and peak RSS grows a little (0.1 GB there; 0.7 GB in ``make demo``, whose stages run in one
process and keep what each one freed).

This is what an ``LD_PRELOAD`` of jemalloc or tcmalloc buys, done with glibc's own ``mallopt`` from inside the
process, so that it needs nothing installed and no launcher. Elsewhere (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

from .logs import get_logger

log = get_logger(__name__)

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: free memory at the heap's top kept rather than returned to the system: mallopt takes a C int, so 2 GiB
#: at most (a step frees its activations in pieces, well under that at once on the models a CPU trains)
_TRIM_THRESHOLD = 2**31 - 1

_applied = False


def reuse_freed_memory() -> bool:
    """Make glibc malloc keep freed memory in this process (no ``mmap`` blocks, no heap trimming).

    Applies to allocations made after the call, process-wide, and cannot be undone; the usual place is the start
    of a run. Returns True where it took effect (Linux with glibc), False elsewhere."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        log.debug("reuse_freed_memory: not glibc, malloc left as it is", system=platform.system())
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt returns 1 on success
    if libc.mallopt(_M_MMAP_MAX, 0) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) != 1:
        log.warning("reuse_freed_memory: glibc mallopt refused; malloc left as it is")
        return False
    _applied = True
    return True
