"""``egressgw egress list``: golden tables, json/yaml, and errors as one line with exit 2."""

import json
from pathlib import Path

import pytest
import yaml

from egressgw.cli import main

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "src" / "egressgw" / "examples"
GOLDEN = Path(__file__).parent / "fixtures" / "policies" / "golden"
LAB = ["egress", "list", "--policies", str(EXAMPLES / "policies"),
       "--inventory", str(EXAMPLES / "inventory.yaml")]
DROPS = ["egress", "list", "--policies", str(GOLDEN / "drops-policies.yaml"),
         "--inventory", str(GOLDEN / "drops-inventory.yaml")]


def run(argv, capsys):
    """(exit code, stdout, stderr) of the real entry point."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("argv", "golden"), [
    (LAB, "lab.txt"),
    ([*LAB, "--node", "worker-1"], "lab-worker-1.txt"),
    (DROPS, "drops.txt"),
])
def test_table_matches_golden(capsys, argv, golden):
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert out == (GOLDEN / golden).read_text()


def test_warnings_go_to_stderr(capsys):
    code, out, err = run(DROPS, capsys)
    assert code == 0
    assert "warning" not in out
    assert err.splitlines() == [
        "egressgw: warning: policy 'nowhere': spec.egressGateway.nodeSelector matches no "
        "node: its traffic is dropped (No egress gateway found)",
        # v1.18's deriveFromPolicyGatewayConfig fails as a whole: IPv4 is dropped too.
        "egressgw: warning: policy 'v4-only-interface': spec.egressGateway: on node "
        "'gateway-1' Cilium v1.18 finds no IPv6 address on 'eth2': it stores egress IP "
        "0.0.0.0 and :: and drops this policy's traffic at the gateway",
        "egressgw: note: policy 'v4-only-interface': 1 rule(s) that Cilium v1.18 drops at "
        "'gateway-1' are masqueraded as 203.0.113.20 by egressgw's own datapaths "
        "(egressgw agent)",
    ]


def test_json_and_yaml_carry_every_field(capsys):
    _, as_json, _ = run([*LAB, "-o", "json"], capsys)
    _, as_yaml, _ = run([*LAB, "-o", "yaml"], capsys)
    documents = json.loads(as_json)
    assert documents == yaml.safe_load(as_yaml)
    table_lines = (GOLDEN / "lab.txt").read_text().splitlines()[1:]
    assert len(documents) == len(table_lines)
    first = documents[1]  # after its excluded /32: cilium-dbg's (trie postorder) order
    assert first == {
        "source_ip": "192.0.2.10",
        "destination_cidr": "198.51.100.0/24",
        "kind": "masquerade",
        "egress_ip": "203.0.113.10",
        "gateway_node": "gateway-1",
        "gateway_ip": "192.0.2.1",
        "policy": "shop-clients",
        "shown_destination_cidr": "198.51.100.0/24",
        "shown_egress_ip": "203.0.113.10",
        "shown_gateway_ip": "192.0.2.1",
    }
    assert {d["kind"] for d in documents} == {"masquerade", "excluded", "no-gateway"}
    excluded = next(d for d in documents if d["kind"] == "excluded")
    # Cilium stores the gateway's egress IP with an excluded CIDR (gateway 0.0.0.1).
    assert (excluded["egress_ip"], excluded["shown_gateway_ip"]) == ("203.0.113.10",
                                                                     "Excluded CIDR")


def test_node_view_hides_egress_ips_of_other_gateways_only(capsys):
    _, out, _ = run([*LAB, "--node", "gateway-1", "-o", "json"], capsys)
    shown = {d["shown_egress_ip"] for d in json.loads(out) if d["kind"] != "no-gateway"}
    assert shown == {"203.0.113.10", "203.0.113.12", "203.0.113.13"}
    _, out, _ = run([*LAB, "--node", "worker-1", "-o", "json"], capsys)
    assert {d["shown_egress_ip"] for d in json.loads(out)} == {"0.0.0.0", "::"}


def test_no_rules_says_so_on_stderr(capsys, tmp_path):
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("nodes: []\nendpoints: []\n")
    code, out, err = run(["egress", "list", "--policies", str(EXAMPLES / "policies"),
                          "--inventory", str(inventory)], capsys)
    assert (code, out) == (0, "")
    assert "No entries found." in err


def bad_policy_path():
    return GOLDEN.parent / "bad" / "both-interface-and-egress-ip.yaml"


@pytest.mark.parametrize(("argv", "message"), [
    (["egress", "list", "--policies", str(bad_policy_path()),
      "--inventory", str(EXAMPLES / "inventory.yaml")],
     f"egressgw: error: {bad_policy_path()}: document 2: spec.egressGateway: "
     "interface and egressIP are mutually exclusive"),
    ([*LAB, "--node", "nope"],
     f"egressgw: error: {EXAMPLES / 'inventory.yaml'}: no node named 'nope' in the inventory"),
    (["egress", "list", "--policies", "/nonexistent/policies",
      "--inventory", str(EXAMPLES / "inventory.yaml")],
     "egressgw: error: /nonexistent/policies: no such file or directory"),
])
def test_input_errors_exit_2_with_one_line(capsys, argv, message):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    assert err == message + "\n"
    assert "Traceback" not in err


def test_bad_output_format_is_a_usage_error(capsys):
    code, _, err = run([*LAB, "-o", "xml"], capsys)
    assert code == 2
    assert "Invalid value for '-o' / '--output'" in err
    assert "Traceback" not in err


VIRTUAL = """\
apiVersion: cilium.io/v2
kind: CiliumEgressGatewayPolicy
metadata: {name: virtual}
spec:
  selectors: [{podSelector: {matchLabels: {app: client}}}]
  destinationCIDRs: [198.51.100.0/24]
  excludedCIDRs: [198.51.100.9/32]
  egressGateway:
    nodeSelector: {matchLabels: {egress-gateway: "true"}}
    egressIP: 203.0.113.99
