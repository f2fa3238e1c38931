"""The compiled kernel: the reference semantics on numpy columns, compiled with numba.

State lives in flat arrays grouped in four tuples, so every function can be compiled once
and cached on disk (``cache=True``):

- ``SC`` scalars: ``st`` (int64 scalars), ``fs`` (float64 clock and GC state), ``cfg``
  (int64 settings), ``cfgf`` (float64 settings), ``cnt`` (counters), ``tries``
  (histogram) and ``mt`` (the MT19937 state of the injected ``random.Random``).
- ``C`` connections, one record per CT key (original tuple): the CT entry (flags,
  expiry), the port it last got, its OUT entry, a reference count (NAT entries naming it
  as owner plus pending events) and a chained hash index on the tuple. A record without a
  CT entry stays while something references it, so NAT entries can name their tuple by
  record number instead of copying it.
- ``N`` NAT entries: owner record, translated address and port, flags, the per-family
  LRU list (doubly linked) and a chained hash index on the IN key.
- ``H`` pending events: a binary heap ordered by (time, sequence number).

Functions that might need room (a new record, NAT slot or heap slot) check for it before
they change anything and return a NEED_* code, so the Python side can grow the arrays and
call again: every step is atomic.
"""

# Compiled functions take the state as tuples of flat arrays and many scalar arguments;
# numba infers their types, so annotations would only repeat what it checks anyway.
# ruff: noqa: ANN001, ANN201, ANN202, PLR0917
# mypy: disable-error-code="no-untyped-def, no-any-return"

from __future__ import annotations

import math

import numpy as np
from numba import njit

# -- indices into st ------------------------------------------------------------------------
S_NAT_FREE = 0
S_NAT_NFREE = 1
S_HEAD = 2  # + family: most recently used
S_TAIL = 4  # + family: least recently used
S_COUNT = 6  # + family: entries in the family's map
S_CONN_FREE = 8
S_CONN_NFREE = 9
S_CONN_COUNT = 10
S_HEAP_SIZE = 11
S_SEQ = 12
S_MT_INDEX = 13
S_BATCH_POS = 14
S_SIGNAL_DUE = 15
S_CT_COUNT = 16
ST_SIZE = 17

# -- indices into fs ------------------------------------------------------------------------
F_NOW = 0
F_NEXT_GC = 1
F_GC_INTERVAL = 2
F_LAST_SIGNAL_GC = 3
FS_SIZE = 4

# -- indices into cfg / cfgf ----------------------------------------------------------------
C_CAP = 0
C_PMIN = 1
C_PMAX = 2
C_RETRIES = 3
C_THRES = 4
C_FIXED_GC = 5
CFG_SIZE = 6
T_TCP = 0
T_SYN = 1
T_FIN = 2
T_ANY = 3
T_HOLDOFF = 4
CFGF_SIZE = 5

# -- indices into cnt -----------------------------------------------------------------------
K_ATTEMPTED = 0
K_ESTABLISHED = 1
K_CLOSED = 2
K_ALLOCATIONS = 3
K_DROPS_NO_MAPPING = 4
K_EVICT_OUT = 5
K_EVICT_IN = 6
K_BROKEN = 7
K_REPLY_DROPS = 8
K_SIGNALS = 9
K_GC_RUNS = 10
CNT_SIZE = 11

# -- flags ----------------------------------------------------------------------------------
CF_USED = 1
CF_CT = 2
CF_BROKEN = 4
CF_STATE_SHIFT = 3  # two bits: CT_SYN, CT_ESTABLISHED, CT_CLOSING
NF_USED = 1
NF_IN = 2
NF_V6 = 4
HK_KEEPALIVE = 4  # h_kind: low two bits are the EndKind

CT_SYN = 0
CT_ESTABLISHED = 1
CT_CLOSING = 2
TCP = 6
IDLE = 2
DROP_NO_MAPPING = 167
V6_BIT = 0x8000_0000

