"""Bounded fuzzing of every reader in the normal test run (see tests/fuzz_targets.py).

Each target gets mutations of its valid examples (spliced hostile tokens, deleted and
duplicated spans, flipped bytes) and raw bytes. ``EGRESSGW_FUZZ_EXAMPLES`` sets the
examples per target (default 120; ``scripts/fuzz.py --hypothesis`` runs thousands);
the deadline turns a hang into a failure.
"""

from __future__ import annotations

import ipaddress
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_targets
from egressgw.config import NodePortRange
from egressgw.datapath.kernel.ruleset import render_ruleset
from egressgw.errors import EgressgwError
from egressgw.net import IPNetwork
from egressgw.policy.rules import EgressRule, RuleKind

EXAMPLES = int(os.environ.get("EGRESSGW_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, derandomize=EXAMPLES <= 120,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def mutated(draw: st.DrawFn, target: str) -> bytes:
    pool = fuzz_targets.seeds(target) or [b""]
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["splice", "delete", "duplicate", "flip", "raw"]))
        if kind == "splice":
            data[position:position] = draw(st.sampled_from(fuzz_targets.HOSTILE))
        elif kind == "delete":
            del data[position:position + draw(st.integers(1, 40))]
        elif kind == "duplicate":
            data[position:position] = data[position:position + draw(st.integers(1, 200))]
        elif kind == "flip" and data:
            index = min(position, len(data) - 1)
            data[index] ^= 1 << draw(st.integers(0, 7))
        else:
            data[position:position] = draw(st.binary(max_size=20))
    return bytes(data)


@pytest.mark.parametrize("target", sorted(fuzz_targets.TARGETS))
def test_reader_holds_its_contract_on_mutated_input(target: str) -> None:
    @FUZZ
    @given(st.one_of(mutated(target), st.binary(max_size=200)))
    def run(data: bytes) -> None:
        fuzz_targets.TARGETS[target](data)

    run()


# -- structured fuzzing of what the parsers build from YAML -----------------------------

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["cilium.io/v2", "CiliumEgressGatewayPolicy", "List", "10.0.0.0/8",
                     "fe80::1%eth0", "192.0.2.10", "In", "Exists", "1e308", "30s", "tcp",
                     "10.2.0.0:8080", "lognormal", "poisson", "forever", "fin"]))
KEYS = st.sampled_from([
    "apiVersion", "kind", "metadata", "name", "spec", "items", "selectors", "podSelector",
    "namespaceSelector", "nodeSelector", "matchLabels", "matchExpressions", "key",
    "operator", "values", "destinationCIDRs", "excludedCIDRs", "egressGateway",
    "egressGateways", "egressIP", "interface", "nodes", "endpoints", "namespaces",
    "internalIP", "labels", "interfaces", "addresses", "ips", "node", "clients",
    "destinations", "address", "protocol", "count", "cidr", "arrivals", "rate", "ramp",
    "from", "to", "over", "duration", "distribution", "median", "sigma", "keepalive",
    "egress_ips", "replay", "file", "end", "weight", "daily", "low", "high", "gateways"])
DOCUMENTS = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=40)


@FUZZ
@given(DOCUMENTS)
def test_parsers_hold_their_contract_on_any_document(doc: object) -> None:
    from egressgw.policy import parse_documents, parse_inventory  # noqa: PLC0415
    from egressgw.policy.yamlfiles import Where  # noqa: PLC0415
    from egressgw.sim.workload import parse_workload  # noqa: PLC0415

    for call in (lambda: parse_documents([(Where("p.yaml", 1), doc)]),
                 lambda: parse_inventory(doc, Where("i.yaml")),
                 lambda: parse_workload(doc, source="w.yaml")):
        fuzz_targets.contract(call)


def network(version: int, number: int, prefix: int) -> IPNetwork:
    bits = 32 if version == 4 else 128
    address = (ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address)(
        number % (1 << bits))
    return ipaddress.ip_network(f"{address}/{min(prefix, bits)}", strict=False)


NETWORKS = st.builds(network, st.sampled_from([4, 6]), st.integers(0, 2**128 - 1),
                     st.integers(0, 128))


@FUZZ
@given(st.lists(st.tuples(NETWORKS, st.integers(0, 2**32 - 1), st.sampled_from(list(RuleKind))),
                max_size=20))
def test_the_nft_script_holds_only_what_the_renderer_prints(
        items: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int, RuleKind]]
) -> None:
    rules = []
    for network, number, kind in items:
        make = ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address
        source = make(number)
        egress = make(number ^ 0xFF) if kind is RuleKind.MASQUERADE else None
        rules.append(EgressRule(source, network, kind, egress,
                                "gw" if kind is RuleKind.MASQUERADE else None, policy="p"))
    try:
        script = render_ruleset(rules, NodePortRange())
    except EgressgwError as exc:
        pytest.fail(f"valid rules refused: {exc}")
    # Every element line: address . network [: goto chain], nothing else.
    element = re.compile(r"\t\t\t[0-9a-f.:]+ \. [0-9a-f.:]+/\d+( : goto snat[46]_[0-9a-f_]+)?,")
    for line in script.splitlines():
        if line.startswith("\t\t\t"):
            assert element.fullmatch(line), line