"""


@pytest.mark.parametrize(("version", "egress", "note"), [
    # v1.16 assigns the egress IP before looking for the interface holding it.
    ("1.16", "203.0.113.99", False),
    # v1.18 returns on that error before assigning: both egress IPs stay unspecified.
    ("1.18", "0.0.0.0", True),
])
def test_an_egress_ip_on_no_interface_per_version(capsys, tmp_path, version, egress, note):
    (tmp_path / "p.yaml").write_text(VIRTUAL)
    code, out, err = run(["egress", "list", "--policies", str(tmp_path / "p.yaml"),
                          "--inventory", str(EXAMPLES / "inventory.yaml"),
                          "--cilium-version", version], capsys)
    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:]]
    assert rows[0] == ["192.0.2.10", "198.51.100.9/32", egress, "Excluded", "CIDR"]
    assert rows[1] == ["192.0.2.10", "198.51.100.0/24", egress, "192.0.2.1"]
    assert ("masqueraded as 203.0.113.99 by egressgw's own datapaths" in err) is note


def test_v1_16_refuses_what_its_crd_lacks(capsys):
    code, out, err = run([*LAB, "--cilium-version", "1.16"], capsys)
    assert (code, out) == (2, "")
    assert "batch-jobs.yaml: document 1: spec.egressGateways: unknown field in the v1.16 " \
        "CRD (added in Cilium v1.18" in err
    shop = ["egress", "list", "--policies", str(EXAMPLES / "policies" / "shop-clients.yaml"),
            "--inventory", str(EXAMPLES / "inventory.yaml"), "--cilium-version", "1.16"]
    code, out, err = run(shop, capsys)
    assert (code, out) == (2, "")
    assert "destinationCIDRs[1]: invalid CIDR '2001:db8:100::/64': the v1.16 CRD" in err


def test_a_cidr_with_host_bits_is_shown_as_written(capsys, tmp_path):
    """Cilium keys its map with netip.ParsePrefix's unmasked address and the kernel's LPM
    trie keeps the key as given (tests/test_lpm_trie_keys.py), so cilium-dbg shows
    198.51.100.7/24; egressgw's datapaths match the masked network either way."""
    (tmp_path / "p.yaml").write_text(VIRTUAL.replace("egressIP: 203.0.113.99",
                                                     "egressIP: 203.0.113.10")
                                     .replace("[198.51.100.0/24]", "[198.51.100.7/24]"))
    code, out, _ = run(["egress", "list", "--policies", str(tmp_path / "p.yaml"),
                        "--inventory", str(EXAMPLES / "inventory.yaml"), "-o", "json"], capsys)
    assert code == 0
    first = json.loads(out)[1]
    assert (first["destination_cidr"], first["shown_destination_cidr"]) == (
        "198.51.100.0/24", "198.51.100.7/24")
