"""The policy and inventory files of one gateway node, as the agent tests and
bench/bench_agent_recount.py write them (a support module, not collected).

One CiliumEgressGatewayPolicy sends the pods labelled ``app: client`` to 198.51.100.0/24
through ``egress_ip`` on the nodes labelled ``egress-gateway: "true"``; the inventory has
that node (its uplink ``ext0`` holding the egress addresses), a worker and one client pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

POLICY_FILE = "clients.yaml"
POD_IP = "192.0.2.20"


def policy_yaml(egress_ip: str) -> str:
    return f"""\
apiVersion: cilium.io/v2
kind: CiliumEgressGatewayPolicy
metadata:
  name: clients
spec:
  selectors:
    - podSelector:
        matchLabels:
          app: client
  destinationCIDRs: [198.51.100.0/24]
  egressGateway:
    nodeSelector:
      matchLabels:
        egress-gateway: "true"
    egressIP: {egress_ip}
"""


def inventory_yaml(node: str, egress_addresses: Sequence[str], pod_ip: str = POD_IP) -> str:
    addresses = ", ".join(f"{ip}/24" for ip in egress_addresses)
    return f"""\
nodes:
  - name: {node}
    internalIP: 192.0.2.1
    labels: {{egress-gateway: "true"}}
    interfaces:
      - name: ext0
        addresses: [{addresses}]
  - name: worker-1
    internalIP: 192.0.2.2
namespaces:
  - name: lab
endpoints:
  - name: pod-0
    namespace: lab
    labels: {{app: client}}
    ips: [{pod_ip}]
    node: worker-1
"""


def write_policy(policies: Path, egress_ip: str) -> Path:
    """(Re)write the policy atomically (a rename: a poll never reads half a file)."""
    policies.mkdir(exist_ok=True)
    path = policies / POLICY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(policy_yaml(egress_ip))
    tmp.rename(path)
    return path


def gateway_files(directory: Path, *, node: str, egress_ip: str,
                  egress_addresses: Sequence[str], pod_ip: str = POD_IP) -> tuple[Path, Path]:
    """``directory``/policies/clients.yaml and ``directory``/inventory.yaml."""
    policies = directory / "policies"
    write_policy(policies, egress_ip)
    inventory = directory / "inventory.yaml"
    inventory.write_text(inventory_yaml(node, egress_addresses, pod_ip))
    return policies, inventory
