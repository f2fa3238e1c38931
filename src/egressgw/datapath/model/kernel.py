"""The compiled kernel: the reference semantics on numpy rows, compiled with numba.

This module is the bulk engine (``run``: a batch of connections and the pending events
they schedule) and the kernel's entry points for Python (``__all__``; kernel_api.py wraps
them with types). The rest is in one module per concept: kernel_layout (which word means
what), kernel_random (MT19937), kernel_hash, kernel_records (connection records and CT
entries), kernel_nat (the NAT map and its LRU lists), kernel_ports (the port search),
kernel_packets (packets and the per-connection calls), kernel_gc (CT GC), kernel_heap
(pending events), kernel_views (index rebuilds, LRU order, nat-stats counts),
kernel_prefetch; kernel_jit compiles them all under one cache key.

State lives in a few flat arrays, gathered in one named structure ``S``
(kernel_state.State): the entry points take it first, and every function compiles once
and is cached on disk (``cache=True``). A call numba does not inline receives each array
it is given as a struct of seven to nine words, so the per-packet helpers that are not
inlined (``allocate``, ``nat_insert``, ``nat_remove``, ``conn_new``,
``conn_maybe_free``, the heap) take only the arrays they use, named as in ``S``:

- scalars: ``S.st`` (int64 scalars), ``S.fs`` (float64 clock and GC state), ``S.cfg``
  (int64 settings), ``S.cfgf`` (float64 settings), ``S.cnt`` (counters), ``S.tries``
  (histogram), ``S.mt`` (the MT19937 state of the injected ``random.Random``) and
  ``S.lat`` (the extra connect latency histogram, ModelCounters.delayed).
- ``CR`` connection records, one uint32 row (48 bytes) per CT key, i.e. original tuple:
  the tuple, the egress address, the CT entry (flags, expiry as float64 in the last two
  words, read through the ``CF`` view), the port it last got, its OUT NAT entry (a flag,
  LRU links and created second: the OUT entry is keyed by the same tuple, and its egress
  and port are the record's), a reference count (IN entries naming it as owner plus
  pending events) and the hash chain. A record without a CT entry stays while something
  references it, so IN entries name their tuple by record number instead of copying it.
  ``CB`` is the hash index.
- ``NR`` IN NAT entries, one uint32 row (36 bytes): owner record, the whole IN key
  (egress, port and flags, remote address, remote port and proto: a probe compares it
  without reading the owner's record), the IN hash chain, the per-family LRU list links
  and the created second.
  ``NB`` is the IN hash index, bucket = hash(key without port) + port.
- The per-family LRU list is doubly linked through both tables: a node is an NR row, or
  a record number with ``OUT_TAG`` set for an OUT entry.
- ``HI`` pending events (keepalives, ends, retransmissions of a dropped first packet): a
  binary heap of int64 rows (64 bytes, with a float64 view for the times) ordered by
  (time, sequence number).

Rows rather than columns: a lookup touches one cache line per record instead of one per
field. Every function is compiled with ``_nrt=False``: none allocates, and without numba's
reference counting a call no longer pays two atomic operations per array argument (that
alone made a connection start 2-3x slower). Small hot helpers are inlined at IR level.
Where the rows a later step reads are known early (the batch's next connections, the
next events, the LRU tail), ``run`` prefetches them (kernel_prefetch.py).
Functions that might need room (a new record, NAT slot or heap slot) check for it before
they change anything and return a NEED_* code, so the Python side can grow the arrays and
call again: every step is atomic.
"""

# Compiled functions take the state ``S`` (or the arrays of it they use) and scalar
# arguments; numba infers and checks their types when it compiles them, so mypy is told to
# leave the kernel modules alone. Python code calls the kernel through kernel_api.py,
# whose wrappers state the types.
# ruff: noqa: ANN001, ANN202, PLR0917
# mypy: ignore-errors

from __future__ import annotations

import numpy as np

