"""The compiled kernel: the reference semantics on numpy rows, compiled with numba.

State lives in a few flat arrays, gathered in one named structure ``S``
(kernel_state.State): the entry points take it first, and every function compiles once
and is cached on disk (``cache=True``). A call numba does not inline receives each array
it is given as a struct of seven to nine words, so the per-packet helpers that are not
inlined (``_allocate``, ``_nat_insert``, ``nat_remove``, ``_conn_new``,
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
Functions that might need room (a new record, NAT slot or heap slot) check for it before
they change anything and return a NEED_* code, so the Python side can grow the arrays and
call again: every step is atomic.
"""

# Compiled functions take the state ``S`` and scalar arguments; numba infers and checks
# their types when it compiles them, so mypy is told to leave this file alone. Python code
# calls the kernel through kernel_api.py, whose wrappers state the types.
# ruff: noqa: ANN001, ANN201, ANN202, PLR0917
# mypy: ignore-errors

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numba import njit

from egressgw.datapath.model import gcpacing, kernel_cache, kernel_prefetch, kernel_state, types
from egressgw.datapath.model.kernel_prefetch import prefetch
from egressgw.datapath.model.types import LATENCY_STEP

# Every file whose code or constants the compiled functions take in: one cache stamp over
# all of them, so changing any recompiles (kernel_cache.py). Keep this list complete when
# the kernel imports from another module.
SOURCES = (
    Path(__file__),
    *(Path(str(m.__file__)) for m in (gcpacing, types, kernel_state, kernel_prefetch)),
)
kernel_cache.register(SOURCES)

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
S_SIGNAL_DUE = 15  # a bit per family whose nat_fill_up woke the GC
S_CT_COUNT = 16
S_ORPHANS = 17  # a bit per family: some IN entry may have an owner without a CT entry
S_GC_CACHED = 18  # ctmap's cachedGCInterval, ns (0: unset)
ST_SIZE = 19

# -- indices into fs ------------------------------------------------------------------------
F_NOW = 0
F_NEXT_GC = 1
F_GC_INTERVAL = 2
F_MUTED_UNTIL = 3  # nat_fill_up is muted while a GC pass runs
F_LAST_GC = 4  # when the previous pass started (-inf: none yet)
FS_SIZE = 5

# -- indices into cfg / cfgf ----------------------------------------------------------------
C_CAP = 0
C_PMIN = 1
C_PMAX = 2
C_RETRIES = 3
C_THRES = 4
C_FIXED_GC = 5
C_CT_TCP_MAX = 6
C_CT_ANY_MAX = 7
C_GC_MAX_NS = 8  # --conntrack-gc-max-interval in ns (0: none)
C_CLAMP = 9  # ports.Clamp: 0 modulo (v1.16), 1 multiply-shift (v1.17+)
CFG_SIZE = 10
T_TCP = 0
T_SYN = 1
T_FIN = 2
T_ANY = 3
T_GC_PASS = 4
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
K_RETRANSMITS = 11
K_CONNECT_FAILED = 12
CNT_SIZE = 13

# -- connection record words (CR) -----------------------------------------------------------
R_SRC = 0
R_DST = 1
R_EGRESS = 2
R_PORTS = 3  # sport << 16 | dport
R_MISC = 4  # port << 16 | proto << 8 | flags
R_OPREV = 5  # the OUT entry (when CF_OUT): LRU links and created second
R_ONEXT = 6
R_OCREATED = 7
R_REFS = 8
R_NEXT = 9  # hash chain, or free list
CR_WORDS = 12  # words 10-11: CT expiry, float64 column 5 of the CF view
CF_EXPIRY = 5

# -- NAT entry words (NR) -------------------------------------------------------------------
E_OWNER = 0
E_ADDR = 1
E_PORTFLAGS = 2  # port << 8 | flags
E_DST = 3  # the rest of the IN key, so a probe reads no record: remote address,
E_DPORT_PROTO = 4  # remote port << 8 | proto
E_HNEXT = 5
E_PREV = 6
E_NEXT = 7  # LRU next, or free list
E_CREATED = 8  # whole seconds
NR_WORDS = 9

NONE = 0xFFFFFFFF
# LRU list nodes: an IN entry is its NR row, an OUT entry is its record number | OUT_TAG.
OUT_TAG = 0x8000_0000

