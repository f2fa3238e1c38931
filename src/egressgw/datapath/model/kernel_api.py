"""The compiled kernel's entry points from Python, with their types.

The kernel (``kernel.py`` and its ``kernel_*.py`` modules) is compiled by numba, which
infers and checks types itself; mypy sees its functions as untyped dispatchers. Python
code (``compiled.py``, benchmarks, tests) calls the kernel only through these wrappers,
which state what goes in and what comes out, so a wrong argument is a type error here
instead of a numba typing error at run time. Each wrapper is one call; its cost (well
under a microsecond) is small next to numba's own argument dispatch.

Statuses of ``run``: ``OK`` (done) or one of ``NEED_CONN``, ``NEED_NAT``, ``NEED_HEAP``
(grow that table, then call again: nothing was changed).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from egressgw.datapath.model import kernel as _k
from egressgw.datapath.model import kernel_layout
from egressgw.datapath.model.kernel_state import BatchColumns, State

OK: int = kernel_layout.OK
NEED_CONN: int = kernel_layout.NEED_CONN
NEED_NAT: int = kernel_layout.NEED_NAT
NEED_HEAP: int = kernel_layout.NEED_HEAP

ConnKey = tuple[int, int, int, int, int]  # src, sport, dst, dport, proto


def run(state: State, batch: BatchColumns, until: float) -> int:
    """Start the batch's connections from ``st[S_BATCH_POS]`` and run pending events,
    expiries and GC passes before ``until``: OK or a NEED_* status."""
    return int(_k.run(state, batch, until))


def gc(state: State, families: int, signalled: bool) -> None:
    """One CT GC pass at ``fs[F_NOW]`` over the maps of ``families`` (bit 0: IPv4, 1: IPv6)."""
    _k.gc(state, families, signalled)


def send(
    state: State, key: ConnKey, egress: int, mode: int, flags: int
) -> tuple[int, int, bool, int]:
    """The packets of one per-connection call (kernel_packets.op_send's ``mode``):
    (port or -1, drop code or 0, broken, retries)."""
    port, drop, broken, retries = _k.op_send(state, *key, egress, mode, flags)
    return int(port), int(drop), bool(broken), int(retries)


def reply(state: State, key: ConnKey, flags: int) -> tuple[int, int]:
    """A packet from the remote to the port the connection last had: (port or -1, drop)."""
    port, drop = _k.op_reply(state, *key, flags)
    return int(port), int(drop)


def conn_find(state: State, key: ConnKey) -> int:
    """The record of ``key``, or -1."""
    return int(_k.conn_find(state, *key))


def nat_room(state: State, family: int) -> bool:
    """Whether an IN and an OUT insert in ``family`` fit without growing the arrays."""
    return bool(_k.nat_room(state, family))


def rebuild_conn_index(state: State) -> None:
    """Re-thread every used record into ``state.CB`` (after it was replaced)."""
    _k.rebuild_conn_index(state)


def rebuild_in_index(state: State) -> None:
    """Re-thread every IN entry into ``state.NB`` (after it was replaced)."""
    _k.rebuild_in_index(state)


def lru_order(state: State, family: int, out: npt.NDArray[np.int64]) -> int:
    """The family's LRU nodes into ``out``, least recently used first; returns how many."""
    return int(_k.lru_order(state, family, out))


def count_endpoints(
    state: State, counted: npt.NDArray[np.uint8], entries: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """IN entries per nat-stats key (at most ``entries`` keys): (keys_hi, keys_lo, counts).

    ``counted[family, proto]``: 0 not counted, 1 counted, 2 counted per remote port. A key
    is hi = egress << 32 | remote, lo = family << 24 | proto << 16 | remote port."""
    table = np.full(1 << max(4, (2 * entries + 1).bit_length()), -1, np.int64)
    keys_hi = np.zeros(entries + 1, np.int64)
    keys_lo = np.zeros(entries + 1, np.int64)
    counts = np.zeros(entries + 1, np.int64)
    n = int(_k.count_endpoints(state, counted, table, keys_hi, keys_lo, counts))
    return keys_hi[:n], keys_lo[:n], counts[:n]


def random16(state: State, out: npt.NDArray[np.int64]) -> None:
    """Fill ``out`` with the kernel's next ``getrandbits(16)`` values."""
    _k.mt_fill16(state.st, state.mt, out)
