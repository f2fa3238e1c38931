"""Compiling policies against an inventory: Cilium's gateway and egress-IP derivation."""

import ipaddress
import json
import os
import subprocess
import sys
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from egressgw.policy import (
    EgressRule,
    RuleKind,
    compile_policies,
    compile_rules,
    fnv1a_32,
    parse_documents,
    parse_inventory,
    rules_for_gateway,
)
from egressgw.policy.inventory import Inventory
from egressgw.policy.yamlfiles import Where

ip = ipaddress.ip_address
net = ipaddress.ip_network

GATEWAY = {
    "name": "gw-1",
    "internalIP": "192.0.2.1",
    "labels": {"egress": "yes"},
    "defaultRouteInterface": "eth0",
    "interfaces": [
        {"name": "eth0", "addresses": ["198.51.100.250/24", "2001:db8:100::250/64"]},
        {"name": "eth1", "addresses": ["2001:db8:203::10/64", "203.0.113.10/24",
                                       "203.0.113.11/24", "2001:db8:203::11/64"]},
        {"name": "eth2", "addresses": ["203.0.113.20/24"]},
    ],
}
WORKER = {"name": "worker-1", "internalIP": "192.0.2.2", "labels": {"zone": "a"}}
CLIENT = {"name": "client", "namespace": "shop", "labels": {"app": "client"},
          "ips": ["192.0.2.10", "2001:db8:1::10"], "node": "worker-1"}


def inventory(nodes=(GATEWAY, WORKER), endpoints=(CLIENT,), namespaces=()):
    body = {"nodes": list(nodes), "endpoints": list(endpoints), "namespaces": list(namespaces)}
    return parse_inventory(body, Where("inventory.yaml"))


def policy(name="p", *, selectors=None, destinations=("198.51.100.0/24",), excluded=(),
           gateway=None, gateways=None):
    spec = {
        "selectors": selectors or [{"podSelector": {"matchLabels": {"app": "client"}}}],
        "destinationCIDRs": list(destinations),
        "excludedCIDRs": list(excluded),
    }
    if gateways is not None:
        spec["egressGateways"] = gateways
        if gateways:  # the v1.18 CRD requires egressGateway too (then ignored)
            spec["egressGateway"] = gateways[0]
    else:
        spec["egressGateway"] = gateway or {"nodeSelector": {"matchLabels": {"egress": "yes"}}}
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumEgressGatewayPolicy",
            "metadata": {"name": name}, "spec": spec}


def policies(*bodies):
    return parse_documents((Where("p.yaml", i), b) for i, b in enumerate(bodies, start=1))


def lookup(rules, source, destination):
    """What a longest-prefix-match datapath finds for one packet."""
    source, destination = ip(source), ip(destination)
    found = [r for r in rules if r.source_ip == source and destination in r.destination]
    return max(found, key=lambda r: r.destination.prefixlen) if found else None


def test_excluded_cidr_wins_by_longest_prefix():
    rules = compile_rules(
        policies(policy(excluded=["198.51.100.128/25", "198.51.100.200/32"])), inventory()
    )
    assert lookup(rules, "192.0.2.10", "198.51.100.7").kind is RuleKind.MASQUERADE
    assert lookup(rules, "192.0.2.10", "198.51.100.130").kind is RuleKind.EXCLUDED
    assert lookup(rules, "192.0.2.10", "198.51.100.200").destination == net("198.51.100.200/32")
    assert lookup(rules, "192.0.2.10", "203.0.113.1") is None
    assert lookup(rules, "192.0.2.99", "198.51.100.7") is None


def test_default_route_interface_gives_the_egress_ip_per_family():
    rules = compile_rules(
        policies(policy(destinations=["198.51.100.0/24", "2001:db8:100::/64"])), inventory()
    )
    assert [(str(r.source_ip), str(r.egress_ip), r.gateway_node, str(r.gateway_ip))
            for r in rules] == [
        ("192.0.2.10", "198.51.100.250", "gw-1", "192.0.2.1"),
        ("2001:db8:1::10", "2001:db8:100::250", "gw-1", "192.0.2.1"),
    ]