OK = 0
NEED_CONN = 1
NEED_NAT = 2
NEED_HEAP = 3

_U32 = np.uint64(0xFFFFFFFF)


# -- MT19937, exactly as CPython's _random module ---------------------------------------------


@njit(cache=True)
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


@njit(cache=True)
def mt_next32(st: np.ndarray, mt: np.ndarray) -> np.uint64:
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
    return y & _U32


@njit(cache=True)
def mt_random16(st: np.ndarray, mt: np.ndarray) -> int:
    """``random.Random.getrandbits(16)``: the top 16 bits of one 32-bit output."""
    return int(mt_next32(st, mt) >> np.uint64(16))


@njit(cache=True)
def mt_fill16(st: np.ndarray, mt: np.ndarray, out: np.ndarray) -> None:
    for i in range(out.shape[0]):
        out[i] = mt_random16(st, mt)


# -- hashing ----------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _mix(x: np.uint64) -> np.uint64:
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True, inline="always")
def _hash5(a: int, b: int, c: int, d: int, e: int, mask: int) -> int:
    hi = (np.uint64(a) << np.uint64(32)) | np.uint64(c)
    lo = (np.uint64(b) << np.uint64(24)) | (np.uint64(d) << np.uint64(8)) | np.uint64(e)
    return int(_mix(hi ^ _mix(lo)) & np.uint64(mask))


# -- connection records ------------------------------------------------------------------------


@njit(cache=True)
def conn_find(C, src: int, sport: int, dst: int, dport: int, proto: int) -> int:
    c_src, c_dst, _eg, c_sport, c_dport, _p, c_proto, _f, _x, _o, _r, c_hnext, buckets = C
    o = buckets[_hash5(src, sport, dst, dport, proto, buckets.shape[0] - 1)]
    while o >= 0:
        if (
            c_src[o] == src
            and c_dst[o] == dst
            and c_sport[o] == sport
            and c_dport[o] == dport
            and c_proto[o] == proto
        ):
            return o
        o = c_hnext[o]
    return -1


@njit(cache=True)
def _conn_new(st, C, src, sport, dst, dport, proto, egress):
    c_src, c_dst, c_eg, c_sport, c_dport, c_port, c_proto, c_flags, _x, c_out, c_refs = C[:11]
    c_hnext, buckets = C[11], C[12]
    o = st[S_CONN_FREE]
    st[S_CONN_FREE] = c_hnext[o]
    st[S_CONN_NFREE] -= 1
    st[S_CONN_COUNT] += 1
    c_src[o] = src
    c_dst[o] = dst
    c_sport[o] = sport
    c_dport[o] = dport
    c_proto[o] = proto
    c_eg[o] = egress
    c_port[o] = 0
    c_flags[o] = CF_USED
    c_out[o] = -1
    c_refs[o] = 0
    b = _hash5(src, sport, dst, dport, proto, buckets.shape[0] - 1)
    c_hnext[o] = buckets[b]
    buckets[b] = o
    return o


@njit(cache=True)
def conn_maybe_free(st, C, o: int) -> None:
    """Free a record that has neither a CT entry nor anything referring to it."""
    c_src, c_dst, _eg, c_sport, c_dport, _p, c_proto, c_flags, _x, _o, c_refs = C[:11]
    c_hnext, buckets = C[11], C[12]
    if c_refs[o] != 0 or c_flags[o] & CF_CT or not c_flags[o] & CF_USED:
        return
    b = _hash5(c_src[o], c_sport[o], c_dst[o], c_dport[o], c_proto[o], buckets.shape[0] - 1)
    prev = -1
    cur = buckets[b]
    while cur != o:
        prev = cur
        cur = c_hnext[cur]
    if prev < 0:
        buckets[b] = c_hnext[o]
    else:
        c_hnext[prev] = c_hnext[o]
    c_flags[o] = 0
    c_hnext[o] = st[S_CONN_FREE]
    st[S_CONN_FREE] = o
    st[S_CONN_NFREE] += 1
    st[S_CONN_COUNT] -= 1


