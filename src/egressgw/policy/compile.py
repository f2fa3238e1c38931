"""Compile policies against an inventory into egress rules (pure: no I/O, no clock).

For each policy (in name order), each endpoint it selects and each of the endpoint's IPs:
one rule per destination CIDR of the same family, and one EXCLUDED rule per excluded CIDR
of the same family. The datapath matches by longest prefix, so an excluded CIDR inside a
destination CIDR wins for the addresses it covers.

The gateway, as Cilium's regenerateGatewayConfig derives it:
- the first node, sorted by name, matching the gateway's nodeSelector; its InternalIP is
  the gateway IP. No node: the traffic is dropped (NO_GATEWAY, reason 194).
- the egress IP on that node: ``egressIP`` as given (an IP on none of the node's
  interfaces is still used, with a warning: Cilium keeps it in its map and only logs an
  error); ``interface``: its first address of the rule's family; neither: the
  default-route interface's first address of that family. For the family ``egressIP``
  is not, the interface holding it (else the default-route interface) gives its first
  address of that family. Nothing found: the gateway drops the traffic (NO_GATEWAY with
  the gateway set; Cilium writes egress IP 0.0.0.0).
- several gateways (spec.egressGateways): they are ordered by gateway IP (a gateway
  without a node counts as 0.0.0.0, ties keep the policy order) and an endpoint uses
  ``gateways[fnv1a_32(uid) % len(gateways)]``, where uid is the endpoint's UID (or
  ``namespace/name``). FNV-1a is fixed by its definition, so the choice is the same in
  every run and every process, unlike Python's salted hash().

Two policies giving the same {source IP, destination CIDR} conflict in Cilium's map (the
last writer wins); here the policy whose name sorts first wins and a warning says so.

Excluded CIDRs carry the endpoint's gateway and its egress IP for the rule's family, as
Cilium stores them (the datapaths ignore both: excluded traffic is not redirected).

``cilium=None`` gives egressgw's own semantics (what its datapaths enforce). With a
:class:`CiliumVersion` the egress IPs are derived as that version of Cilium derives them
(see policy/cilium.py): what ``egress list`` predicts for ``cilium-dbg bpf egress list``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from egressgw.errors import excerpt
from egressgw.net import IPAddress, IPNetwork
from egressgw.policy.cilium import CiliumVersion
from egressgw.policy.inventory import Endpoint, InventorySource, Node
from egressgw.policy.model import (
    NAMESPACE_LABELS_PREFIX,
    EgressPolicy,
    EndpointSelector,
    GatewaySpec,
)
from egressgw.rules import EgressRule, RuleKind, sort_rules

_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash (Go's hash/fnv New32a)."""
    value = _FNV32_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV32_PRIME) & 0xFFFFFFFF
    return value


@dataclass(frozen=True, slots=True)
class ResolvedGateway:
    """A gateway entry of a policy, resolved against the inventory."""

    spec: GatewaySpec
    node: Node | None

    @property
    def sort_key(self) -> tuple[int, int]:
        if self.node is None:
            return (4, 0)
        return (self.node.internal_ip.version, int(self.node.internal_ip))


@dataclass(frozen=True, slots=True)
class Compiled:
    """The rules, in a deterministic order, and what an operator should be told about."""

    rules: list[EgressRule]
    warnings: list[str]


def compile_rules(policies: Sequence[EgressPolicy], inventory: InventorySource) -> list[EgressRule]:
    """The egress rules ``policies`` give over ``inventory``, sorted (see EgressRule)."""
    return compile_policies(policies, inventory).rules