# -- event rows (HI int64, HF its float64 view) ----------------------------------------------
H_TIME = 0  # float
H_END = 1  # float
H_KA = 2  # float
H_SEQ = 3
H_CONN = 4
H_EGRESS_KIND = 5  # egress << 16 | retransmissions left << 8 | h_kind
H_RTO = 6  # float: a retransmission's next timeout
H_START = 7  # float: when a retransmitting connection started
H_WORDS = 8

# -- flags ----------------------------------------------------------------------------------
CF_USED = 1
CF_CT = 2
CF_BROKEN = 4
# The CT entry's TCP state (see reference.py): the reply direction's SYN, seen_non_syn,
# and each direction's closing flag.
CF_RX_SYN = 8
CF_NON_SYN = 16
CF_OUT = 32  # the record holds the connection's OUT NAT entry
CF_TX_CLOSING = 64
CF_RX_CLOSING = 128
CF_CLOSED = CF_TX_CLOSING | CF_RX_CLOSING
CF_TCP_STATE = CF_RX_SYN | CF_NON_SYN | CF_CLOSED
NF_USED = 1
NF_IN = 2
NF_V6 = 4
HK_KEEPALIVE = 4  # h_kind: low two bits are the EndKind
HK_RETRY = 8

# packet flags (types.TcpFlags)
P_SYN = 1
P_FIN = 2
P_RST = 4

TCP = 6
FIN_END = 0
RST_END = 1
IDLE = 2
RST_SERVER_END = 3
DROP_NO_MAPPING = 167
V6_BIT = 0x8000_0000

OK = 0
NEED_CONN = 1
NEED_NAT = 2
NEED_HEAP = 3

_U32 = np.uint64(0xFFFFFFFF)
PREFETCH_AHEAD = 3  # batch connections: their buckets load while these ones run


# -- MT19937, exactly as CPython's _random module ---------------------------------------------


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False, inline="always")
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


@njit(cache=True, _nrt=False)
def mt_fill16(st: np.ndarray, mt: np.ndarray, out: np.ndarray) -> None:
    for i in range(out.shape[0]):
        out[i] = mt_random16(st, mt)


# -- hashing ----------------------------------------------------------------------------------


@njit(cache=True, _nrt=False, inline="always")
def _hash(a, b, c, mask) -> int:
    """Bucket of a key packed into three 32-bit words."""
    x = (np.uint64(a) << np.uint64(32)) | np.uint64(b)
    x ^= np.uint64(c) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return np.int64(x & np.uint64(mask))


@njit(cache=True, _nrt=False, inline="always")
def _conn_bucket(CB, src, dst, ports, proto) -> int:
    return _hash(src, dst, (np.uint64(ports) << np.uint64(8)) | np.uint64(proto), CB.shape[0] - 1)


@njit(cache=True, _nrt=False, inline="always")
def _in_base(NB, egress, dst, dport, proto) -> int:
    """Hash of an IN key without its port: the bucket of port p is ``base + p``."""
    key = (np.uint64(dport) << np.uint64(8)) | np.uint64(proto)
    return _hash(egress, dst, key, NB.shape[0] - 1)


@njit(cache=True, _nrt=False, inline="always")
def _in_bucket(NB, egress, dst, port, dport, proto) -> int:
    # The ports of one {egress, remote, remote port, proto} sit in consecutive buckets, so
    # the port search's walk (port + 1 or + 2 per try) reads one index cache line per
    # eight or sixteen tries and hashes the key once.
    return (_in_base(NB, egress, dst, dport, proto) + port) & (NB.shape[0] - 1)


# -- connection records ------------------------------------------------------------------------


@njit(cache=True, _nrt=False, inline="always")
def conn_find(S, src, sport, dst, dport, proto) -> int:
    CR, CB = S.CR, S.CB
    ports = (sport << 16) | dport
    o = CB[_conn_bucket(CB, src, dst, ports, proto)]
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


@njit(cache=True, _nrt=False)
def _conn_new(st, CR, CB, src, sport, dst, dport, proto, egress) -> int:
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
    b = _conn_bucket(CB, src, dst, ports, proto)
    CR[o, R_NEXT] = CB[b]
    CB[b] = o
    return o


@njit(cache=True, _nrt=False)
def conn_maybe_free(st, CR, CB, o) -> None:
    """Free a record that has neither a CT entry nor anything referring to it."""
    misc = CR[o, R_MISC]
    if CR[o, R_REFS] != 0 or misc & CF_CT or not misc & CF_USED:
        return
    b = _conn_bucket(CB, CR[o, R_SRC], CR[o, R_DST], CR[o, R_PORTS], (misc >> 8) & 0xFF)
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