@njit(cache=True)
def _lifetime(cfgf, proto: int, state: int) -> float:
    if proto != TCP:
        return cfgf[T_ANY]
    if state == CT_ESTABLISHED:
        return cfgf[T_TCP]
    if state == CT_CLOSING:
        return cfgf[T_FIN]
    return cfgf[T_SYN]


# -- the NAT map ------------------------------------------------------------------------------


@njit(cache=True)
def _lru_unlink(st, N, e: int, fam: int) -> None:
    n_prev, n_next = N[4], N[5]
    p = n_prev[e]
    q = n_next[e]
    if p >= 0:
        n_next[p] = q
    else:
        st[S_HEAD + fam] = q
    if q >= 0:
        n_prev[q] = p
    else:
        st[S_TAIL + fam] = p


@njit(cache=True)
def _lru_push(st, N, e: int, fam: int) -> None:
    n_prev, n_next = N[4], N[5]
    h = st[S_HEAD + fam]
    n_prev[e] = -1
    n_next[e] = h
    if h >= 0:
        n_prev[h] = e
    else:
        st[S_TAIL + fam] = e
    st[S_HEAD + fam] = e


@njit(cache=True)
def nat_touch(st, N, e: int) -> None:
    """A lookup from the datapath: the entry becomes the most recently used."""
    fam = 1 if N[3][e] & NF_V6 else 0
    if st[S_HEAD + fam] == e:
        return
    _lru_unlink(st, N, e, fam)
    _lru_push(st, N, e, fam)


@njit(cache=True)
def in_find(C, N, dst: int, dport: int, egress: int, port: int, proto: int) -> int:
    c_dst, c_dport, c_proto = C[1], C[4], C[6]
    n_owner, n_addr, n_port, n_flags, n_hnext, buckets = N[0], N[1], N[2], N[3], N[6], N[8]
    e = buckets[_hash5(egress, port, dst, dport, proto, buckets.shape[0] - 1)]
    while e >= 0:
        o = n_owner[e]
        if (
            n_port[e] == port
            and n_addr[e] == egress
            and n_flags[e] & NF_IN
            and c_dst[o] == dst
            and c_dport[o] == dport
            and c_proto[o] == proto
        ):
            return e
        e = n_hnext[e]
    return -1


@njit(cache=True)
def nat_remove(st, cnt, C, N, e: int, evicted: bool) -> None:
    """Delete a NAT entry (an LRU eviction when ``evicted``)."""
    c_dst, c_dport, c_proto, c_out, c_refs = C[1], C[4], C[6], C[9], C[10]
    n_owner, n_addr, n_port, n_flags, n_next, n_hnext, buckets = (
        N[0], N[1], N[2], N[3], N[5], N[6], N[8],
    )  # fmt: skip
    fam = 1 if n_flags[e] & NF_V6 else 0
    o = n_owner[e]
    _lru_unlink(st, N, e, fam)
    if n_flags[e] & NF_IN:
        b = _hash5(n_addr[e], n_port[e], c_dst[o], c_dport[o], c_proto[o], buckets.shape[0] - 1)
        prev = -1
        cur = buckets[b]
        while cur != e:
            prev = cur
            cur = n_hnext[cur]
        if prev < 0:
            buckets[b] = n_hnext[e]
        else:
            n_hnext[prev] = n_hnext[e]
        if evicted:
            cnt[K_EVICT_IN] += 1
    else:
        if c_out[o] == e:
            c_out[o] = -1
        if evicted:
            cnt[K_EVICT_OUT] += 1
    n_flags[e] = 0
    n_next[e] = st[S_NAT_FREE]
    st[S_NAT_FREE] = e
    st[S_NAT_NFREE] += 1
    st[S_COUNT + fam] -= 1
    c_refs[o] -= 1
    conn_maybe_free(st, C, o)


