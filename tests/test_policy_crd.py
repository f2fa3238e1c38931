"""Policies checked against the CRD schema of the chosen Cilium version, as ``kubectl apply``
would check them (strict fields, the CRD's formats and patterns), then by Cilium's parser.

Expected outcomes come from the CRD files at v1.16.2 and v1.18.0-pre.3 (the CIDR pattern,
``format: ipv4``, ``required: [destinationCIDRs, egressGateway, selectors]``, no maxItems)
and from Go's netip.ParsePrefix (no zone, no leading zeros), not from egressgw's code.
"""

from __future__ import annotations

import pytest
import yaml

from egressgw.errors import InputError
from egressgw.policy import load_policies
from egressgw.policy.cilium import CiliumVersion
from egressgw.policy.crd import crd_cidr_syntax, kube_ipv4_format


class NoAliasDumper(yaml.SafeDumper):
    """Writes shared objects out in full: kubectl output has no YAML aliases, and
    egressgw refuses them."""

    def ignore_aliases(self, data: object) -> bool:
        return True

V116, V117, V118 = CiliumVersion.V1_16, CiliumVersion.V1_17, CiliumVersion.V1_18


def policy(**spec_overrides):
    spec = {
        "selectors": [{"podSelector": {"matchLabels": {"app": "client"}}}],
        "destinationCIDRs": ["198.51.100.0/24"],
        "egressGateway": {"nodeSelector": {"matchLabels": {"egress": "yes"}}},
    }
    spec.update(spec_overrides)
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumEgressGatewayPolicy",
            "metadata": {"name": "p"}, "spec": spec}


def load(tmp_path, body, version=V118):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.dump(body, Dumper=NoAliasDumper))
    return load_policies(path, version)


def rejects(tmp_path, body, field, text, version=V118):
    with pytest.raises(InputError) as caught:
        load(tmp_path, body, version)
    message = str(caught.value)
    assert f"document 1: {field}: " in message, message
    assert text in message, message
    assert caught.value.exit_code == 2
    return message


@pytest.mark.parametrize("cidr", [
    " 198.51.100.0/24", "198.51.100.0/24 ", "198.51.100.0/255.255.255.0", "198.51.100.0/024",
    "198.051.100.0/24", "198.51.100.0 /24",
])
def test_cidr_spellings_kubectl_or_cilium_refuse(tmp_path, cidr):
    rejects(tmp_path, policy(destinationCIDRs=[cidr]), "spec.destinationCIDRs[0]", "CIDR")


def test_zone_index_in_an_ipv6_cidr_is_refused_not_dropped(tmp_path):
    # The v1.18 pattern lets "%zone" through; netip.ParsePrefix refuses it.
    assert crd_cidr_syntax("2001:db8:100::%eth0/64", V118)
    message = rejects(tmp_path, policy(excludedCIDRs=["2001:db8:100::%eth0/64"],
                                       destinationCIDRs=["2001:db8:100::/48"]),
                      "spec.excludedCIDRs[0]", "zone")
    assert "netip.ParsePrefix" in message


def test_ipv6_cidrs_follow_the_version(tmp_path):
    body = policy(destinationCIDRs=["2001:db8:100::/64"])
    (loaded,) = load(tmp_path, body, V118)
    assert [str(c) for c in loaded.destination_cidrs] == ["2001:db8:100::/64"]
    rejects(tmp_path, body, "spec.destinationCIDRs[0]", "v1.16 CRD accepts an IPv4 CIDR", V116)
    # The v1.18 pattern has no dotted-quad IPv6 form (its "d" should have been "\d").
    rejects(tmp_path, policy(destinationCIDRs=["::ffff:198.51.100.0/120"]),
            "spec.destinationCIDRs[0]", "CIDR")


@pytest.mark.parametrize(("egress_ip", "why"), [
    ("", "invalid IPv4 address ''"),
    (" 203.0.113.10", "invalid IPv4 address ' 203.0.113.10'"),
    ("203.0.113.10 ", "invalid IPv4 address"),
    ("2001:db8:203::10", "format: ipv4"),
])
def test_egress_ip_must_be_an_ipv4_address_as_the_crd_says(tmp_path, egress_ip, why):
    gateway = {"nodeSelector": {}, "egressIP": egress_ip}
    for version in (V116, V118):
        rejects(tmp_path, policy(egressGateway=gateway), "spec.egressGateway.egressIP", why,
                version)