from egressgw.datapath.model.kernel_gc import after_operation, ct_delete, gc
from egressgw.datapath.model.kernel_hash import conn_bucket, in_bucket
from egressgw.datapath.model.kernel_heap import heap_pop_to_end, heap_push
from egressgw.datapath.model.kernel_jit import SOURCES, jit
from egressgw.datapath.model.kernel_layout import (
    C_PMAX,
    C_PMIN,
    CF_OUT,
    E_ADDR,
    E_DPORT_PROTO,
    E_DST,
    E_OWNER,
    E_PORTFLAGS,
    F_NEXT_GC,
    F_NOW,
    H_CONN,
    H_EGRESS_KIND,
    H_END,
    H_KA,
    H_RTO,
    H_SEQ,
    H_START,
    H_TIME,
    HK_KEEPALIVE,
    HK_RETRY,
    IDLE,
    K_ATTEMPTED,
    K_CLOSED,
    K_CONNECT_FAILED,
    K_ESTABLISHED,
    K_RETRANSMITS,
    NEED_CONN,
    NEED_HEAP,
    NEED_NAT,
    NONE,
    OK,
    OUT_TAG,
    R_DST,
    R_EGRESS,
    R_MISC,
    R_ONEXT,
    R_OPREV,
    R_PORTS,
    R_REFS,
    R_SRC,
    S_BATCH_POS,
    S_CONN_NFREE,
    S_HEAP_SIZE,
    S_SEQ,
    S_TAIL,
    TCP,
    V6_BIT,
)
from egressgw.datapath.model.kernel_nat import lru_prev, nat_room, prefetch_node
from egressgw.datapath.model.kernel_packets import (
    end_record,
    forward,
    forward_at,
    op_reply,
    op_send,
    open_record,
    reply_record,
)
from egressgw.datapath.model.kernel_prefetch import prefetch
from egressgw.datapath.model.kernel_random import mt_fill16
from egressgw.datapath.model.kernel_records import conn_find, conn_maybe_free, conn_new
from egressgw.datapath.model.kernel_views import (
    count_endpoints,
    lru_order,
    rebuild_conn_index,
    rebuild_in_index,
)
from egressgw.datapath.model.types import LATENCY_STEP

# The entry points Python calls (through kernel_api.py; bench_model.py's loop calls
# forward, ct_delete, gc and after_operation directly) and the cache key's sources.
__all__ = [
    "SOURCES", "after_operation", "conn_find", "count_endpoints", "ct_delete", "forward",
    "gc", "lru_order", "mt_fill16", "nat_room", "op_reply", "op_send", "rebuild_conn_index",
    "rebuild_in_index", "run",
]  # fmt: skip

PREFETCH_AHEAD = 3  # batch connections: their buckets load while these ones run


# -- the bulk engine --------------------------------------------------------------------------


@jit()
def _schedule(st, CR, CB, HI, HF, now, o, seq, end, ka, kind, egress) -> None:
    ka64 = np.float64(ka)
    if ka64 > 0 and now + ka64 < end:
        heap_push(st, HI, HF, now + ka64, seq, o, end, ka, kind | HK_KEEPALIVE, egress, 0.0, 0.0)
    elif end < np.inf:
        heap_push(st, HI, HF, end, seq, o, end, ka, kind, egress, 0.0, 0.0)
    else:
        CR[o, R_REFS] -= 1  # nothing more will happen to it: unpin
        conn_maybe_free(st, CR, CB, o)


@jit(inline=True)
def _attempt(S, o, seq, egress, start, duration, ka, kind, retries, rto):
    """A connection's first packet or a retransmission of it (see reference.py)."""
    st, fs, cnt, lat, CR, CB, HI, HF = S.st, S.fs, S.cnt, S.lat, S.CR, S.CB, S.HI, S.HF
    now = fs[F_NOW]
    ports = np.int64(CR[o, R_PORTS])
    proto = np.int64((CR[o, R_MISC] >> 8) & 0xFF)
    o2, _port, drop, _r = open_record(
        S, o, np.int64(CR[o, R_SRC]), ports >> 16,
        np.int64(CR[o, R_DST]), ports & 0xFFFF, proto, egress,
    )  # fmt: skip
    if not drop:
        cnt[K_ESTABLISHED] += 1
        if now > start:
            lat[min(lat.shape[0] - 1, np.int64((now - start) / LATENCY_STEP + 0.5))] += 1
        _schedule(st, CR, CB, HI, HF, now, o2, seq, now + duration, ka, kind, egress)
    elif retries > 0:
        nxt = rto * 2.0 if proto == TCP else rto
        heap_push(st, HI, HF, now + rto, seq, o2, duration, ka,
                  kind | HK_RETRY | ((retries - 1) << 8), egress, nxt, start)  # fmt: skip
    else:
        cnt[K_CONNECT_FAILED] += 1
        CR[o2, R_REFS] -= 1
        conn_maybe_free(st, CR, CB, o2)