@njit(cache=True)
def nat_room(st, cfg, fam: int) -> bool:
    """Whether two inserts into the family's map can be served without growing arrays."""
    need = min(2, cfg[C_CAP] - st[S_COUNT + fam])
    return st[S_NAT_NFREE] >= need


@njit(cache=True)
def _nat_insert(st, cnt, cfg, C, N, o, addr, port, is_in, fam, now):
    if st[S_COUNT + fam] >= cfg[C_CAP]:
        nat_remove(st, cnt, C, N, st[S_TAIL + fam], True)
    n_owner, n_addr, n_port, n_flags, _p, n_next, n_hnext, n_created, buckets = N
    c_dst, c_dport, c_proto, c_refs = C[1], C[4], C[6], C[10]
    e = st[S_NAT_FREE]
    st[S_NAT_FREE] = n_next[e]
    st[S_NAT_NFREE] -= 1
    st[S_COUNT + fam] += 1
    n_owner[e] = o
    n_addr[e] = addr
    n_port[e] = port
    n_created[e] = now
    flags = NF_USED
    if fam:
        flags |= NF_V6
    if is_in:
        flags |= NF_IN
        b = _hash5(addr, port, c_dst[o], c_dport[o], c_proto[o], buckets.shape[0] - 1)
        n_hnext[e] = buckets[b]
        buckets[b] = e
    n_flags[e] = flags
    c_refs[o] += 1
    _lru_push(st, N, e, fam)
    return e


@njit(cache=True)
def _clamp(start: int, end: int, value: int) -> int:
    return ((value & 0xFFFF) % ((end - start) & 0xFFFF) + start) & 0xFFFF


@njit(cache=True)
def _allocate(SC, C, N, o: int, egress: int, fam: int):
    """snat_v4_new_mapping: returns (port or -1, retries)."""
    st, fs, cfg, cfgf, cnt, tries, mt = SC
    _c_src, c_dst, c_sport, c_dport, c_proto, c_out = C[0], C[1], C[3], C[4], C[6], C[9]
    start = cfg[C_PMIN]
    end = cfg[C_PMAX]
    retries_max = cfg[C_RETRIES]
    now = fs[F_NOW]
    sport = int(c_sport[o])
    port = sport if start <= sport <= end else _clamp(start, end, mt_random16(st, mt))
    dst = int(c_dst[o])
    dport = int(c_dport[o])
    proto = int(c_proto[o])
    retries = 0
    found = False
    while retries < retries_max:
        e = in_find(C, N, dst, dport, egress, port, proto)
        if e < 0:
            _nat_insert(st, cnt, cfg, C, N, o, egress, port, True, fam, now)
            c_out[o] = _nat_insert(st, cnt, cfg, C, N, o, egress, port, False, fam, now)
            found = True
            break
        nat_touch(st, N, e)
        port = _clamp(start, end, port + 1) if retries else _clamp(start, end, mt_random16(st, mt))
        retries += 1
    tries[retries] += 1
    if retries > cfg[C_THRES]:
        cnt[K_SIGNALS] += 1
        if now >= fs[F_LAST_SIGNAL_GC] + cfgf[T_HOLDOFF]:
            fs[F_LAST_SIGNAL_GC] = now
            st[S_SIGNAL_DUE] = 1
    return (port if found else -1), retries


# -- packets ----------------------------------------------------------------------------------


