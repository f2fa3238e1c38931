"""plan --policy: the policy in force, with only its gateways changed, valid for the CRD
of the named Cilium version (round-tripped through egressgw's own strict loader)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from egressgw.errors import InputError
from egressgw.net import parse_ip
from egressgw.policy import load_policies
from egressgw.policy.cilium import CiliumVersion
from egressgw.sim.remedy import (
    SHARD_LABEL,
    plan_policies,
    policy_in_force,
    remedy_policies,
)

EXAMPLES = Path(__file__).parents[1] / "src" / "egressgw" / "examples"
IPS = [parse_ip("10.1.0.0"), parse_ip("10.1.0.1"), parse_ip("10.1.0.2")]

POLICY = {
    "apiVersion": "cilium.io/v2",
    "kind": "CiliumEgressGatewayPolicy",
    "metadata": {"name": "orders-egress", "labels": {"team": "shop"},
                 "resourceVersion": "4711", "uid": "0c1e6f5e-5d2b-4f7c-9e61-2f0c5a3c1b11"},
    "spec": {
        "selectors": [
            {"podSelector": {"matchLabels": {"app": "orders"},
                             "matchExpressions": [{"key": "tier", "operator": "In",
                                                   "values": ["api", "worker"]}]},
             "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "batch"}}},
        ],
        "destinationCIDRs": ["10.2.0.0/24", "104.198.14.52/32"],
        "excludedCIDRs": ["10.2.0.200/32"],
        "egressGateway": {"nodeSelector": {"matchLabels": {"egress-gateway": "true"}},
                          "egressIP": "10.1.0.0"},
    },
    "status": {"conditions": []},
}


def _write(path: Path, *docs: object) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def _round_trip(tmp_path: Path, text: str, version: str) -> list[dict]:
    """Parse the printed YAML with the CRD of ``version`` (raises if it would be rejected)
    and return the documents as written."""
    out = tmp_path / "printed.yaml"
    out.write_text(text)
    load_policies(out, CiliumVersion(version))
    return [d for d in yaml.safe_load_all(text) if d is not None]


@pytest.mark.parametrize("version", ["1.16", "1.17"])
def test_before_1_18_the_policy_is_split_by_a_shard_label(tmp_path, version):
    path = _write(tmp_path / "cegp.yaml", POLICY)
    in_force = policy_in_force(path, version, [IPS[0]])
    text = plan_policies(in_force, IPS, cilium_version=version, source=str(path))
    docs = _round_trip(tmp_path, text, version)
    assert [d["metadata"]["name"] for d in docs] == [
        "orders-egress", "orders-egress-shard-1", "orders-egress-shard-2"]
    for shard, (doc, ip) in enumerate(zip(docs, IPS, strict=True)):
        spec = doc["spec"]
        # Unchanged: CIDRs, labels, the gateway nodes; the selectors gain only the label.
        assert spec["destinationCIDRs"] == POLICY["spec"]["destinationCIDRs"]
        assert spec["excludedCIDRs"] == POLICY["spec"]["excludedCIDRs"]
        assert doc["metadata"]["labels"] == {"team": "shop"}
        assert spec["egressGateway"] == {
            "nodeSelector": {"matchLabels": {"egress-gateway": "true"}}, "egressIP": str(ip)}
        expected = copy.deepcopy(POLICY["spec"]["selectors"])
        expected[0]["podSelector"]["matchLabels"][SHARD_LABEL] = str(shard)
        expected[1]["podSelector"] = {"matchLabels": {SHARD_LABEL: str(shard)}}
        assert spec["selectors"] == expected
        # Nothing the server sets is applied back.
        assert "resourceVersion" not in doc["metadata"] and "uid" not in doc["metadata"]
        assert "status" not in doc
    # The comment says which label goes on which pods, and what a pod without it does.
    assert "label the pods it selects" in text
    assert ("(pods app=orders, tier In (api,worker) in namespaces kubernetes.io/metadata."
            "name=shop or all pods in namespaces kubernetes.io/metadata.name=batch)") in text
    assert f"{SHARD_LABEL}=0, 1 or 2" in text
    assert "leaves without an\n# egress gateway" in text
    assert ("New egress IPs, the addresses after the last one in use:\n"
            "#   10.1.0.1, 10.1.0.2\n") in text


def test_1_18_keeps_one_policy_and_lists_every_gateway(tmp_path):
    path = _write(tmp_path / "cegp.yaml", POLICY)
    in_force = policy_in_force(path, "1.18", [IPS[0]])
    text = plan_policies(in_force, IPS, cilium_version="1.18", source=str(path))
    (doc,) = _round_trip(tmp_path, text, "1.18")
    assert doc["metadata"]["name"] == "orders-egress"
    spec = doc["spec"]
    for key in ("selectors", "destinationCIDRs", "excludedCIDRs", "egressGateway"):
        assert spec[key] == POLICY["spec"][key], key
    assert [g["egressIP"] for g in spec["egressGateways"]] == [str(ip) for ip in IPS]
    assert all(g["nodeSelector"] == {"matchLabels": {"egress-gateway": "true"}}
               for g in spec["egressGateways"])
    (parsed,) = load_policies(tmp_path / "printed.yaml", CiliumVersion.V1_18)
    assert [str(g.egress_ip) for g in parsed.gateways] == [str(ip) for ip in IPS]


def test_the_policy_is_picked_by_its_egress_ip_from_a_list_and_errors_name_the_file(tmp_path):
    other = copy.deepcopy(POLICY)
    other["metadata"]["name"] = "other"
    other["spec"]["egressGateway"]["egressIP"] = "203.0.113.10"
    listing = {"apiVersion": "v1", "kind": "List", "items": [other, POLICY]}
    path = _write(tmp_path / "all.yaml", listing)
    assert policy_in_force(path, "1.16", [IPS[0]])["metadata"]["name"] == "orders-egress"
    with pytest.raises(InputError, match=r"all\.yaml: 2 policies, 0 of them with egress IP "
                                         r"192\.0\.2\.1"):
        policy_in_force(path, "1.16", [parse_ip("192.0.2.1")])
    lone = _write(tmp_path / "other.yaml", other)
    with pytest.raises(InputError, match=r"uses egress IP 203\.0\.113\.10, the planned "
                                         r"tuples leave by 10\.1\.0\.0"):
        policy_in_force(lone, "1.16", [IPS[0]])
    # A policy the CRD rejects is an error naming the field (egressGateways before 1.18).
    with_many = copy.deepcopy(POLICY)
    with_many["spec"]["egressGateways"] = [POLICY["spec"]["egressGateway"]]
    bad = _write(tmp_path / "bad.yaml", with_many)
    with pytest.raises(InputError, match="egressGateways"):
        policy_in_force(bad, "1.16", [IPS[0]])


def test_the_example_policy_for_the_capacity_example_is_valid():
    path = EXAMPLES / "capacity" / "policy.yaml"
    assert policy_in_force(path, "1.16", [IPS[0]])["metadata"]["name"] == "orders-egress"


@pytest.mark.parametrize("version", ["1.16", "1.18"])
def test_without_a_policy_the_comment_says_the_labels_are_placeholders(tmp_path, version):
    text = remedy_policies(IPS, ["gateway"] * 3, [parse_ip("10.2.0.0")], cilium_version=version)
    assert text.startswith("# PLACEHOLDERS, not your policy")
    assert "--policy FILE" in text
    _round_trip(tmp_path, text, version)
