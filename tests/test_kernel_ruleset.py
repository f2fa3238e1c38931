"""The nftables rendering: a golden ruleset, longest-prefix resolution, validation."""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressgw.config import NodePortRange
from egressgw.datapath.kernel import render_delete, render_ruleset, resolve_elements
from egressgw.errors import InputError
from egressgw.rules import EgressRule, RuleKind

ip = ipaddress.ip_address
net = ipaddress.ip_network


def masq(source: str, destination: str, egress: str) -> EgressRule:
    return EgressRule(ip(source), net(destination), RuleKind.MASQUERADE, ip(egress), "gw1")


def excluded(source: str, destination: str) -> EgressRule:
    return EgressRule(ip(source), net(destination), RuleKind.EXCLUDED)


def dropped(source: str, destination: str) -> EgressRule:
    return EgressRule(ip(source), net(destination), RuleKind.NO_GATEWAY)


GOLDEN_RULES = [
    masq("192.0.2.10", "198.51.100.0/24", "203.0.113.10"),
    excluded("192.0.2.10", "198.51.100.128/25"),
    masq("192.0.2.11", "198.51.100.0/24", "203.0.113.11"),
    dropped("192.0.2.12", "198.51.100.0/24"),
    masq("2001:db8:1::10", "2001:db8:100::/64", "2001:db8:203::10"),
]

# The rendered table, also shown in docs/kernel-datapath.md.
GOLDEN = (Path(__file__).parent / "golden" / "ruleset.nft").read_text()


def test_golden_ruleset() -> None:
    assert render_ruleset(GOLDEN_RULES, NodePortRange()) == GOLDEN


def test_render_does_not_depend_on_rule_order() -> None:
    ports = NodePortRange()
    assert render_ruleset(list(reversed(GOLDEN_RULES)), ports) == GOLDEN


def test_nat_port_range_follows_node_port_range() -> None:
    script = render_ruleset(GOLDEN_RULES[:1], NodePortRange(30000, 65471), table="lab_gw")
    assert "snat ip to 203.0.113.10:65472-65535" in script
    assert script.startswith("add table inet lab_gw\ndelete table inet lab_gw\n")


def test_no_rules_still_renders_the_whole_table() -> None:
    script = render_ruleset([], NodePortRange())
    assert "elements" not in script
    assert "chain postrouting" in script and "chain forward" in script


def test_delete_touches_only_our_table() -> None:
    script = render_delete(table="egressgw")
    assert script == "add table inet egressgw\ndelete table inet egressgw\n"


@pytest.mark.parametrize("table", ["", "1abc", "bad name", "x;flush ruleset", "a" * 40])
def test_bad_table_names_are_rejected(table: str) -> None:
    with pytest.raises(InputError, match="table"):
        render_ruleset([], NodePortRange(), table=table)


def test_egress_ip_of_the_other_family_is_rejected() -> None:
    rule = EgressRule(ip("192.0.2.10"), net("198.51.100.0/24"), RuleKind.MASQUERADE,
                      ip("2001:db8:203::10"), "gw1", policy="p1")
    with pytest.raises(InputError, match=r"p1: rule\[0\]: egress IP 2001:db8:203::10"):
        render_ruleset([rule], NodePortRange())


def test_more_specific_masquerade_inside_an_exclusion_wins() -> None:
    rules = [
        masq("192.0.2.10", "198.51.100.0/24", "203.0.113.10"),
        excluded("192.0.2.10", "198.51.100.128/25"),
        masq("192.0.2.10", "198.51.100.192/26", "203.0.113.11"),
    ]
    got = {(str(e.destination), str(e.egress_ip)) for e in resolve_elements(rules)}
    assert got == {("198.51.100.0/25", "203.0.113.10"), ("198.51.100.192/26", "203.0.113.11")}


def test_exclusion_of_the_same_cidr_wins() -> None:
    rules = [masq("192.0.2.10", "198.51.100.0/24", "203.0.113.10"),
             excluded("192.0.2.10", "198.51.100.0/24")]
    assert resolve_elements(rules) == []


# -- property: the elements give every address its longest-prefix action -------------------

SOURCES = ["192.0.2.10", "192.0.2.11"]
EGRESS = ["203.0.113.10", "203.0.113.11"]


@st.composite
def rule_sets(draw: st.DrawFn) -> list[EgressRule]:
    rules = []
    for _ in range(draw(st.integers(1, 8))):
        source = draw(st.sampled_from(SOURCES))
        prefix = draw(st.integers(24, 32))
        offset = draw(st.integers(0, 255))
        destination = ipaddress.ip_network(f"198.51.100.{offset}/{prefix}", strict=False)
        kind = draw(st.sampled_from(list(RuleKind)))
        egress = ip(draw(st.sampled_from(EGRESS))) if kind is RuleKind.MASQUERADE else None
        rules.append(EgressRule(ip(source), destination, kind, egress, "gw1"))
    return rules


def expected_action(rules: list[EgressRule], source: str, address: str) -> tuple[str, str | None]:
    """Brute force: the most specific matching rule; ties by kind, then lowest egress IP."""
    priority = {RuleKind.EXCLUDED: 0, RuleKind.MASQUERADE: 1, RuleKind.NO_GATEWAY: 2}
    matching = [r for r in rules if str(r.source_ip) == source and ip(address) in r.destination]
    if not matching:
        return ("none", None)
    best = min(matching, key=lambda r: (-r.destination.prefixlen, priority[r.kind],
                                        int(r.egress_ip) if r.egress_ip else 0))
    if best.kind is RuleKind.EXCLUDED:
        return ("none", None)
    return (best.kind.value, str(best.egress_ip) if best.egress_ip else None)


@settings(max_examples=40, deadline=None)
@given(rule_sets())
def test_elements_resolve_longest_prefix_and_never_overlap(rules: list[EgressRule]) -> None:
    elements = resolve_elements(rules)
    for source in SOURCES:
        mine = [e for e in elements if str(e.source) == source]
        for a, b in itertools.pairwise(mine):
            assert not a.destination.overlaps(b.destination)
        for last in range(256):
            address = f"198.51.100.{last}"
            hits = [e for e in mine if ip(address) in e.destination]
            assert len(hits) <= 1
            got = ("none", None) if not hits else (
                hits[0].kind.value, str(hits[0].egress_ip) if hits[0].egress_ip else None)
            assert got == expected_action(rules, source, address)
