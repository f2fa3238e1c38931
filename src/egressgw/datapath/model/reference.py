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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from egressgw.datapath.model.addresses import is_v6
from egressgw.datapath.model.config import ModelConfig
from egressgw.datapath.model.gcpacing import SECOND, get_interval, to_ns
from egressgw.datapath.model.natmap import ExactLru, KernelLru, NatTable, flow_cpu
from egressgw.datapath.model.ports import keep, next_port
from egressgw.datapath.model.types import (
    LATENCY_BINS,
    LATENCY_STEP,
    ConnectionBatch,
    DropReason,
    EndKind,
    ModelCounters,
    TcpFlags,
)
from egressgw.net import COUNTED_PROTOS as NET_COUNTED_PROTOS
from egressgw.net import Family, Proto

TCP = 6
# The protocols whose tuples carry ports (ICMP echo: an identifier), as protocol numbers.
PORT_PROTOS = frozenset(int(proto) for proto in Proto if proto.has_ports)
# What nat-stats counts (net.COUNTED_PROTOS: pkg/maps/nat/stats), per family index
# (0: IPv4, 1: IPv6) as protocol numbers. Every engine takes it from here.
COUNTED_PROTOS = tuple(
    frozenset(int(proto) for proto in NET_COUNTED_PROTOS[family])
    for family in (Family.IPV4, Family.IPV6)
)

# The CT entry's TCP state, as bpf/lib/conntrack.h keeps it (struct ct_entry): the SYN
# seen in the reply direction (rx_flags_seen & SYN; the original direction's SYN is always
# seen, since ct_create4 records one for every new TCP entry), seen_non_syn, and each
# direction's closing flag. (Cilium records SYNs only with the default
# --monitor-aggregation-flags, which include syn.)
CT_RX_SYN = 1
CT_NON_SYN = 2
CT_TX_CLOSING = 4
CT_RX_CLOSING = 8
CT_CLOSED = CT_TX_CLOSING | CT_RX_CLOSING

SYN = int(TcpFlags.SYN)
FIN = int(TcpFlags.FIN)
RST = int(TcpFlags.RST)

OUT = 0
IN = 1

# Which maps a GC pass covers: a bit per family.
ALL_FAMILIES = 3

ConnKey = tuple[int, int, int, int, int]  # src, sport, dst, dport, proto
NatKey = tuple[int, int, int, int, int, int]  # dir, then OUT: src, sport, dst, dport, proto
#                                               IN: dst, dport, egress, port, proto
EV_END = 0
EV_KEEPALIVE = 1
EV_RETRY = 2
# (time, seq, EV_*, key, egress, end time (EV_RETRY: the duration), keepalive interval,
#  EndKind, retransmissions left, next timeout, start)
Event = tuple[float, int, int, ConnKey, int, float, float, int, int, float, float]
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
    flags: int
    expiry: float
    port: int = 0  # the source port the connection last got (0: none yet)
    broken: bool = False


def out_key(key: ConnKey) -> NatKey:
    return (OUT, *key)


def in_key(key: ConnKey, egress: int, port: int) -> NatKey:
    _src, _sport, dst, dport, proto = key
    return (IN, dst, dport, egress, port, proto)


def latency_bin(seconds: float) -> int:
    """The ModelCounters.delayed bin of an extra connect latency."""
    return min(LATENCY_BINS - 1, int(seconds / LATENCY_STEP + 0.5))


