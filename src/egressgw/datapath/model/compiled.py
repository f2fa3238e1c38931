"""``CompiledModel``: owns the kernel's arrays, grows them, and syncs the random source."""

from __future__ import annotations

import random

import numpy as np
import numpy.typing as npt

from egressgw.datapath.model import kernel_api as kapi
from egressgw.datapath.model import kernel_layout as k
from egressgw.datapath.model.config import ModelConfig
from egressgw.datapath.model.gcpacing import to_ns
from egressgw.datapath.model.kernel_state import BatchColumns, State
from egressgw.datapath.model.reference import COUNTED_PROTOS, PORT_PROTOS, ConnKey, NatRow
from egressgw.datapath.model.types import LATENCY_BINS, ConnectionBatch, DropReason, ModelCounters

INITIAL_ROWS = 1024


def _counted_table() -> npt.NDArray[np.uint8]:
    """kernel_views.count_endpoints' ``counted``: COUNTED_PROTOS per family, 2 where ported."""
    table = np.zeros((2, 256), np.uint8)
    for family, protos in enumerate(COUNTED_PROTOS):
        for proto in protos:
            table[family, proto] = 2 if proto in PORT_PROTOS else 1
    return table


COUNTED = _counted_table()


def _pow2_at_least(n: int) -> int:
    return 1 << max(4, (n - 1).bit_length())


