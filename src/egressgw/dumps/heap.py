"""Keep freed memory in the process for a bulk scan (glibc malloc).

The bulk scan of a ``bpf nat list`` dump allocates the same few work buffers for every
256 KiB chunk (the block read, its digit-free copy, numpy's run arrays: each a few hundred
KiB). glibc's malloc serves blocks that size with fresh ``mmap`` pages, or trims them off
the heap when they are freed, so every chunk touched new pages: about 100,000 page faults
and 0.25-0.3 s of system time per 1,000,000 lines, a fifth of the command's CPU time
(measured with ``/usr/bin/time``, docs/performance.md, "nat-stats from a dump"). With
the mmap and trim thresholds raised, freed blocks are reused instead.

Only for short-lived commands (``egressgw nat-stats``): it changes malloc for the whole
process, which then keeps up to ``TRIM_THRESHOLD`` of freed memory.
"""

from __future__ import annotations

import os

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper bound for this setting (HEAP_MAX / 2 on 64-bit)
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; False where malloc is not glibc's."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (ValueError, OSError, AttributeError):  # not glibc, or not a POSIX system
        return False
    import ctypes  # noqa: PLC0415 - only on this path

    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
