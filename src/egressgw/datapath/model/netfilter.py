"""A Linux gateway's SNAT in memory: nf_nat's port selection and conntrack's lifetimes.

The model engine for ``datapath_model="netfilter"``, behind the same facade as the
Cilium engines (``ModelDatapath``). What it reproduces, and from where (Linux 6.18's
net/netfilter, checked against this kernel in tests/test_netfilter_model_kernel.py):

- **The source's mapping first** (``nf_nat_core.c`` ``get_unique_tuple`` step 1,
  ``find_appropriate_src``): a pod's address never lies in the rule's range, so before
  anything else nf_nat walks the ``nf_nat_bysource`` hash chain of the original source
  (address, port, protocol), newest entry first, and takes the first entry whose mapping
  lies in this rule's range (its egress IP and ports; entries of other egress IPs are
  skipped). If that mapped port is free towards the new remote (``nf_nat_used_tuple``, no
  takeover) it is used; if not, nf_nat goes on to the steps below without trying older
  entries. So one pod port keeps one SNAT port towards many remotes. Measured on this
  kernel (tests/test_netfilter_source_kernel.py): a mapping held by a TIME_WAIT entry is
  reused too, and so, until conntrack's GC removes it, is an expired entry's (not
  modelled: entries leave the chain here the moment they expire).
- **Keep the port** (``get_unique_tuple`` step 3): a connection whose source port lies
  in the rule's range keeps it when no entry holds that reply tuple.
- **The search** (``nf_nat_l4proto_unique_tuple``): ``attempts = min(range size, 128)``
  consecutive ports from a random 16-bit offset (``min + off % size``, ``off`` a u16 that
  wraps); when all are taken and ``attempts`` is below the range size and at least 16,
  halve it and start again from a new random offset (128, 64, 32, 16, 8: 248 ports).
- **Taking over** (``nf_nat_used_tuple_harder``): in the last 32 attempts of a round, a
  port held by a source-NATed TCP entry in TIME_WAIT or CLOSE (SYN_SENT2 is not reached
  here) is taken by a new TCP connection whose SYN's sequence number is past the old
  entry's (``nf_seq_has_advanced``); the old entry is ended (``nf_ct_kill``). Sequence
  numbers are drawn per connection, so the outcome is the kernel's coin flip.
- **Failure**: when no port was found the packet keeps a taken tuple and is dropped at
  conntrack confirm (``insert_failed`` and ``drop``); the connection is not tracked.
- **Lifetimes** (``nf_conntrack_proto_tcp.c``, ``_udp.c``, ``_icmp.c`` defaults): TCP
  established 432000 s, after FIN TIME_WAIT 120 s, after RST CLOSE 10 s; UDP 30 s, 120 s
  once packets keep flowing (stream); ICMP 30 s. An entry is gone for the port search
  the moment it expires (``nf_conntrack_tuple_taken`` skips expired entries).
- **No LRU**: nothing is evicted to make room; a full table (``nf_conntrack_max``)
  drops new connections (early drop only takes unassured entries, and every entry here
  is assured once answered).

Plain Python and numpy: one dict of connections and, per {egress IP, remote, port,
proto}, the ports in use (who holds each, and busy/reusable arrays so that a search
round is one numpy step). Randomness comes only from the injected ``random.Random``.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

import numpy as np

from egressgw.datapath.model.addresses import is_v6
from egressgw.datapath.model.config import ModelConfig
from egressgw.datapath.model.reference import (
    COUNTED_PROTOS,
    IN,
    OUT,
    PORT_PROTOS,
    ConnKey,
    NatRow,
)
from egressgw.datapath.model.types import (
    ConnectionBatch,
    DropReason,
    EndKind,
    ModelCounters,
    TcpFlags,
)

TCP, UDP = 6, 17

# nf_nat_core.c: NF_NAT_MAX_ATTEMPTS, NF_NAT_HARDER_THRESH (= max attempts / 4), and the
# smallest round that is followed by another (a round of fewer than 16 is the last).
MAX_ATTEMPTS = 128
HARDER_THRESH = MAX_ATTEMPTS // 4
MIN_HALVED_ROUND = 16
# Every port one search can try: 128 + 64 + 32 + 16 + 8.
SEARCH_MAX = 248

# Connection states that decide the lifetime (enum tcp_conntrack names where TCP).
SYN_SENT, ESTABLISHED, TIME_WAIT, CLOSE, UDP_NEW, UDP_REPLIED, UDP_STREAM, ICMP_STATE = range(8)
TAKEOVER_STATES = (TIME_WAIT, CLOSE)

Taken = tuple[int, int, int, int]  # egress, remote id, remote port, proto
Source = tuple[int, int, int]  # original source id, source port (echo id), proto


@dataclass(slots=True)
class Conn:
    egress: int
    port: int
    state: int
    expiry: float
    created: float
    # The SYN's sequence number; the old entry's td_end is taken as isn + 2 (SYN and FIN;
    # the data sent does not change the coin flip between random ISNs).
    isn: int
    broken: bool = False
    # When the pending expiry event of this entry fires (it re-checks ``expiry`` then).
    scheduled: float = math.inf


class _Ports:
    """The ports in use for one {egress IP, remote, remote port, proto}: who holds each,
    and as arrays (index = port - lowest port) which are busy and which can be taken over,
    so a search round is checked in one numpy step."""

    __slots__ = ("busy", "low", "owner", "reuse")

    def __init__(self, low: int, size: int) -> None:
        self.low = low
        self.owner: dict[int, ConnKey] = {}
        self.busy = np.zeros(size, dtype=bool)
        self.reuse = np.zeros(size, dtype=bool)


_OFFSETS = np.arange(MAX_ATTEMPTS, dtype=np.int64)


def _advanced(new_isn: int, old_end: int) -> bool:
    """``nf_seq_has_advanced``: the new SYN's end is past the old entry's, as s32."""
    diff = (new_isn + 1 - old_end) & 0xFFFFFFFF
    return 0 < diff < 0x80000000


class NetfilterModel:
    """nf_nat + conntrack of one Linux gateway on a virtual clock, keyed by address ids."""

    def __init__(self, config: ModelConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.now = 0.0
        self.conns: dict[ConnKey, Conn] = {}
        self.taken: dict[Taken, _Ports] = {}
        self.counters = ModelCounters(tries=np.zeros(SEARCH_MAX + 1, np.int64))
        port_range = config.snat_port_range
        self.port_min = port_range.min
        self.port_size = port_range.ports
        # (time, seq, kind, key): connection ends, keepalives and expiries, in time order.
        self.heap: list[tuple[float, int, int, ConnKey, int, float, float, int]] = []
        self.seq = 0
        # Flows the workload still drives: a packet of one whose entry is gone breaks it.
        self.open: set[ConnKey] = set()
        # Per ports-in-use dict: how many of its entries are in a takeover state.
        self.reusable: dict[Taken, int] = {}
        # nf_nat_bysource: the entries of each original (source, port, proto), oldest
        # first (the kernel adds at the head and walks from it: newest first).
        self.bysource: dict[Source, list[ConnKey]] = {}
        # New connections given the mapping of an earlier one from the same source.
        self.source_mappings = 0

    # -- lifetimes ----------------------------------------------------------------------

    def _timeout(self, proto: int, state: int) -> float:
        c = self.config
        if proto == TCP:
            return {SYN_SENT: c.nf_tcp_timeout_syn_sent, ESTABLISHED: c.nf_tcp_timeout_established,
                    TIME_WAIT: c.nf_tcp_timeout_time_wait,
                    CLOSE: c.nf_tcp_timeout_close}[state]
        if proto == UDP:
            return c.nf_udp_timeout_stream if state == UDP_STREAM else c.nf_udp_timeout
        return c.nf_icmp_timeout

    def _set_state(self, key: ConnKey, conn: Conn, state: int) -> None:
        if (state in TAKEOVER_STATES) != (conn.state in TAKEOVER_STATES):
            taken = self._taken_key(key, conn.egress)
            step = 1 if state in TAKEOVER_STATES else -1
            self.reusable[taken] = self.reusable.get(taken, 0) + step
            slot = self.taken[taken]
            slot.reuse[conn.port - slot.low] = step > 0
        conn.state = state
        conn.expiry = self.now + self._timeout(key[4], state)
        if conn.expiry < conn.scheduled:
            # Only an earlier expiry needs an event; a later one is found when the
            # pending event fires and finds the entry still alive.
            conn.scheduled = conn.expiry
            self._push(conn.expiry, -1, key)

    def _push(self, when: float, kind: int, key: ConnKey, *,
              egress: int = 0, end: float = 0.0, keepalive: float = 0.0, end_kind: int = 0
              ) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (when, self.seq, kind, key, egress, end, keepalive, end_kind))

    def _alive(self, key: ConnKey) -> Conn | None:
        conn = self.conns.get(key)
        if conn is not None and conn.expiry <= self.now:
            self._remove(key, conn)
            return None
        return conn

    def _remove(self, key: ConnKey, conn: Conn) -> None:
        del self.conns[key]
        taken = self._taken_key(key, conn.egress)
        slot = self.taken[taken]
        if slot.owner.get(conn.port) == key:
            del slot.owner[conn.port]
            slot.busy[conn.port - slot.low] = False
            slot.reuse[conn.port - slot.low] = False
        if conn.state in TAKEOVER_STATES:
            self.reusable[taken] -= 1
        source = (key[0], key[1], key[4])
        chain = self.bysource[source]
        chain.remove(key)
        if not chain:
            del self.bysource[source]

    @staticmethod
    def _taken_key(key: ConnKey, egress: int) -> Taken:
        _src, _sport, dst, dport, proto = key
        return (egress, dst, dport if proto in PORT_PROTOS else 0, proto)

    # -- the port search ----------------------------------------------------------------

    def _slot(self, key: ConnKey, egress: int) -> _Ports:
        taken = self._taken_key(key, egress)
        slot = self.taken.get(taken)
        if slot is None:
            if key[4] in PORT_PROTOS:
                slot = _Ports(self.port_min, self.port_size)
            else:  # ICMP echo id: no range in the rule, every id
                slot = _Ports(0, 65536)
            self.taken[taken] = slot
        return slot

    def _source_mapping(self, key: ConnKey, egress: int, slot: _Ports) -> int | None:
        """find_appropriate_src (nf_nat_core.c): the port of the newest entry from the
        same original source, port and protocol whose mapping lies in this rule's range
        (same egress IP, a port of the slot's range), or None."""
        chain = self.bysource.get((key[0], key[1], key[4]))
        if not chain:
            return None
        high = slot.low + len(slot.busy)
        for other in reversed(chain):
            conn = self.conns[other]
            if conn.egress == egress and slot.low <= conn.port < high:
                return conn.port
        return None

    def _search(self, key: ConnKey, egress: int, isn: int) -> tuple[int | None, int]:
        """get_unique_tuple + nf_nat_l4proto_unique_tuple: (port or None, collisions).

        Collisions count like Cilium's retries: ports found taken before the one used
        (0: the first was free), every port tried when the search failed. Entries are
        gone from ``busy`` the moment they expire (run() processes expiries in order).
        """
        proto = key[4]
        slot = self._slot(key, egress)
        low, size = slot.low, len(slot.busy)
        busy = slot.busy
        mapped = self._source_mapping(key, egress, slot)
        if mapped is not None and not busy[mapped - low]:
            # Step 1: the source's current mapping, free towards this remote. When it is
            # taken, the kernel goes on to keep/search (no takeover, no older entry).
            self.source_mappings += 1
            return mapped, 0
        original = key[1]
        if low <= original < low + size and not busy[original - low]:
            return original, 0
        attempts = min(size, MAX_ATTEMPTS)
        off = self.rng.getrandbits(16)
        if not busy[off % size]:  # the common case, without numpy
            return low + off % size, 0
        tried = 0
        while True:
            index = ((off + _OFFSETS[:attempts]) & 0xFFFF) % size
            free = np.flatnonzero(~busy[index])
            first_free = int(free[0]) if free.size else attempts
            harder = max(0, attempts - HARDER_THRESH)
            if proto == TCP and harder < first_free:
                # nf_nat_used_tuple_harder: the last 32 attempts may end a closed entry.
                candidates = np.flatnonzero(slot.reuse[index[harder:first_free]]) + harder
                for i in candidates.tolist():
                    port = low + int(index[i])
                    owner = slot.owner[port]
                    old = self.conns[owner]
                    if _advanced(isn, (old.isn + 2) & 0xFFFFFFFF):
                        self._remove(owner, old)
                        self.counters.takeovers += 1
                        return port, tried + i
            if first_free < attempts:
                return low + int(index[first_free]), tried + first_free
            tried += attempts
            if attempts >= size or attempts < MIN_HALVED_ROUND:
                return None, tried
            attempts //= 2
            off = self.rng.getrandbits(16)

    # -- packets ------------------------------------------------------------------------

    def _new(self, key: ConnKey, egress: int) -> tuple[int, int, int]:
        """The first packet of an untracked flow: (port or -1, drop code or 0, tried)."""
        if len(self.conns) >= self.config.nf_conntrack_max:
            self._drop(DropReason.NF_TABLE_FULL)
            return -1, int(DropReason.NF_TABLE_FULL), 0
        isn = self.rng.getrandbits(32)
        port, tried = self._search(key, egress, isn)
        self.counters.tries[min(tried, SEARCH_MAX)] += 1
        if port is None:
            self._drop(DropReason.NF_INSERT_FAILED)
            return -1, int(DropReason.NF_INSERT_FAILED), tried
        proto = key[4]
        state = SYN_SENT if proto == TCP else UDP_NEW if proto == UDP else ICMP_STATE
        conn = Conn(egress, port, state, 0.0, float(math.floor(self.now)), isn)
        self.conns[key] = conn
        self.bysource.setdefault((key[0], key[1], proto), []).append(key)
        slot = self.taken[self._taken_key(key, egress)]
        slot.owner[port] = key
        slot.busy[port - slot.low] = True
        self._set_state(key, conn, state)
        self.counters.allocations += 1
        return port, 0, tried

    def _drop(self, reason: DropReason) -> None:
        self.counters.drops[int(reason)] = self.counters.drops.get(int(reason), 0) + 1

    def _forward(self, key: ConnKey, egress: int, end: int | None
                 ) -> tuple[int, int, bool, int]:
        """A packet from the pod; ``end`` is an EndKind when it carries FIN or RST."""
        conn = self._alive(key)
        broken = False
        tried = 0
        if conn is None:
            # A mid-flow packet after the entry expired is picked up as a new flow
            # (nf_conntrack_tcp_loose=1): it gets a new port and the connection breaks.
            broken = key in self.open
            _port, drop, tried = self._new(key, egress)
            if drop:
                return -1, drop, broken, tried
            conn = self.conns[key]
            if broken:
                conn.broken = True
                self.counters.broken += 1
        proto = key[4]
        if proto == TCP and end == EndKind.FIN:
            self._set_state(key, conn, TIME_WAIT)
        elif proto == TCP and end in (EndKind.RST, EndKind.RST_SERVER):  # RST either way
            self._set_state(key, conn, CLOSE)
        elif proto == UDP and conn.state == UDP_REPLIED:
            # Traffic after the reply: a stream, with the longer timeout.
            self._set_state(key, conn, UDP_STREAM)
        else:
            self._set_state(key, conn, conn.state)
        return conn.port, 0, broken, tried

    def _reply(self, key: ConnKey) -> tuple[int, int]:
        conn = self._alive(key)
        if conn is None:
            self.counters.reply_drops += 1
            return -1, int(DropReason.NF_INSERT_FAILED)
        if conn.state == SYN_SENT:
            self._set_state(key, conn, ESTABLISHED)
        elif conn.state == UDP_NEW:
            self._set_state(key, conn, UDP_REPLIED)
        else:
            self._set_state(key, conn, conn.state)
        return conn.port, 0

    # -- the per-connection API ---------------------------------------------------------

    def connect(self, key: ConnKey, egress: int) -> tuple[int, int, int]:
        self.counters.attempted += 1
        port, drop, _broken, tried = self._forward(key, egress, None)
        if not drop:
            self.counters.established += 1
            self.open.add(key)
        return port, drop, tried

    def first_exchange(self, key: ConnKey, egress: int) -> tuple[int, int, int]:
        port, drop, tried = self.connect(key, egress)
        if not drop:
            self._reply(key)
        return port, drop, tried

    def send(self, key: ConnKey, egress: int, flags: int = 0) -> tuple[int, int, bool, int]:
        end = EndKind.RST if flags & TcpFlags.RST else EndKind.FIN if flags & TcpFlags.FIN else None
        return self._forward(key, egress, end)

    def reply(self, key: ConnKey, flags: int = 0) -> tuple[int, int]:
        return self._reply(key)

    def close(self, key: ConnKey, kind: int) -> tuple[int, int, bool, int]:
        conn = self._alive(key)
        if kind == EndKind.IDLE or conn is None:
            return -1, 0, False, 0
        result = self._forward(key, conn.egress, kind)
        self.counters.closed += 1
        self.open.discard(key)
        return result

    # -- the bulk API -------------------------------------------------------------------

    def run(self, batch: ConnectionBatch, until: float) -> None:
        """Start the batch's connections and process ends, keepalives and expiries."""
        starts = batch.start.tolist()
        n = len(starts)
        i = 0
        heap = self.heap
        while True:
            t_start = starts[i] if i < n else math.inf
            t_heap = heap[0][0] if heap else math.inf
            t = min(t_start, t_heap)
            if t >= until:
                break
            self.now = t
            if t_heap <= t_start:
                self._event(heapq.heappop(heap))
            else:
                self._start(batch, i)
                i += 1
        self.now = until
        # Entries that expire at ``until`` are gone for whoever looks at ``until``.
        while heap and heap[0][0] <= until and heap[0][2] == -1:
            self._event(heapq.heappop(heap))

    def _start(self, batch: ConnectionBatch, i: int) -> None:
        key = (int(batch.src[i]), int(batch.sport[i]), int(batch.dst[i]),
               int(batch.dport[i]), int(batch.proto[i]))
        egress = int(batch.egress[i])
        self.counters.attempted += 1
        if self._alive(key) is not None:
            # The same original tuple while the old entry lives: conntrack sees the old
            # flow (a reused client port), no new NAT.
            self.counters.established += 1
            return
        _port, drop, _broken, _tried = self._forward(key, egress, None)
        if drop:
            return
        self.counters.established += 1
        self.open.add(key)
        self._reply(key)
        end = self.now + float(batch.duration[i])
        self._schedule(key, egress, end, float(batch.keepalive[i]), int(batch.end[i]))

    def _schedule(self, key: ConnKey, egress: int, end: float, keepalive: float,
                  kind: int) -> None:
        if keepalive > 0 and self.now + keepalive < end:
            self._push(self.now + keepalive, 1, key, egress=egress, end=end,
                       keepalive=keepalive, end_kind=kind)
        elif end < math.inf:
            self._push(end, 2, key, egress=egress, end=end, keepalive=keepalive,
                       end_kind=kind)

    def _event(self, event: tuple[float, int, int, ConnKey, int, float, float, int]) -> None:
        _t, _seq, kind, key, egress, end, keepalive, end_kind = event
        if kind == -1:  # an expiry: remove the entry, or wait for its later expiry
            conn = self.conns.get(key)
            if conn is None or conn.scheduled != self.now:
                return  # an event of an entry since removed, or superseded
            if conn.expiry <= self.now:
                self._remove(key, conn)
            else:
                conn.scheduled = conn.expiry
                self._push(conn.expiry, -1, key)
            return
        if kind == 1:  # keepalive: a packet each way
            _port, drop, _broken, _tried = self._forward(key, egress, None)
            if drop:
                return
            self._reply(key)
            self._schedule(key, egress, end, keepalive, end_kind)
            return
        closing = end_kind != EndKind.IDLE
        if closing:
            _port, drop, _broken, _tried = self._forward(key, egress, end_kind)
            if not drop:
                self._reply_closing(key)
            self.counters.closed += 1
        self.open.discard(key)

    def _reply_closing(self, key: ConnKey) -> None:
        """The remote's FIN-ACK / last ACK: the entry stays in the state the close set."""
        conn = self._alive(key)
        if conn is not None:
            self._set_state(key, conn, conn.state)

    # -- views --------------------------------------------------------------------------

    def live(self) -> list[tuple[ConnKey, Conn]]:
        return [(k, c) for k, c in self.conns.items() if c.expiry > self.now]

    def nat_rows(self) -> list[NatRow]:
        """An OUT and an IN row per live connection (created order, no LRU here)."""
        rows: list[NatRow] = []
        for key, conn in sorted(self.live(), key=lambda kc: kc[1].created):
            src, sport, dst, dport, proto = key
            family = int(is_v6(src))
            rows.append((family, OUT, src, sport, dst, dport, proto, conn.egress, conn.port,
                         conn.created))
            rows.append((family, IN, src, sport, dst, dport, proto, conn.egress, conn.port,
                         conn.created))
        return rows

    def sync_rng(self) -> None:
        """Nothing to do: this engine draws from ``rng`` itself."""

    def in_endpoint_counts(self) -> dict[tuple[int, int, int, int, int], int]:
        """Live connections per (family, proto, egress id, remote id, remote port)."""
        return self._endpoint_counts({t: len(slot.owner) for t, slot in self.taken.items()})

    def reusable_endpoint_counts(self) -> dict[tuple[int, int, int, int, int], int]:
        """Of those, the TCP entries in TIME_WAIT or CLOSE, whose port can be taken over."""
        return self._endpoint_counts(self.reusable)

    def _endpoint_counts(
        self, per_taken: dict[Taken, int]
    ) -> dict[tuple[int, int, int, int, int], int]:
        """Per nat-stats key. Expired entries are gone: run() removes them on time, and
        every view is taken at the end of a run()."""
        counts: dict[tuple[int, int, int, int, int], int] = {}
        for (egress, dst, dport, proto), n in per_taken.items():
            family = int(is_v6(dst))
            if n and proto in COUNTED_PROTOS[family]:
                counts[(family, proto, egress, dst, dport)] = n
        return counts