def compile_policies(
    policies: Sequence[EgressPolicy],
    inventory: InventorySource,
    cilium: CiliumVersion | None = None,
) -> Compiled:
    """Rules and warnings (unmatched gateways, egress IPs not found, conflicts).

    ``cilium``: derive egress IPs as that Cilium version does instead of as egressgw does.
    """
    nodes = sorted(inventory.nodes(), key=lambda n: n.name)
    node_labels = {node.name: node.labels for node in nodes}
    endpoints = sorted(inventory.endpoints(), key=lambda e: (e.namespace, e.name))
    # Computed once: every policy tests every endpoint.
    endpoint_labels = [
        (e, e.identity_labels, None if e.node is None else node_labels.get(e.node))
        for e in endpoints
    ]
    index = _LabelIndex([labels for _, labels, _ in endpoint_labels])
    warnings: list[str] = []
    rules: dict[tuple[IPAddress, IPNetwork], EgressRule] = {}
    for policy in sorted(policies, key=lambda p: p.name):
        gateways = _resolve_gateways(policy, nodes, warnings)
        derive = _CiliumEgressIPs(policy, cilium, warnings) if cilium else _EgressIPs(
            policy, warnings)
        for position in index.candidates(policy.selectors):
            endpoint, identity_labels, on_node_labels = endpoint_labels[position]
            if not policy.selects(identity_labels, on_node_labels):
                continue
            gateway = pick_gateway(gateways, endpoint)
            if len(gateways) > 1 and endpoint.uid_from_pod:
                warnings.append(
                    f"policy {policy.name!r}: its {len(gateways)} gateways are assigned by "
                    "CiliumEndpoint UID, and the inventory has only Pod UIDs: Cilium may "
                    "pin pods to other gateways than shown (add ciliumendpoints to "
                    "kubectl get)"
                )
            for rule in _endpoint_rules(policy, endpoint, gateway, derive):
                key = (rule.source_ip, rule.destination)
                earlier = rules.get(key)
                if earlier is None or (
                    earlier.policy == rule.policy and rule.kind is RuleKind.EXCLUDED
                ):
                    rules[key] = rule
                elif earlier.policy != rule.policy:
                    warnings.append(
                        f"policy {rule.policy!r}: {rule.source_ip} -> {rule.destination} is "
                        f"already given by policy {earlier.policy!r}, which wins"
                    )
    return Compiled(sort_rules(rules.values()), _unique(warnings))


class _LabelIndex:
    """Endpoints by {label: value}, so a policy only tests endpoints its matchLabels allow.

    Only a prefilter: every candidate is still matched against the full selector.
    """

    def __init__(self, labels: Sequence[Mapping[str, str]]) -> None:
        self._count = len(labels)
        self._by_pair: dict[tuple[str, str], set[int]] = {}
        for position, endpoint_labels in enumerate(labels):
            for pair in endpoint_labels.items():
                self._by_pair.setdefault(pair, set()).add(position)

    def candidates(self, selectors: Sequence[EndpointSelector]) -> list[int]:
        found: set[int] = set()
        for selector in selectors:
            pairs: list[tuple[str, str]] = []
            if selector.pod_selector is not None:
                pairs.extend(selector.pod_selector.match_labels.items())
            if selector.namespace_selector is not None:
                pairs.extend(
                    (NAMESPACE_LABELS_PREFIX + key, value)
                    for key, value in selector.namespace_selector.match_labels.items()
                )
            if not pairs:
                return list(range(self._count))
            sets = [self._by_pair.get(pair, set()) for pair in pairs]
            found |= set.intersection(*sets)
        return sorted(found)


def pick_gateway(gateways: Sequence[ResolvedGateway], endpoint: Endpoint) -> ResolvedGateway:
    """The gateway an endpoint is pinned to (see the module docstring)."""
    if len(gateways) == 1:
        return gateways[0]
    index = fnv1a_32(endpoint.stable_id.encode("utf-8")) % len(gateways)
    return gateways[index]


def _resolve_gateways(
    policy: EgressPolicy, nodes: Sequence[Node], warnings: list[str]
) -> list[ResolvedGateway]:
    resolved = []
    for spec in policy.gateways:
        node = next((n for n in nodes if spec.node_selector.matches(n.labels)), None)
        if node is None:
            warnings.append(
                f"policy {policy.name!r}: {spec.field}.nodeSelector matches no node: "
                "its traffic is dropped (No egress gateway found)"
            )
        resolved.append(ResolvedGateway(spec, node))
    if len(resolved) > 1:
        # sorted() is stable: equal gateway IPs keep the policy's order.
        resolved.sort(key=lambda g: g.sort_key)
    return resolved


