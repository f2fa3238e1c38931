"""Top K per family and saturation, as Cilium's nat-stats controller computes them."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from egressgw.config import NAT_MAP_STATS_ENTRIES_DEFAULT, NodePortRange, check_stats_entries
from egressgw.errors import ConfigError
from egressgw.limits import PortLimit
from egressgw.net import Family, IPAddress, NatEndpoint, Proto, format_addr, format_ip

DEFAULT_DIVISOR = NodePortRange().cilium_saturation_divisor


@dataclass(frozen=True, slots=True)
class NatStatsRow:
    """One row of the ``nat-stats`` table: connections sharing one SNAT port space."""

    family: Family
    proto: Proto
    egress_ip: IPAddress
    remote_ip: IPAddress
    remote_port: int
    count: int
    rank: int
    # Of ``count``, entries whose port the datapath can take over for a new connection
    # (Linux: TCP in TIME_WAIT, CLOSE, SYN_SENT2); 0 for Cilium, which never does.
    reusable: int = 0

    @property
    def blocking(self) -> int:
        """Entries that really hold their port: a new connection cannot have it."""
        return self.count - self.reusable

    @property
    def remote_addr(self) -> str:
        """``ip:port``, or the ip alone when the port is 0 (ICMP), as cilium-dbg prints it."""
        return format_addr(self.remote_ip, self.remote_port)

    @property
    def endpoint(self) -> NatEndpoint:
        return NatEndpoint(
            self.family, self.proto, self.egress_ip, self.remote_ip, self.remote_port
        )


@dataclass(frozen=True)
class NatStats:
    """The result of one nat-stats pass.

    ``rows`` are in display order (IPv4 then IPv6, ascending count within a family).
    ``saturation`` holds, per family that has rows, the largest count of entries that
    block a port (``blocking``; all entries unless the datapath reports which it can take
    over) divided by ``divisor``.
    """

    rows: tuple[NatStatsRow, ...]
    saturation: dict[Family, float] = field(default_factory=dict)
    divisor: int = DEFAULT_DIVISOR
    # Which limit ``divisor`` is and where it came from (egressgw.limits), when known.
    limit: PortLimit | None = None
    # Per family, the most entries that block a port on one tuple (the saturation's count).
    blocking: dict[Family, int] = field(default_factory=dict)
    # Whether the counts said which entries can be taken over (Linux gateways).
    takeover_known: bool = False

    def top(self, family: Family) -> NatStatsRow | None:
        """The rank-1 row of a family, or None when the family has no rows."""
        return next((r for r in self.rows if r.family is family and r.rank == 1), None)


_FAMILY_ORDER = {Family.IPV4: 0, Family.IPV6: 1}


def tie_key(endpoint: NatEndpoint) -> tuple[str, str, str]:
    """Order within equal counts: the printed EgressIP, then RemoteAddr, then proto.

    String order, as the seed's table shows (``172.18.0.3`` before ``172.18.0.3:4240``,
    ``[fd00:10:244:3::730c]:4240`` before ``[fd00:10:244::915]:4240``).
    """
    return (format_ip(endpoint.egress_ip), endpoint.remote_addr, endpoint.proto.label)


def _rank_key(item: tuple[NatEndpoint, int]) -> tuple[int, str, str, str]:
    endpoint, count = item
    return (-count, *tie_key(endpoint))


def top_k(counts: Iterable[tuple[NatEndpoint, int]], k: int) -> list[tuple[NatEndpoint, int]]:
    """The k largest counts, largest first, ties broken by :func:`tie_key`.

    Equal to ``sorted(counts, key=rank order)[:k]`` but O(n log k).
    """
    return heapq.nsmallest(k, counts, key=_rank_key)


def compute_nat_stats(
    counts: Mapping[NatEndpoint, int],
    *,
    entries: int = NAT_MAP_STATS_ENTRIES_DEFAULT,
    divisor: int = DEFAULT_DIVISOR,
    limit: PortLimit | None = None,
    reusable: Mapping[NatEndpoint, int] | None = None,
) -> NatStats:
    """Keep the top ``entries`` endpoints per family and compute each family's saturation.

    ``entries`` is ``--nat-map-stats-entries`` (1..4096). ``divisor`` is what Cilium divides
    the top count by, ``NodePortRange.cilium_saturation_divisor`` (32767 by default).
    ``limit`` (from :mod:`egressgw.limits`, the one rule for it) overrides ``divisor``
    with its ports and is kept in the result. ``reusable`` (Linux gateways) holds, per
    endpoint, the entries among ``counts`` whose port the kernel can take over: rows keep
    Cilium's count and carry it, and saturation uses the entries that really block a
    port. Endpoints with a count below 1 are ignored.
    """
    check_stats_entries(entries)
    if limit is not None:
        divisor = limit.ports
    if divisor < 1:
        raise ConfigError(f"{divisor}: the saturation divisor must be positive", field="divisor")
    by_family: dict[Family, list[tuple[NatEndpoint, int]]] = {}
    for endpoint, count in counts.items():
        if count > 0:
            by_family.setdefault(endpoint.family, []).append((endpoint, count))
    rows: list[NatStatsRow] = []
    saturation: dict[Family, float] = {}
    blocking: dict[Family, int] = {}
    taken = reusable or {}
    for family in sorted(by_family, key=_FAMILY_ORDER.__getitem__):
        ranked = top_k(by_family[family], entries)
        blocking[family] = max(
            count - min(count, taken.get(ep, 0)) for ep, count in by_family[family]
        )
        saturation[family] = blocking[family] / divisor
        family_rows = [
            NatStatsRow(family, ep.proto, ep.egress_ip, ep.remote_ip, ep.remote_port, count, rank,
                        min(count, taken.get(ep, 0)))
            for rank, (ep, count) in enumerate(ranked, start=1)
        ]
        # Display order: ascending count; equal counts keep the tie order.
        family_rows.sort(key=lambda row: (row.count, *tie_key(row.endpoint)))
        rows.extend(family_rows)
    return NatStats(tuple(rows), saturation, divisor, limit, blocking, reusable is not None)
