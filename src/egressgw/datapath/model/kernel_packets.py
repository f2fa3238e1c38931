"""Packets: what one packet from the pod or from the remote does to the CT entry and the
NAT map, the exchanges that open and end a connection, and the per-connection calls
(``op_send``, ``op_reply``) that ``ModelDatapath``'s per-packet API makes.
"""

# ruff: noqa: ANN001, ANN201, PLR0917
# mypy: ignore-errors

from __future__ import annotations

import numpy as np

from egressgw.datapath.model.kernel_gc import after_operation
from egressgw.datapath.model.kernel_jit import jit
from egressgw.datapath.model.kernel_layout import (
    CF_BROKEN,
    CF_CT,
    CF_OUT,
    DROP_NO_MAPPING,
    E_OWNER,
    E_PORTFLAGS,
    F_NOW,
    FIN_END,
    IDLE,
    K_ALLOCATIONS,
    K_ATTEMPTED,
    K_BROKEN,
    K_CLOSED,
    K_DROPS_NO_MAPPING,
    K_ESTABLISHED,
    K_REPLY_DROPS,
    NF_V6,
    OUT_TAG,
    P_FIN,
    P_RST,
    P_SYN,
    R_DST,
    R_EGRESS,
    R_MISC,
    R_PORTS,
    RST_END,
    RST_SERVER_END,
    S_CT_COUNT,
    TCP,
    V6_BIT,
)
from egressgw.datapath.model.kernel_nat import in_find, nat_touch
from egressgw.datapath.model.kernel_ports import allocate
from egressgw.datapath.model.kernel_records import conn_find, conn_new, ct_create, ct_update


@jit()
def forward(S, src, sport, dst, dport, proto, egress, flags):
    """A packet from the pod, its record found by tuple (bench/bench_model.py drives this)."""
    o = conn_find(S, src, sport, dst, dport, proto)
    return forward_at(S, o, src, sport, dst, dport, proto, egress, flags)


@jit()
def forward_at(S, o, src, sport, dst, dport, proto, egress, flags):
    """A packet from the pod for the tuple's record ``o`` (-1: none yet), found by the
    caller: (record, port or -1, drop, broken, retries)."""
    st, fs, cfg, cfgf, cnt, tries, mt = S.st, S.fs, S.cfg, S.cfgf, S.cnt, S.tries, S.mt
    CR, CF, CB, NR, NB = S.CR, S.CF, S.CB, S.NR, S.NB
    now = fs[F_NOW]
    fam = 1 if src & V6_BIT else 0
    has_out = o >= 0 and CR[o, R_MISC] & CF_OUT != 0
    if has_out:
        nat_touch(st, CR, NR, np.int64(o) | OUT_TAG, fam)
    if o < 0 or not CR[o, R_MISC] & CF_CT:
        if o < 0:
            o = conn_new(st, CR, CB, src, sport, dst, dport, proto, egress)
        ct_create(cfgf, CR, CF, o, proto, egress, now)
        CR[o, R_MISC] &= np.uint32(0xFFFF)  # no port yet (an OUT entry implies a CT entry)
        st[S_CT_COUNT] += 1
    elif not ct_update(cfgf, CR, CF, o, proto, flags, False, now):
        # A SYN on a closing entry: a fresh entry (the OUT entry, if any, stays).
        ct_create(cfgf, CR, CF, o, proto, CR[o, R_EGRESS] if has_out else egress, now)
        if not has_out:
            CR[o, R_MISC] &= np.uint32(0xFFFF)  # no port yet: a new connection
    if has_out:
        return o, np.int64(CR[o, R_MISC] >> 16), 0, False, 0
    misc = CR[o, R_MISC]
    broken = misc >> 16 != 0
    if broken and not misc & CF_BROKEN:
        CR[o, R_MISC] = misc | CF_BROKEN
        cnt[K_BROKEN] += 1
    port, retries = allocate(st, fs, cfg, cnt, tries, mt, CR, CB, NR, NB, o, egress, fam)
    if port < 0:
        cnt[K_DROPS_NO_MAPPING] += 1
        return o, -1, DROP_NO_MAPPING, broken, retries
    cnt[K_ALLOCATIONS] += 1
    CR[o, R_MISC] = (CR[o, R_MISC] & 0xFFFF) | (port << 16)
    CR[o, R_EGRESS] = egress
    return o, port, 0, broken, retries