@njit(cache=True)
def forward(SC, C, N, src, sport, dst, dport, proto, egress, closing):
    """A packet from the pod: (record, port or -1, drop, broken, retries)."""
    st, fs, _cfg, cfgf, cnt, _tries, _mt = SC
    c_eg, c_port, c_flags, c_expiry, c_out = C[2], C[5], C[7], C[8], C[9]
    now = fs[F_NOW]
    fam = 1 if src & V6_BIT else 0
    o = conn_find(C, src, sport, dst, dport, proto)
    out = -1
    if o >= 0 and c_out[o] >= 0:
        out = c_out[o]
        nat_touch(st, N, out)
    if o < 0 or not c_flags[o] & CF_CT:
        if o < 0:
            o = _conn_new(st, C, src, sport, dst, dport, proto, egress)
        state = CT_CLOSING if closing and proto == TCP else CT_SYN
        c_flags[o] = CF_USED | CF_CT | (state << CF_STATE_SHIFT)
        c_eg[o] = egress
        c_port[o] = 0
        c_expiry[o] = now + _lifetime(cfgf, proto, state)
        st[S_CT_COUNT] += 1
    else:
        state = (c_flags[o] >> CF_STATE_SHIFT) & 3
        if closing and proto == TCP:
            state = CT_CLOSING
            c_flags[o] = (c_flags[o] & 7) | (state << CF_STATE_SHIFT)
        c_expiry[o] = now + _lifetime(cfgf, proto, state)
    if out >= 0:
        return o, int(N[2][out]), 0, False, 0
    broken = c_port[o] != 0
    if broken and not c_flags[o] & CF_BROKEN:
        c_flags[o] |= CF_BROKEN
        cnt[K_BROKEN] += 1
    port, retries = _allocate(SC, C, N, o, egress, fam)
    if port < 0:
        cnt[K_DROPS_NO_MAPPING] += 1
        return o, -1, DROP_NO_MAPPING, broken, retries
    cnt[K_ALLOCATIONS] += 1
    c_port[o] = port
    c_eg[o] = egress
    return o, port, 0, broken, retries


@njit(cache=True)
def _track_reply(cfgf, C, o: int, now: float) -> None:
    c_proto, c_flags, c_expiry = C[6], C[7], C[8]
    if not c_flags[o] & CF_CT:
        return
    state = (c_flags[o] >> CF_STATE_SHIFT) & 3
    if state == CT_SYN:
        state = CT_ESTABLISHED
        c_flags[o] = (c_flags[o] & 7) | (state << CF_STATE_SHIFT)
    c_expiry[o] = now + _lifetime(cfgf, c_proto[o], state)


@njit(cache=True)
def reply(SC, C, N, src, sport, dst, dport, proto):
    """A reply to the port the connection last had: (port or -1, drop)."""
    st, fs, _cfg, cfgf, cnt, _tries, _mt = SC
    c_eg, c_port, c_flags = C[2], C[5], C[7]
    o = conn_find(C, src, sport, dst, dport, proto)
    if o < 0 or not c_flags[o] & CF_CT or c_port[o] == 0:
        cnt[K_REPLY_DROPS] += 1
        return -1, DROP_NO_MAPPING
    port = int(c_port[o])
    e = in_find(C, N, dst, dport, c_eg[o], port, proto)
    if e < 0:
        cnt[K_REPLY_DROPS] += 1
        return -1, DROP_NO_MAPPING
    nat_touch(st, N, e)
    owner = N[0][e]
    _track_reply(cfgf, C, owner, fs[F_NOW])
    if owner != o:
        cnt[K_REPLY_DROPS] += 1
        return -1, DROP_NO_MAPPING
    return port, 0


# -- garbage collection -----------------------------------------------------------------------


@njit(cache=True)
def next_gc_interval(interval: float, ratio: float) -> float:
    if ratio == 0.0:
        return interval
    if ratio > 0.25:
        ratio = min(ratio, 0.9)
        return max(10.0, math.floor(interval * (1.0 - ratio) + 0.5))
    if ratio < 0.05:
        return min(43200.0, math.floor(interval * 1.5 + 0.5))
    return interval


