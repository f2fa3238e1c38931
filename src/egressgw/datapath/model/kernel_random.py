"""MT19937 inside the kernel, drawing exactly as CPython's ``random.Random``.

The state is ``S.mt`` (624 words) and ``st[S_MT_INDEX]``, copied from the engine's
``random.Random`` once (compiled.py) and handed back on request, so the Python object
continues exactly where the kernel's draws stopped.
"""

# mypy: ignore-errors

from __future__ import annotations

import numpy as np

from egressgw.datapath.model.kernel_jit import jit
from egressgw.datapath.model.kernel_layout import S_MT_INDEX

_U32 = np.uint64(0xFFFFFFFF)


@jit()
def _mt_generate(mt: np.ndarray) -> None:
    upper = np.uint64(0x80000000)
    lower = np.uint64(0x7FFFFFFF)
    matrix_a = np.uint64(0x9908B0DF)
    one = np.uint64(1)
    for kk in range(624):
        y = (np.uint64(mt[kk]) & upper) | (np.uint64(mt[(kk + 1) % 624]) & lower)
        v = np.uint64(mt[(kk + 397) % 624]) ^ (y >> one)
        if y & one:
            v ^= matrix_a
        mt[kk] = np.uint32(v & _U32)


@jit(inline=True)
def mt_random16(st: np.ndarray, mt: np.ndarray) -> int:
    """``random.Random.getrandbits(16)``: the top 16 bits of one 32-bit output."""
    i = st[S_MT_INDEX]
    if i >= 624:
        _mt_generate(mt)
        i = 0
    y = np.uint64(mt[i])
    st[S_MT_INDEX] = i + 1
    y ^= y >> np.uint64(11)
    y ^= (y << np.uint64(7)) & np.uint64(0x9D2C5680)
    y ^= (y << np.uint64(15)) & np.uint64(0xEFC60000)
    y ^= y >> np.uint64(18)
    return int((y & _U32) >> np.uint64(16))


@jit()
def mt_fill16(st: np.ndarray, mt: np.ndarray, out: np.ndarray) -> None:
    for i in range(out.shape[0]):
        out[i] = mt_random16(st, mt)
