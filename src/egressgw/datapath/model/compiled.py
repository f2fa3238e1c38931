"""``CompiledModel``: owns the kernel's arrays, grows them, and syncs the random source."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import numpy.typing as npt

from egressgw.datapath.model import kernel as k
from egressgw.datapath.model.config import GC_START_INTERVAL, ModelConfig
from egressgw.datapath.model.reference import COUNTED_PROTOS, PORT_PROTOS, ConnKey, NatRow
from egressgw.datapath.model.types import ConnectionBatch, DropReason, EndKind, ModelCounters

INITIAL_ROWS = 1024

# Column dtypes: address ids uint32, ports uint16, small fields uint8, links int32.
CONN_DTYPES = (
    np.uint32, np.uint32, np.uint32,  # src, dst, egress
    np.uint16, np.uint16, np.uint16,  # sport, dport, port
    np.uint8, np.uint8,  # proto, flags
    np.float64,  # CT expiry
    np.int32, np.int32, np.int32,  # OUT slot, references, hash chain / free list
)  # fmt: skip
NAT_DTYPES = (
    np.int32, np.uint32, np.uint16, np.uint8,  # owner, address, port, flags
    np.int32, np.int32, np.int32,  # LRU prev, LRU next / free list, IN hash chain
    np.float32,  # created
)  # fmt: skip
HEAP_DTYPES = (np.float64, np.int64, np.int32, np.float64, np.float32, np.uint8, np.uint32)


def _pow2_at_least(n: int) -> int:
    return 1 << max(4, (n - 1).bit_length())


def _grow(columns: tuple[npt.NDArray[Any], ...], size: int) -> list[npt.NDArray[Any]]:
    grown = []
    for col in columns:
        new = np.zeros(size, col.dtype)
        new[: len(col)] = col
        grown.append(new)
    return grown


class CompiledModel:
    """The compiled engine behind ``ModelDatapath`` (same semantics as ReferenceModel)."""

    def __init__(self, config: ModelConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.st = np.zeros(k.ST_SIZE, np.int64)
        self.fs = np.zeros(k.FS_SIZE, np.float64)
        self.cfg = np.zeros(k.CFG_SIZE, np.int64)
        self.cfgf = np.zeros(k.CFGF_SIZE, np.float64)
        self.cnt = np.zeros(k.CNT_SIZE, np.int64)
        self.tries = np.zeros(config.retries + 1, np.int64)
        self.mt = np.zeros(624, np.uint32)
        self.cfg[k.C_CAP] = config.bpf_nat_global_max
        self.cfg[k.C_PMIN] = config.port_min
        self.cfg[k.C_PMAX] = config.port_max
        self.cfg[k.C_RETRIES] = config.retries
        self.cfg[k.C_THRES] = config.signal_thres
        self.cfg[k.C_FIXED_GC] = config.conntrack_gc_interval is not None
        self.cfgf[k.T_TCP] = config.ct_timeout_tcp
        self.cfgf[k.T_SYN] = config.ct_timeout_syn
        self.cfgf[k.T_FIN] = config.ct_timeout_fin
        self.cfgf[k.T_ANY] = config.ct_timeout_any
        self.cfgf[k.T_HOLDOFF] = config.nat_fill_up_holdoff
        interval = config.conntrack_gc_interval or GC_START_INTERVAL
        self.fs[k.F_GC_INTERVAL] = interval
        self.fs[k.F_NEXT_GC] = interval
        self.fs[k.F_LAST_SIGNAL_GC] = -np.inf
        for i in (k.S_NAT_FREE, k.S_HEAD, k.S_HEAD + 1, k.S_TAIL, k.S_TAIL + 1, k.S_CONN_FREE):
            self.st[i] = -1
        self.conn: tuple[npt.NDArray[Any], ...] = tuple(np.zeros(0, d) for d in CONN_DTYPES)
        self.conn_buckets = np.full(16, -1, np.int32)
        self.nat: tuple[npt.NDArray[Any], ...] = tuple(np.zeros(0, d) for d in NAT_DTYPES)
        self.in_buckets = np.full(16, -1, np.int32)
        self.heap: tuple[npt.NDArray[Any], ...] = tuple(
            np.zeros(INITIAL_ROWS, d) for d in HEAP_DTYPES
        )
        self._grow_conns(INITIAL_ROWS)
        self._grow_nat(min(INITIAL_ROWS, 2 * config.bpf_nat_global_max))

    # -- state tuples -------------------------------------------------------------------

    def _sc(self) -> tuple[npt.NDArray[Any], ...]:
        return (self.st, self.fs, self.cfg, self.cfgf, self.cnt, self.tries, self.mt)

    def _c(self) -> tuple[npt.NDArray[Any], ...]:
        return (*self.conn, self.conn_buckets)

    def _n(self) -> tuple[npt.NDArray[Any], ...]:
        return (*self.nat, self.in_buckets)

    # -- growing ------------------------------------------------------------------------

    def _grow_conns(self, size: int) -> None:
        old = len(self.conn[0])
        cols = _grow(self.conn, size)
        hnext = cols[11]
        hnext[old:size] = np.arange(old + 1, size + 1, dtype=np.int32)
        hnext[size - 1] = self.st[k.S_CONN_FREE]
        self.st[k.S_CONN_FREE] = old
        self.st[k.S_CONN_NFREE] += size - old
        self.conn = tuple(cols)
        self.conn_buckets = np.full(_pow2_at_least(size), -1, np.int32)
        # Free slots keep their free-list links; rebuild only re-threads used records.
        k.rebuild_conn_index(self._c())

    def _grow_nat(self, size: int) -> None:
        old = len(self.nat[0])
        cols = _grow(self.nat, size)
        nxt = cols[5]
        nxt[old:size] = np.arange(old + 1, size + 1, dtype=np.int32)
        nxt[size - 1] = self.st[k.S_NAT_FREE]
        self.st[k.S_NAT_FREE] = old
        self.st[k.S_NAT_NFREE] += size - old
        self.nat = tuple(cols)
        self.in_buckets = np.full(_pow2_at_least(size), -1, np.int32)
        k.rebuild_in_index(self._c(), self._n())

    def _grow_heap(self) -> None:
        self.heap = tuple(_grow(self.heap, 2 * len(self.heap[0])))

    def _make_room(self, need: int) -> None:
        if need == k.NEED_CONN:
            self._grow_conns(2 * len(self.conn[0]))
        elif need == k.NEED_NAT:
            limit = 2 * self.config.bpf_nat_global_max
            size = len(self.nat[0])
            if size >= limit:
                raise AssertionError("NAT pool at its limit yet short of room")
            self._grow_nat(min(limit, 2 * size))
        elif need == k.NEED_HEAP:
            self._grow_heap()

    def _room_for_one(self, src: int) -> None:
        if self.st[k.S_CONN_NFREE] < 1:
            self._make_room(k.NEED_CONN)
        fam = 1 if src & k.V6_BIT else 0
        if not k.nat_room(self.st, self.cfg, fam):
            self._make_room(k.NEED_NAT)

    # -- the random source --------------------------------------------------------------

    def _load_rng(self) -> tuple[Any, ...]:
        state = self.rng.getstate()
        words = state[1]
        self.mt[:] = words[:624]
        self.st[k.S_MT_INDEX] = words[624]
        return state

    def _store_rng(self, state: tuple[Any, ...]) -> None:
        words = (*(int(w) for w in self.mt), int(self.st[k.S_MT_INDEX]))
        self.rng.setstate((state[0], words, state[2]))

    # -- Engine -------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return float(self.fs[k.F_NOW])

    @property
    def counters(self) -> ModelCounters:
        c = self.cnt
        drops = int(c[k.K_DROPS_NO_MAPPING])
        return ModelCounters(
            attempted=int(c[k.K_ATTEMPTED]),
            established=int(c[k.K_ESTABLISHED]),
            closed=int(c[k.K_CLOSED]),
            allocations=int(c[k.K_ALLOCATIONS]),
            drops={int(DropReason.NAT_NO_MAPPING): drops} if drops else {},
            evictions_out=int(c[k.K_EVICT_OUT]),
            evictions_in=int(c[k.K_EVICT_IN]),
            broken=int(c[k.K_BROKEN]),
            reply_drops=int(c[k.K_REPLY_DROPS]),
            signals=int(c[k.K_SIGNALS]),
            gc_runs=int(c[k.K_GC_RUNS]),
            tries=self.tries.copy(),
        )

    def connect(self, key: ConnKey, egress: int) -> tuple[int, int, int]:
        self._room_for_one(key[0])
        state = self._load_rng()
        port, drop, retries = k.op_connect(self._sc(), self._c(), self._n(), *key, egress)
        self._store_rng(state)
        return int(port), int(drop), int(retries)

    def _send(self, key: ConnKey, egress: int, closing: bool) -> tuple[int, int, bool, int]:
        self._room_for_one(key[0])
        state = self._load_rng()
        port, drop, broken, retries = k.op_send(
            self._sc(), self._c(), self._n(), *key, egress, closing
        )
        self._store_rng(state)
        return int(port), int(drop), bool(broken), int(retries)

    def send(self, key: ConnKey, egress: int) -> tuple[int, int, bool, int]:
        return self._send(key, egress, False)

    def reply(self, key: ConnKey) -> tuple[int, int]:
        port, drop = k.op_reply(self._sc(), self._c(), self._n(), *key)
        return int(port), int(drop)

    def close(self, key: ConnKey, kind: int) -> tuple[int, int, bool, int]:
        o = k.conn_find(self._c(), *key)
        if kind == EndKind.IDLE or o < 0 or not self.conn[7][o] & k.CF_CT:
            return -1, 0, False, 0
        return self._send(key, int(self.conn[2][o]), True)

    def run(self, batch: ConnectionBatch, until: float) -> None:
        columns = (
            batch.start, batch.duration, batch.end, batch.src, batch.sport,
            batch.dst, batch.dport, batch.proto, batch.egress, batch.keepalive,
        )  # fmt: skip
        self.st[k.S_BATCH_POS] = 0
        state = self._load_rng()
        try:
            while True:
                status = k.run(self._sc(), self._c(), self._n(), self.heap, columns, float(until))
                if status == k.OK:
                    break
                self._make_room(status)
        finally:
            self._store_rng(state)
        self.fs[k.F_NOW] = until

    # -- views --------------------------------------------------------------------------

    def _slots_in_lru_order(self, family: int) -> npt.NDArray[np.int64]:
        out = np.empty(int(self.st[k.S_COUNT + family]), np.int64)
        count = k.lru_order(self.st, self._n(), family, out)
        return out[:count]

    def nat_rows(self) -> list[NatRow]:
        rows: list[NatRow] = []
        n_owner, n_addr, n_port, n_flags, _p, _n, _h, n_created = self.nat
        c_src, c_dst, _e, c_sport, c_dport, _port, c_proto = self.conn[:7]
        for family in (0, 1):
            for e in self._slots_in_lru_order(family):
                o = n_owner[e]
                direction = 1 if n_flags[e] & k.NF_IN else 0
                rows.append(
                    (
                        family, direction, int(c_src[o]), int(c_sport[o]), int(c_dst[o]),
                        int(c_dport[o]), int(c_proto[o]), int(n_addr[e]), int(n_port[e]),
                        float(n_created[e]),
                    )
                )  # fmt: skip
        return rows

    def in_endpoint_counts(self) -> dict[tuple[int, int, int, int, int], int]:
        n_owner, n_addr, _port, n_flags = self.nat[:4]
        c_dst, c_dport, c_proto = self.conn[1], self.conn[4], self.conn[6]
        used_in = (n_flags & (k.NF_USED | k.NF_IN)) == (k.NF_USED | k.NF_IN)
        slots = np.flatnonzero(used_in)
        owners = n_owner[slots]
        family = ((n_flags[slots] & k.NF_V6) != 0).astype(np.int64)
        proto = c_proto[owners].astype(np.int64)
        counted = np.zeros(len(slots), bool)
        for fam in (0, 1):
            counted |= (family == fam) & np.isin(proto, COUNTED_PROTOS[fam])
        rport = np.where(np.isin(proto, PORT_PROTOS), c_dport[owners], 0).astype(np.int64)
        keys = np.stack(
            [family, proto, n_addr[slots].astype(np.int64), c_dst[owners].astype(np.int64),
             rport]
        )[:, counted]  # fmt: skip
        if keys.shape[1] == 0:
            return {}
        unique, counts = np.unique(keys, axis=1, return_counts=True)
        return {
            (int(a), int(b), int(c), int(d), int(e)): int(n)
            for (a, b, c, d, e), n in zip(unique.T, counts, strict=True)
        }

    def memory_bytes(self) -> int:
        """Bytes held by the kernel's arrays (connections, NAT entries, indexes, heap)."""
        arrays = (*self._sc(), *self._c(), *self._n(), *self.heap)
        return int(sum(a.nbytes for a in arrays))

    @property
    def tracked_connections(self) -> int:
        """Connections with a CT entry."""
        return int(self.st[k.S_CT_COUNT])
