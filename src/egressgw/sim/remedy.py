"""The CiliumEgressGatewayPolicy YAML that puts a plan's egress IPs to work.

Cilium v1.18 lets one policy list several gateways (``spec.egressGateways[]``, each
pod using one of them, chosen from its endpoint): one policy carries the plan. Before
v1.18 a policy has one ``egressGateway``, so the clients are split into shards by a
label, one policy per egress IP. Either way the clients' own labels are not known
here: the selector is a label the operator puts on them (``SHARD_LABEL``), said in a
comment at the top.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import yaml

from egressgw.net import IPAddress

API_VERSION = "cilium.io/v2"
KIND = "CiliumEgressGatewayPolicy"
CLIENT_LABEL = "egressgw.io/clients"
SHARD_LABEL = "egressgw.io/egress-shard"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# The first release whose CiliumEgressGatewayPolicy has egressGateways[].
MANY_GATEWAYS_FROM = (1, 18)


def _cidr(ip: IPAddress) -> str:
    return str(ipaddress.ip_network(ip))


def _gateway(egress_ip: IPAddress, node: str) -> dict[str, object]:
    return {"nodeSelector": {"matchLabels": {HOSTNAME_LABEL: node}},
            "egressIP": str(egress_ip)}


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def remedy_policies(
    egress_ips: Sequence[IPAddress],
    nodes: Sequence[str],
    destinations: Sequence[IPAddress],
    *,
    cilium_version: str,
    name: str = "egressgw-plan",
) -> str:
    """Policy YAML for ``egress_ips`` (on ``nodes``, one per IP) to ``destinations``."""
    cidrs = sorted({_cidr(ip) for ip in destinations})
    if _version(cilium_version) >= MANY_GATEWAYS_FROM:
        header = (f"# Cilium {cilium_version}: one policy, {len(egress_ips)} gateways; each "
                  "client pod uses one of them.\n"
                  f"# Label the client pods {CLIENT_LABEL}=\"true\" (or put their own "
                  "labels in podSelector).\n"
                  "# egressGateway repeats the first gateway: the v1.18 CRD requires it "
                  "even when egressGateways has entries, which Cilium then uses.\n")
        doc = {
            "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name},
            "spec": {
                "selectors": [{"podSelector": {"matchLabels": {CLIENT_LABEL: "true"}}}],
                "destinationCIDRs": cidrs,
                "egressGateway": _gateway(egress_ips[0], nodes[0]),
                "egressGateways": [_gateway(ip, node)
                                   for ip, node in zip(egress_ips, nodes, strict=True)],
            },
        }
        return header + yaml.safe_dump(doc, sort_keys=False)
    header = (f"# Cilium {cilium_version}: one egress gateway per policy, so one policy per "
              f"egress IP.\n# Split the client pods evenly with the label {SHARD_LABEL}="
              f"0..{len(egress_ips) - 1}.\n")
    docs = [
        {
            "apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": f"{name}-{shard}"},
            "spec": {
                "selectors": [{"podSelector": {"matchLabels": {SHARD_LABEL: str(shard)}}}],
                "destinationCIDRs": cidrs,
                "egressGateway": _gateway(ip, node),
            },
        }
        for shard, (ip, node) in enumerate(zip(egress_ips, nodes, strict=True))
    ]
    return header + yaml.safe_dump_all(docs, sort_keys=False)
