"""The NAT map: IN entries (``NR``, indexed by ``NB``), OUT entries (a flag and links in
their record) and the per-family LRU list threaded through both.

An LRU node is an ``NR`` row number for an IN entry, or a record number with ``OUT_TAG``
set for an OUT entry. A full family's map evicts its least recently used entry on insert:
an exact LRU (``--nat-lru exact``; the kernel's BPF LRU is bpflru.py, in the reference
engine only).
"""

# ruff: noqa: ANN001, ANN201, PLR0917
# mypy: ignore-errors

from __future__ import annotations

import math

import numpy as np

from egressgw.datapath.model.kernel_hash import in_bucket
from egressgw.datapath.model.kernel_jit import jit
from egressgw.datapath.model.kernel_layout import (
    C_CAP,
    CF_OUT,
    E_ADDR,
    E_CREATED,
    E_DPORT_PROTO,
    E_DST,
    E_HNEXT,
    E_NEXT,
    E_OWNER,
    E_PORTFLAGS,
    E_PREV,
    K_EVICT_IN,
    K_EVICT_OUT,
    NF_IN,
    NF_USED,
    NF_V6,
    NONE,
    OUT_TAG,
    R_DST,
    R_MISC,
    R_OCREATED,
    R_ONEXT,
    R_OPREV,
    R_PORTS,
    R_REFS,
    R_SRC,
    S_COUNT,
    S_HEAD,
    S_NAT_FREE,
    S_NAT_NFREE,
    S_TAIL,
    V6_BIT,
)
from egressgw.datapath.model.kernel_prefetch import prefetch
from egressgw.datapath.model.kernel_records import conn_maybe_free


@jit(inline=True)
def lru_prev(CR, NR, n):
    return CR[n ^ OUT_TAG, R_OPREV] if n & OUT_TAG else NR[n, E_PREV]


@jit(inline=True)
def lru_next(CR, NR, n):
    return CR[n ^ OUT_TAG, R_ONEXT] if n & OUT_TAG else NR[n, E_NEXT]


@jit(inline=True)
def set_lru_prev(CR, NR, n, v) -> None:
    if n & OUT_TAG:
        CR[n ^ OUT_TAG, R_OPREV] = v
    else:
        NR[n, E_PREV] = v


@jit(inline=True)
def set_lru_next(CR, NR, n, v) -> None:
    if n & OUT_TAG:
        CR[n ^ OUT_TAG, R_ONEXT] = v
    else:
        NR[n, E_NEXT] = v


@jit(inline=True)
def lru_unlink(st, CR, NR, n, fam) -> None:
    p = lru_prev(CR, NR, n)
    q = lru_next(CR, NR, n)
    if p != NONE:
        set_lru_next(CR, NR, p, q)
    else:
        st[S_HEAD + fam] = -1 if q == NONE else np.int64(q)
    if q != NONE:
        set_lru_prev(CR, NR, q, p)
    else:
        st[S_TAIL + fam] = -1 if p == NONE else np.int64(p)


@jit(inline=True)
def lru_push(st, CR, NR, n, fam) -> None:
    h = st[S_HEAD + fam]
    set_lru_prev(CR, NR, n, NONE)
    if h >= 0:
        set_lru_next(CR, NR, n, h)
        set_lru_prev(CR, NR, h, n)
    else:
        set_lru_next(CR, NR, n, NONE)
        st[S_TAIL + fam] = n
    st[S_HEAD + fam] = n


@jit(inline=True)
def nat_touch(st, CR, NR, n, fam) -> None:
    """A lookup from the datapath: the entry (LRU node ``n``) becomes the most recent."""
    if st[S_HEAD + fam] == n:
        return
    lru_unlink(st, CR, NR, n, fam)
    lru_push(st, CR, NR, n, fam)


@jit(inline=True)
def in_find(NR, NB, dst, dport, egress, port, proto) -> int:
    return in_find_at(NR, NB, in_bucket(NB, egress, dst, port, dport, proto),
                      dst, dport, egress, port, proto)  # fmt: skip


@jit(inline=True)
def in_find_at(NR, NB, b, dst, dport, egress, port, proto) -> int:
    """The IN entry for the key in bucket ``b``, or -1."""
    e = NB[b]
    want = (port << 8) | NF_USED | NF_IN
    while e != NONE:
        if (
            (NR[e, E_PORTFLAGS] & 0xFFFFFB) == want
            and NR[e, E_ADDR] == egress
            and NR[e, E_DST] == dst
            and NR[e, E_DPORT_PROTO] == (dport << 8) | proto
        ):
            return np.int64(e)
        e = NR[e, E_HNEXT]
    return -1


