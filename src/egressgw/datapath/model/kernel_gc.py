"""CT garbage collection: deleting a CT entry with its NAT mapping, one GC pass over the
records, and the pass a ``nat_fill_up`` signal wakes after an operation.
"""

# ruff: noqa: ANN001, PLR0917
# mypy: ignore-errors

from __future__ import annotations

import numpy as np

from egressgw.datapath.model import gcpacing
from egressgw.datapath.model.kernel_hash import conn_bucket, in_bucket
from egressgw.datapath.model.kernel_jit import jit
from egressgw.datapath.model.kernel_layout import (
    C_CT_ANY_MAX,
    C_CT_TCP_MAX,
    C_FIXED_GC,
    C_GC_MAX_NS,
    CF_BROKEN,
    CF_CT,
    CF_EXPIRY,
    CF_OUT,
    CF_USED,
    E_OWNER,
    E_PORTFLAGS,
    F_GC_INTERVAL,
    F_LAST_GC,
    F_MUTED_UNTIL,
    F_NEXT_GC,
    F_NOW,
    K_GC_RUNS,
    NF_USED,
    NF_V6,
    OUT_TAG,
    R_DST,
    R_EGRESS,
    R_MISC,
    R_ONEXT,
    R_OPREV,
    R_PORTS,
    R_REFS,
    R_SRC,
    S_CT_COUNT,
    S_GC_CACHED,
    S_ORPHANS,
    S_SIGNAL_DUE,
    T_GC_PASS,
    TCP,
    V6_BIT,
)
from egressgw.datapath.model.kernel_nat import in_find, nat_remove, prefetch_node
from egressgw.datapath.model.kernel_prefetch import prefetch
from egressgw.datapath.model.kernel_records import conn_maybe_free

get_interval = jit()(gcpacing.get_interval)
GC_PREFETCH_AHEAD = 16  # records: a deletion's rows load while the pass walks up to it


@jit()
def ct_delete(S, o) -> None:
    """Delete a CT entry and, as nat DeleteMapping does, its OUT entry and the IN entry
    that OUT entry names (whoever owns it now)."""
    _ct_delete(S.st, S.cnt, S.CR, S.CB, S.NR, S.NB, o)


@jit()
def _ct_delete(st, cnt, CR, CB, NR, NB, o) -> None:
    misc = CR[o, R_MISC]
    CR[o, R_MISC] = misc & ~np.uint32(CF_CT | CF_BROKEN)
    st[S_CT_COUNT] -= 1
    if misc & CF_OUT:
        egress = CR[o, R_EGRESS]
        port = misc >> 16
        CR[o, R_REFS] += 1  # keep the record while its NAT entries go
        nat_remove(st, cnt, CR, CB, NR, NB, np.int64(o) | OUT_TAG, False)
        e = in_find(NR, NB, CR[o, R_DST], CR[o, R_PORTS] & 0xFFFF, egress, port, (misc >> 8) & 0xFF)
        if e >= 0:
            nat_remove(st, cnt, CR, CB, NR, NB, e, False)
        CR[o, R_REFS] -= 1
    conn_maybe_free(st, CR, CB, o)
    # IN entries are only made for records with a CT entry, so a record can only own
    # orphans (IN entries without CT) if it outlives the loss of its CT entry here.
    if CR[o, R_MISC] & CF_USED:
        st[S_ORPHANS] |= 2 if CR[o, R_SRC] & V6_BIT else 1


@jit(inline=True)
def _prefetch_deletion(CR, CF, CB, NR, NB, o, now) -> None:
    """What deleting record ``o`` will read if its CT entry has expired: its hash bucket
    and, with an OUT entry, its LRU neighbours and its IN entry's bucket. The pass reads
    the records in order (the hardware prefetches those); these rows are anywhere."""
    misc = CR[o, R_MISC]
    if not misc & CF_CT or CF[o, CF_EXPIRY] >= now:
        return
    ports = CR[o, R_PORTS]
    prefetch(CB, conn_bucket(CB, CR[o, R_SRC], CR[o, R_DST], ports, (misc >> 8) & 0xFF))
    if misc & CF_OUT:
        prefetch_node(CR, NR, CR[o, R_OPREV])
        prefetch_node(CR, NR, CR[o, R_ONEXT])
        prefetch(NB, in_bucket(NB, CR[o, R_EGRESS], CR[o, R_DST], misc >> 16, ports & 0xFFFF,
                               (misc >> 8) & 0xFF))  # fmt: skip


@jit()
def gc(S, families, signalled) -> None:
    """One CT GC pass at now over the maps of ``families`` (see reference.py)."""
    st, fs, cfg, cfgf, cnt = S.st, S.fs, S.cfg, S.cfgf, S.cnt
    CR, CF, CB, NR, NB = S.CR, S.CF, S.CB, S.NR, S.NB
    now = fs[F_NOW]
    d_tcp4 = 0
    d_any4 = 0
    d_tcp6 = 0
    d_any6 = 0
    rows = CR.shape[0]
    for o in range(rows):
        if o + GC_PREFETCH_AHEAD < rows:
            _prefetch_deletion(CR, CF, CB, NR, NB, o + GC_PREFETCH_AHEAD, now)
        misc = CR[o, R_MISC]
        if not misc & CF_CT or CF[o, CF_EXPIRY] >= now:
            continue
        v6 = CR[o, R_SRC] & V6_BIT != 0
        if not (families >> (1 if v6 else 0)) & 1:
            continue
        tcp = (misc >> 8) & 0xFF == TCP
        if v6:
            if tcp:
                d_tcp6 += 1
            else:
                d_any6 += 1
        elif tcp:
            d_tcp4 += 1
        else:
            d_any4 += 1
        _ct_delete(st, cnt, CR, CB, NR, NB, o)
    tcp_max = np.float64(cfg[C_CT_TCP_MAX])
    any_max = np.float64(cfg[C_CT_ANY_MAX])
    ratio = max(d_tcp4 / tcp_max, d_any4 / any_max, d_tcp6 / tcp_max, d_any6 / any_max)
    purge = st[S_ORPHANS] & families if signalled else 0
    if purge:  # only a pass woken by nat_fill_up purges orphans; skip if none can exist
        st[S_ORPHANS] &= ~purge
        for e in range(NR.shape[0]):
            pf = NR[e, E_PORTFLAGS]
            if (
                pf & NF_USED
                and (purge >> (1 if pf & NF_V6 else 0)) & 1
                and not CR[NR[e, E_OWNER], R_MISC] & CF_CT
            ):
                nat_remove(st, cnt, CR, CB, NR, NB, e, False)
    if not cfg[C_FIXED_GC]:
        last = fs[F_LAST_GC]
        actual = 0 if last == -np.inf else np.int64(round((now - last) * 1e9))
        interval_ns, cached = get_interval(st[S_GC_CACHED], actual, ratio, cfg[C_GC_MAX_NS])
        st[S_GC_CACHED] = cached
        fs[F_GC_INTERVAL] = interval_ns / 1e9
    fs[F_LAST_GC] = now
    fs[F_NEXT_GC] = now + fs[F_GC_INTERVAL]
    fs[F_MUTED_UNTIL] = now + cfgf[T_GC_PASS]
    cnt[K_GC_RUNS] += 1


@jit(inline=True)
def after_operation(S) -> None:
    st = S.st
    if st[S_SIGNAL_DUE]:
        families = st[S_SIGNAL_DUE]
        st[S_SIGNAL_DUE] = 0
        gc(S, families, True)