@njit(cache=True)
def gc(SC, C, N) -> None:
    """One CT GC pass at now: expire CT entries with their NAT mappings, then orphans."""
    st, fs, cfg, _cfgf, cnt, _tries, _mt = SC
    c_dst, c_dport, c_proto, c_flags, c_expiry, c_out, c_refs = (
        C[1], C[4], C[6], C[7], C[8], C[9], C[10],
    )  # fmt: skip
    n_owner, n_addr, n_port, n_flags = N[0], N[1], N[2], N[3]
    now = fs[F_NOW]
    deleted = 0
    alive = 0
    for o in range(c_flags.shape[0]):
        if not c_flags[o] & CF_CT:
            continue
        if c_expiry[o] >= now:
            alive += 1
            continue
        deleted += 1
        c_flags[o] &= ~np.uint8(CF_CT | CF_BROKEN)
        st[S_CT_COUNT] -= 1
        out = c_out[o]
        if out >= 0:
            dst, dport, proto = int(c_dst[o]), int(c_dport[o]), int(c_proto[o])
            egress, port = int(n_addr[out]), int(n_port[out])
            c_refs[o] += 1  # keep the record while its NAT entries go
            nat_remove(st, cnt, C, N, out, False)
            e = in_find(C, N, dst, dport, egress, port, proto)
            if e >= 0:
                nat_remove(st, cnt, C, N, e, False)
            c_refs[o] -= 1
        conn_maybe_free(st, C, o)
    for e in range(n_flags.shape[0]):
        if n_flags[e] & NF_USED and not c_flags[n_owner[e]] & CF_CT:
            nat_remove(st, cnt, C, N, e, False)
    total = deleted + alive
    ratio = deleted / total if total else 0.0
    if not cfg[C_FIXED_GC]:
        fs[F_GC_INTERVAL] = next_gc_interval(fs[F_GC_INTERVAL], ratio)
    fs[F_NEXT_GC] = now + fs[F_GC_INTERVAL]
    cnt[K_GC_RUNS] += 1


@njit(cache=True)
def after_operation(SC, C, N) -> None:
    st = SC[0]
    if st[S_SIGNAL_DUE]:
        st[S_SIGNAL_DUE] = 0
        gc(SC, C, N)


# -- the event heap ---------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _before(H, i: int, j: int) -> bool:
    h_time, h_seq = H[0], H[1]
    return h_time[i] < h_time[j] or (h_time[i] == h_time[j] and h_seq[i] < h_seq[j])


@njit(cache=True)
def _heap_swap(H, i: int, j: int) -> None:
    h_time, h_seq, h_conn, h_end, h_ka, h_kind, h_egress = H
    h_time[i], h_time[j] = h_time[j], h_time[i]
    h_seq[i], h_seq[j] = h_seq[j], h_seq[i]
    h_conn[i], h_conn[j] = h_conn[j], h_conn[i]
    h_end[i], h_end[j] = h_end[j], h_end[i]
    h_ka[i], h_ka[j] = h_ka[j], h_ka[i]
    h_kind[i], h_kind[j] = h_kind[j], h_kind[i]
    h_egress[i], h_egress[j] = h_egress[j], h_egress[i]


@njit(cache=True)
def heap_push(st, H, t, seq, o, end, ka, kind, egress) -> None:
    h_time, h_seq, h_conn, h_end, h_ka, h_kind, h_egress = H
    i = st[S_HEAP_SIZE]
    st[S_HEAP_SIZE] = i + 1
    h_time[i] = t
    h_seq[i] = seq
    h_conn[i] = o
    h_end[i] = end
    h_ka[i] = ka
    h_kind[i] = kind
    h_egress[i] = egress
    while i > 0:
        parent = (i - 1) >> 1
        if not _before(H, i, parent):
            break
        _heap_swap(H, i, parent)
        i = parent