def test_interface_gives_its_first_address_of_the_family():
    gateway = {"nodeSelector": {"matchLabels": {"egress": "yes"}}, "interface": "eth1"}
    rules = compile_rules(
        policies(policy(gateway=gateway, destinations=["198.51.100.0/24", "2001:db8:100::/64"])),
        inventory(),
    )
    assert {r.family.value: str(r.egress_ip) for r in rules} == {
        "ipv4": "203.0.113.10", "ipv6": "2001:db8:203::10"}


def test_egress_ip_is_used_and_its_interface_gives_the_other_family():
    gateway = {"nodeSelector": {"matchLabels": {"egress": "yes"}}, "egressIP": "203.0.113.11"}
    compiled = compile_policies(
        policies(policy(gateway=gateway, destinations=["198.51.100.0/24", "2001:db8:100::/64"])),
        inventory(),
    )
    assert {r.family.value: str(r.egress_ip) for r in compiled.rules} == {
        "ipv4": "203.0.113.11", "ipv6": "2001:db8:203::10"}
    assert compiled.warnings == []


def test_egress_ip_on_no_interface_is_used_as_a_virtual_ip_with_a_warning():
    gateway = {"nodeSelector": {"matchLabels": {"egress": "yes"}}, "egressIP": "203.0.113.99"}
    compiled = compile_policies(
        policies(policy(gateway=gateway, destinations=["198.51.100.0/24", "2001:db8:100::/64"])),
        inventory(),
    )
    assert {r.family.value: str(r.egress_ip) for r in compiled.rules} == {
        "ipv4": "203.0.113.99", "ipv6": "2001:db8:100::250"}
    assert all(r.kind is RuleKind.MASQUERADE for r in compiled.rules)
    assert compiled.warnings == [
        "policy 'p': spec.egressGateway.egressIP: 203.0.113.99 is on no interface of node "
        "'gw-1': used as a virtual IP (replies must be routed to the node)"
    ]


def test_no_matching_node_drops_with_no_gateway():
    gateway = {"nodeSelector": {"matchLabels": {"egress": "no-such-node"}}}
    compiled = compile_policies(policies(policy(gateway=gateway)), inventory())
    (rule,) = compiled.rules
    assert rule == EgressRule(ip("192.0.2.10"), net("198.51.100.0/24"), RuleKind.NO_GATEWAY,
                              policy="p")
    assert "matches no node" in compiled.warnings[0]


def test_missing_address_of_a_family_drops_that_family_at_the_gateway():
    gateway = {"nodeSelector": {"matchLabels": {"egress": "yes"}}, "interface": "eth2"}
    compiled = compile_policies(
        policies(policy(gateway=gateway, destinations=["198.51.100.0/24", "2001:db8:100::/64"])),
        inventory(),
    )
    v4, v6 = compiled.rules
    assert (v4.kind, str(v4.egress_ip)) == (RuleKind.MASQUERADE, "203.0.113.20")
    assert (v6.kind, v6.egress_ip, v6.gateway_node, str(v6.gateway_ip)) == (
        RuleKind.NO_GATEWAY, None, "gw-1", "192.0.2.1")
    assert compiled.warnings == [
        "policy 'p': spec.egressGateway.interface: 'eth2' on node 'gw-1' has no IPv6 "
        "address: its IPv6 traffic is dropped at the gateway"
    ]


def test_unknown_interface_and_no_default_route_drop_at_the_gateway():
    bare = {"name": "gw-0", "internalIP": "192.0.2.3", "labels": {"egress": "yes"}}
    compiled = compile_policies(policies(policy()), inventory(nodes=[bare, WORKER]))
    assert [r.kind for r in compiled.rules] == [RuleKind.NO_GATEWAY]
    assert "has no default-route interface" in compiled.warnings[0]
    gateway = {"nodeSelector": {"matchLabels": {"egress": "yes"}}, "interface": "eth9"}
    compiled = compile_policies(policies(policy(gateway=gateway)), inventory())
    assert [(r.kind, r.gateway_node) for r in compiled.rules] == [(RuleKind.NO_GATEWAY, "gw-1")]
    assert "has no interface 'eth9'" in compiled.warnings[0]


