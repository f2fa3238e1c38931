"""The egress rules as ``cilium-dbg bpf egress list`` shows a node's policy map.

cilium-dbg prints ``Source IP  Destination CIDR  Egress IP  Gateway IP`` with Go's
tabwriter (minwidth 5, tabwidth 0, padding 3, space padding), and the gateway column uses
the map's sentinels: gateway 0.0.0.0 is printed as "Not Found" (no gateway node) and
0.0.0.1 as "Excluded CIDR". The egress IP is only known on the gateway node itself; every
other node's map holds 0.0.0.0 (``::`` for IPv6), which is also what a drop shows. An
excluded CIDR is stored with the egress IP of the endpoint's gateway (Cilium's
updateEgressRules4/6 write ``gwc.egressIP`` with gateway ``ExcludedCIDRIPv4``), so on the
gateway node it shows that egress IP.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from egressgw.render.tabwriter import tabwrite
from egressgw.rules import EgressRule, RuleKind, sort_rules

HEADER = ("Source IP", "Destination CIDR", "Egress IP", "Gateway IP")
NOT_FOUND = "Not Found"
EXCLUDED_CIDR = "Excluded CIDR"
# bpf_egress_list.go: tabwriter.NewWriter(os.Stdout, 5, 0, 3, ' ', 0)
_MINWIDTH = 5
_PADDING = 3


@dataclass(frozen=True, slots=True)
class EgressListEntry:
    """One line of the listing, with the rule it comes from."""

    source_ip: str
    destination_cidr: str
    egress_ip: str
    gateway_ip: str
    rule: EgressRule

    def as_document(self) -> dict[str, Any]:
        """Every field, for -o json/yaml (addresses as strings, absent ones as null)."""
        rule = self.rule
        return {
            "source_ip": str(rule.source_ip),
            "destination_cidr": str(rule.destination),
            "shown_destination_cidr": self.destination_cidr,
            "kind": rule.kind.value,
            "egress_ip": None if rule.egress_ip is None else str(rule.egress_ip),
            "gateway_node": rule.gateway_node,
            "gateway_ip": None if rule.gateway_ip is None else str(rule.gateway_ip),
            "policy": rule.policy,
            "shown_egress_ip": self.egress_ip,
            "shown_gateway_ip": self.gateway_ip,
        }


def dump_order(rule: EgressRule) -> tuple[int, int, str]:
    """Where ``rule`` comes in a dump of Cilium's policy map.

    cilium-dbg prints the IPv4 map, then the IPv6 map, in the kernel's iteration order
    (no sorting: cilium-dbg/cmd/bpf_egress_list.go). An LPM trie's get_next_key walks the
    trie in postorder (kernel/bpf/lpm_trie.c; checked with bpf(2) in
    tests/test_lpm_trie_keys.py): by the key's bits, a 0 bit before a 1 bit, and a prefix
    after every longer prefix it holds. The key is {source IP, destination CIDR}, so: by
    source, then the destination's bits with a terminator that sorts after 0 and 1.
    """
    destination = rule.destination
    bits = format(int(destination.network_address), f"0{destination.max_prefixlen}b")
    return (rule.source_ip.version, int(rule.source_ip), bits[: destination.prefixlen] + "2")


def egress_list(rules: Iterable[EgressRule], node: str | None = None) -> list[EgressListEntry]:
    """The entries in cilium-dbg's order (dump_order); with ``node``, as that node's policy
    map holds them.

    Without ``node`` each masquerade shows its egress IP (the gateway's view of it).
    """
    entries = []
    for rule in sorted(sort_rules(rules), key=dump_order):
        unspecified = "0.0.0.0" if rule.source_ip.version == 4 else "::"
        egress = unspecified
        stored = rule.kind is not RuleKind.NO_GATEWAY and rule.egress_ip is not None
        if stored and (node is None or rule.gateway_node == node):
            egress = str(rule.egress_ip)
        if rule.kind is RuleKind.EXCLUDED:
            gateway = EXCLUDED_CIDR
        elif rule.gateway_ip is None:
            gateway = NOT_FOUND
        else:
            gateway = str(rule.gateway_ip)
        # Cilium shows the CIDR as the policy wrote it (host bits kept).
        destination = rule.destination_text or str(rule.destination)
        entries.append(EgressListEntry(str(rule.source_ip), destination, egress, gateway, rule))
    return entries


def format_egress_list(entries: Iterable[EgressListEntry]) -> str:
    """The table exactly as cilium-dbg aligns it (header line included)."""
    rows = [HEADER]
    rows.extend((e.source_ip, e.destination_cidr, e.egress_ip, e.gateway_ip) for e in entries)
    return tabwrite(rows, minwidth=_MINWIDTH, padding=_PADDING)
