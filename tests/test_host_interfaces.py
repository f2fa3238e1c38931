"""The agent fills its own node's interfaces from the kernel when the inventory comes from
Kubernetes (which does not know them): in a network namespace of the test's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from egressgw.agent.reconcile import PolicySource
from egressgw.datapath.kernel.interfaces import host_interfaces
from egressgw.datapath.kernel.netns import call_in
from netns import bare_netns, run_in

pytestmark = pytest.mark.kernel

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "egressgw" / "examples"
POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumEgressGatewayPolicy
metadata: {name: by-interface}
spec:
  selectors: [{podSelector: {matchLabels: {app: toolbox}}}]
  destinationCIDRs: [198.51.100.0/24]
  egressGateway:
    nodeSelector: {matchLabels: {egress-gateway: "true"}}
    %s
"""


@pytest.fixture
def gateway_ns():
    with bare_netns() as ns:
        for name, addresses in (("eth0", ["192.0.2.1/24"]),
                                ("eth1", ["203.0.113.11/24", "203.0.113.10/24",
                                          "2001:db8:203::10/64"])):
            # veth pairs (this kernel has no dummy module); the peers stay unaddressed.
            run_in(ns, ["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"])
            run_in(ns, ["ip", "link", "set", f"{name}p", "up"])
            for address in addresses:
                run_in(ns, ["ip", "addr", "add", address, "dev", name, "nodad"]
                       if ":" in address else ["ip", "addr", "add", address, "dev", name])
            run_in(ns, ["ip", "link", "set", name, "up"])
        run_in(ns, ["ip", "route", "add", "default", "via", "203.0.113.1", "dev", "eth1"])
        yield ns


def test_host_interfaces_lists_addresses_in_kernel_order_and_the_default_route(gateway_ns):
    host = call_in(gateway_ns, host_interfaces)
    interfaces = {name: [str(a) for a in addresses] for name, addresses in host.interfaces}
    assert interfaces == {"eth0": ["192.0.2.1/24"], "eth0p": [], "eth1p": [],
                          "eth1": ["203.0.113.11/24", "203.0.113.10/24",
                                   "2001:db8:203::10/64"]}
    assert host.default_route_interface == "eth1"


@pytest.mark.parametrize(("gateway", "egress"), [
    ("interface: eth1", "203.0.113.11"),  # the first IPv4 address of eth1
    ("egressIP: 203.0.113.10", "203.0.113.10"),
    ("", "203.0.113.11"),  # the default-route interface's first address
])
def test_the_agent_fills_its_own_node_from_the_kernel(gateway_ns, tmp_path, gateway, egress):
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY % gateway)
    inventory = EXAMPLES / "kubernetes" / "kubectl-get-nodes-pods.yaml"
    source = PolicySource(policy, inventory, "gateway-1", host_interfaces=host_interfaces)
    [rule] = call_in(gateway_ns, source.load_rules)
    assert (rule.kind.value, str(rule.egress_ip)) == ("masquerade", egress)
    # Without the kernel's view the interface cannot be known: the rule is a drop.
    blind = PolicySource(policy, inventory, "gateway-1")
    if gateway.startswith("egressIP"):
        return  # an egressIP is taken as given
    [rule] = blind.load_rules()
    assert rule.kind.value == "no-gateway"
