"""Whole-table passes for Python: re-threading the hash indexes after the arrays grow, the
LRU order of a family's NAT entries, and the IN entries per nat-stats key.
"""

# ruff: noqa: ANN001, PLR0917
# mypy: ignore-errors

from __future__ import annotations

import numpy as np

from egressgw.datapath.model.kernel_hash import conn_bucket, in_bucket, key_hash
from egressgw.datapath.model.kernel_jit import jit
from egressgw.datapath.model.kernel_layout import (
    CF_USED,
    E_ADDR,
    E_DPORT_PROTO,
    E_DST,
    E_HNEXT,
    E_OWNER,
    E_PORTFLAGS,
    NF_IN,
    NF_USED,
    NF_V6,
    NONE,
    R_DST,
    R_MISC,
    R_NEXT,
    R_PORTS,
    R_SRC,
    S_TAIL,
)
from egressgw.datapath.model.kernel_nat import lru_prev


@jit()
def rebuild_conn_index(S) -> None:
    """Re-thread every used record into ``CB`` (a new, larger index)."""
    CR, CB = S.CR, S.CB
    CB[:] = NONE
    for o in range(CR.shape[0]):
        misc = CR[o, R_MISC]
        if misc & CF_USED:
            b = conn_bucket(CB, CR[o, R_SRC], CR[o, R_DST], CR[o, R_PORTS], (misc >> 8) & 0xFF)
            CR[o, R_NEXT] = CB[b]
            CB[b] = o


@jit()
def rebuild_in_index(S) -> None:
    NR, NB = S.NR, S.NB
    NB[:] = NONE
    for e in range(NR.shape[0]):
        pf = NR[e, E_PORTFLAGS]
        if pf & NF_USED and pf & NF_IN:
            dpp = NR[e, E_DPORT_PROTO]
            b = in_bucket(NB, NR[e, E_ADDR], NR[e, E_DST], pf >> 8, dpp >> 8, dpp & 0xFF)
            NR[e, E_HNEXT] = NB[b]
            NB[b] = e


@jit()
def lru_order(S, fam, out) -> int:
    """LRU nodes of the family's NAT entries into ``out``, least recently used first."""
    st, CR, NR = S.st, S.CR, S.NR
    n = st[S_TAIL + fam]
    k = 0
    while n >= 0:
        out[k] = n
        k += 1
        p = lru_prev(CR, NR, n)
        n = -1 if p == NONE else np.int64(p)
    return k


@jit()
def count_endpoints(S, counted, table, keys_hi, keys_lo, counts) -> int:
    """IN entries per nat-stats key, into the first n rows of keys_*/counts; returns n.

    ``counted[family, proto]`` says whether nat-stats counts the protocol (0: no, 1: yes,
    2: yes, per remote port); the caller builds it from net.COUNTED_PROTOS (an argument,
    not a global: numba would freeze a global into the cache of this file only).
    ``table`` (power of two, at least twice the IN entries, filled with -1) is an
    open-addressed index. A key is hi = egress << 32 | remote, lo = family << 24 |
    proto << 16 | remote port (0 for ICMP).
    """
    CR, NR = S.CR, S.NR
    n = 0
    mask = table.shape[0] - 1
    for e in range(NR.shape[0]):
        pf = NR[e, E_PORTFLAGS]
        if pf & (NF_USED | NF_IN) != NF_USED | NF_IN:
            continue
        o = NR[e, E_OWNER]
        proto = np.int64((CR[o, R_MISC] >> 8) & 0xFF)
        fam = 1 if pf & NF_V6 else 0
        kind = counted[fam, proto]
        if not kind:
            continue
        rport = np.int64(CR[o, R_PORTS] & 0xFFFF) if kind == 2 else 0
        egress = np.int64(NR[e, E_ADDR])
        remote = np.int64(CR[o, R_DST])
        hi = (egress << 32) | remote
        lo = (fam << 24) | (proto << 16) | rport
        h = key_hash(egress, remote, lo, mask)
        while True:
            s = table[h]
            if s < 0:
                table[h] = n
                keys_hi[n] = hi
                keys_lo[n] = lo
                counts[n] = 1
                n += 1
                break
            if keys_hi[s] == hi and keys_lo[s] == lo:
                counts[s] += 1
                break
            h = (h + 1) & mask
    return n
