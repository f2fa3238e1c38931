"""The readable reference implementation of the model datapath, in plain Python.

It states the semantics once, in the order nat.h and the CT garbage collector apply them;
the compiled kernel (``kernel.py``) must behave identically: equal seeds give equal ports,
equal counters and equal NAT maps (including LRU order). Tests cross-check the two.

Keys use address ids (see ``addresses.py``). A connection is identified by its original
tuple ``(src, sport, dst, dport, proto)``, which is also its CT key and its OUT NAT key.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

import numpy as np

from egressgw.datapath.model.addresses import is_v6
from egressgw.datapath.model.config import (
    GC_MAX_INTERVAL,
    GC_MIN_INTERVAL,
    GC_START_INTERVAL,
    ModelConfig,
)
from egressgw.datapath.model.natmap import ExactLru, KernelLru, NatTable, flow_cpu
from egressgw.datapath.model.ports import keep, next_port
from egressgw.datapath.model.types import ConnectionBatch, DropReason, EndKind, ModelCounters

TCP = 6
PORT_PROTOS = (6, 17)
# pkg/maps/nat/stats counts TCP, UDP and ICMP (IPv4) or ICMPv6 (IPv6) entries.
COUNTED_PROTOS = ((6, 17, 1), (6, 17, 58))

# CT entry states the lifetimes depend on.
CT_SYN = 0
CT_ESTABLISHED = 1
CT_CLOSING = 2

OUT = 0
IN = 1

ConnKey = tuple[int, int, int, int, int]  # src, sport, dst, dport, proto
NatKey = tuple[int, int, int, int, int, int]  # dir, then OUT: src, sport, dst, dport, proto
#                                               IN: dst, dport, egress, port, proto
# (time, seq, keepalive?, key, egress, end time, keepalive interval, EndKind)
Event = tuple[float, int, bool, ConnKey, int, float, float, int]
NatRow = tuple[int, int, int, int, int, int, int, int, int, float]
# (family, dir, owner src, owner sport, dst, dport, proto, egress, port, created)


@dataclass(slots=True)
class NatValue:
    owner: ConnKey
    egress: int
    port: int
    created: float


@dataclass(slots=True)
class CtEntry:
    egress: int
    state: int
    expiry: float
    port: int = 0  # the source port the connection last got (0: none yet)
    broken: bool = False


def out_key(key: ConnKey) -> NatKey:
    return (OUT, *key)


def in_key(key: ConnKey, egress: int, port: int) -> NatKey:
    _src, _sport, dst, dport, proto = key
    return (IN, dst, dport, egress, port, proto)


def next_gc_interval(interval: float, ratio: float) -> float:
    """pkg/maps/ctmap calculateInterval: adapt to the share of entries the pass deleted."""
    if ratio == 0.0:
        return interval
    if ratio > 0.25:
        ratio = min(ratio, 0.9)
        return max(GC_MIN_INTERVAL, math.floor(interval * (1.0 - ratio) + 0.5))
    if ratio < 0.05:
        return min(GC_MAX_INTERVAL, math.floor(interval * 1.5 + 0.5))
    return interval


class ReferenceModel:
    """Cilium's BPF SNAT (``config.cilium_version``), CT and CT GC on a virtual clock."""

    def __init__(self, config: ModelConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.now = 0.0
        self.conns: dict[ConnKey, CtEntry] = {}
        self.nat = (self._nat_table(), self._nat_table())  # per family
        self.counters = ModelCounters(tries=np.zeros(config.retries + 1, np.int64))
        self.gc_interval = config.conntrack_gc_interval or GC_START_INTERVAL
        self.next_gc = self.gc_interval
        self.last_signal_gc = -math.inf
        self.signal_gc_due = False
        self.heap: list[Event] = []
        self.seq = 0

    # -- CT ---------------------------------------------------------------------------

    def _lifetime(self, proto: int, state: int) -> float:
        if proto != TCP:
            return self.config.ct_timeout_any
        if state == CT_ESTABLISHED:
            return self.config.ct_timeout_tcp
        if state == CT_CLOSING:
            return self.config.ct_timeout_fin
        return self.config.ct_timeout_syn

    def _track_forward(self, key: ConnKey, egress: int, closing: bool) -> CtEntry:
        ct = self.conns.get(key)
        proto = key[4]
        if ct is None:
            state = CT_CLOSING if closing and proto == TCP else CT_SYN
            ct = CtEntry(egress, state, self.now + self._lifetime(proto, state))
            self.conns[key] = ct
            return ct
        if closing and proto == TCP:
            ct.state = CT_CLOSING
        ct.expiry = self.now + self._lifetime(proto, ct.state)
        return ct

    def _track_reply(self, key: ConnKey) -> None:
        ct = self.conns.get(key)
        if ct is None:
            return
        if ct.state == CT_SYN:
            ct.state = CT_ESTABLISHED
        ct.expiry = self.now + self._lifetime(key[4], ct.state)

    # -- the NAT map (LRU) --------------------------------------------------------------

    def _nat_table(self) -> NatTable[NatKey, NatValue]:
        """One family's NAT map, of the LRU kind ``config.nat_lru`` names (natmap.py)."""
        config = self.config
        if config.nat_lru == "kernel":
            return KernelLru(config.bpf_nat_global_max, config.possible_cpus,
                             per_cpu=config.bpf_distributed_lru, on_evict=self._evicted)
        return ExactLru(config.bpf_nat_global_max, self._evicted)

    def _evicted(self, key: NatKey, _value: NatValue) -> None:
        if key[0] == OUT:
            self.counters.evictions_out += 1
        else:
            self.counters.evictions_in += 1

    def _cpu(self, key: ConnKey, reply: bool) -> int:
        """The CPU a packet of connection ``key`` (or its reply) is processed on."""
        if self.config.flow_cpus == "one":
            return 0
        return flow_cpu(key, reply, self.config.possible_cpus)

    def _lookup(self, family: int, key: NatKey, cpu: int) -> NatValue | None:
        """A BPF lookup: marks the entry as used (LRU recency, or the reference bit)."""
        return self.nat[family].lookup(key, cpu)

    def _allocate(self, key: ConnKey, egress: int) -> tuple[int | None, int]:
        """snat_v4_new_mapping: the bounded port search; (port or None, retries)."""
        config = self.config
        start, end = config.port_min, config.port_max
        family = int(is_v6(key[0]))
        cpu = self._cpu(key, False)
        kind = config.clamp  # ports.py: the version's __snat_clamp_port_range
        port = keep(start, end, key[1], self._random16, kind)
        retries = 0
        found = False
        while retries < config.retries:
            reverse = in_key(key, egress, port)
            # nat.h __snat_create: the IN entry with BPF_NOEXIST. A failed insert does not
            # refresh the entry it found (and, in the kernel's LRU, may evict others).
            created = float(math.floor(self.now))  # whole seconds, as Cilium keeps it
            table = self.nat[family]
            if table.create(reverse, NatValue(key, key[0], key[1], created), cpu):
                if table.create(out_key(key), NatValue(key, egress, port, created), cpu):
                    found = True
                else:  # nat.h rolls the IN entry back and drops
                    table.delete(reverse)
                break
            port = next_port(start, end, port, retries, self._random16, kind=kind)
            retries += 1
        self.counters.tries[retries] += 1
        if retries > config.signal_thres:
            self._signal_nat_fill_up()
        return (port if found else None), retries

    def _random16(self) -> int:
        return self.rng.getrandbits(16)

    def _signal_nat_fill_up(self) -> None:
        self.counters.signals += 1
        if self.now >= self.last_signal_gc + self.config.nat_fill_up_holdoff:
            self.last_signal_gc = self.now
            self.signal_gc_due = True

    def _after_operation(self) -> None:
        if self.signal_gc_due:
            self.signal_gc_due = False
            self.gc()

    # -- packets ------------------------------------------------------------------------

    def _forward(self, key: ConnKey, egress: int, closing: bool) -> tuple[int, int, bool, int]:
        """A packet from the pod: (port or -1, drop code or 0, broken, retries)."""
        family = int(is_v6(key[0]))
        out = self._lookup(family, out_key(key), self._cpu(key, False))
        ct = self._track_forward(key, egress, closing)
        if out is not None:
            return out.port, 0, False, 0
        broken = ct.port != 0
        if broken and not ct.broken:
            ct.broken = True
            self.counters.broken += 1
        port, retries = self._allocate(key, egress)
        if port is None:
            self.counters.drops[DropReason.NAT_NO_MAPPING] = (
                self.counters.drops.get(DropReason.NAT_NO_MAPPING, 0) + 1
            )
            return -1, int(DropReason.NAT_NO_MAPPING), broken, retries
        self.counters.allocations += 1
        ct.port = port
        ct.egress = egress
        return port, 0, broken, retries

    def _reply(self, key: ConnKey) -> tuple[int, int]:
        """A reply from the remote to the port the connection last had: (port, drop)."""
        ct = self.conns.get(key)
        if ct is None or ct.port == 0:
            self.counters.reply_drops += 1
            return -1, int(DropReason.NAT_NO_MAPPING)
        entry = self._lookup(int(is_v6(key[0])), in_key(key, ct.egress, ct.port),
                             self._cpu(key, True))
        if entry is None:
            self.counters.reply_drops += 1
            return -1, int(DropReason.NAT_NO_MAPPING)
        self._track_reply(entry.owner)
        if entry.owner != key:  # the port was taken over: the reply goes elsewhere
            self.counters.reply_drops += 1
            return -1, int(DropReason.NAT_NO_MAPPING)
        return ct.port, 0

    # -- the per-connection API ---------------------------------------------------------

    def connect(self, key: ConnKey, egress: int) -> tuple[int, int, int]:
        self.counters.attempted += 1
        port, drop, _broken, retries = self._forward(key, egress, False)
        if not drop:
            self.counters.established += 1
        self._after_operation()
        return port, drop, retries

    def send(self, key: ConnKey, egress: int) -> tuple[int, int, bool, int]:
        result = self._forward(key, egress, False)
        self._after_operation()
        return result

    def reply(self, key: ConnKey) -> tuple[int, int]:
        return self._reply(key)

    def close(self, key: ConnKey, kind: int) -> tuple[int, int, bool, int]:
        ct = self.conns.get(key)
        if kind == EndKind.IDLE or ct is None:
            return -1, 0, False, 0
        result = self._forward(key, ct.egress, True)
        self.counters.closed += 1
        self._after_operation()
        return result

    # -- garbage collection -------------------------------------------------------------

    def ct_delete(self, key: ConnKey) -> None:
        """Delete a CT entry with its OUT entry and the IN entry that OUT entry names."""
        del self.conns[key]
        table = self.nat[int(is_v6(key[0]))]
        out = table.delete(out_key(key))
        if out is not None:  # nat DeleteMapping: whoever owns that IN entry now
            table.delete(in_key(key, out.egress, out.port))

    def gc(self) -> None:
        """One CT GC pass at ``now``: expire CT entries, their NAT mappings, then orphans."""
        deleted = alive = 0
        for key, ct in list(self.conns.items()):
            if ct.expiry >= self.now:
                alive += 1
                continue
            deleted += 1
            self.ct_delete(key)
        for table in self.nat:
            for nat_key in [k for k, v in table.items() if v.owner not in self.conns]:
                table.delete(nat_key)
        ratio = deleted / (deleted + alive) if deleted + alive else 0.0
        if self.config.conntrack_gc_interval is None:
            self.gc_interval = next_gc_interval(self.gc_interval, ratio)
        self.next_gc = self.now + self.gc_interval
        self.counters.gc_runs += 1

    # -- the bulk API -------------------------------------------------------------------

    def run(self, batch: ConnectionBatch, until: float) -> None:
        """Process the batch's starts and every pending event before ``until``."""
        starts = batch.start
        n = len(batch)
        i = 0
        while True:
            t_start = float(starts[i]) if i < n else math.inf
            t_heap = self.heap[0][0] if self.heap else math.inf
            t_gc = self.next_gc
            t = min(t_start, t_heap, t_gc)
            if t >= until:
                break
            self.now = t
            if t_gc <= t_heap and t_gc <= t_start:
                self.gc()
            elif t_heap <= t_start:
                self._event(heapq.heappop(self.heap))
            else:
                self._start(batch, i)
                i += 1
            self._after_operation()
        self.now = until

    def _start(self, batch: ConnectionBatch, i: int) -> None:
        key = (
            int(batch.src[i]),
            int(batch.sport[i]),
            int(batch.dst[i]),
            int(batch.dport[i]),
            int(batch.proto[i]),
        )
        egress = int(batch.egress[i])
        seq = self.seq
        self.seq += 1
        self.counters.attempted += 1
        _port, drop, _broken, _retries = self._forward(key, egress, False)
        if drop:
            return
        self.counters.established += 1
        self._reply(key)
        end = self.now + float(batch.duration[i])
        self._schedule(
            seq,
            key,
            egress=egress,
            end=end,
            keepalive=float(batch.keepalive[i]),
            kind=int(batch.end[i]),
        )

    def _schedule(
        self, seq: int, key: ConnKey, *, egress: int, end: float, keepalive: float, kind: int
    ) -> None:
        if keepalive > 0 and self.now + keepalive < end:
            event = (self.now + keepalive, seq, True, key, egress, end, keepalive, kind)
            heapq.heappush(self.heap, event)
        elif end < math.inf:
            heapq.heappush(self.heap, (end, seq, False, key, egress, end, keepalive, kind))

    def _event(self, event: Event) -> None:
        _t, seq, is_keepalive, key, egress, end, keepalive, kind = event
        if is_keepalive:
            _port, drop, _broken, _retries = self._forward(key, egress, False)
            if drop:  # the connection lost its mapping and could not get a new one
                return
            self._reply(key)
            self._schedule(seq, key, egress=egress, end=end, keepalive=keepalive, kind=kind)
            return
        closing = kind != EndKind.IDLE
        _port, drop, _broken, _retries = self._forward(key, egress, closing)
        if not drop:
            self._reply(key)
        if closing:
            self.counters.closed += 1

    # -- views --------------------------------------------------------------------------

    def nat_rows(self) -> list[NatRow]:
        """Every NAT entry, per family; an exact LRU's in LRU order (least recent first)."""
        rows: list[NatRow] = []
        for family, table in enumerate(self.nat):
            for key, value in table.items():
                src, sport, dst, dport, proto = value.owner
                port = value.port if key[0] == OUT else key[4]
                egress = value.egress if key[0] == OUT else key[3]
                rows.append(
                    (family, key[0], src, sport, dst, dport, proto, egress, port, value.created)
                )
        return rows

    def in_endpoint_counts(self) -> dict[tuple[int, int, int, int, int], int]:
        """IN entries per (family, proto, egress id, remote id, remote port): nat-stats."""
        counts: dict[tuple[int, int, int, int, int], int] = {}
        for family, table in enumerate(self.nat):
            for key, _value in table.items():
                if key[0] != IN or key[5] not in COUNTED_PROTOS[family]:
                    continue
                _dir, dst, dport, egress, _port, proto = key
                endpoint = (family, proto, egress, dst, dport if proto in PORT_PROTOS else 0)
                counts[endpoint] = counts.get(endpoint, 0) + 1
        return counts