def test_gateway_is_the_first_matching_node_by_name():
    zeta = {**GATEWAY, "name": "zeta", "internalIP": "192.0.2.9"}
    alpha = {**GATEWAY, "name": "alpha", "internalIP": "192.0.2.8"}
    (rule,) = compile_rules(policies(policy()), inventory(nodes=[zeta, WORKER, alpha]))
    assert (rule.gateway_node, str(rule.gateway_ip)) == ("alpha", "192.0.2.8")


def test_only_destinations_of_the_source_family_give_rules():
    rules = compile_rules(policies(policy(destinations=["2001:db8:100::/64"],
                                          excluded=["198.51.100.0/28"])), inventory())
    # Like Cilium, excluded CIDRs are written for every IP of their family.
    assert [(str(r.source_ip), str(r.destination), r.kind) for r in rules] == [
        ("192.0.2.10", "198.51.100.0/28", RuleKind.EXCLUDED),
        ("2001:db8:1::10", "2001:db8:100::/64", RuleKind.MASQUERADE),
    ]


def test_namespace_selectors_use_namespace_labels_and_names():
    namespaces = [{"name": "shop", "labels": {"team": "web"}}]
    others = [CLIENT, {**CLIENT, "name": "other", "namespace": "ops", "ips": ["192.0.2.30"]}]
    inv = inventory(endpoints=others, namespaces=namespaces)

    def selected(selector):
        return sorted({str(r.source_ip) for r in compile_rules(
            policies(policy(selectors=[selector])), inv)})

    assert selected({"namespaceSelector": {"matchLabels": {"team": "web"}}}) == ["192.0.2.10"]
    assert selected({"namespaceSelector": {}}) == ["192.0.2.10", "192.0.2.30"]
    assert selected({"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "ops"}}}) == ["192.0.2.30"]
    assert selected({"podSelector": {"matchLabels": {
        "io.kubernetes.pod.namespace": "ops"}}}) == ["192.0.2.30"]
    # Both selectors of one entry must hold; separate entries are alternatives.
    assert selected({"namespaceSelector": {"matchLabels": {"team": "web"}},
                     "podSelector": {"matchLabels": {"app": "nothing"}}}) == []
    assert selected({"namespaceSelector": {"matchExpressions": [
        {"key": "team", "operator": "NotIn", "values": ["web"]}]}}) == ["192.0.2.30"]


def test_selector_node_selector_restricts_by_the_pods_node():
    elsewhere = {**CLIENT, "name": "c2", "ips": ["192.0.2.11"], "node": "gw-1"}
    nowhere = {**CLIENT, "name": "c3", "ips": ["192.0.2.12"], "node": None}
    selector = {"podSelector": {"matchLabels": {"app": "client"}},
                "nodeSelector": {"matchLabels": {"zone": "a"}}}
    rules = compile_rules(policies(policy(selectors=[selector])),
                          inventory(endpoints=[CLIENT, elsewhere, nowhere]))
    assert [str(r.source_ip) for r in rules] == ["192.0.2.10"]


def test_conflicting_policies_resolve_to_the_first_name_with_a_warning():
    second = policy(name="b-second", gateway={"nodeSelector": {"matchLabels": {"egress": "yes"}},
                                              "egressIP": "203.0.113.11"})
    first = policy(name="a-first", gateway={"nodeSelector": {"matchLabels": {"egress": "yes"}},
                                            "egressIP": "203.0.113.10"})
    compiled = compile_policies(policies(second, first), inventory())
    (rule,) = compiled.rules
    assert (rule.policy, str(rule.egress_ip)) == ("a-first", "203.0.113.10")
    assert compiled.warnings == [
        "policy 'b-second': 192.0.2.10 -> 198.51.100.0/24 is already given by policy "
        "'a-first', which wins"
    ]


def test_excluded_equal_to_a_destination_wins_within_a_policy():
    (rule,) = compile_rules(policies(policy(excluded=["198.51.100.0/24"])), inventory())
    assert rule.kind is RuleKind.EXCLUDED


def test_output_is_sorted_ipv4_first_and_independent_of_input_order():
    endpoints = [{**CLIENT, "name": f"c{i}", "ips": [f"192.0.2.{20 - i}", f"2001:db8:1::{i}"]}
                 for i in range(6)]
    bodies = [policy(name="web", destinations=["198.51.100.0/24", "2001:db8:100::/64"],
                     excluded=["198.51.100.0/28"])]
    forward = compile_rules(policies(*bodies), inventory(endpoints=endpoints))
    backward = compile_rules(policies(*bodies), inventory(nodes=[WORKER, GATEWAY],
                                                         endpoints=endpoints[::-1]))
    assert forward == backward == sorted(forward)
    versions = [r.source_ip.version for r in forward]
    assert versions == sorted(versions) and 6 in versions
    assert rules_for_gateway(forward, "gw-1") == forward
    assert [r.kind for r in rules_for_gateway(forward, "worker-1")] == [RuleKind.EXCLUDED] * 6


def test_fnv1a_32_matches_the_published_vectors():
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"b") == 0xE70C2DE5
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def two_gateways():
    # Listed out of IP order: gw-b (192.0.2.5) before gw-a (192.0.2.4).
    gw_a = {**GATEWAY, "name": "gw-a", "internalIP": "192.0.2.4", "labels": {"pool": "a"}}
    gw_b = {**GATEWAY, "name": "gw-b", "internalIP": "192.0.2.5", "labels": {"pool": "b"}}
    gateways = [{"nodeSelector": {"matchLabels": {"pool": "b"}}, "egressIP": "203.0.113.11"},
                {"nodeSelector": {"matchLabels": {"pool": "a"}}, "egressIP": "203.0.113.10"}]
    return [gw_a, gw_b, WORKER], gateways


def test_endpoints_are_pinned_by_fnv1a_of_their_uid_over_gateways_sorted_by_ip():
    nodes, gateways = two_gateways()
    # fnv1a_32("a") is even, fnv1a_32("b") odd: index 0 is gw-a (lower IP), 1 is gw-b.
    endpoints = [{**CLIENT, "name": "ea", "uid": "a", "ips": ["192.0.2.10"]},
                 {**CLIENT, "name": "eb", "uid": "b", "ips": ["192.0.2.11"]}]
    rules = compile_rules(policies(policy(gateways=gateways)),
                          inventory(nodes=nodes, endpoints=endpoints))
    assert [(str(r.source_ip), r.gateway_node, str(r.egress_ip)) for r in rules] == [
        ("192.0.2.10", "gw-a", "203.0.113.10"),
        ("192.0.2.11", "gw-b", "203.0.113.11"),
    ]


def test_pinning_spreads_endpoints_and_keeps_all_ips_of_one_endpoint_together():
    nodes, gateways = two_gateways()
    endpoints = [{**CLIENT, "name": f"c{i}", "ips": [f"192.0.2.{i}", f"2001:db8:1::{i}"]}
                 for i in range(10, 210)]
    rules = compile_rules(policies(policy(gateways=gateways,
                                          destinations=["198.51.100.0/24", "2001:db8:100::/64"])),
                          inventory(nodes=nodes, endpoints=endpoints))
    owner = {ip(address): e["name"] for e in endpoints for address in e["ips"]}
    by_endpoint = {}
    for rule in rules:
        by_endpoint.setdefault(owner[rule.source_ip], set()).add(rule.gateway_node)
    assert len(by_endpoint) == 200
    assert all(len(nodes) == 1 for nodes in by_endpoint.values())
    counts = Counter(next(iter(n)) for n in by_endpoint.values())
    assert set(counts) == {"gw-a", "gw-b"} and min(counts.values()) >= 70


PIN_SCRIPT = """
import json, sys
from egressgw.policy import compile_rules, parse_documents, parse_inventory
from egressgw.policy.yamlfiles import Where
spec = json.loads(sys.stdin.read())
rules = compile_rules(parse_documents([(Where("p.yaml", 1), spec["policy"])]),
                      parse_inventory(spec["inventory"], Where("inventory.yaml")))
print(json.dumps([[str(r.source_ip), r.gateway_node] for r in rules]))
"""


def test_pinning_is_the_same_in_other_processes_whatever_their_hash_seed():
    nodes, gateways = two_gateways()
    endpoints = [{**CLIENT, "name": f"c{i}", "ips": [f"192.0.2.{i}"]} for i in range(10, 60)]
    spec = {"policy": policy(gateways=gateways),
            "inventory": {"nodes": nodes, "endpoints": endpoints}}
    here = [[str(r.source_ip), r.gateway_node] for r in compile_rules(
        policies(spec["policy"]), parse_inventory(spec["inventory"], Where("inventory.yaml")))]
    for seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", PIN_SCRIPT], input=json.dumps(spec),
                             capture_output=True, text=True, env=env, check=True).stdout
        assert json.loads(out) == here