@njit(cache=True, _nrt=False, inline="always")
def _ct_create(cfgf, CR, CF, o, proto, egress, now) -> None:
    """ct_create4: a new CT entry; TCP gets the SYN lifetime whatever the packet was."""
    CR[o, R_MISC] = (CR[o, R_MISC] & ~np.uint32(CF_TCP_STATE | CF_BROKEN)) | CF_CT
    CR[o, R_EGRESS] = egress
    CF[o, CF_EXPIRY] = now + (cfgf[T_SYN] if proto == TCP else cfgf[T_ANY])


@njit(cache=True, _nrt=False, inline="always")
def _ct_update(cfgf, CR, CF, o, proto, flags, ingress, now) -> bool:
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


# -- the NAT map ------------------------------------------------------------------------------


@njit(cache=True, _nrt=False, inline="always")
def _get_prev(CR, NR, n):
    return CR[n ^ OUT_TAG, R_OPREV] if n & OUT_TAG else NR[n, E_PREV]


@njit(cache=True, _nrt=False, inline="always")
def _get_next(CR, NR, n):
    return CR[n ^ OUT_TAG, R_ONEXT] if n & OUT_TAG else NR[n, E_NEXT]


@njit(cache=True, _nrt=False, inline="always")
def _set_prev(CR, NR, n, v) -> None:
    if n & OUT_TAG:
        CR[n ^ OUT_TAG, R_OPREV] = v
    else:
        NR[n, E_PREV] = v


@njit(cache=True, _nrt=False, inline="always")
def _set_next(CR, NR, n, v) -> None:
    if n & OUT_TAG:
        CR[n ^ OUT_TAG, R_ONEXT] = v
    else:
        NR[n, E_NEXT] = v


@njit(cache=True, _nrt=False, inline="always")
def _lru_unlink(st, CR, NR, n, fam) -> None:
    p = _get_prev(CR, NR, n)
    q = _get_next(CR, NR, n)
    if p != NONE:
        _set_next(CR, NR, p, q)
    else:
        st[S_HEAD + fam] = -1 if q == NONE else np.int64(q)
    if q != NONE:
        _set_prev(CR, NR, q, p)
    else:
        st[S_TAIL + fam] = -1 if p == NONE else np.int64(p)


@njit(cache=True, _nrt=False, inline="always")
def _lru_push(st, CR, NR, n, fam) -> None:
    h = st[S_HEAD + fam]
    _set_prev(CR, NR, n, NONE)
    if h >= 0:
        _set_next(CR, NR, n, h)
        _set_prev(CR, NR, h, n)
    else:
        _set_next(CR, NR, n, NONE)
        st[S_TAIL + fam] = n
    st[S_HEAD + fam] = n


@njit(cache=True, _nrt=False, inline="always")
def nat_touch(st, CR, NR, n, fam) -> None:
    """A lookup from the datapath: the entry (LRU node ``n``) becomes the most recent."""
    if st[S_HEAD + fam] == n:
        return
    _lru_unlink(st, CR, NR, n, fam)
    _lru_push(st, CR, NR, n, fam)


@njit(cache=True, _nrt=False, inline="always")
def in_find(NR, NB, dst, dport, egress, port, proto) -> int:
    return in_find_at(NR, NB, _in_bucket(NB, egress, dst, port, dport, proto),
                      dst, dport, egress, port, proto)  # fmt: skip


@njit(cache=True, _nrt=False, inline="always")
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


@njit(cache=True, _nrt=False)
def nat_remove(st, cnt, CR, CB, NR, NB, n, evicted) -> None:
    """Delete the NAT entry of LRU node ``n`` (an LRU eviction when ``evicted``)."""
    if n & OUT_TAG:
        o = n ^ OUT_TAG
        fam = 1 if CR[o, R_SRC] & V6_BIT else 0
        _lru_unlink(st, CR, NR, n, fam)
        CR[o, R_MISC] &= ~np.uint32(CF_OUT)
        st[S_COUNT + fam] -= 1
        if evicted:
            cnt[K_EVICT_OUT] += 1
        return  # the record keeps its CT entry (an OUT entry implies one)
    e = n
    pf = NR[e, E_PORTFLAGS]
    fam = 1 if pf & NF_V6 else 0
    o = NR[e, E_OWNER]
    _lru_unlink(st, CR, NR, e, fam)
    dpp = NR[e, E_DPORT_PROTO]
    b = _in_bucket(NB, NR[e, E_ADDR], NR[e, E_DST], pf >> 8, dpp >> 8, dpp & 0xFF)
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