@njit(cache=True)
def heap_pop_to_end(st, H) -> int:
    """Move the earliest event to the slot just past the heap and return that slot."""
    n = st[S_HEAP_SIZE] - 1
    st[S_HEAP_SIZE] = n
    _heap_swap(H, 0, n)
    i = 0
    while True:
        left = 2 * i + 1
        if left >= n:
            break
        child = left
        if left + 1 < n and _before(H, left + 1, left):
            child = left + 1
        if not _before(H, child, i):
            break
        _heap_swap(H, i, child)
        i = child
    return n


# -- the bulk engine --------------------------------------------------------------------------


@njit(cache=True)
def _schedule(SC, C, H, o, seq, end, ka, kind, egress) -> None:
    st, fs = SC[0], SC[1]
    now = fs[F_NOW]
    ka64 = np.float64(ka)
    if ka64 > 0 and now + ka64 < end:
        heap_push(st, H, now + ka64, seq, o, end, ka, kind | HK_KEEPALIVE, egress)
    elif end < np.inf:
        heap_push(st, H, end, seq, o, end, ka, kind, egress)
    else:
        C[10][o] -= 1  # nothing more will happen to it: unpin
        conn_maybe_free(st, C, o)


@njit(cache=True)
def _event(SC, C, N, H, slot: int) -> None:
    st, cnt = SC[0], SC[4]
    h_seq, h_conn, h_end, h_ka, h_kind, h_egress = H[1], H[2], H[3], H[4], H[5], H[6]
    c_src, c_dst, c_sport, c_dport, c_proto, c_refs = C[0], C[1], C[3], C[4], C[6], C[10]
    o = int(h_conn[slot])
    seq = h_seq[slot]
    end = h_end[slot]
    ka = h_ka[slot]
    kind = int(h_kind[slot])
    egress = int(h_egress[slot])
    src, sport, dst, dport, proto = (
        int(c_src[o]), int(c_sport[o]), int(c_dst[o]), int(c_dport[o]), int(c_proto[o]),
    )  # fmt: skip
    if kind & HK_KEEPALIVE:
        _o, _port, drop, _b, _r = forward(SC, C, N, src, sport, dst, dport, proto, egress, False)
        if drop:
            c_refs[o] -= 1
            conn_maybe_free(st, C, o)
            return
        reply(SC, C, N, src, sport, dst, dport, proto)
        _schedule(SC, C, H, o, seq, end, ka, kind & 3, egress)
        return
    closing = kind != IDLE
    _o, _port, drop, _b, _r = forward(SC, C, N, src, sport, dst, dport, proto, egress, closing)
    if not drop:
        reply(SC, C, N, src, sport, dst, dport, proto)
    if closing:
        cnt[K_CLOSED] += 1
    c_refs[o] -= 1
    conn_maybe_free(st, C, o)


@njit(cache=True)
def run(SC, C, N, H, B, until: float) -> int:
    """Process the batch from st[S_BATCH_POS] and pending events before ``until``.

    Returns OK when done, or NEED_* (before changing anything) when arrays must grow.
    """
    st, fs, cfg, _cfgf, cnt, _tries, _mt = SC
    b_start, b_duration, b_end, b_src, b_sport, b_dst, b_dport, b_proto, b_egress, b_ka = B
    h_time = H[0]
    n = b_start.shape[0]
    heap_cap = h_time.shape[0]
    while True:
        i = st[S_BATCH_POS]
        t_start = b_start[i] if i < n else np.inf
        t_heap = h_time[0] if st[S_HEAP_SIZE] > 0 else np.inf
        t_gc = fs[F_NEXT_GC]
        t = min(t_start, t_heap, t_gc)
        if t >= until:
            break
        if t_gc <= t_heap and t_gc <= t_start:
            fs[F_NOW] = t
            gc(SC, C, N)
        elif t_heap <= t_start:
            fam = 1 if C[0][H[2][0]] & V6_BIT else 0
            if not nat_room(st, cfg, fam):
                return NEED_NAT
            fs[F_NOW] = t
            slot = heap_pop_to_end(st, H)
            _event(SC, C, N, H, slot)
        else:
            src = int(b_src[i])
            fam = 1 if src & V6_BIT else 0
            if st[S_CONN_NFREE] < 1:
                return NEED_CONN
            if not nat_room(st, cfg, fam):
                return NEED_NAT
            if st[S_HEAP_SIZE] + 1 >= heap_cap:
                return NEED_HEAP
            fs[F_NOW] = t
            st[S_BATCH_POS] = i + 1
            seq = st[S_SEQ]
            st[S_SEQ] = seq + 1
            cnt[K_ATTEMPTED] += 1
            sport, dst, dport = int(b_sport[i]), int(b_dst[i]), int(b_dport[i])
            proto, egress = int(b_proto[i]), int(b_egress[i])
            o, _port, drop, _b, _r = forward(SC, C, N, src, sport, dst, dport, proto, egress, False)
            if not drop:
                cnt[K_ESTABLISHED] += 1
                reply(SC, C, N, src, sport, dst, dport, proto)
                C[10][o] += 1  # pinned while events are pending
                _schedule(SC, C, H, o, seq, t + b_duration[i], b_ka[i], int(b_end[i]), egress)
        after_operation(SC, C, N)
    return OK