def test_a_gateway_entry_without_a_node_takes_its_share_and_drops_it():
    nodes, gateways = two_gateways()
    gateways[0]["nodeSelector"] = {"matchLabels": {"pool": "gone"}}
    # Sorted by gateway IP the missing gateway (0.0.0.0) comes first: "a" -> index 0.
    endpoints = [{**CLIENT, "name": "ea", "uid": "a", "ips": ["192.0.2.10"]},
                 {**CLIENT, "name": "eb", "uid": "b", "ips": ["192.0.2.11"]}]
    rules = compile_rules(policies(policy(gateways=gateways)),
                          inventory(nodes=nodes, endpoints=endpoints))
    assert [(r.kind, r.gateway_node) for r in rules] == [
        (RuleKind.NO_GATEWAY, None), (RuleKind.MASQUERADE, "gw-a")]


def test_compile_accepts_any_inventory_source():
    class Source:
        def __init__(self, inv: Inventory):
            self.inv = inv

        def nodes(self):
            return list(self.inv.nodes())

        def endpoints(self):
            return list(self.inv.endpoints())

    inv = inventory()
    assert compile_rules(policies(policy()), Source(inv)) == compile_rules(policies(policy()), inv)


LABEL_PAIRS = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["a", "b"]),
                              max_size=2)


