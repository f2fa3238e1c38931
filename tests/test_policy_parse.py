"""Parsing and validating CiliumEgressGatewayPolicy files: forms, fields, rejections."""

import ipaddress
from pathlib import Path

import pytest
import yaml

from egressgw.errors import InputError
from egressgw.policy import load_policies
from egressgw.policy.labels import Operator

FIXTURES = Path(__file__).parent / "fixtures" / "policies"
BAD = sorted((FIXTURES / "bad").glob("*.yaml"))


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_each_rejection_names_file_document_and_field(path):
    with pytest.raises(InputError) as caught:
        load_policies(path)
    message = str(caught.value)
    expected = expected_message(path)
    # The message starts with the file; ":LINE:" follows it directly for syntax errors.
    joiner = "" if expected.startswith(":") else ": "
    assert message.startswith(f"{path}{joiner}{expected}"), message
    assert caught.value.exit_code == 2


def test_syntax_error_reports_the_line():
    with pytest.raises(InputError) as caught:
        load_policies(FIXTURES / "bad" / "syntax-error.yaml")
    assert caught.value.line == 6


def test_multi_document_file_skips_empty_documents():
    policies = load_policies(FIXTURES / "good" / "multi.yaml")
    assert [p.name for p in policies] == ["web", "web-v6"]
    web, web_v6 = policies
    assert web.destination_cidrs == (ipaddress.ip_network("198.51.100.0/24"),)
    assert web.gateways[0].interface == "eth1"
    assert web.gateways[0].egress_ip is None
    assert web_v6.excluded_cidrs == (ipaddress.ip_network("2001:db8:100::80/128"),)
    assert web_v6.gateways[0].interface == "eth2"
    (requirement,) = web_v6.gateways[0].node_selector.match_expressions
    assert (requirement.key, requirement.operator) == ("egress", Operator.EXISTS)
    assert web_v6.source.endswith("multi.yaml: document 3")


def test_list_items_and_cilium_label_sources():
    a, b = load_policies(FIXTURES / "good" / "list.yaml")
    assert a.destination_cidrs == (ipaddress.ip_network("198.51.100.0/24"),)
    assert b.selectors[0].pod_selector is not None
    assert dict(b.selectors[0].pod_selector.match_labels) == {"app": "db"}
    assert [str(g.egress_ip) for g in b.gateways] == ["203.0.113.12", "203.0.113.13"]
    assert [g.field for g in b.gateways] == [
        "items[1].spec.egressGateways[0]",
        "items[1].spec.egressGateways[1]",
    ]


def test_directory_reads_yaml_files_in_name_order_and_ignores_others():
    policies = load_policies(FIXTURES / "dir")
    assert [p.name for p in policies] == ["first", "second"]


def test_duplicate_names_across_files_are_rejected(tmp_path):
    text = (FIXTURES / "dir" / "a-first.yaml").read_text()
    (tmp_path / "1.yaml").write_text(text)
    (tmp_path / "2.yaml").write_text(text)
    with pytest.raises(InputError, match=r"2\.yaml: document 1: duplicate policy name 'first' "
                       r"\(first defined at .*1\.yaml: document 1\)"):
        load_policies(tmp_path)


def policy(**spec_overrides):
    spec = {
        "selectors": [{"podSelector": {}}],
        "destinationCIDRs": ["198.51.100.0/24"],
        "egressGateway": {"nodeSelector": {}},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumEgressGatewayPolicy",
        "metadata": {"name": "p"},
        "spec": spec,
    }


def write(tmp_path, *documents):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return path


def test_egress_gateways_replace_egress_gateway(tmp_path):
    path = write(tmp_path, policy(
        egressGateway={"nodeSelector": {}, "egressIP": "203.0.113.10"},
        egressGateways=[{"nodeSelector": {}, "egressIP": "203.0.113.11"}],
    ))
    (loaded,) = load_policies(path)
    assert [str(g.egress_ip) for g in loaded.gateways] == ["203.0.113.11"]


def test_ignored_egress_gateway_is_still_validated(tmp_path):
    path = write(tmp_path, policy(
        egressGateway={"nodeSelector": {}, "egressIP": "203.0.113.10", "interface": "eth1"},
        egressGateways=[{"nodeSelector": {}}],
    ))
    with pytest.raises(InputError, match=r"spec\.egressGateway: interface and egressIP"):
        load_policies(path)


def test_more_than_64_gateways_are_valid(tmp_path):
    """The CRD sets no maxItems on egressGateways (v1.18), so 65 entries are accepted."""
    gateways = [{"nodeSelector": {"matchLabels": {"n": str(i)}}} for i in range(65)]
    (loaded,) = load_policies(write(tmp_path, policy(egressGateways=gateways)))
    assert len(loaded.gateways) == 65


def test_unspecified_egress_ip_is_rejected(tmp_path):
    path = write(tmp_path, policy(egressGateway={"nodeSelector": {}, "egressIP": "0.0.0.0"}))
    with pytest.raises(InputError, match=r"egressIP: 0\.0\.0\.0 is not a usable egress IP"):
        load_policies(path)


def test_duplicate_cidrs_collapse_after_masking(tmp_path):
    path = write(tmp_path, policy(destinationCIDRs=["198.51.100.0/24", "198.51.100.9/24"]))
    (loaded,) = load_policies(path)
    assert loaded.destination_cidrs == (ipaddress.ip_network("198.51.100.0/24"),)


def test_missing_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        load_policies(tmp_path / "absent.yaml")


def test_document_index_counts_empty_documents(tmp_path):
    path = tmp_path / "p.yaml"
    good = yaml.safe_dump(policy())
    bad = yaml.safe_dump(policy(destinationCIDRs=[]))
    path.write_text(f"{good}---\n---\n{bad}")
    with pytest.raises(InputError, match=r"p\.yaml: document 3: spec\.destinationCIDRs"):
        load_policies(path)
