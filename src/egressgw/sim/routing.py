"""Which egress IP (and so which gateway node) each client uses for each destination.

Two sources: the workload's own ``egress_ips`` (clients spread over them round-robin,
which is how splitting traffic over several egress IPs is described), or compiled egress
gateway policies, looked up like Cilium does: the rule for the client's address whose
destination CIDR holds the remote address, longest prefix first; an excluded CIDR or a
policy without gateway means the connection is not masqueraded by the egress gateway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from egressgw.errors import InputError
from egressgw.net import IPAddress
from egressgw.rules import EgressRule, RuleKind, RuleLookup
from egressgw.sim.workload import ClientGroup, Workload

NOT_MASQUERADED = -1


@dataclass(slots=True)
class EgressTable:
    """The egress IPs in use, each with its gateway node, indexed by small integers."""

    ips: list[IPAddress] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    _index: dict[IPAddress, int] = field(default_factory=dict)

    def add(self, ip: IPAddress, node: str) -> int:
        if ip not in self._index:
            self._index[ip] = len(self.ips)
            self.ips.append(ip)
            self.nodes.append(node)
        return self._index[ip]


class PolicyRouter(RuleLookup):
    """Looks up compiled rules by (source IP, destination IP): egressgw.rules' resolver."""


@dataclass(slots=True)
class Routes:
    """Per client group, an (clients x workload destinations) matrix of egress indexes."""

    egress: EgressTable
    per_group: list[npt.NDArray[np.int32]]
    router: PolicyRouter | None = None
    gateways: Mapping[IPAddress, str] = field(default_factory=dict)

    def egress_for(self, source: IPAddress, destination: IPAddress,
                   fallback: Sequence[IPAddress], slot: int) -> int:
        """The egress index for one flow (used by replay), or NOT_MASQUERADED."""
        if self.router is not None:
            return self._from_rule(self.router.lookup(source, destination))
        if not fallback:
            return NOT_MASQUERADED
        ip = fallback[slot % len(fallback)]
        return self.egress.add(ip, self.gateways.get(ip, "gateway"))

    def _from_rule(self, rule: EgressRule | None) -> int:
        if rule is None or rule.kind is not RuleKind.MASQUERADE or rule.egress_ip is None:
            return NOT_MASQUERADED
        return self.egress.add(rule.egress_ip, rule.gateway_node or "gateway")


def _fixed_group_routes(
    workload: Workload, group: ClientGroup, index: int, table: EgressTable
) -> npt.NDArray[np.int32]:
    given = group.egress_ips or workload.egress_ips
    if not given:
        raise InputError(
            "no egress IP: give egress_ips in the workload, or --policies with --inventory",
            source=workload.source, field=f"clients[{index}]",
        )
    # Each client uses the egress IPs of its own address family.
    family = group.addresses[0].version
    ips = tuple(ip for ip in given if ip.version == family)
    if not ips:
        listed = ", ".join(str(ip) for ip in given)
        raise InputError(f"no IPv{family} egress IP among {listed}",
                         source=workload.source, field=f"clients[{index}]")
    slots = np.array([table.add(ip, workload.gateway_of(ip)) for ip in ips], dtype=np.int32)
    per_client = slots[np.arange(group.count) % len(slots)]
    return np.repeat(per_client[:, None], len(workload.destinations), axis=1)


def route_workload(
    workload: Workload,
    rules: Sequence[EgressRule] | None = None,
    *,
    egress_override: Sequence[IPAddress] | None = None,
) -> Routes:
    """Resolve every (client, destination) pair to an egress IP.

    ``egress_override`` replaces the workload's egress IPs (the planner tries more of
    them); ``rules`` (compiled policies) replace both.
    """
    table = EgressTable()
    gateways = dict(workload.gateways)
    if egress_override is not None:
        workload = _with_egress(workload, egress_override)
    if rules is None:
        per_group = [
            _fixed_group_routes(workload, group, i, table)
            for i, group in enumerate(workload.groups)
        ]
        return Routes(table, per_group, None, gateways)
    router = PolicyRouter(rules)
    routes = Routes(table, [], router, gateways)
    for group in workload.groups:
        matrix = np.full((group.count, len(workload.destinations)), NOT_MASQUERADED, np.int32)
        for c, address in enumerate(group.addresses):
            for d in group.destinations:
                rule = router.lookup(address, workload.destinations[d].ip)
                matrix[c, d] = routes._from_rule(rule)
        routes.per_group.append(matrix)
    return routes


def _with_egress(workload: Workload, ips: Sequence[IPAddress]) -> Workload:
    groups = tuple(replace(g, egress_ips=tuple(ips)) for g in workload.groups)
    replay = workload.replay and replace(workload.replay, egress_ips=tuple(ips))
    return replace(workload, groups=groups, egress_ips=tuple(ips), replay=replay)