def test_kube_ipv4_format_is_parse_ip_sloppy_with_a_dot():
    assert kube_ipv4_format("203.0.113.10")
    assert kube_ipv4_format("203.000.113.010")  # sloppy: leading zeros allowed
    assert kube_ipv4_format("::ffff:203.0.113.10")  # parses, and has a dot
    for text in ("", "2001:db8::1", "203.0.113", "203.0.113.256", " 203.0.113.10", "a.b.c.d"):
        assert not kube_ipv4_format(text), text


def test_egress_gateways_need_egress_gateway_against_v1_18(tmp_path):
    gateways = [{"nodeSelector": {"matchLabels": {"egress": "yes"}}, "egressIP": "203.0.113.12"}]
    body = policy(egressGateways=gateways)
    del body["spec"]["egressGateway"]
    message = rejects(tmp_path, body, "spec.egressGateway", "required by the v1.18 CRD")
    assert "even when egressGateways has entries" in message
    body["spec"]["egressGateway"] = gateways[0]
    (loaded,) = load(tmp_path, body)
    assert [str(g.egress_ip) for g in loaded.gateways] == ["203.0.113.12"]


def test_v1_16_knows_neither_egress_gateways_nor_selector_node_selector(tmp_path):
    gateways = [{"nodeSelector": {}}]
    rejects(tmp_path, policy(egressGateways=gateways), "spec.egressGateways",
            "added in Cilium v1.18", V116)
    selectors = [{"podSelector": {}, "nodeSelector": {"matchLabels": {"zone": "a"}}}]
    rejects(tmp_path, policy(selectors=selectors), "spec.selectors[0].nodeSelector",
            "unknown field in the v1.16 CRD", V116)
    (loaded,) = load(tmp_path, policy(selectors=selectors), V118)
    assert loaded.selectors[0].node_selector is not None


def test_kubectl_strictness_inside_label_selectors(tmp_path):
    typo = [{"podSelector": {"matchExpressions": [
        {"key": "app", "operator": "In", "value": ["x"]}]}}]
    rejects(tmp_path, policy(selectors=typo), "spec.selectors[0].podSelector"
            ".matchExpressions[0].value", "unknown field")
    long_value = [{"podSelector": {"matchLabels": {"app": "x" * 64}}}]
    rejects(tmp_path, policy(selectors=long_value), "spec.selectors[0].podSelector"
            ".matchLabels.app", "at most 63")


def test_kubectl_get_output_with_status_and_server_metadata_loads(tmp_path):
    body = policy()
    body["metadata"].update({"uid": "0b7e", "resourceVersion": "42", "generation": 1,
                             "creationTimestamp": "2026-01-01T00:00:00Z"})
    body["status"] = {"conditions": []}
    (loaded,) = load(tmp_path, {"apiVersion": "v1", "kind": "List", "items": [body],
                                "metadata": {"resourceVersion": ""}})
    assert loaded.name == "p"


def test_the_agent_validates_against_its_cilium_version():
    from pathlib import Path  # noqa: PLC0415

    from egressgw.agent.reconcile import PolicySource  # noqa: PLC0415

    examples = Path(__file__).resolve().parents[1] / "src" / "egressgw" / "examples"
    source = PolicySource(examples / "policies", examples / "inventory.yaml", "gateway-1")
    assert source.load_rules()  # v1.18 by default
    with pytest.raises(InputError, match=r"unknown field in the v1\.16 CRD"):
        PolicySource(examples / "policies", examples / "inventory.yaml", "gateway-1",
                     V116).load_rules()


def test_v1_17_adds_selector_node_selectors_only(tmp_path):
    selectors = [{"podSelector": {}, "nodeSelector": {"matchLabels": {"zone": "a"}}}]
    (loaded,) = load(tmp_path, policy(selectors=selectors), V117)
    assert loaded.selectors[0].node_selector is not None
    rejects(tmp_path, policy(egressGateways=[{"nodeSelector": {}}]), "spec.egressGateways",
            "added in Cilium v1.18", V117)
    rejects(tmp_path, policy(destinationCIDRs=["2001:db8:100::/64"]),
            "spec.destinationCIDRs[0]", "v1.17 CRD accepts an IPv4 CIDR", V117)


def test_one_list_of_cilium_versions():
    from egressgw.cli.options import CILIUM_VERSIONS as CLI  # noqa: PLC0415
    from egressgw.datapath.model.ports import CILIUM_VERSIONS as MODEL  # noqa: PLC0415
    from egressgw.policy.cilium import CILIUM_VERSIONS as POLICY  # noqa: PLC0415

    assert tuple(CLI) == tuple(MODEL) == tuple(POLICY) == ("1.16", "1.17", "1.18")
