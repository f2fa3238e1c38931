"""scripts/check-crd-schema.py, the comparison of egressgw's CRD schema with Cilium's
published file, is itself sharp: on a CRD file written from the facts it reports no
difference, and it reports a changed length, a missing property and a CIDR pattern that
accepts what Cilium's parser would load."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from egressgw.policy.cilium import CiliumVersion
from egressgw.policy.crd import crd_schema

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check-crd-schema.py"
# A looser IPv4 CIDR pattern than Cilium's (octets are not bounded by 255): the spellings
# where it differs from egressgw's format are ones Cilium's parser refuses anyway.
IPV4_PATTERN = r"^(\d{1,3}\.){3}\d{1,3}/(3[0-2]|[12]\d|\d)$"


def published_like(version: CiliumVersion, pattern: str = IPV4_PATTERN) -> dict:
    """A CRD document as Cilium's generator writes it: no additionalProperties: false, no
    status, CIDRs as a pattern, descriptions."""
    def strip(node):
        if isinstance(node, dict):
            node = {k: strip(v) for k, v in node.items()
                    if not (k == "additionalProperties" and v is False)}
            if node.get("format") == "cidr":
                node = {k: v for k, v in node.items() if k != "format"} | {"pattern": pattern}
            if node.get("type") == "object" and "properties" in node:
                node["description"] = "from the Go types"
        elif isinstance(node, list):
            node = [strip(v) for v in node]
        return node
    schema = strip(copy.deepcopy(crd_schema(version)))
    del schema["properties"]["status"]
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "spec": {"versions": [{"name": "v2", "schema": {"openAPIV3Schema": schema}}]}}


def check(tmp_path: Path, version: CiliumVersion, document: dict):
    path = tmp_path / "crd.yaml"
    path.write_text(yaml.safe_dump(document))
    return subprocess.run([sys.executable, str(SCRIPT), version.value, str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_file_written_from_the_facts_has_no_difference(tmp_path):
    done = check(tmp_path, CiliumVersion.V1_16, published_like(CiliumVersion.V1_16))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 structural differences" in done.stdout and "0 change the outcome" in done.stdout


@pytest.mark.parametrize(("change", "reported"), [
    (lambda s: s["properties"]["spec"]["properties"]["selectors"]["items"]["properties"]
     ["podSelector"]["properties"]["matchLabels"]["additionalProperties"].update(maxLength=64),
     "maxLength: 63 != 64"),
    (lambda s: s["properties"]["spec"]["properties"].pop("excludedCIDRs"),
     ".spec.excludedCIDRs: property only in ours"),
    (lambda s: s["properties"]["spec"].update(required=["selectors"]),
     ".spec.required"),
])
def test_structural_changes_are_reported(tmp_path, change, reported):
    document = published_like(CiliumVersion.V1_16)
    change(document["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    done = check(tmp_path, CiliumVersion.V1_16, document)
    assert done.returncode == 1 and reported in done.stdout, done.stdout


def test_a_pattern_accepting_loadable_ipv6_is_an_outcome_difference(tmp_path):
    # An IPv6-capable pattern against the v1.16 format: 2001:db8::/32 would then load.
    document = published_like(CiliumVersion.V1_16, pattern=IPV4_PATTERN + r"|^[0-9a-f:]+/\d+$")
    done = check(tmp_path, CiliumVersion.V1_16, document)
    assert done.returncode == 1
    assert "cidr '2001:db8::/32': Cilium's pattern accepts, egressgw's format rejects; " \
        "Cilium's parser then accepts it (OUTCOME DIFFERS)" in done.stdout