@jit()
def _event(S, slot) -> None:
    st, fs, cnt, CR, CB, HI, HF = S.st, S.fs, S.cnt, S.CR, S.CB, S.HI, S.HF
    o = HI[slot, H_CONN]
    seq = HI[slot, H_SEQ]
    end = HF[slot, H_END]
    ka = HF[slot, H_KA]
    kind = HI[slot, H_EGRESS_KIND] & 0xFF
    egress = HI[slot, H_EGRESS_KIND] >> 16
    if kind & HK_RETRY:
        cnt[K_RETRANSMITS] += 1
        _attempt(S, o, seq, egress, HF[slot, H_START], end, ka,
                 kind & 3, (HI[slot, H_EGRESS_KIND] >> 8) & 0xFF, HF[slot, H_RTO])  # fmt: skip
        return
    ports = np.int64(CR[o, R_PORTS])
    src, dst = np.int64(CR[o, R_SRC]), np.int64(CR[o, R_DST])
    proto = np.int64((CR[o, R_MISC] >> 8) & 0xFF)
    sport, dport = ports >> 16, ports & 0xFFFF
    # The event pins its record, so it is the tuple's record: no index lookup needed.
    if kind & HK_KEEPALIVE:
        o2, _p, drop, _b, _r = forward_at(S, o, src, sport, dst, dport, proto, egress, 0)
        if drop:
            CR[o, R_REFS] -= 1
            conn_maybe_free(st, CR, CB, o)
            return
        reply_record(S, o2, 0)
        _schedule(st, CR, CB, HI, HF, fs[F_NOW], o, seq, end, ka, kind & 3, egress)
        return
    end_record(S, o, src, sport, dst, dport, proto, egress, kind)
    if kind != IDLE:
        cnt[K_CLOSED] += 1
    CR[o, R_REFS] -= 1
    conn_maybe_free(st, CR, CB, o)


@jit(inline=True)
def _prefetch_start(cfg, CR, CB, NR, NB, B, j, deep) -> None:
    """Start loading what batch connection ``j`` will read first: its record's hash bucket
    and the IN bucket of its first port try (its own source port when in range); with
    ``deep``, also the first row each of those buckets names (read from the bucket, so
    prefetched earlier)."""
    src, sport, dst = np.int64(B.src[j]), np.int64(B.sport[j]), np.int64(B.dst[j])
    dport, proto = np.int64(B.dport[j]), np.int64(B.proto[j])
    b = conn_bucket(CB, src, dst, (sport << 16) | dport, proto)
    if cfg[C_PMIN] <= sport <= cfg[C_PMAX]:
        e = in_bucket(NB, np.int64(B.egress[j]), dst, sport, dport, proto)
        if deep:
            if NB[e] != NONE:
                prefetch(NR, NB[e])
        else:
            prefetch(NB, e)
    if deep:
        if CB[b] != NONE:
            prefetch(CR, CB[b])
    else:
        prefetch(CB, b)


@jit(inline=True)
def _prefetch_eviction(st, CR, NR, NB, fam) -> None:
    """What evicting the family's LRU tail will read: an IN entry's owner record and hash
    bucket, and the node before it (the next to go). The tail itself was written by the
    previous eviction, so it is in cache."""
    t = st[S_TAIL + fam]
    if t < 0:
        return
    if not t & OUT_TAG:
        prefetch(CR, NR[t, E_OWNER])
        dpp = NR[t, E_DPORT_PROTO]
        prefetch(NB, in_bucket(NB, NR[t, E_ADDR], NR[t, E_DST], NR[t, E_PORTFLAGS] >> 8,
                                dpp >> 8, dpp & 0xFF))  # fmt: skip
    prefetch_node(CR, NR, lru_prev(CR, NR, t))