@jit()
def reply_record(S, o, flags):
    """A reply to the port record ``o`` last had (-1: no record): (port or -1, drop)."""
    st, fs, cfgf, cnt, CR, CF, NR, NB = S.st, S.fs, S.cfgf, S.cnt, S.CR, S.CF, S.NR, S.NB
    if o < 0 or not CR[o, R_MISC] & CF_CT or CR[o, R_MISC] >> 16 == 0:
        cnt[K_REPLY_DROPS] += 1
        return -1, DROP_NO_MAPPING
    port = np.int64(CR[o, R_MISC] >> 16)
    ports = CR[o, R_PORTS]
    proto = np.int64((CR[o, R_MISC] >> 8) & 0xFF)
    e = in_find(NR, NB, CR[o, R_DST], ports & 0xFFFF, CR[o, R_EGRESS], port, proto)
    if e < 0:
        cnt[K_REPLY_DROPS] += 1
        return -1, DROP_NO_MAPPING
    nat_touch(st, CR, NR, e, 1 if NR[e, E_PORTFLAGS] & NF_V6 else 0)
    owner = np.int64(NR[e, E_OWNER])
    if CR[owner, R_MISC] & CF_CT:
        ct_update(cfgf, CR, CF, owner, proto, flags, True, fs[F_NOW])
    if owner != o:
        cnt[K_REPLY_DROPS] += 1
        return -1, DROP_NO_MAPPING
    return port, 0


@jit(inline=True)
def open_record(S, o, src, sport, dst, dport, proto, egress):
    """A connection's first exchange (TCP: SYN, SYN-ACK, ACK): (record, port, drop, retries)."""
    syn = P_SYN if proto == TCP else 0
    o, port, drop, _b, retries = forward_at(S, o, src, sport, dst, dport, proto, egress, syn)
    if drop:
        return o, port, drop, retries
    reply_record(S, o, syn)
    if proto == TCP:
        forward_at(S, o, src, sport, dst, dport, proto, egress, 0)
    return o, port, drop, retries


@jit(inline=True)
def end_record(S, o, src, sport, dst, dport, proto, egress, kind):
    """The packets that end a connection (EndKind): the first one's (port, drop, broken,
    retries)."""
    if proto == TCP and kind == RST_SERVER_END:
        port, drop = reply_record(S, o, P_RST)
        return port, drop, False, 0
    flags = 0
    if proto == TCP and kind == RST_END:
        flags = P_RST
    elif proto == TCP and kind == FIN_END:
        flags = P_FIN
    o, port, drop, broken, retries = forward_at(S, o, src, sport, dst, dport, proto, egress, flags)
    if drop or flags == P_RST:
        return port, drop, broken, retries
    _p, rdrop = reply_record(S, o, flags)
    if flags == P_FIN and not rdrop:  # the pod's last ACK
        forward_at(S, o, src, sport, dst, dport, proto, egress, 0)
    return port, drop, broken, retries


# -- the per-connection API -----------------------------------------------------------------


@jit()
def op_send(S, src, sport, dst, dport, proto, egress, mode, flags):
    """mode 0: a packet with ``flags``, 1: a connection's first packet, 2: its first
    exchange (TCP's handshake), 3: the packets of EndKind ``flags`` (a close)."""
    cnt = S.cnt
    o = conn_find(S, src, sport, dst, dport, proto)
    broken = False
    if mode == 1 or mode == 2:  # noqa: PLR1714 (a set would allocate)
        cnt[K_ATTEMPTED] += 1
    if mode == 2:
        _o, port, drop, retries = open_record(S, o, src, sport, dst, dport, proto, egress)
    elif mode == 3:
        port, drop, broken, retries = end_record(S, o, src, sport, dst, dport, proto, egress, flags)
        if flags != IDLE:
            cnt[K_CLOSED] += 1
    else:
        if mode == 1 and proto == TCP:
            flags = P_SYN
        _o, port, drop, broken, retries = forward_at(
            S, o, src, sport, dst, dport, proto, egress, flags
        )
    if (mode == 1 or mode == 2) and not drop:  # noqa: PLR1714
        cnt[K_ESTABLISHED] += 1
    after_operation(S)
    return port, drop, broken, retries


@jit()
def op_reply(S, src, sport, dst, dport, proto, flags):
    o = conn_find(S, src, sport, dst, dport, proto)
    return reply_record(S, o, flags)