def _endpoint_rules(
    policy: EgressPolicy, endpoint: Endpoint, gateway: ResolvedGateway, derive: _Derivation
) -> list[EgressRule]:
    rules: list[EgressRule] = []
    node = gateway.node
    for source_ip in endpoint.ips:
        version = source_ip.version
        destinations = [c for c in policy.destination_cidrs if c.version == version]
        excluded = [c for c in policy.excluded_cidrs if c.version == version]
        if not destinations and not excluded:
            continue
        egress_ip = derive(gateway, version)
        for destination in destinations:
            rules.append(_rule(policy, source_ip, destination, gateway, egress_ip))
        for cidr in excluded:
            # Cilium stores the gateway config's egress IP and gateway "0.0.0.1" here.
            rules.append(EgressRule(
                source_ip, cidr, RuleKind.EXCLUDED, egress_ip,
                None if node is None else node.name, None if node is None else node.internal_ip,
                policy.name,
            ))
    if policy.cidr_spellings:
        rules = [
            replace(r, destination_text=policy.cidr_spellings.get(r.destination, ""))
            for r in rules
        ]
    return rules


def _rule(
    policy: EgressPolicy,
    source_ip: IPAddress,
    destination: IPNetwork,
    gateway: ResolvedGateway,
    egress_ip: IPAddress | None,
) -> EgressRule:
    node = gateway.node
    if node is None:
        return EgressRule(source_ip, destination, RuleKind.NO_GATEWAY, policy=policy.name)
    kind = RuleKind.NO_GATEWAY if egress_ip is None else RuleKind.MASQUERADE
    return EgressRule(
        source_ip, destination, kind, egress_ip, node.name, node.internal_ip, policy.name
    )


class _Derivation(Protocol):
    def __call__(self, gateway: ResolvedGateway, version: int) -> IPAddress | None: ...


class _EgressIPs:
    """egressgw's egress IP for a gateway and a family (what its datapaths enforce)."""

    def __init__(self, policy: EgressPolicy, warnings: list[str]) -> None:
        self.policy = policy
        self.warnings = warnings

    def __call__(self, gateway: ResolvedGateway, version: int) -> IPAddress | None:
        policy, warnings = self.policy, self.warnings
        node, spec = gateway.node, gateway.spec
        if node is None:
            return None
        where = f"policy {policy.name!r}: {spec.field}"
        family = f"IPv{version}"
        if not node.interfaces_known:
            return _unknown_interfaces(policy, spec, node, version, warnings)
        if spec.interface is not None:
            interface = node.interface(spec.interface)
            if interface is None:
                warnings.append(
                    f"{where}.interface: node {node.name!r} has no interface "
                    f"{excerpt(spec.interface)}: its traffic is dropped at the gateway"
                )
                return None
            found = interface.first_address(version)
            if found is None:
                warnings.append(
                    f"{where}.interface: {excerpt(spec.interface)} on node {node.name!r} has no "
                    f"{family} address: its {family} traffic is dropped at the gateway"
                )
            return found
        holder = None
        if spec.egress_ip is not None:
            holder = node.interface_with(spec.egress_ip)
            if holder is None:
                warnings.append(
                    f"{where}.egressIP: {spec.egress_ip} is on no interface of node "
                    f"{node.name!r}: used as a virtual IP (replies must be routed to the node)"
                )
            if spec.egress_ip.version == version:
                return spec.egress_ip
        interface = holder or node.default_interface
        if interface is None:
            warnings.append(
                f"{where}: node {node.name!r} has no default-route interface: its {family} "
                "traffic is dropped at the gateway"
            )
            return None
        found = interface.first_address(version)
        if found is None:
            warnings.append(
                f"{where}: interface {interface.name!r} on node {node.name!r} has no "
                f"{family} address: its {family} traffic is dropped at the gateway"
            )
        return found


