"""The CiliumEgressGatewayPolicy YAML that puts a plan's egress IPs to work.

Cilium v1.18 lets one policy list several gateways (``spec.egressGateways[]``, each
pod using one of them, chosen from its endpoint): one policy carries the plan. Before
v1.18 a policy has one ``egressGateway``, so the clients are split into shards by a
label (``SHARD_LABEL``), one policy per egress IP.

With the policy in force (:func:`policy_in_force`, read by the policy package's strict
loader), :func:`plan_policies` keeps its name, selectors, destination and excluded CIDRs
and changes only the gateways. Without it, :func:`remedy_policies` writes a policy
whose selector and gateway node are placeholders, and says so at the top.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from egressgw.errors import InputError
from egressgw.net import IPAddress
from egressgw.policy.cilium import CiliumVersion
from egressgw.policy.parse import load_policies
from egressgw.policy.yamlfiles import load_documents, yaml_files

API_VERSION = "cilium.io/v2"
KIND = "CiliumEgressGatewayPolicy"
CLIENT_LABEL = "egressgw.io/clients"
SHARD_LABEL = "egressgw.io/egress-shard"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# The first release whose CiliumEgressGatewayPolicy has egressGateways[].
MANY_GATEWAYS_FROM = (1, 18)


def _placeholder_note(selector: str) -> str:
    return (
        f"# PLACEHOLDERS, not your policy: the pod selector ({selector}) and the gateway\n"
        f"# node ({HOSTNAME_LABEL}). Put your policy's own selectors and gateway nodeSelector\n"
        "# in their place, or run plan again with --policy FILE (the policy in force) to\n"
        "# get your own policy back with only its gateways changed.\n"
    )


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
        header = (_placeholder_note(f"{CLIENT_LABEL}: 'true'")
                  + f"# Cilium {cilium_version}: one policy, {len(egress_ips)} gateways; each "
                  "client pod uses one of them.\n"
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
    header = (_placeholder_note(f"{SHARD_LABEL} only")
              + f"# Cilium {cilium_version}: one egress gateway per policy, so one policy per "
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


# -- the policy in force, with only its gateways changed ----------------------------------

# metadata a server adds (kubectl get -o yaml) that must not be applied back.
_SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp",
                    "managedFields")
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _raw_policies(path: Path) -> list[Mapping[str, Any]]:
    """The policy bodies of ``path`` as written, in the order load_policies parses them."""
    bodies: list[Mapping[str, Any]] = []
    for file in yaml_files(path):
        for _where, body in load_documents(file):
            if isinstance(body, Mapping) and body.get("kind") == "List":
                bodies.extend(body.get("items") or [])
            else:
                bodies.append(body)
    return bodies


def policy_in_force(path: Path, cilium_version: str,
                    egress_ips: Sequence[IPAddress]) -> Mapping[str, Any]:
    """The policy of ``path`` (a file or directory) that the planned tuples leave by.

    Parsed and checked by the policy package's strict loader against the CRD of
    ``cilium_version`` (a bad policy is an InputError naming file, document and field).
    The one whose gateways carry one of ``egress_ips``, or the only policy of the file
    when it names no egress IP (a gateway by ``interface``).
    """
    parsed = load_policies(path, CiliumVersion(cilium_version))
    bodies = _raw_policies(path)
    wanted = {str(ip) for ip in egress_ips}
    shown = ", ".join(sorted(wanted))
    matching = [body for policy, body in zip(parsed, bodies, strict=True)
                if any(str(g.egress_ip) in wanted for g in policy.gateways
                       if g.egress_ip is not None)]
    if len(matching) == 1:
        return matching[0]
    if not matching and len(parsed) == 1:
        ips = [str(g.egress_ip) for g in parsed[0].gateways if g.egress_ip is not None]
        if not ips:
            return bodies[0]
        raise InputError(f"policy {parsed[0].name} uses egress IP {', '.join(ips)}, the "
                         f"planned tuples leave by {shown}: give the policy in force",
                         source=str(path))
    raise InputError(f"{len(parsed)} policies, {len(matching)} of them with egress IP "
                     f"{shown}: give the file of the one policy in force", source=str(path))


def _clean(policy: Mapping[str, Any]) -> dict[str, Any]:
    """A copy to apply back: no status, no metadata the server sets."""
    body = copy.deepcopy(dict(policy))
    body.pop("status", None)
    metadata = body["metadata"]
    for key in _SERVER_METADATA:
        metadata.pop(key, None)
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict):
        annotations.pop(_LAST_APPLIED, None)
        if not annotations:
            metadata.pop("annotations")
    return body


def _requirements(selector: Mapping[str, Any] | None) -> str:
    if not selector:
        return "any"
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        values = ",".join(str(v) for v in expression.get("values") or [])
        parts.append(f"{expression.get('key')} {expression.get('operator')}"
                     + (f" ({values})" if values else ""))
    return ", ".join(parts) or "any"


def _selector_text(selector: Mapping[str, Any]) -> str:
    """``pods app=x in namespaces team=y on nodes z=w`` for one entry of spec.selectors."""
    pods = selector.get("podSelector")
    parts = [f"pods {_requirements(pods)}" if pods is not None else "all pods"]
    for key, what in (("namespaceSelector", "in namespaces"), ("nodeSelector", "on nodes")):
        if selector.get(key) is not None:
            parts.append(f"{what} {_requirements(selector[key])}")
    return " ".join(parts)


def _sharded(selector: Mapping[str, Any], shard: int) -> dict[str, Any]:
    """The selector with the shard label added to its podSelector (made when absent)."""
    out = copy.deepcopy(dict(selector))
    pod = dict(out.get("podSelector") or {})
    pod["matchLabels"] = {**(pod.get("matchLabels") or {}), SHARD_LABEL: str(shard)}
    out["podSelector"] = pod
    return out


def plan_policies(policy: Mapping[str, Any], egress_ips: Sequence[IPAddress], *,
                  cilium_version: str, source: str) -> str:
    """``policy`` (the one in force) changed to use ``egress_ips``, and only that.

    v1.18: ``egressGateways[]`` lists every egress IP (a gateway the policy already has
    is kept as written; a new one copies the first gateway's nodeSelector), and
    ``egressGateway``, which the CRD requires and Cilium then ignores, stays as it was.
    Before: one policy per egress IP, each of the policy's selectors narrowed by the
    label ``SHARD_LABEL=i``; the first keeps the policy's name.
    """
    body = _clean(policy)
    name = body["metadata"]["name"]
    spec = body["spec"]
    current = list(spec.get("egressGateways") or []) or [spec["egressGateway"]]
    by_ip = {g["egressIP"]: g for g in current if g.get("egressIP")}
    template = current[0]
    new_ips = [str(ip) for ip in egress_ips if str(ip) not in by_ip]

    def gateway(ip: IPAddress) -> dict[str, Any]:
        kept = by_ip.get(str(ip))
        if kept is not None:
            return copy.deepcopy(dict(kept))
        return {"nodeSelector": copy.deepcopy(template["nodeSelector"]), "egressIP": str(ip)}

    nodes = _requirements(template.get("nodeSelector"))
    new_note = (
        "# New egress IPs, the addresses after the last one in use:\n"
        f"#   {', '.join(new_ips)}\n"
        f"# Each must be an address of the gateway node(s) ({nodes}): assign them there,\n"
        "# or put addresses the nodes have in their place.\n" if new_ips else "")
    n = len(egress_ips)
    if _version(cilium_version) >= MANY_GATEWAYS_FROM:
        spec["egressGateways"] = [gateway(ip) for ip in egress_ips]
        header = (f"# Cilium {cilium_version}: the policy in force, {name}\n# ({source}),\n"
                  f"# with {n} gateways in egressGateways[]; its name, selectors and CIDRs "
                  "unchanged.\n# Cilium gives each selected pod one of the gateways.\n"
                  + new_note)
        return header + yaml.safe_dump(body, sort_keys=False)
    selects = " or ".join(_selector_text(s) for s in spec["selectors"])
    shards = ", ".join(str(i) for i in range(n - 1)) + f" or {n - 1}"
    header = (
        f"# Cilium {cilium_version}: one egress gateway per policy, so the policy in force, "
        f"{name}\n# ({source}), is split into {n} policies, one per egress IP.\n"
        f"# Each keeps its CIDRs and gateway nodes and adds the label {SHARD_LABEL}\n"
        "# to its selectors. BEFORE applying, label the pods it selects\n"
        f"#   ({selects})\n# with {SHARD_LABEL}={shards}, about 1/{n} of them each, e.g.\n"
        f"#   kubectl label pod -n NAMESPACE POD {SHARD_LABEL}=1\n"
        "# A pod without the label matches none of these policies and leaves without an\n"
        f"# egress gateway. {name} keeps its name (shard 0); new:\n# "
        + ", ".join(f"{name}-shard-{i}" for i in range(1, n)) + ".\n" + new_note)
    docs = []
    for shard, ip in enumerate(egress_ips):
        doc = copy.deepcopy(body)
        if shard:
            doc["metadata"]["name"] = f"{name}-shard-{shard}"
        doc["spec"]["selectors"] = [_sharded(s, shard) for s in spec["selectors"]]
        doc["spec"]["egressGateway"] = gateway(ip)
        doc["spec"].pop("egressGateways", None)
        docs.append(doc)
    return header + yaml.safe_dump_all(docs, sort_keys=False)