@njit(cache=True, _nrt=False, inline="always")
def nat_room(S, fam) -> bool:
    """Whether an IN and an OUT insert can be served without growing arrays.

    Only IN entries take an NR row. The pool may grow to 2 * capacity + 1 rows: it then
    has a free row, since each family's map holds at most ``capacity`` entries.
    """
    st = S.st
    return st[S_NAT_NFREE] >= 1


@njit(cache=True, _nrt=False)
def _nat_insert(st, cfg, cnt, CR, CB, NR, NB, o, addr, port, is_in, fam, now) -> int:
    """Insert a NAT entry owned by record ``o``; returns its LRU node."""
    if st[S_COUNT + fam] >= cfg[C_CAP]:
        nat_remove(st, cnt, CR, CB, NR, NB, st[S_TAIL + fam], True)
    st[S_COUNT + fam] += 1
    created = np.uint32(math.floor(now))
    if not is_in:  # the OUT entry lives in the record: its egress and port are the record's
        CR[o, R_MISC] |= np.uint32(CF_OUT)
        CR[o, R_OCREATED] = created
        n = np.int64(o) | OUT_TAG
        _lru_push(st, CR, NR, n, fam)
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
    b = _in_bucket(NB, addr, dst, port, dport, proto)
    NR[e, E_HNEXT] = NB[b]
    NB[b] = e
    NR[e, E_PORTFLAGS] = (port << 8) | flags
    CR[o, R_REFS] += 1
    _lru_push(st, CR, NR, e, fam)
    return e


@njit(cache=True, _nrt=False, inline="always")
def _clamp(start, end, value, kind) -> int:
    """ports.clamp: __snat_clamp_port_range of ``kind`` (ports.Clamp), value as a u16."""
    if kind:
        return (start + (((value & 0xFFFF) * ((end - start) + 1)) >> 16)) & 0xFFFF
    return ((value & 0xFFFF) % ((end - start) & 0xFFFF) + start) & 0xFFFF


@njit(cache=True, _nrt=False)
def _allocate(st, fs, cfg, cnt, tries, mt, CR, CB, NR, NB, o, egress, fam):
    """snat_v4_new_mapping: returns (port or -1, retries)."""
    start = cfg[C_PMIN]
    end = cfg[C_PMAX]
    retries_max = cfg[C_RETRIES]
    kind = cfg[C_CLAMP]
    now = fs[F_NOW]
    ports = np.int64(CR[o, R_PORTS])
    sport = ports >> 16
    dport = ports & 0xFFFF
    dst = np.int64(CR[o, R_DST])
    proto = np.int64((CR[o, R_MISC] >> 8) & 0xFF)
    port = sport if start <= sport <= end else _clamp(start, end, mt_random16(st, mt), kind)
    retries = 0
    found = False
    base = _in_base(NB, egress, dst, dport, proto)
    mask = NB.shape[0] - 1
    while retries < retries_max:
        e = in_find_at(NR, NB, (base + port) & mask, dst, dport, egress, port, proto)
        if e < 0:
            _nat_insert(st, cfg, cnt, CR, CB, NR, NB, o, egress, port, True, fam, now)
            _nat_insert(st, cfg, cnt, CR, CB, NR, NB, o, egress, port, False, fam, now)
            found = True
            break
        # A failed BPF_NOEXIST insert: an existence check, no LRU refresh of the entry.
        if retries:
            port = _clamp(start, end, port + 1, kind)
        else:
            port = _clamp(start, end, mt_random16(st, mt), kind)
        retries += 1
    tries[retries] += 1
    if retries > cfg[C_THRES]:  # nat.h: strictly more than SNAT_SIGNAL_THRES
        cnt[K_SIGNALS] += 1
        if now >= fs[F_MUTED_UNTIL]:  # gc.go mutes the signal while a pass runs
            st[S_SIGNAL_DUE] |= 1 << fam
    return (port if found else -1), retries


# -- packets ----------------------------------------------------------------------------------


@njit(cache=True, _nrt=False)
def forward(S, src, sport, dst, dport, proto, egress, flags):
    """A packet from the pod, its record found by tuple (bench/bench_model.py drives this)."""
    o = conn_find(S, src, sport, dst, dport, proto)
    return forward_at(S, o, src, sport, dst, dport, proto, egress, flags)


