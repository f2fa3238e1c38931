"""Connection records and their CT entries (``CR``, indexed by ``CB``).

A record per CT key (the original tuple) holds the tuple, the egress address, the CT
entry (flags and expiry), the port it last got and its OUT NAT entry. It stays while
something references it (IN entries owned by it, pending events), CT entry or not.
"""

# ruff: noqa: ANN001, PLR0917
# mypy: ignore-errors

from __future__ import annotations

import numpy as np

from egressgw.datapath.model.kernel_hash import conn_bucket
from egressgw.datapath.model.kernel_jit import jit
from egressgw.datapath.model.kernel_layout import (
    CF_BROKEN,
    CF_CLOSED,
    CF_CT,
    CF_EXPIRY,
    CF_NON_SYN,
    CF_RX_CLOSING,
    CF_RX_SYN,
    CF_TCP_STATE,
    CF_TX_CLOSING,
    CF_USED,
    NONE,
    P_FIN,
    P_RST,
    P_SYN,
    R_DST,
    R_EGRESS,
    R_MISC,
    R_NEXT,
    R_PORTS,
    R_REFS,
    R_SRC,
    S_CONN_COUNT,
    S_CONN_FREE,
    S_CONN_NFREE,
    T_ANY,
    T_FIN,
    T_SYN,
    T_TCP,
    TCP,
)


@jit(inline=True)
def conn_find(S, src, sport, dst, dport, proto) -> int:
    CR, CB = S.CR, S.CB
    ports = (sport << 16) | dport
    o = CB[conn_bucket(CB, src, dst, ports, proto)]
    while o != NONE:
        if (
            CR[o, R_SRC] == src
            and CR[o, R_DST] == dst
            and CR[o, R_PORTS] == ports
            and (CR[o, R_MISC] >> 8) & 0xFF == proto
        ):
            return np.int64(o)
        o = CR[o, R_NEXT]
    return -1


@jit()
def conn_new(st, CR, CB, src, sport, dst, dport, proto, egress) -> int:
    o = st[S_CONN_FREE]
    st[S_CONN_FREE] = CR[o, R_NEXT] if CR[o, R_NEXT] != NONE else -1
    st[S_CONN_NFREE] -= 1
    st[S_CONN_COUNT] += 1
    ports = (sport << 16) | dport
    CR[o, R_SRC] = src
    CR[o, R_DST] = dst
    CR[o, R_PORTS] = ports
    CR[o, R_EGRESS] = egress
    CR[o, R_MISC] = (proto << 8) | CF_USED
    CR[o, R_REFS] = 0
    b = conn_bucket(CB, src, dst, ports, proto)
    CR[o, R_NEXT] = CB[b]
    CB[b] = o
    return o


@jit()
def conn_maybe_free(st, CR, CB, o) -> None:
    """Free a record that has neither a CT entry nor anything referring to it."""
    misc = CR[o, R_MISC]
    if CR[o, R_REFS] != 0 or misc & CF_CT or not misc & CF_USED:
        return
    b = conn_bucket(CB, CR[o, R_SRC], CR[o, R_DST], CR[o, R_PORTS], (misc >> 8) & 0xFF)
    prev = NONE
    cur = CB[b]
    while cur != o:
        prev = cur
        cur = CR[cur, R_NEXT]
    if prev == NONE:
        CB[b] = CR[o, R_NEXT]
    else:
        CR[prev, R_NEXT] = CR[o, R_NEXT]
    CR[o, R_MISC] = 0
    CR[o, R_NEXT] = st[S_CONN_FREE] if st[S_CONN_FREE] >= 0 else NONE
    st[S_CONN_FREE] = o
    st[S_CONN_NFREE] += 1
    st[S_CONN_COUNT] -= 1


@jit(inline=True)
def ct_create(cfgf, CR, CF, o, proto, egress, now) -> None:
    """ct_create4: a new CT entry; TCP gets the SYN lifetime whatever the packet was."""
    CR[o, R_MISC] = (CR[o, R_MISC] & ~np.uint32(CF_TCP_STATE | CF_BROKEN)) | CF_CT
    CR[o, R_EGRESS] = egress
    CF[o, CF_EXPIRY] = now + (cfgf[T_SYN] if proto == TCP else cfgf[T_ANY])


@jit(inline=True)
def ct_update(cfgf, CR, CF, o, proto, flags, ingress, now) -> bool:
    """__ct_lookup on an existing entry (see reference.py); False: a SYN found it closing."""
    if proto != TCP:
        CF[o, CF_EXPIRY] = now + cfgf[T_ANY]
        return True
    misc = CR[o, R_MISC]
    if misc & CF_CLOSED != CF_CLOSED:
        if not flags & P_SYN:
            misc |= np.uint32(CF_NON_SYN)
        elif ingress:
            misc |= np.uint32(CF_RX_SYN)
        CF[o, CF_EXPIRY] = now + (cfgf[T_TCP] if misc & CF_NON_SYN else cfgf[T_SYN])
    if flags & (P_FIN | P_RST):
        if flags & P_RST and not misc & CF_RX_SYN:
            misc |= np.uint32(CF_CLOSED)
        elif ingress:
            misc |= np.uint32(CF_RX_CLOSING)
        else:
            misc |= np.uint32(CF_TX_CLOSING)
        if misc & CF_CLOSED == CF_CLOSED:
            CF[o, CF_EXPIRY] = now + cfgf[T_FIN]
    elif flags & P_SYN and misc & CF_CLOSED:
        CR[o, R_MISC] = misc
        return False
    CR[o, R_MISC] = misc
    return True
