"""Keep freed memory in the process instead of handing it back to the kernel (glibc only).

Training and evaluation allocate the same large tensors every batch: a (positions, n_items)
logit matrix, its softmax and their gradients, a (users, n_items) score matrix and its copy.
glibc serves each block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
``munmap``s it on free, and returns any free space above 128 KB at the top of the heap with
``brk``: the next batch then page-faults and the kernel zeroes every page again. On a real-size
dataset that was ~400 M minor page faults and as much system time as user time (issue 14).
:func:`retain_freed_memory` serves every block from the heap and never trims it, so freed blocks
are reused; numerics are unchanged, the peak resident size grows by a few percent
(docs/performance.md, "Amazon Beauty end to end"). It is process-wide and cannot be undone, so a
process that embeds the harness and wants its memory back can opt out with
``BENCH_RETAIN_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
_INT_MAX = 2**31 - 1  # mallopt takes an int
_done = False


def retain_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse (once per process; a no-op and False
    where the C library is not glibc)."""
    global _done
    if _done:
        return True
    if os.environ.get("BENCH_RETAIN_FREED_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.debug("mallopt refused: freed memory goes back to the kernel as usual")
    _done = ok
    return ok