class _CiliumEgressIPs:
    """The egress IPs a Cilium version stores for a gateway (deriveFromPolicyGatewayConfig).

    v1.16 and v1.17 derive the IPv4 one only, and keep a configured egressIP even when no
    interface holds it. v1.18 derives both families at once and any failure leaves both
    unspecified; an egressIP gives IPv6 ``::``. An unspecified egress IP is returned as
    None (the rule becomes a drop at the gateway).
    """

    def __init__(self, policy: EgressPolicy, cilium: CiliumVersion, warnings: list[str]) -> None:
        self.policy = policy
        self.cilium = cilium
        self.warnings = warnings
        self.v6_needed = any(c.version == 6 for c in policy.destination_cidrs)
        self._cache: dict[int, tuple[IPAddress | None, IPAddress | None]] = {}

    def __call__(self, gateway: ResolvedGateway, version: int) -> IPAddress | None:
        if gateway.node is None:
            return None
        key = id(gateway)
        if key not in self._cache:
            self._cache[key] = self._derive(gateway, gateway.node)
        ip4, ip6 = self._cache[key]
        return ip4 if version == 4 else ip6

    def _fail(self, gateway: ResolvedGateway, node: Node, why: str) -> tuple[None, None]:
        self.warnings.append(
            f"policy {self.policy.name!r}: {gateway.spec.field}: on node {node.name!r} "
            f"Cilium v{self.cilium.value} finds {why}: it stores egress IP "
            f"{'0.0.0.0 and ::' if self.cilium.has_ipv6 else '0.0.0.0'} and drops this "
            "policy's traffic at the gateway"
        )
        return None, None

    def _derive(
        self, gateway: ResolvedGateway, node: Node
    ) -> tuple[IPAddress | None, IPAddress | None]:
        spec = gateway.spec
        v6 = self.cilium.has_ipv6 and self.v6_needed
        if not node.interfaces_known:
            ip4 = _unknown_interfaces(self.policy, spec, node, 4, self.warnings)
            if v6 and spec.egress_ip is not None:
                self.warnings.append(
                    f"policy {self.policy.name!r}: {spec.field}.egressIP: Cilium "
                    f"v{self.cilium.value} stores :: as the IPv6 egress IP of an egressIP "
                    f"gateway: its IPv6 traffic is dropped at {node.name!r}"
                )
                return ip4, None
            return ip4, _unknown_interfaces(self.policy, spec, node, 6, self.warnings)
        if spec.interface is not None:
            interface = node.interface(spec.interface)
            if interface is None:
                return self._fail(gateway, node, f"no interface {excerpt(spec.interface)}")
        elif spec.egress_ip is not None:
            if node.interface_with(spec.egress_ip) is None:
                if not self.cilium.has_ipv6:
                    # v1.16/v1.17 assign the egress IP before looking for its interface.
                    self.warnings.append(
                        f"policy {self.policy.name!r}: {spec.field}.egressIP: "
                        f"{spec.egress_ip} is on no interface of node {node.name!r}: "
                        f"Cilium v{self.cilium.value} still uses it (replies must be routed "
                        "to the node)"
                    )
                    return spec.egress_ip, None
                return self._fail(gateway, node, f"no interface holding {spec.egress_ip}")
            if v6:
                self.warnings.append(
                    f"policy {self.policy.name!r}: {spec.field}.egressIP: Cilium "
                    f"v{self.cilium.value} stores :: as the IPv6 egress IP of an egressIP "
                    f"gateway: its IPv6 traffic is dropped at {node.name!r}"
                )
            return spec.egress_ip, None
        else:
            interface = node.default_interface
            if interface is None:
                return self._fail(gateway, node, "no interface with the default route")
        ip4 = interface.first_address(4)
        if ip4 is None:
            return self._fail(gateway, node, f"no IPv4 address on {interface.name!r}")
        if not v6:
            return ip4, None
        ip6 = interface.first_address(6)
        if ip6 is None:
            return self._fail(gateway, node, f"no IPv6 address on {interface.name!r}")
        return ip4, ip6


def _unknown_interfaces(
    policy: EgressPolicy, spec: GatewaySpec, node: Node, version: int, warnings: list[str]
) -> IPAddress | None:
    """A node whose interfaces are unknown (read from Kubernetes without them): an egressIP
    is taken as given; an interface or default-route address cannot be derived."""
    if spec.egress_ip is not None:
        return spec.egress_ip if spec.egress_ip.version == version else None
    what = f"interface {excerpt(spec.interface)}" if spec.interface else "default-route interface"
    warnings.append(
        f"policy {policy.name!r}: {spec.field}: the interfaces of node {node.name!r} are "
        f"unknown (Kubernetes input), so the address of its {what} is too: add "
        "nodes: [{name, interfaces, defaultRouteInterface}] to the inventory "
        "(docs/policies.md); shown as dropped"
    )
    return None


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