@jit(inline=True)
def _prefetch_event(st, CR, NR, NB, HI) -> None:
    """After a pop: the records of the two events that may come after the next one, and
    for the next one (its record was prefetched at the previous pop) its OUT entry's LRU
    neighbours and its IN entry's bucket, which its packets will read."""
    size = st[S_HEAP_SIZE]
    if size > 1:
        prefetch(CR, HI[1, H_CONN])
    if size > 2:
        prefetch(CR, HI[2, H_CONN])
    if size > 0:
        o = HI[0, H_CONN]
        misc = CR[o, R_MISC]
        if misc & CF_OUT:
            prefetch_node(CR, NR, CR[o, R_OPREV])
            prefetch_node(CR, NR, CR[o, R_ONEXT])
            ports = CR[o, R_PORTS]
            prefetch(NB, in_bucket(NB, CR[o, R_EGRESS], CR[o, R_DST], misc >> 16,
                                    ports & 0xFFFF, (misc >> 8) & 0xFF))  # fmt: skip


@jit()
def run(S, B, until) -> int:
    """Process the batch from st[S_BATCH_POS] and pending events before ``until``.

    Returns OK when done, or NEED_* (before changing anything) when arrays must grow.
    """
    st, fs, cfg, cnt, CR, CB, NR, NB, HI, HF = (
        S.st, S.fs, S.cfg, S.cnt, S.CR, S.CB, S.NR, S.NB, S.HI, S.HF
    )  # fmt: skip
    b_start, b_duration, b_end, b_ka = B.start, B.duration, B.end, B.keepalive
    b_src, b_sport, b_dst, b_dport, b_proto = B.src, B.sport, B.dst, B.dport, B.proto
    b_egress, b_retries, b_rto = B.egress, B.retries, B.rto
    n = b_start.shape[0]
    heap_cap = HI.shape[0]
    while True:
        i = st[S_BATCH_POS]
        t_start = b_start[i] if i < n else np.inf
        t_heap = HF[0, H_TIME] if st[S_HEAP_SIZE] > 0 else np.inf
        t_gc = fs[F_NEXT_GC]
        t = min(t_start, t_heap, t_gc)
        if t >= until:
            break
        if t_gc <= t_heap and t_gc <= t_start:
            fs[F_NOW] = t
            gc(S, 3, False)
        elif t_heap <= t_start:
            fam = 1 if CR[HI[0, H_CONN], R_SRC] & V6_BIT else 0
            if not nat_room(S, fam):
                return NEED_NAT
            if st[S_HEAP_SIZE] + 1 >= heap_cap:  # a retransmission may schedule again
                return NEED_HEAP
            fs[F_NOW] = t
            slot = heap_pop_to_end(st, HI, HF)
            _prefetch_event(st, CR, NR, NB, HI)
            _event(S, slot)
        else:
            src = np.int64(b_src[i])
            fam = 1 if src & V6_BIT else 0
            if st[S_CONN_NFREE] < 1:
                return NEED_CONN
            if not nat_room(S, fam):
                return NEED_NAT
            if st[S_HEAP_SIZE] + 1 >= heap_cap:
                return NEED_HEAP
            fs[F_NOW] = t
            st[S_BATCH_POS] = i + 1
            seq = st[S_SEQ]
            st[S_SEQ] = seq + 1
            cnt[K_ATTEMPTED] += 1
            if i + PREFETCH_AHEAD < n:
                _prefetch_start(cfg, CR, CB, NR, NB, B, i + PREFETCH_AHEAD, False)
            if i + 1 < n:
                _prefetch_start(cfg, CR, CB, NR, NB, B, i + 1, True)
            _prefetch_eviction(st, CR, NR, NB, fam)
            sport, dst, dport = np.int64(b_sport[i]), np.int64(b_dst[i]), np.int64(b_dport[i])
            proto, egress = np.int64(b_proto[i]), np.int64(b_egress[i])
            o = conn_find(S, src, sport, dst, dport, proto)
            if o < 0:
                o = conn_new(st, CR, CB, src, sport, dst, dport, proto, egress)
            CR[o, R_REFS] += 1  # pinned while its attempts and events are pending
            _attempt(S, o, seq, egress, t, b_duration[i], b_ka[i],
                     np.int64(b_end[i]), np.int64(b_retries[i]), np.float64(b_rto[i]))  # fmt: skip
        after_operation(S)
    return OK