def _grow_pool(
    rows: npt.NDArray[np.uint32], size: int, st: npt.NDArray[np.int64], *,
    next_column: int, free_slot: int, count_slot: int,
) -> npt.NDArray[np.uint32]:
    """``rows`` grown to ``size``; the new rows go to the front of the pool's free list.

    The free list is threaded through ``next_column``; its head and length are the
    ``free_slot`` and ``count_slot`` words of the kernel state ``st``.
    """
    old = len(rows)
    new = np.zeros((size, rows.shape[1]), np.uint32)
    new[:old] = rows
    head = int(st[free_slot])
    new[old:size, next_column] = np.arange(old + 1, size + 1, dtype=np.uint32)
    new[size - 1, next_column] = k.NONE if head < 0 else head
    st[free_slot] = old
    st[count_slot] += size - old
    return new


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
        self.delayed = np.zeros(LATENCY_BINS, np.int64)
        self.cfg[k.C_CAP] = config.bpf_nat_global_max
        self.cfg[k.C_PMIN] = config.port_min
        self.cfg[k.C_PMAX] = config.port_max
        self.cfg[k.C_RETRIES] = config.retries
        self.cfg[k.C_THRES] = config.signal_thres
        self.cfg[k.C_CLAMP] = int(config.clamp)
        self.cfg[k.C_FIXED_GC] = config.conntrack_gc_interval is not None
        self.cfg[k.C_CT_TCP_MAX] = config.bpf_ct_global_tcp_max
        self.cfg[k.C_CT_ANY_MAX] = config.bpf_ct_global_any_max
        self.cfg[k.C_GC_MAX_NS] = to_ns(config.conntrack_gc_max_interval or 0.0)
        self.cfgf[k.T_TCP] = config.ct_timeout_tcp
        self.cfgf[k.T_SYN] = config.ct_timeout_syn
        self.cfgf[k.T_FIN] = config.ct_timeout_fin
        self.cfgf[k.T_ANY] = config.ct_timeout_any
        self.cfgf[k.T_GC_PASS] = config.gc_pass_seconds
        self.fs[k.F_GC_INTERVAL] = config.conntrack_gc_interval or 0.0
        self.fs[k.F_MUTED_UNTIL] = -np.inf
        self.fs[k.F_LAST_GC] = -np.inf
        for i in (k.S_NAT_FREE, k.S_HEAD, k.S_HEAD + 1, k.S_TAIL, k.S_TAIL + 1, k.S_CONN_FREE):
            self.st[i] = -1
        self.cr = np.zeros((0, k.CR_WORDS), np.uint32)
        self.cb = np.full(16, k.NONE, np.uint32)
        self.nr = np.zeros((0, k.NR_WORDS), np.uint32)
        self.nb = np.full(16, k.NONE, np.uint32)
        self.heap_rows = np.zeros((INITIAL_ROWS, k.H_WORDS), np.int64)
        self._grow_conns(INITIAL_ROWS)
        self._grow_nat(min(INITIAL_ROWS, 2 * config.bpf_nat_global_max))
        self._load_rng()
        kapi.gc(self.state, 3, False)  # the agent's initial scan (gc.go Enable)

    # -- the kernel's state ---------------------------------------------------------------

    @property
    def state(self) -> State:
        """The arrays the kernel works on, by name (a new snapshot after any growth)."""
        return State(
            st=self.st, fs=self.fs, cfg=self.cfg, cfgf=self.cfgf, cnt=self.cnt,
            tries=self.tries, mt=self.mt, lat=self.delayed,
            CR=self.cr, CF=self.cr.view(np.float64), CB=self.cb, NR=self.nr, NB=self.nb,
            HI=self.heap_rows, HF=self.heap_rows.view(np.float64),
        )  # fmt: skip

    # -- growing ------------------------------------------------------------------------

    def _grow_conns(self, size: int) -> None:
        self.cr = _grow_pool(self.cr, size, self.st, next_column=k.R_NEXT,
                             free_slot=k.S_CONN_FREE, count_slot=k.S_CONN_NFREE)
        self.cb = np.full(_pow2_at_least(size), k.NONE, np.uint32)
        # Free records keep their free-list links; only used records are re-threaded.
        kapi.rebuild_conn_index(self.state)

    def _grow_nat(self, size: int) -> None:
        self.nr = _grow_pool(self.nr, size, self.st, next_column=k.E_NEXT,
                             free_slot=k.S_NAT_FREE, count_slot=k.S_NAT_NFREE)
        # Chained buckets, about one per IN entry once the pool is full.
        self.nb = np.full(_pow2_at_least(size), k.NONE, np.uint32)
        kapi.rebuild_in_index(self.state)

    def _grow_heap(self) -> None:
        rows = np.zeros((2 * len(self.heap_rows), k.H_WORDS), np.int64)
        rows[: len(self.heap_rows)] = self.heap_rows
        self.heap_rows = rows

    def _make_room(self, need: int) -> None:
        if need == kapi.NEED_CONN:
            self._grow_conns(2 * len(self.cr))
        elif need == kapi.NEED_NAT:
            limit = 2 * self.config.bpf_nat_global_max + 1  # see kernel_nat.nat_room
            size = len(self.nr)
            if size >= limit:
                raise AssertionError("NAT pool at its limit yet short of room")
            self._grow_nat(min(limit, 2 * size))
        elif need == kapi.NEED_HEAP:
            self._grow_heap()

    def _room_for_one(self, src: int) -> None:
        if self.st[k.S_CONN_NFREE] < 1:
            self._make_room(kapi.NEED_CONN)
        fam = 1 if src & k.V6_BIT else 0
        if not kapi.nat_room(self.state, fam):
            self._make_room(kapi.NEED_NAT)

    # -- the random source --------------------------------------------------------------

    # The kernel draws from its own copy of ``rng``'s MT19937 state (``mt`` and
    # st[S_MT_INDEX]), loaded once here. Copying it in and out around every call cost a
    # per-packet call about 85% of its time (a 625-word tuple each way); the Python object
    # is brought up to date only when asked (sync_rng).

    def _load_rng(self) -> None:
        words = self.rng.getstate()[1]
        self.mt[:] = words[:624]
        self.st[k.S_MT_INDEX] = words[624]

    def sync_rng(self) -> None:
        """Write the kernel's random state back into ``rng``: it continues exactly where
        the model's last draw left off (as if the model had drawn from it directly)."""
        version, _words, gauss_next = self.rng.getstate()
        words = (*self.mt.tolist(), int(self.st[k.S_MT_INDEX]))
        self.rng.setstate((version, words, gauss_next))

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
            retransmits=int(c[k.K_RETRANSMITS]),
            connect_failed=int(c[k.K_CONNECT_FAILED]),
            delayed=self.delayed.copy(),
        )

    def _send(
        self, key: ConnKey, egress: int, mode: int, flags: int = 0
    ) -> tuple[int, int, bool, int]:
        self._room_for_one(key[0])
        return kapi.send(self.state, key, egress, mode, flags)

    def connect(self, key: ConnKey, egress: int) -> tuple[int, int, int]:
        port, drop, _broken, retries = self._send(key, egress, 1)
        return port, drop, retries

    def first_exchange(self, key: ConnKey, egress: int) -> tuple[int, int, int]:
        port, drop, _broken, retries = self._send(key, egress, 2)
        return port, drop, retries

    def send(self, key: ConnKey, egress: int, flags: int) -> tuple[int, int, bool, int]:
        return self._send(key, egress, 0, flags)

    def reply(self, key: ConnKey, flags: int) -> tuple[int, int]:
        return kapi.reply(self.state, key, flags)

    def close(self, key: ConnKey, kind: int) -> tuple[int, int, bool, int]:
        o = kapi.conn_find(self.state, key)
        if o < 0 or not self.cr[o, k.R_MISC] & k.CF_CT:
            return -1, 0, False, 0
        return self._send(key, int(self.cr[o, k.R_EGRESS]), 3, kind)

    def run(self, batch: ConnectionBatch, until: float) -> None:
        columns = BatchColumns(
            batch.start, batch.duration, batch.end, batch.src, batch.sport, batch.dst,
            batch.dport, batch.proto, batch.egress, batch.keepalive, batch.retries, batch.rto,
        )  # fmt: skip
        self.st[k.S_BATCH_POS] = 0
        while True:
            status = kapi.run(self.state, columns, float(until))
            if status == kapi.OK:
                break
            self._make_room(status)
        self.fs[k.F_NOW] = until

    # -- views --------------------------------------------------------------------------

    def _slots_in_lru_order(self, family: int) -> npt.NDArray[np.int64]:
        out = np.empty(int(self.st[k.S_COUNT + family]), np.int64)
        count = kapi.lru_order(self.state, family, out)
        return out[:count]

    def nat_rows(self) -> list[NatRow]:
        rows: list[NatRow] = []
        for family in (0, 1):
            for node in self._slots_in_lru_order(family).tolist():
                if node & k.OUT_TAG:  # an OUT entry: the record's egress, port, created
                    record = self.cr[node ^ k.OUT_TAG]
                    direction, egress = 0, int(record[k.R_EGRESS])
                    port, created = int(record[k.R_MISC]) >> 16, int(record[k.R_OCREATED])
                else:
                    entry = self.nr[node]
                    record = self.cr[entry[k.E_OWNER]]
                    direction, egress = 1, int(entry[k.E_ADDR])
                    port, created = int(entry[k.E_PORTFLAGS]) >> 8, int(entry[k.E_CREATED])
                ports = int(record[k.R_PORTS])
                rows.append(
                    (
                        family, direction, int(record[k.R_SRC]), ports >> 16,
                        int(record[k.R_DST]), ports & 0xFFFF,
                        (int(record[k.R_MISC]) >> 8) & 0xFF, egress, port, float(created),
                    )
                )  # fmt: skip
        return rows

    def in_endpoint_counts(self) -> dict[tuple[int, int, int, int, int], int]:
        entries = int(self.st[k.S_COUNT] + self.st[k.S_COUNT + 1])
        keys_hi, keys_lo, counts = kapi.count_endpoints(self.state, COUNTED, entries)
        return {
            ((lo >> 24) & 1, (lo >> 16) & 0xFF, (hi >> 32) & 0xFFFFFFFF, hi & 0xFFFFFFFF,
             lo & 0xFFFF): count
            for hi, lo, count in zip(
                keys_hi.tolist(), keys_lo.tolist(), counts.tolist(), strict=True
            )
        }  # fmt: skip

    def memory_bytes(self) -> int:
        """Bytes held by the kernel's arrays (connections, NAT entries, indexes, heap)."""
        state = self.state
        arrays = (*state[:8], state.CR, state.CB, state.NR, state.NB, state.HI)
        return int(sum(a.nbytes for a in arrays))

    def bytes_per_connection_full(self) -> int:
        """Bytes per connection (CT entry + OUT and IN NAT entries) when the arrays are full.

        A record (with the OUT entry), an IN row, and about one slot in each hash index
        (both are power-of-two sized to their table's rows).
        """
        return int(self.cr.strides[0] + self.cb.itemsize + self.nr.strides[0] + self.nb.itemsize)

    @property
    def tracked_connections(self) -> int:
        """Connections with a CT entry."""
        return int(self.st[k.S_CT_COUNT])
