"""The inventory read from ``kubectl get ... -o yaml`` output, without hand editing."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from egressgw.errors import InputError
from egressgw.policy import compile_policies, load_inventory, load_policies
from egressgw.policy.cilium import CiliumVersion
from egressgw.policy.kubernetes import load_inventories


class NoAliasDumper(yaml.SafeDumper):
    """Writes shared objects out in full: kubectl output has no YAML aliases, and
    egressgw refuses them."""

    def ignore_aliases(self, data: object) -> bool:
        return True

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "egressgw" / "examples"
KUBECTL = EXAMPLES / "kubernetes" / "kubectl-get-nodes-pods.yaml"
INTERFACES = EXAMPLES / "kubernetes" / "gateway-interfaces.yaml"


def kubectl_items():
    return yaml.safe_load(KUBECTL.read_text())["items"]


def write(tmp_path, name, *documents):
    path = tmp_path / name
    path.write_text(yaml.dump_all(documents, Dumper=NoAliasDumper))
    return path


def test_kubectl_output_describes_the_same_lab_as_the_hand_written_inventory(tmp_path):
    """The example kubectl output is the example inventory's lab: with the pods' UIDs
    added to the hand-written file, both give the same rules (and the same warnings)."""
    uids = {(i["metadata"]["namespace"], i["metadata"]["name"]): i["metadata"]["uid"]
            for i in kubectl_items() if i["kind"] == "Pod"}
    hand = yaml.safe_load((EXAMPLES / "inventory.yaml").read_text())
    for endpoint in hand["endpoints"]:
        endpoint["uid"] = uids[(endpoint["namespace"], endpoint["name"])]
    # worker-1's interfaces are in the hand-written file only; no policy uses them.
    hand_path = write(tmp_path, "inventory.yaml", hand)
    from_kubectl = load_inventories([KUBECTL, INTERFACES])
    by_hand = load_inventory(hand_path)
    policies = load_policies(EXAMPLES / "policies")
    for cilium in (None, CiliumVersion.V1_18):
        kubectl = compile_policies(policies, from_kubectl, cilium)
        hand = compile_policies(policies, by_hand, cilium)
        assert kubectl.rules == hand.rules
        # Pod UIDs are not what Cilium hashes (a CiliumEndpoint's UID is): said once.
        [extra] = [w for w in kubectl.warnings if w not in hand.warnings]
        assert extra.startswith("policy 'batch-jobs': its 2 gateways are assigned by "
                                "CiliumEndpoint UID, and the inventory has only Pod UIDs")
    assert [n.name for n in from_kubectl.nodes()] == ["gateway-1", "worker-1"]
    assert from_kubectl.node("gateway-1").internal_ip == ipaddress.ip_address("192.0.2.1")


def test_pods_without_a_cilium_endpoint_are_skipped():
    names = {e.key for e in load_inventories([KUBECTL]).endpoints()}
    assert names == {"jobs/batch-1", "jobs/batch-2", "ops/toolbox", "shop/client-1",
                     "shop/client-2", "shop/client-3"}
    # not: a Succeeded job pod, a Pending pod without IP, the host-network cilium pod.


def test_node_ip_is_the_first_internal_ip_else_the_last_external_ip(tmp_path):
    def node(name, addresses):
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}}
    path = write(tmp_path, "nodes.yaml", {"apiVersion": "v1", "kind": "List", "items": [
        node("a", [("Hostname", "a"), ("InternalIP", "2001:db8:1::5"),
                   ("InternalIP", "192.0.2.5")]),
        node("b", [("ExternalIP", "203.0.113.1"), ("ExternalIP", "203.0.113.2")]),
    ]})
    inventory = load_inventories([path])
    assert str(inventory.node("a").internal_ip) == "2001:db8:1::5"
    assert str(inventory.node("b").internal_ip) == "203.0.113.2"


def test_a_cilium_endpoint_gives_uid_addresses_and_identity_labels(tmp_path):
    cep = {
        "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
        "metadata": {"name": "client-1", "namespace": "shop", "uid": "cep-uid-1"},
        "status": {
            "identity": {"id": 4242, "labels": [
                "k8s:app=client", "k8s:io.kubernetes.pod.namespace=shop",
                "k8s:io.cilium.k8s.namespace.labels.team=web",
                "k8s:io.cilium.k8s.policy.cluster=default"]},
            "networking": {"node": "192.0.2.2",
                           "addressing": [{"ipv4": "192.0.2.10", "ipv6": "2001:db8:1::10"}]},
        },
    }
    orphan = {**cep, "metadata": {"name": "orphan", "namespace": "shop", "uid": "cep-uid-2"},
              "status": {**cep["status"], "networking": {
                  "node": "192.0.2.1", "addressing": [{"ipv4": "192.0.2.99"}]}}}
    extra = write(tmp_path, "ceps.yaml", {"apiVersion": "cilium.io/v2",
                                          "kind": "CiliumEndpointList", "items": [cep, orphan]})
    inventory = load_inventories([KUBECTL, extra])
    endpoints = {e.key: e for e in inventory.endpoints()}
    client = endpoints["shop/client-1"]
    assert client.uid == "cep-uid-1"  # Cilium pins by the CiliumEndpoint's UID
    assert client.node == "worker-1"
    assert dict(client.labels) == {"app": "client",
                                   "io.cilium.k8s.policy.cluster": "default"}
    assert client.identity_labels["io.cilium.k8s.namespace.labels.team"] == "web"
    # Without a pod, the node comes from the endpoint's node IP.
    assert endpoints["shop/orphan"].node == "gateway-1"


def test_without_interfaces_an_egress_ip_is_taken_as_given_and_the_rest_warns(tmp_path):
    policies = load_policies(EXAMPLES / "policies")
    compiled = compile_policies(policies, load_inventories([KUBECTL]), CiliumVersion.V1_18)
    masquerades = {str(r.egress_ip) for r in compiled.rules if r.kind.value == "masquerade"}
    assert masquerades == {"203.0.113.10", "203.0.113.12", "203.0.113.13"}
    by_interface = write(tmp_path, "p.yaml", {
        "apiVersion": "cilium.io/v2", "kind": "CiliumEgressGatewayPolicy",
        "metadata": {"name": "by-interface"},
        "spec": {"selectors": [{"podSelector": {"matchLabels": {"app": "toolbox"}}}],
                 "destinationCIDRs": ["198.51.100.0/24"],
                 "egressGateway": {"nodeSelector": {"matchLabels": {"egress-gateway": "true"}},
                                   "interface": "eth1"}}})
    compiled = compile_policies(load_policies(by_interface), load_inventories([KUBECTL]))
    [rule] = compiled.rules
    assert (rule.kind.value, rule.gateway_node) == ("no-gateway", "gateway-1")
    assert any("interfaces of node 'gateway-1' are unknown" in w for w in compiled.warnings)
    with_interfaces = load_inventories([KUBECTL, INTERFACES])
    [rule] = compile_policies(load_policies(by_interface), with_interfaces).rules
    assert str(rule.egress_ip) == "203.0.113.10"


@pytest.mark.parametrize(("document", "message"), [
    ({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}, "status": {}},
     "document 1: status.addresses: node 'n' has no InternalIP or ExternalIP address"),
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
      "status": {"podIPs": [{"ip": "192.0.2.300"}]}},
     "document 1: status.podIPs[0].ip: invalid IP address '192.0.2.300'"),
    ({"nodes": [{"name": "ghost", "interfaces": []}]},
     "document 1: nodes[0].name: no Node 'ghost' among the Kubernetes objects"),
    ({"nodes": [{"name": "gateway-1", "internalIP": "192.0.2.1"}]},
     "document 1: nodes[0].internalIP: unknown field"),
])
def test_bad_objects_name_file_document_and_field(tmp_path, document, message):
    path = write(tmp_path, "bad.yaml", document)
    with pytest.raises(InputError) as caught:
        load_inventories([KUBECTL, path])
    assert str(caught.value).startswith(f"{path}: {message}"), str(caught.value)
    assert caught.value.exit_code == 2


def test_cli_reads_kubectl_output_from_stdin_and_policies_from_kubectl_get_cegp(tmp_path):
    policies = [yaml.safe_load(p.read_text()) for p in sorted((EXAMPLES / "policies").glob("*"))]
    for index, policy in enumerate(policies):  # what the API server adds
        policy["metadata"].update({"uid": f"cegp-{index}", "generation": 1,
                                   "resourceVersion": str(100 + index),
                                   "creationTimestamp": "2026-12-01T09:00:00Z"})
    cegp = write(tmp_path, "cegp.yaml", {"apiVersion": "v1", "kind": "List",
                                         "metadata": {"resourceVersion": ""},
                                         "items": policies})
    egressgw = Path(sys.executable).with_name("egressgw")
    done = subprocess.run(
        [str(egressgw), "egress", "list", "--policies", str(cegp), "--inventory", "-",
         "--inventory", str(INTERFACES)],
        input=KUBECTL.read_text(), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    golden = Path(__file__).parent / "fixtures" / "policies" / "golden" / "lab.txt"
    # The golden table was written for the hand-written inventory (pods pinned by
    # namespace/name). FNV-1a 32 mod 2 of the kubectl UIDs of batch-1 and batch-2 is 0 and
    # 1, as it is for "jobs/batch-1" and "jobs/batch-2": the same gateways, the same table.
    assert done.stdout == golden.read_text()


def test_cilium_endpoints_silence_the_pod_uid_warning(tmp_path):
    pods = {i["metadata"]["name"]: i for i in kubectl_items() if i["kind"] == "Pod"}
    ceps = [{
        "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
        "metadata": {"name": name, "namespace": "jobs", "uid": f"cep-uid-{name}"},
        "status": {"identity": {"labels": ["k8s:app=batch",
                                           "k8s:io.cilium.k8s.namespace.labels.team=data"]},
                   "networking": {"node": "192.0.2.2", "addressing": [
                       {"ipv4": p["status"]["podIPs"][0]["ip"],
                        "ipv6": p["status"]["podIPs"][1]["ip"]}]}},
    } for name, p in pods.items() if name in ("batch-1", "batch-2")]
    extra = write(tmp_path, "ceps.yaml", *ceps)
    compiled = compile_policies(load_policies(EXAMPLES / "policies"),
                                load_inventories([KUBECTL, INTERFACES, extra]))
    assert not [w for w in compiled.warnings if "Pod UIDs" in w]
    # The CiliumEndpoint UIDs pin the batch pods the other way round from their Pod UIDs:
    # FNV-1a 32 mod 2 of "cep-uid-batch-1" is 1 and of "cep-uid-batch-2" is 0 (worked out
    # from the hash's definition outside egressgw), over gateways [.12, .13].
    batch = {str(r.source_ip): str(r.egress_ip) for r in compiled.rules
             if r.policy == "batch-jobs" and r.source_ip.version == 4}
    assert batch == {"192.0.2.20": "203.0.113.13", "192.0.2.21": "203.0.113.12"}
