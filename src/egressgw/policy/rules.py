"""Compiled egress rules: what a datapath applies.

A rule says: traffic from ``source_ip`` to ``destination`` leaves through ``gateway_node``
masqueraded behind ``egress_ip`` (MASQUERADE), or is not masqueraded because an excluded
CIDR matched (EXCLUDED), or is dropped because no gateway node matched (NO_GATEWAY, Cilium
drop reason 194 "No egress gateway found").
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from egressgw.net import Family, IPAddress, IPNetwork


class RuleKind(enum.StrEnum):
    MASQUERADE = "masquerade"
    EXCLUDED = "excluded"
    NO_GATEWAY = "no-gateway"


@dataclass(frozen=True, slots=True, order=True)
class EgressRule:
    """One {source IP, destination CIDR} -> {egress IP, gateway} entry."""

    source_ip: IPAddress
    destination: IPNetwork
    kind: RuleKind
    egress_ip: IPAddress | None = None
    gateway_node: str | None = None
    gateway_ip: IPAddress | None = None
    policy: str = ""

    def __post_init__(self) -> None:
        if self.source_ip.version != self.destination.version:
            raise ValueError(f"{self.source_ip} and {self.destination} differ in family")
        if self.kind is RuleKind.MASQUERADE and (self.egress_ip is None or not self.gateway_node):
            raise ValueError("a masquerade rule needs an egress IP and a gateway node")

    @property
    def family(self) -> Family:
        return Family.of(self.source_ip)


def rules_for_gateway(rules: Iterable[EgressRule], node: str) -> list[EgressRule]:
    """The rules a gateway node enforces: its own masquerades, exclusions and drops.

    Exclusions and drops apply on every node (the traffic must neither be masqueraded
    nor leave), masquerades only on the gateway that owns the egress IP.
    """
    return sorted(
        rule
        for rule in rules
        if rule.kind is not RuleKind.MASQUERADE or rule.gateway_node == node
    )