@njit(cache=True, _nrt=False)
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
            o = _conn_new(st, CR, CB, src, sport, dst, dport, proto, egress)
        _ct_create(cfgf, CR, CF, o, proto, egress, now)
        CR[o, R_MISC] &= np.uint32(0xFFFF)  # no port yet (an OUT entry implies a CT entry)
        st[S_CT_COUNT] += 1
    elif not _ct_update(cfgf, CR, CF, o, proto, flags, False, now):
        # A SYN on a closing entry: a fresh entry (the OUT entry, if any, stays).
        _ct_create(cfgf, CR, CF, o, proto, CR[o, R_EGRESS] if has_out else egress, now)
        if not has_out:
            CR[o, R_MISC] &= np.uint32(0xFFFF)  # no port yet: a new connection
    if has_out:
        return o, np.int64(CR[o, R_MISC] >> 16), 0, False, 0
    misc = CR[o, R_MISC]
    broken = misc >> 16 != 0
    if broken and not misc & CF_BROKEN:
        CR[o, R_MISC] = misc | CF_BROKEN
        cnt[K_BROKEN] += 1
    port, retries = _allocate(st, fs, cfg, cnt, tries, mt, CR, CB, NR, NB, o, egress, fam)
    if port < 0:
        cnt[K_DROPS_NO_MAPPING] += 1
        return o, -1, DROP_NO_MAPPING, broken, retries
    cnt[K_ALLOCATIONS] += 1
    CR[o, R_MISC] = (CR[o, R_MISC] & 0xFFFF) | (port << 16)
    CR[o, R_EGRESS] = egress
    return o, port, 0, broken, retries


@njit(cache=True, _nrt=False)
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
        _ct_update(cfgf, CR, CF, owner, proto, flags, True, fs[F_NOW])
    if owner != o:
        cnt[K_REPLY_DROPS] += 1
        return -1, DROP_NO_MAPPING
    return port, 0


@njit(cache=True, _nrt=False, inline="always")
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


@njit(cache=True, _nrt=False, inline="always")
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


# -- garbage collection -----------------------------------------------------------------------

get_interval = njit(cache=True, _nrt=False)(gcpacing.get_interval)


@njit(cache=True, _nrt=False)
def ct_delete(S, o) -> None:
    """Delete a CT entry and, as nat DeleteMapping does, its OUT entry and the IN entry
    that OUT entry names (whoever owns it now)."""
    _ct_delete(S.st, S.cnt, S.CR, S.CB, S.NR, S.NB, o)


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False)
def gc(S, families, signalled) -> None:
    """One CT GC pass at now over the maps of ``families`` (see reference.py)."""
    st, fs, cfg, cfgf, cnt = S.st, S.fs, S.cfg, S.cfgf, S.cnt
    CR, CF, CB, NR, NB = S.CR, S.CF, S.CB, S.NR, S.NB
    now = fs[F_NOW]
    d_tcp4 = 0
    d_any4 = 0
    d_tcp6 = 0
    d_any6 = 0
    for o in range(CR.shape[0]):
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


@njit(cache=True, _nrt=False, inline="always")
def after_operation(S) -> None:
    st = S.st
    if st[S_SIGNAL_DUE]:
        families = st[S_SIGNAL_DUE]
        st[S_SIGNAL_DUE] = 0
        gc(S, families, True)


# -- the event heap ---------------------------------------------------------------------------


@njit(cache=True, _nrt=False, inline="always")
def _move(HI, src, dst) -> None:
    for c in range(H_WORDS):
        HI[dst, c] = HI[src, c]


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False)
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


# -- the bulk engine --------------------------------------------------------------------------


@njit(cache=True, _nrt=False)
def _schedule(st, CR, CB, HI, HF, now, o, seq, end, ka, kind, egress) -> None:
    ka64 = np.float64(ka)
    if ka64 > 0 and now + ka64 < end:
        heap_push(st, HI, HF, now + ka64, seq, o, end, ka, kind | HK_KEEPALIVE, egress, 0.0, 0.0)
    elif end < np.inf:
        heap_push(st, HI, HF, end, seq, o, end, ka, kind, egress, 0.0, 0.0)
    else:
        CR[o, R_REFS] -= 1  # nothing more will happen to it: unpin
        conn_maybe_free(st, CR, CB, o)