@settings(max_examples=60, deadline=None)
@given(
    pods=st.lists(st.tuples(LABEL_PAIRS, st.sampled_from(["shop", "ops"])), max_size=12),
    selectors=st.lists(st.fixed_dictionaries({}, optional={
        "podSelector": st.fixed_dictionaries({}, optional={"matchLabels": LABEL_PAIRS}),
        "namespaceSelector": st.fixed_dictionaries({}, optional={"matchLabels": st.dictionaries(
            st.just("team"), st.sampled_from(["web", "ops"]), max_size=1)}),
    }).filter(lambda s: s), min_size=1, max_size=3),
)
def test_selected_endpoints_are_exactly_those_the_selectors_match(pods, selectors):
    endpoints = [{"name": f"e{i}", "namespace": ns, "labels": labels, "ips": [f"192.0.2.{i + 1}"]}
                 for i, (labels, ns) in enumerate(pods)]
    inv = inventory(endpoints=endpoints, namespaces=[
        {"name": "shop", "labels": {"team": "web"}}, {"name": "ops", "labels": {"team": "ops"}}])
    (parsed,) = policies(policy(selectors=selectors))
    rules = compile_rules([parsed], inv)
    expected = {e.ips[0] for e in inv.endpoints() if parsed.selects(e.identity_labels)}
    assert {r.source_ip for r in rules} == expected