@jit()
def nat_remove(st, cnt, CR, CB, NR, NB, n, evicted) -> None:
    """Delete the NAT entry of LRU node ``n`` (an LRU eviction when ``evicted``)."""
    if n & OUT_TAG:
        o = n ^ OUT_TAG
        fam = 1 if CR[o, R_SRC] & V6_BIT else 0
        lru_unlink(st, CR, NR, n, fam)
        CR[o, R_MISC] &= ~np.uint32(CF_OUT)
        st[S_COUNT + fam] -= 1
        if evicted:
            cnt[K_EVICT_OUT] += 1
        return  # the record keeps its CT entry (an OUT entry implies one)
    e = n
    pf = NR[e, E_PORTFLAGS]
    fam = 1 if pf & NF_V6 else 0
    o = NR[e, E_OWNER]
    lru_unlink(st, CR, NR, e, fam)
    dpp = NR[e, E_DPORT_PROTO]
    b = in_bucket(NB, NR[e, E_ADDR], NR[e, E_DST], pf >> 8, dpp >> 8, dpp & 0xFF)
    prev = NONE
    cur = NB[b]
    while cur != e:
        prev = cur
        cur = NR[cur, E_HNEXT]
    if prev == NONE:
        NB[b] = NR[e, E_HNEXT]
    else:
        NR[prev, E_HNEXT] = NR[e, E_HNEXT]
    if evicted:
        cnt[K_EVICT_IN] += 1
    NR[e, E_PORTFLAGS] = 0
    NR[e, E_NEXT] = st[S_NAT_FREE] if st[S_NAT_FREE] >= 0 else NONE
    st[S_NAT_FREE] = e
    st[S_NAT_NFREE] += 1
    st[S_COUNT + fam] -= 1
    CR[o, R_REFS] -= 1
    conn_maybe_free(st, CR, CB, o)


@jit(inline=True)
def nat_room(S, fam) -> bool:
    """Whether an IN and an OUT insert can be served without growing arrays.

    Only IN entries take an NR row. The pool may grow to 2 * capacity + 1 rows: it then
    has a free row, since each family's map holds at most ``capacity`` entries.
    """
    st = S.st
    return st[S_NAT_NFREE] >= 1


@jit()
def nat_insert(st, cfg, cnt, CR, CB, NR, NB, o, addr, port, is_in, fam, now) -> int:
    """Insert a NAT entry owned by record ``o``; returns its LRU node."""
    if st[S_COUNT + fam] >= cfg[C_CAP]:
        nat_remove(st, cnt, CR, CB, NR, NB, st[S_TAIL + fam], True)
    st[S_COUNT + fam] += 1
    created = np.uint32(math.floor(now))
    if not is_in:  # the OUT entry lives in the record: its egress and port are the record's
        CR[o, R_MISC] |= np.uint32(CF_OUT)
        CR[o, R_OCREATED] = created
        n = np.int64(o) | OUT_TAG
        lru_push(st, CR, NR, n, fam)
        return n
    e = st[S_NAT_FREE]
    nxt = NR[e, E_NEXT]
    st[S_NAT_FREE] = -1 if nxt == NONE else nxt
    st[S_NAT_NFREE] -= 1
    NR[e, E_OWNER] = o
    NR[e, E_ADDR] = addr
    NR[e, E_CREATED] = created
    flags = NF_USED | NF_IN
    if fam:
        flags |= NF_V6
    dst = CR[o, R_DST]
    dport = CR[o, R_PORTS] & 0xFFFF
    proto = (CR[o, R_MISC] >> 8) & 0xFF
    NR[e, E_DST] = dst
    NR[e, E_DPORT_PROTO] = (dport << 8) | proto
    b = in_bucket(NB, addr, dst, port, dport, proto)
    NR[e, E_HNEXT] = NB[b]
    NB[b] = e
    NR[e, E_PORTFLAGS] = (port << 8) | flags
    CR[o, R_REFS] += 1
    lru_push(st, CR, NR, e, fam)
    return e


@jit(inline=True)
def prefetch_node(CR, NR, n) -> None:
    """The row of LRU node ``n`` (a record for an OUT entry, else an IN row)."""
    if n != NONE:
        if n & OUT_TAG:
            prefetch(CR, n ^ OUT_TAG)
        else:
            prefetch(NR, n)