@njit(cache=True, _nrt=False, inline="always")
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


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False, inline="always")
def _prefetch_start(cfg, CR, CB, NR, NB, B, j, deep) -> None:
    """Start loading what batch connection ``j`` will read first: its record's hash bucket
    and the IN bucket of its first port try (its own source port when in range); with
    ``deep``, also the first row each of those buckets names (read from the bucket, so
    prefetched earlier)."""
    src, sport, dst = np.int64(B.src[j]), np.int64(B.sport[j]), np.int64(B.dst[j])
    dport, proto = np.int64(B.dport[j]), np.int64(B.proto[j])
    b = _conn_bucket(CB, src, dst, (sport << 16) | dport, proto)
    if cfg[C_PMIN] <= sport <= cfg[C_PMAX]:
        e = _in_bucket(NB, np.int64(B.egress[j]), dst, sport, dport, proto)
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


@njit(cache=True, _nrt=False, inline="always")
def _prefetch_node(CR, NR, n) -> None:
    """The row of LRU node ``n`` (a record for an OUT entry, else an IN row)."""
    if n != NONE:
        if n & OUT_TAG:
            prefetch(CR, n ^ OUT_TAG)
        else:
            prefetch(NR, n)


@njit(cache=True, _nrt=False, inline="always")
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
        prefetch(NB, _in_bucket(NB, NR[t, E_ADDR], NR[t, E_DST], NR[t, E_PORTFLAGS] >> 8,
                                dpp >> 8, dpp & 0xFF))  # fmt: skip
    _prefetch_node(CR, NR, _get_prev(CR, NR, t))


@njit(cache=True, _nrt=False, inline="always")
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
            _prefetch_node(CR, NR, CR[o, R_OPREV])
            _prefetch_node(CR, NR, CR[o, R_ONEXT])
            ports = CR[o, R_PORTS]
            prefetch(NB, _in_bucket(NB, CR[o, R_EGRESS], CR[o, R_DST], misc >> 16,
                                    ports & 0xFFFF, (misc >> 8) & 0xFF))  # fmt: skip


@njit(cache=True, _nrt=False)
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
                o = _conn_new(st, CR, CB, src, sport, dst, dport, proto, egress)
            CR[o, R_REFS] += 1  # pinned while its attempts and events are pending
            _attempt(S, o, seq, egress, t, b_duration[i], b_ka[i],
                     np.int64(b_end[i]), np.int64(b_retries[i]), np.float64(b_rto[i]))  # fmt: skip
        after_operation(S)
    return OK


# -- growing and views ------------------------------------------------------------------------


@njit(cache=True, _nrt=False)
def rebuild_conn_index(S) -> None:
    """Re-thread every used record into ``CB`` (a new, larger index)."""
    CR, CB = S.CR, S.CB
    CB[:] = NONE
    for o in range(CR.shape[0]):
        misc = CR[o, R_MISC]
        if misc & CF_USED:
            b = _conn_bucket(CB, CR[o, R_SRC], CR[o, R_DST], CR[o, R_PORTS], (misc >> 8) & 0xFF)
            CR[o, R_NEXT] = CB[b]
            CB[b] = o


@njit(cache=True, _nrt=False)
def rebuild_in_index(S) -> None:
    NR, NB = S.NR, S.NB
    NB[:] = NONE
    for e in range(NR.shape[0]):
        pf = NR[e, E_PORTFLAGS]
        if pf & NF_USED and pf & NF_IN:
            dpp = NR[e, E_DPORT_PROTO]
            b = _in_bucket(NB, NR[e, E_ADDR], NR[e, E_DST], pf >> 8, dpp >> 8, dpp & 0xFF)
            NR[e, E_HNEXT] = NB[b]
            NB[b] = e


@njit(cache=True, _nrt=False)
def lru_order(S, fam, out) -> int:
    """LRU nodes of the family's NAT entries into ``out``, least recently used first."""
    st, CR, NR = S.st, S.CR, S.NR
    n = st[S_TAIL + fam]
    k = 0
    while n >= 0:
        out[k] = n
        k += 1
        p = _get_prev(CR, NR, n)
        n = -1 if p == NONE else np.int64(p)
    return k


# -- the per-connection API -------------------------------------------------------------------


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False)
def op_reply(S, src, sport, dst, dport, proto, flags):
    o = conn_find(S, src, sport, dst, dport, proto)
    return reply_record(S, o, flags)


@njit(cache=True, _nrt=False)
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
        h = _hash(egress, remote, lo, mask)
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