class ReferenceModel:
    """Cilium's BPF SNAT (``config.cilium_version``), CT and CT GC on a virtual clock."""

    def __init__(self, config: ModelConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.now = 0.0
        self.conns: dict[ConnKey, CtEntry] = {}
        self.nat = (self._nat_table(), self._nat_table())  # per family
        self.counters = ModelCounters(tries=np.zeros(config.retries + 1, np.int64))
        self.gc_cached_ns = 0  # ctmap's cachedGCInterval (0: unset)
        self.last_gc: float | None = None
        self.next_gc = 0.0
        self.muted_until = -math.inf
        self.signal_due = 0  # families whose nat_fill_up woke the GC
        self.heap: list[Event] = []
        self.seq = 0
        self.gc()  # the agent's initial scan when it starts (gc.go Enable)

    # -- CT ---------------------------------------------------------------------------

    def _ct_new(self, key: ConnKey, egress: int) -> CtEntry:
        """ct_create4: a new entry; TCP gets the SYN lifetime whatever the packet was."""
        config = self.config
        life = config.ct_timeout_syn if key[4] == TCP else config.ct_timeout_any
        ct = CtEntry(egress, 0, self.now + life)
        self.conns[key] = ct
        return ct

    def _ct_update(self, ct: CtEntry, proto: int, flags: int, ingress: bool) -> bool:
        """__ct_lookup on an existing entry (conntrack.h). False when a SYN finds the entry
        closing: Cilium returns CT_NEW and the caller creates a fresh entry."""
        config = self.config
        if proto != TCP:
            ct.expiry = self.now + config.ct_timeout_any
            return True
        if ct.flags & CT_CLOSED != CT_CLOSED:  # ct_entry_alive: ct_update_timeout
            if not flags & SYN:
                ct.flags |= CT_NON_SYN
            elif ingress:
                ct.flags |= CT_RX_SYN
            life = config.ct_timeout_tcp if ct.flags & CT_NON_SYN else config.ct_timeout_syn
            ct.expiry = self.now + life
        if flags & (FIN | RST):  # ACTION_CLOSE
            if flags & RST and not ct.flags & CT_RX_SYN:
                ct.flags |= CT_CLOSED  # an RST before both SYNs ends both directions
            else:
                ct.flags |= CT_RX_CLOSING if ingress else CT_TX_CLOSING
            if ct.flags & CT_CLOSED == CT_CLOSED:
                ct.expiry = self.now + config.ct_timeout_fin  # CT_CLOSE_TIMEOUT
        elif flags & SYN and ct.flags & CT_CLOSED:  # ACTION_CREATE on a closing entry
            return False
        return True

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
        if retries > config.signal_thres:  # nat.h: strictly more than SNAT_SIGNAL_THRES
            self._signal_nat_fill_up(family)
        return (port if found else None), retries

    def _random16(self) -> int:
        return self.rng.getrandbits(16)

    def _signal_nat_fill_up(self, family: int) -> None:
        self.counters.signals += 1
        # gc.go mutes the signal from the moment the GC wakes until its pass is done;
        # a signal sent meanwhile is dropped (pkg/signal: "muted").
        if self.now >= self.muted_until:
            self.signal_due |= 1 << family

    def _after_operation(self) -> None:
        if self.signal_due:
            families, self.signal_due = self.signal_due, 0
            self.gc(families, signalled=True)

    # -- packets ------------------------------------------------------------------------

    def _forward(self, key: ConnKey, egress: int, flags: int) -> tuple[int, int, bool, int]:
        """A packet from the pod: (port or -1, drop code or 0, broken, retries).

        nat.h snat_v4_nat_handle_mapping: the OUT lookup, the CT lookup (a new CT entry if
        none, or if a SYN finds it closing), then the port search if there is no OUT entry.
        """
        family = int(is_v6(key[0]))
        out = self._lookup(family, out_key(key), self._cpu(key, False))
        ct = self.conns.get(key)
        if ct is None or not self._ct_update(ct, key[4], flags, ingress=False):
            ct = self._ct_new(key, out.egress if out is not None else egress)
            if out is not None:
                ct.port = out.port
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

    def _reply(self, key: ConnKey, flags: int) -> tuple[int, int]:
        """A reply from the remote to the port the connection last had: (port, drop).

        snat_v4_rev_nat_handle_mapping: the IN lookup, then the CT lookup of the IN
        entry's owner in the reply direction.
        """
        ct = self.conns.get(key)
        if ct is None or ct.port == 0:
            self.counters.reply_drops += 1
            return -1, int(DropReason.NAT_NO_MAPPING)
        entry = self._lookup(int(is_v6(key[0])), in_key(key, ct.egress, ct.port),
                             self._cpu(key, True))
        if entry is None:
            self.counters.reply_drops += 1
            return -1, int(DropReason.NAT_NO_MAPPING)
        owner = self.conns.get(entry.owner)
        if owner is not None:
            self._ct_update(owner, key[4], flags, ingress=True)
        if entry.owner != key:  # the port was taken over: the reply goes elsewhere
            self.counters.reply_drops += 1
            return -1, int(DropReason.NAT_NO_MAPPING)
        return ct.port, 0

    def _open(self, key: ConnKey, egress: int) -> tuple[int, int, int]:
        """A connection's first exchange: TCP's handshake (SYN, SYN-ACK, ACK), else the
        first packet and its reply. (port or -1, drop, retries of the port search)."""
        tcp = key[4] == TCP
        port, drop, _broken, retries = self._forward(key, egress, SYN if tcp else 0)
        if drop:
            return port, drop, retries
        self._reply(key, SYN if tcp else 0)
        if tcp:
            self._forward(key, egress, 0)
        return port, drop, retries

    def _end(self, key: ConnKey, egress: int, kind: int) -> tuple[int, int, bool, int]:
        """The packets that end a connection (EndKind); the first one's result."""
        if key[4] != TCP:  # no TCP flags: the last exchange
            result = self._forward(key, egress, 0)
            if not result[1]:
                self._reply(key, 0)
            return result
        if kind == EndKind.RST_SERVER:
            port, drop = self._reply(key, RST)
            return port, drop, False, 0
        if kind == EndKind.RST:
            return self._forward(key, egress, RST)
        if kind == EndKind.FIN:
            result = self._forward(key, egress, FIN)
            if not result[1] and not self._reply(key, FIN)[1]:
                self._forward(key, egress, 0)  # the pod's last ACK
            return result
        result = self._forward(key, egress, 0)  # IDLE: a last exchange, then nothing
        if not result[1]:
            self._reply(key, 0)
        return result

    # -- the per-connection API ---------------------------------------------------------

    def connect(self, key: ConnKey, egress: int) -> tuple[int, int, int]:
        self.counters.attempted += 1
        tcp = key[4] == TCP
        port, drop, _broken, retries = self._forward(key, egress, SYN if tcp else 0)
        if not drop:
            self.counters.established += 1
        self._after_operation()
        return port, drop, retries

    def first_exchange(self, key: ConnKey, egress: int) -> tuple[int, int, int]:
        self.counters.attempted += 1
        port, drop, retries = self._open(key, egress)
        if not drop:
            self.counters.established += 1
        self._after_operation()
        return port, drop, retries

    def send(self, key: ConnKey, egress: int, flags: int) -> tuple[int, int, bool, int]:
        result = self._forward(key, egress, flags)
        self._after_operation()
        return result

    def reply(self, key: ConnKey, flags: int) -> tuple[int, int]:
        return self._reply(key, flags)

    def close(self, key: ConnKey, kind: int) -> tuple[int, int, bool, int]:
        ct = self.conns.get(key)
        if ct is None:
            return -1, 0, False, 0
        result = self._end(key, ct.egress, kind)
        if kind != EndKind.IDLE:
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

    def _max_entries(self, proto: int) -> int:
        config = self.config
        return config.bpf_ct_global_tcp_max if proto == TCP else config.bpf_ct_global_any_max

    def gc(self, families: int = ALL_FAMILIES, signalled: bool = False) -> None:
        """One CT GC pass at ``now`` over the CT maps of ``families`` (gc.go runGC).

        Expired entries go with their NAT mappings; a pass woken by nat_fill_up then
        purges the orphan NAT entries of those families (PurgeOrphanNATEntries). The
        next interval follows GetInterval from the largest deletion ratio of the maps.
        """
        ratio = 0.0
        deleted: dict[tuple[int, int], int] = {}
        for key, ct in list(self.conns.items()):
            family = int(is_v6(key[0]))
            if not families >> family & 1 or ct.expiry >= self.now:
                continue
            which = (family, key[4] == TCP)
            deleted[which] = deleted.get(which, 0) + 1
            self.ct_delete(key)
        for (_family, tcp), n in deleted.items():
            ratio = max(ratio, n / self._max_entries(TCP if tcp else 0))
        if signalled:
            for family, table in enumerate(self.nat):
                if families >> family & 1:
                    for nat_key in [k for k, v in table.items() if v.owner not in self.conns]:
                        table.delete(nat_key)
        config = self.config
        if config.conntrack_gc_interval is not None:
            interval = config.conntrack_gc_interval
        else:
            actual = 0 if self.last_gc is None else to_ns(self.now - self.last_gc)
            limit = to_ns(config.conntrack_gc_max_interval or 0.0)
            interval_ns, self.gc_cached_ns = get_interval(
                self.gc_cached_ns, actual, ratio, limit
            )
            interval = interval_ns / SECOND
        self.last_gc = self.now
        self.next_gc = self.now + interval
        self.muted_until = self.now + config.gc_pass_seconds
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
        seq = self.seq
        self.seq += 1
        self.counters.attempted += 1
        self._attempt(
            seq, key, egress=int(batch.egress[i]), start=self.now,
            duration=float(batch.duration[i]), keepalive=float(batch.keepalive[i]),
            kind=int(batch.end[i]), retries=int(batch.retries[i]), rto=float(batch.rto[i]),
        )  # fmt: skip

    def _attempt(
        self, seq: int, key: ConnKey, *, egress: int, start: float, duration: float,
        keepalive: float, kind: int, retries: int, rto: float,
    ) -> None:  # fmt: skip
        """The first packet (or a retransmission of it) of a connection started at start."""
        _port, drop, _retries = self._open(key, egress)
        if not drop:
            self.counters.established += 1
            if self.now > start:
                self.counters.delayed[latency_bin(self.now - start)] += 1
            self._schedule(
                seq, key, egress=egress, end=self.now + duration, keepalive=keepalive,
                kind=kind,
            )  # fmt: skip
        elif retries > 0:
            # The client retransmits after its timeout; Linux doubles a SYN's each time.
            event = (self.now + rto, seq, EV_RETRY, key, egress, duration, keepalive, kind,
                     retries - 1, rto * 2 if key[4] == TCP else rto, start)  # fmt: skip
            heapq.heappush(self.heap, event)
        else:
            self.counters.connect_failed += 1

    def _schedule(
        self, seq: int, key: ConnKey, *, egress: int, end: float, keepalive: float, kind: int
    ) -> None:
        if keepalive > 0 and self.now + keepalive < end:
            event = (self.now + keepalive, seq, EV_KEEPALIVE, key, egress, end, keepalive,
                     kind, 0, 0.0, 0.0)  # fmt: skip
            heapq.heappush(self.heap, event)
        elif end < math.inf:
            heapq.heappush(
                self.heap, (end, seq, EV_END, key, egress, end, keepalive, kind, 0, 0.0, 0.0)
            )

    def _event(self, event: Event) -> None:
        _t, seq, what, key, egress, end, keepalive, kind, retries, rto, start = event
        if what == EV_RETRY:
            self.counters.retransmits += 1
            self._attempt(seq, key, egress=egress, start=start, duration=end,
                          keepalive=keepalive, kind=kind, retries=retries, rto=rto)
            return
        if what == EV_KEEPALIVE:
            _port, drop, _broken, _retries = self._forward(key, egress, 0)
            if drop:  # the connection lost its mapping and could not get a new one
                return
            self._reply(key, 0)
            self._schedule(seq, key, egress=egress, end=end, keepalive=keepalive, kind=kind)
            return
        self._end(key, egress, kind)
        if kind != EndKind.IDLE:
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

    def sync_rng(self) -> None:
        """Nothing to do: this engine draws from ``rng`` itself."""

    def in_endpoint_counts(self) -> dict[tuple[int, int, int, int, int], int]:
        """IN entries per (family, proto, egress id, remote id, remote port): nat-stats."""
        return count_in_endpoints(self.nat_keys())

    def nat_keys(self) -> tuple[list[NatKey], list[NatKey]]:
        """Every NAT key per family, copied now: ``count_in_endpoints`` counts the copy
        later, on any thread, while this model goes on changing (the agent's recount)."""
        return self.nat[0].keys(), self.nat[1].keys()


def count_in_endpoints(
    keys: Sequence[Iterable[NatKey]],
) -> dict[tuple[int, int, int, int, int], int]:
    """IN keys per (family, proto, egress id, remote id, remote port), ``keys`` given per
    family: pkg/maps/nat/stats ``countNat`` counts IN entries of the counted protocols,
    the allocated port left out."""
    counts: dict[tuple[int, int, int, int, int], int] = {}
    for family, table in enumerate(keys):
        counted = COUNTED_PROTOS[family]
        for key in table:
            if key[0] != IN or key[5] not in counted:
                continue
            _dir, dst, dport, egress, _port, proto = key
            endpoint = (family, proto, egress, dst, dport if proto in PORT_PROTOS else 0)
            counts[endpoint] = counts.get(endpoint, 0) + 1
    return counts