# -- growing ----------------------------------------------------------------------------------


@njit(cache=True)
def rebuild_conn_index(C) -> None:
    """Re-thread every record into ``buckets`` (new size) and free slots into the list."""
    c_src, c_dst, _eg, c_sport, c_dport, _p, c_proto, c_flags = C[:8]
    c_hnext, buckets = C[11], C[12]
    buckets[:] = -1
    mask = buckets.shape[0] - 1
    for o in range(c_flags.shape[0]):
        if c_flags[o] & CF_USED:
            b = _hash5(c_src[o], c_sport[o], c_dst[o], c_dport[o], c_proto[o], mask)
            c_hnext[o] = buckets[b]
            buckets[b] = o


@njit(cache=True)
def rebuild_in_index(C, N) -> None:
    c_dst, c_dport, c_proto = C[1], C[4], C[6]
    n_owner, n_addr, n_port, n_flags, n_hnext, buckets = N[0], N[1], N[2], N[3], N[6], N[8]
    buckets[:] = -1
    mask = buckets.shape[0] - 1
    for e in range(n_flags.shape[0]):
        if n_flags[e] & NF_USED and n_flags[e] & NF_IN:
            o = n_owner[e]
            b = _hash5(n_addr[e], n_port[e], c_dst[o], c_dport[o], c_proto[o], mask)
            n_hnext[e] = buckets[b]
            buckets[b] = e


# -- the per-connection API -------------------------------------------------------------------


@njit(cache=True)
def op_connect(SC, C, N, src, sport, dst, dport, proto, egress):
    cnt = SC[4]
    cnt[K_ATTEMPTED] += 1
    _o, port, drop, _b, retries = forward(SC, C, N, src, sport, dst, dport, proto, egress, False)
    if not drop:
        cnt[K_ESTABLISHED] += 1
    after_operation(SC, C, N)
    return port, drop, retries


@njit(cache=True)
def op_send(SC, C, N, src, sport, dst, dport, proto, egress, closing):
    _o, port, drop, broken, retries = forward(
        SC, C, N, src, sport, dst, dport, proto, egress, closing
    )
    if closing:
        SC[4][K_CLOSED] += 1
    after_operation(SC, C, N)
    return port, drop, broken, retries


@njit(cache=True)
def op_reply(SC, C, N, src, sport, dst, dport, proto):
    return reply(SC, C, N, src, sport, dst, dport, proto)


@njit(cache=True)
def lru_order(st, N, fam: int, out) -> int:
    """Slots of the family's NAT entries into ``out``, least recently used first."""
    n_prev = N[4]
    e = st[S_TAIL + fam]
    k = 0
    while e >= 0:
        out[k] = e
        k += 1
        e = n_prev[e]
    return k
