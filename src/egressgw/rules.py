"""Compiled egress rules: what a datapath applies, and the one rule for which rule wins.

This module is the core's: datapaths, the simulator and the agent import it without the
policy package (PyYAML, jsonschema). ``egressgw.policy.rules`` re-exports it.

A rule says: traffic from ``source_ip`` to ``destination`` leaves through ``gateway_node``
masqueraded behind ``egress_ip`` (MASQUERADE), or is not masqueraded because an excluded
CIDR matched (EXCLUDED), or is dropped (NO_GATEWAY). A drop has one of two causes, as in
Cilium's policy map: no node matched the gateway's nodeSelector (``gateway_node`` is None;
Cilium drop reason 194 "No egress gateway found"), or a gateway node was found but no
egress IP could be derived on it (``gateway_node`` set, ``egress_ip`` None; Cilium writes
egress IP 0.0.0.0 and the gateway drops the traffic).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from egressgw.net import Family, IPAddress, IPNetwork


class RuleKind(enum.StrEnum):
    MASQUERADE = "masquerade"
    EXCLUDED = "excluded"
    NO_GATEWAY = "no-gateway"


_KIND_ORDER = {kind: index for index, kind in enumerate(RuleKind)}

# Rules order by family first: ipaddress refuses to compare IPv4 with IPv6 objects, and
# listings show IPv4 before IPv6 like cilium-dbg does.
_SortKey = tuple[int, int, int, int, int, str, int, int, str, str]


@dataclass(frozen=True, slots=True)
class EgressRule:
    """One {source IP, destination CIDR} -> {egress IP, gateway} entry."""

    source_ip: IPAddress
    destination: IPNetwork
    kind: RuleKind
    egress_ip: IPAddress | None = None
    gateway_node: str | None = None
    gateway_ip: IPAddress | None = None
    policy: str = ""
    # The destination as the policy wrote it, when it has host bits (what cilium-dbg
    # shows); "" means str(destination).
    destination_text: str = ""

    def __post_init__(self) -> None:
        if self.source_ip.version != self.destination.version:
            raise ValueError(f"{self.source_ip} and {self.destination} differ in family")
        if self.kind is RuleKind.MASQUERADE and (self.egress_ip is None or not self.gateway_node):
            raise ValueError("a masquerade rule needs an egress IP and a gateway node")

    @property
    def family(self) -> Family:
        return Family.of(self.source_ip)

    @property
    def sort_key(self) -> _SortKey:
        """Family, source, destination (address, prefix), then the rest; total over rules."""
        egress = self.egress_ip
        gateway = self.gateway_ip
        return (
            self.source_ip.version,
            int(self.source_ip),
            int(self.destination.network_address),
            self.destination.prefixlen,
            _KIND_ORDER[self.kind],
            self.gateway_node or "",
            0 if egress is None else egress.version,
            0 if egress is None else int(egress),
            "" if gateway is None else f"{gateway.version}:{int(gateway):040d}",
            self.policy,
        )

    def __lt__(self, other: EgressRule) -> bool:
        return self.sort_key < other.sort_key

    def __le__(self, other: EgressRule) -> bool:
        return self.sort_key <= other.sort_key

    def __gt__(self, other: EgressRule) -> bool:
        return self.sort_key > other.sort_key

    def __ge__(self, other: EgressRule) -> bool:
        return self.sort_key >= other.sort_key


# At equal prefix length, an exclusion beats a masquerade, which beats a drop (Cilium's map
# holds one entry per {source, CIDR}; egressgw's compile already keeps one, so ties only
# arise from rule lists built by hand).
KIND_PRIORITY = {RuleKind.EXCLUDED: 0, RuleKind.MASQUERADE: 1, RuleKind.NO_GATEWAY: 2}


def precedence(rule: EgressRule) -> tuple[int, int, int, int]:
    """Sort key, most specific first: the longest destination prefix (Cilium's policy map
    is an LPM trie keyed by source and destination), then KIND_PRIORITY, then the lowest
    egress IP, so the winner never depends on the order rules were given in."""
    egress = rule.egress_ip
    return (
        -rule.destination.prefixlen,
        KIND_PRIORITY[rule.kind],
        0 if egress is None else egress.version,
        0 if egress is None else int(egress),
    )


class RuleLookup:
    """Longest-prefix match of a {source IP, destination IP} over rules: the one resolver
    the kernel ruleset renderer, the model agent and the simulator's router share."""

    def __init__(self, rules: Iterable[EgressRule]) -> None:
        by_source: dict[IPAddress, list[EgressRule]] = {}
        for rule in rules:
            by_source.setdefault(rule.source_ip, []).append(rule)
        for candidates in by_source.values():
            candidates.sort(key=precedence)
        self._by_source = by_source

    def candidates(self, source: IPAddress) -> Sequence[EgressRule]:
        """The rules of ``source``, the winner of any overlap first."""
        return self._by_source.get(source, ())

    def lookup(self, source: IPAddress, destination: IPAddress) -> EgressRule | None:
        """The rule deciding traffic from ``source`` to ``destination``, or None."""
        for rule in self._by_source.get(source, ()):
            if destination.version == rule.destination.version and (
                destination in rule.destination
            ):
                return rule
        return None


def rules_for_gateway(rules: Iterable[EgressRule], node: str) -> list[EgressRule]:
    """The rules a gateway node enforces: its own masquerades, exclusions and drops.

    Exclusions and drops apply on every node (the traffic must neither be masqueraded
    nor leave), masquerades only on the gateway that owns the egress IP.
    """
    return sorted(
        (r for r in rules if r.kind is not RuleKind.MASQUERADE or r.gateway_node == node),
        key=_sort_key,
    )


def sort_rules(rules: Iterable[EgressRule]) -> list[EgressRule]:
    """``rules`` in their order (IPv4 first, then by source and destination)."""
    return sorted(rules, key=_sort_key)


def _sort_key(rule: EgressRule) -> _SortKey:
    return rule.sort_key
