"""The bundled example policies, compiled and applied on the lab gateway for real."""

from __future__ import annotations

from pathlib import Path

import pytest

import egressgw
from egressgw.config import NodePortRange
from egressgw.policy import compile_rules, load_inventory, load_policies, rules_for_gateway
from netns import built_lab

EXAMPLES = Path(egressgw.__file__).parent / "examples"


@pytest.mark.kernel
def test_example_policies_masquerade_the_shop_clients_only() -> None:
    rules = compile_rules(load_policies(EXAMPLES / "policies"),
                          load_inventory(EXAMPLES / "inventory.yaml"))
    mine = rules_for_gateway(rules, "gateway-1")
    # The example inventory's clients are 192.0.2.10-12; the lab's fourth pod (.13) is
    # selected by no policy. The gateway holds 203.0.113.10-13 as the example's does.
    with built_lab(pods=4, egress_ips=4, servers=1) as lab:
        datapath = lab.datapath(NodePortRange())
        datapath.apply(mine)
        try:
            assert lab.load("198.51.100.10:80", 2, pod="192.0.2.11").seen_as == {
                "203.0.113.10": 2}
            assert lab.load("[2001:db8:100::10]:80", 2, pod="2001:db8:1::12").seen_as == {
                "2001:db8:203::10": 2}
            assert lab.load("198.51.100.10:80", 2, pod="192.0.2.13").seen_as == {
                "192.0.2.13": 2}
        finally:
            datapath.cleanup()
