"""Generate a workload's connections into numpy columns, one time window at a time.

Windows are asked for in order (t0 < t1 <= next t0), so a run of 10,000,000 connections
never holds more than one window in memory. Everything is drawn from one seeded
``numpy.random.Generator``: equal seeds give equal connections.

Source ports: like Linux, clients use the ephemeral range 32768-60999. With
``source_ports: sequential`` (the default) each client walks the range round-robin from
a random starting point, so a client reuses a port only after 28232 connections; with
``random`` every connection draws a port uniformly (collisions possible, as with a
naive client).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from egressgw.datapath.model.config import TCP_SYN_RTO
from egressgw.sim.flows import AddressBook, Flows
from egressgw.sim.routing import Routes
from egressgw.sim.workload import (
    EPHEMERAL_MAX,
    EPHEMERAL_MIN,
    ClientGroup,
    SourcePorts,
    Workload,
)

EPHEMERAL_SPAN = EPHEMERAL_MAX - EPHEMERAL_MIN + 1


class FlowSource(Protocol):
    """Something that yields connections window by window."""

    def expected(self, t0: float, t1: float) -> float:
        """About how many connections start in [t0, t1) (to size windows)."""

    def window(self, t0: float, t1: float) -> Flows:
        """The connections starting in [t0, t1), sorted by start."""


def occurrence_rank(keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """For each row, how many earlier rows have the same key (0 for the first)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    n = len(keys)
    boundaries = np.flatnonzero(np.diff(sorted_keys)) + 1
    starts = np.concatenate(([0], boundaries))
    sizes = np.diff(np.concatenate((starts, [n])))
    rank_sorted = np.arange(n) - np.repeat(starts, sizes)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = rank_sorted
    return rank


