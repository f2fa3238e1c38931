"""One longest-prefix resolver (egressgw.rules) for the nft renderer, the model agent and
the simulator, checked against an oracle written here from the rule: longest prefix,
then exclusion before masquerade before drop, then the lowest egress IP; and the core's
rules importable without the policy package."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from egressgw.datapath.kernel.ruleset import resolve_elements
from egressgw.rules import EgressRule, RuleKind, RuleLookup
from egressgw.sim.routing import PolicyRouter

SOURCES = [ipaddress.ip_address(f"192.0.2.{i}") for i in (10, 11)]
EGRESS = [ipaddress.ip_address(f"203.0.113.{i}") for i in (10, 11, 12)]
ORDER = {"excluded": 0, "masquerade": 1, "no-gateway": 2}


@st.composite
def rules(draw):
    found = []
    for _ in range(draw(st.integers(0, 8))):
        # Few prefixes and bases, so equal and nested CIDRs (the ties) are common.
        prefix = draw(st.sampled_from([24, 26, 28]))
        base = draw(st.sampled_from([0, 64, 128]))
        destination = ipaddress.ip_network(
            (int(ipaddress.ip_address("198.51.100.0")) + base) & ~((1 << (32 - prefix)) - 1))
        destination = ipaddress.ip_network(f"{destination.network_address}/{prefix}")
        kind = draw(st.sampled_from(list(RuleKind)))
        egress = draw(st.sampled_from(EGRESS)) if kind is RuleKind.MASQUERADE else None
        found.append(EgressRule(draw(st.sampled_from(SOURCES)), destination, kind, egress,
                                "gw" if egress else None))
    return found


def oracle(rules, source, destination):
    matching = [r for r in rules if r.source_ip == source and destination in r.destination]
    if not matching:
        return None
    longest = max(r.destination.prefixlen for r in matching)
    best = [r for r in matching if r.destination.prefixlen == longest]
    first_kind = min(ORDER[r.kind.value] for r in best)
    best = [r for r in best if ORDER[r.kind.value] == first_kind]
    return min(best, key=lambda r: -1 if r.egress_ip is None else int(r.egress_ip))


def effect(rule):
    """What the datapath does: the kind, and the egress IP only for a masquerade."""
    if rule is None:
        return None
    return (rule.kind, rule.egress_ip if rule.kind is RuleKind.MASQUERADE else None)


@settings(max_examples=150, deadline=None)
@given(rules(), st.lists(st.integers(0, 255), min_size=1, max_size=12))
def test_every_consumer_picks_the_oracles_rule(given_rules, offsets):
    lookup, router = RuleLookup(given_rules), PolicyRouter(given_rules)
    elements = resolve_elements(given_rules)
    for source in SOURCES:
        for offset in offsets:
            destination = ipaddress.ip_address(int(ipaddress.ip_address("198.51.100.0"))
                                               + offset)
            expected = oracle(given_rules, source, destination)
            assert effect(lookup.lookup(source, destination)) == effect(expected)
            assert effect(router.lookup(source, destination)) == effect(expected)
            # nft: excluded CIDRs are holes, so "excluded" and "no rule" both find nothing.
            found = [e for e in elements if e.source == source and destination in e.destination]
            assert len(found) <= 1
            rendered = (found[0].kind, found[0].egress_ip) if found else None
            wanted = effect(expected)
            assert rendered == (None if wanted and wanted[0] is RuleKind.EXCLUDED else wanted)


def test_the_model_agent_uses_the_same_lookup():
    from egressgw.agent.modeldp import ModelAgentDatapath  # noqa: PLC0415 (loads the model)
    from egressgw.config import NodePortRange  # noqa: PLC0415
    from egressgw.net import Endpoint, FiveTuple, Proto  # noqa: PLC0415

    source = SOURCES[0]
    wide = ipaddress.ip_network("198.51.100.0/24")
    hole = ipaddress.ip_network("198.51.100.200/32")
    datapath = ModelAgentDatapath.for_node_ports(NodePortRange())
    datapath.apply([EgressRule(source, wide, RuleKind.MASQUERADE, EGRESS[0], "gw"),
                    EgressRule(source, hole, RuleKind.EXCLUDED)])
    def rule_for(address):
        return datapath.rule_for(FiveTuple(Proto.TCP, Endpoint(source, 40000),
                                           Endpoint(ipaddress.ip_address(address), 443)))
    assert rule_for("198.51.100.200").kind is RuleKind.EXCLUDED
    assert rule_for("198.51.100.201").kind is RuleKind.MASQUERADE
    assert rule_for("203.0.113.1") is None


def test_datapaths_and_rules_import_without_the_policy_package():
    code = ("import sys, egressgw.rules, egressgw.datapath.base, egressgw.datapath.kernel, "
            "egressgw.datapath.bpf.datapath; "
            "print(sorted(m for m in ('yaml', 'jsonschema', 'egressgw.policy') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"
