"""The pending events (keepalives, ends, retransmissions of a dropped first packet): a
binary heap of 64-byte rows in ``HI`` (``HF`` its float64 view), ordered by (time,
sequence number), so equal times keep the order they were scheduled in.
"""

# ruff: noqa: ANN001, PLR0917
# mypy: ignore-errors

from __future__ import annotations

from egressgw.datapath.model.kernel_jit import jit
from egressgw.datapath.model.kernel_layout import (
    H_CONN,
    H_EGRESS_KIND,
    H_END,
    H_KA,
    H_RTO,
    H_SEQ,
    H_START,
    H_TIME,
    H_WORDS,
    S_HEAP_SIZE,
)
from egressgw.datapath.model.kernel_prefetch import prefetch


@jit(inline=True)
def _move(HI, src, dst) -> None:
    for c in range(H_WORDS):
        HI[dst, c] = HI[src, c]


@jit()
def heap_push(st, HI, HF, t, seq, o, end, ka, kind, egress, rto, start) -> None:
    """Add an event, sifting a hole up from the end (one row copy per level).

    ``kind`` carries the h_kind bits and the retransmissions left (<< 8)."""
    i = st[S_HEAP_SIZE]
    st[S_HEAP_SIZE] = i + 1
    while i > 0:
        parent = (i - 1) >> 1
        pt = HF[parent, H_TIME]
        if not (t < pt or (t == pt and seq < HI[parent, H_SEQ])):
            break
        _move(HI, parent, i)
        i = parent
    HF[i, H_TIME] = t
    HF[i, H_END] = end
    HF[i, H_KA] = ka
    HI[i, H_SEQ] = seq
    HI[i, H_CONN] = o
    HI[i, H_EGRESS_KIND] = (egress << 16) | kind
    HF[i, H_RTO] = rto
    HF[i, H_START] = start


@jit()
def heap_pop_to_end(st, HI, HF) -> int:
    """Move the earliest event to the row just past the heap and return that row."""
    n = st[S_HEAP_SIZE] - 1
    st[S_HEAP_SIZE] = n
    # The last event fills the hole the earliest leaves; keep it aside while sifting.
    w0, w1, w2, w3 = HI[n, 0], HI[n, 1], HI[n, 2], HI[n, 3]
    w4, w5, w6, w7 = HI[n, 4], HI[n, 5], HI[n, 6], HI[n, 7]
    t = HF[n, H_TIME]
    seq = HI[n, H_SEQ]
    _move(HI, 0, n)
    i = 0
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        # The level after next: its four rows load while this level is compared.
        grandchild = 4 * i + 3
        if grandchild < n:
            for g in range(grandchild, min(grandchild + 4, n)):
                prefetch(HI, g)
        if child + 1 < n:
            a, b = HF[child + 1, H_TIME], HF[child, H_TIME]
            if a < b or (a == b and HI[child + 1, H_SEQ] < HI[child, H_SEQ]):
                child += 1
        ct = HF[child, H_TIME]
        if not (ct < t or (ct == t and HI[child, H_SEQ] < seq)):
            break
        _move(HI, child, i)
        i = child
    if n > 0:
        HI[i, 0], HI[i, 1], HI[i, 2], HI[i, 3] = w0, w1, w2, w3
        HI[i, 4], HI[i, 5], HI[i, 6], HI[i, 7] = w4, w5, w6, w7
    return n