class _GroupFlows:
    """One client group's connections."""

    def __init__(
        self,
        workload: Workload,
        group: ClientGroup,
        routes: npt.NDArray[np.int32],
        book: AddressBook,
        rng: np.random.Generator,
    ) -> None:
        self.group = group
        self.routes = routes
        self.rng = rng
        self.src_ids = np.array([book.add(ip) for ip in group.addresses], dtype=np.uint32)
        dests = [workload.destinations[d] for d in group.destinations]
        self.dest_index = np.array(group.destinations, dtype=np.int64)
        self.dst_ids = np.array([book.add(d.ip) for d in dests], dtype=np.uint32)
        self.dports = np.array([d.port for d in dests], dtype=np.uint16)
        self.protos = np.array([int(d.proto) for d in dests], dtype=np.uint8)
        weights = np.array([d.weight for d in dests])
        self.weights = weights / weights.sum()
        self.next_port = rng.integers(0, EPHEMERAL_SPAN, group.count).astype(np.int64)
        # random source ports: (client, destination, port) keys still open -> their end
        self.live: dict[int, float] = {}
        self.unrouted = 0

    def expected(self, t0: float, t1: float) -> float:
        return self.group.arrivals.expected(t0, t1)

    def window(self, t0: float, t1: float) -> Flows:
        rng, group = self.rng, self.group
        start = group.arrivals.draw(rng, t0, t1)
        n = len(start)
        clients = rng.integers(0, group.count, n)
        if len(self.dst_ids) == 1:
            which = np.zeros(n, dtype=np.int64)
        else:
            which = rng.choice(len(self.dst_ids), size=n, p=self.weights)
        duration = group.duration.draw(rng, n)
        end = group.ends.draw(rng, n)
        proto = self.protos[which]
        sport = self._source_ports(clients, which, start, duration)
        egress = self.routes[clients, self.dest_index[which]]
        routed = egress >= 0
        self.unrouted += int(n - np.count_nonzero(routed))
        flows = Flows(
            start=start,
            duration=duration,
            end=end,
            src=self.src_ids[clients],
            sport=sport,
            dst=self.dst_ids[which],
            dport=self.dports[which],
            proto=proto,
            egress=egress.astype(np.uint32),
            keepalive=np.full(n, group.keepalive, dtype=np.float32),
            retries=np.select(
                [proto == 6, proto == 17], [group.syn_retries, group.udp_retries], 0
            ).astype(np.uint8),
            rto=np.where(proto == 6, TCP_SYN_RTO, group.udp_retry_timeout).astype(np.float32),
        )
        return flows if routed.all() else flows.take(routed)

    def _source_ports(
        self,
        clients: npt.NDArray[np.int64],
        which: npt.NDArray[np.int64],
        start: npt.NDArray[np.float64],
        duration: npt.NDArray[np.float64],
    ) -> npt.NDArray[np.uint16]:
        if self.group.source_ports == SourcePorts.RANDOM:
            return self._random_ports(clients, which, start, duration)
        offset = self.next_port[clients] + occurrence_rank(clients)
        self.next_port += np.bincount(clients, minlength=self.group.count)
        return (EPHEMERAL_MIN + offset % EPHEMERAL_SPAN).astype(np.uint16)


    def _random_ports(
        self,
        clients: npt.NDArray[np.int64],
        which: npt.NDArray[np.int64],
        start: npt.NDArray[np.float64],
        duration: npt.NDArray[np.float64],
    ) -> npt.NDArray[np.uint16]:
        """A uniform port per connection, never one its client holds open to the same
        destination: the kernel refuses a 5-tuple in use (connect() picks another).

        Vectorized for the common case; only rows whose key (client, destination, port)
        repeats in the window or is still open from an earlier window are walked in Python.
        """
        n = len(clients)
        ports = self.rng.integers(EPHEMERAL_MIN, EPHEMERAL_MAX + 1, n).astype(np.int64)
        base = (clients * len(self.dst_ids) + which) << 16
        keys = base | ports
        end = start + duration
        live = self.live
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        suspect = np.ones(n, dtype=bool)
        suspect[first[counts == 1]] = False
        if live:
            suspect |= np.isin(keys, np.fromiter(live, np.int64, len(live)))
        if suspect.any():
            taken = set(keys[~suspect].tolist())
            busy = dict(live)
            for i in np.flatnonzero(suspect).tolist():
                key = int(keys[i])
                t = float(start[i])
                while busy.get(key, -np.inf) > t or (key != int(keys[i]) and key in taken):
                    port = int(self.rng.integers(EPHEMERAL_MIN, EPHEMERAL_MAX + 1))
                    key = int(base[i]) | port
                busy[key] = float(end[i])
                keys[i] = key
        t1 = float(start[-1]) if n else -np.inf
        still = end > t1
        self.live = {k: e for k, e in live.items() if e > t1}
        self.live.update(zip(keys[still].tolist(), end[still].tolist(), strict=True))
        return (keys & 0xFFFF).astype(np.uint16)


class WorkloadFlows:
    """All client groups of a workload, merged in start order."""

    def __init__(
        self, workload: Workload, routes: Routes, book: AddressBook, rng: np.random.Generator
    ) -> None:
        self.parts = [
            _GroupFlows(workload, group, routes.per_group[i], book, rng)
            for i, group in enumerate(workload.groups)
        ]

    @property
    def unrouted(self) -> int:
        """Connections not masqueraded (no matching policy, or an excluded CIDR)."""
        return sum(p.unrouted for p in self.parts)

    def expected(self, t0: float, t1: float) -> float:
        return sum(p.expected(t0, t1) for p in self.parts)

    def window(self, t0: float, t1: float) -> Flows:
        return Flows.concat([p.window(t0, t1) for p in self.parts])


class MergedFlows:
    """Several sources (generated clients and replayed flows) merged in start order."""

    def __init__(self, sources: Sequence[FlowSource]) -> None:
        self.sources = list(sources)

    def expected(self, t0: float, t1: float) -> float:
        return sum(s.expected(t0, t1) for s in self.sources)

    def window(self, t0: float, t1: float) -> Flows:
        return Flows.concat([s.window(t0, t1) for s in self.sources])

