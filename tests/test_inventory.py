"""The inventory file: nodes, interfaces, namespaces, endpoints, and their validation."""

import ipaddress
from pathlib import Path

import pytest
import yaml

from egressgw.errors import InputError
from egressgw.policy import Inventory, InventorySource, load_inventory
from egressgw.policy.model import NAMESPACE_LABELS_PREFIX, POD_NAMESPACE_LABEL

EXAMPLE = Path(__file__).parents[1] / "src" / "egressgw" / "examples" / "inventory.yaml"


def inventory_file(tmp_path, body):
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def node(name="gw-1", **extra):
    return {"name": name, "internalIP": "192.0.2.1", **extra}


def test_example_lab_inventory_loads():
    inventory = load_inventory(EXAMPLE)
    assert isinstance(inventory, InventorySource)
    assert [n.name for n in inventory.nodes()] == ["gateway-1", "worker-1"]
    gateway = inventory.node("gateway-1")
    assert gateway is not None
    eth1 = gateway.interface("eth1")
    assert eth1 is not None
    assert eth1.first_address(4) == ipaddress.ip_address("203.0.113.10")
    assert eth1.first_address(6) == ipaddress.ip_address("2001:db8:203::10")
    assert gateway.default_interface == eth1
    assert gateway.interface_with(ipaddress.ip_address("203.0.113.12")) == eth1
    assert gateway.interface_with(ipaddress.ip_address("203.0.113.99")) is None
    keys = [e.key for e in inventory.endpoints()]
    assert keys == sorted(keys)
    assert "shop/client-1" in keys


def test_endpoint_identity_labels_carry_the_namespace(tmp_path):
    path = inventory_file(tmp_path, {
        "namespaces": [{"name": "shop", "labels": {"team": "web"}}],
        "endpoints": [{"name": "c", "namespace": "shop", "labels": {"app": "client"},
                       "namespaceLabels": {"env": "prod"}, "ips": ["192.0.2.10"]}],
    })
    (endpoint,) = load_inventory(path).endpoints()
    assert endpoint.identity_labels == {
        "app": "client",
        POD_NAMESPACE_LABEL: "shop",
        NAMESPACE_LABELS_PREFIX + "kubernetes.io/metadata.name": "shop",
        NAMESPACE_LABELS_PREFIX + "team": "web",
        NAMESPACE_LABELS_PREFIX + "env": "prod",
    }
    assert endpoint.stable_id == "shop/c"


def test_uid_is_the_stable_id_when_given(tmp_path):
    path = inventory_file(tmp_path, {
        "endpoints": [{"name": "c", "ips": ["192.0.2.10"], "uid": "0b5c-11"}],
    })
    (endpoint,) = load_inventory(path).endpoints()
    assert (endpoint.namespace, endpoint.stable_id) == ("default", "0b5c-11")


@pytest.mark.parametrize(("body", "message"), [
    ({"nodes": [{"internalIP": "192.0.2.1"}]}, "nodes[0].name: required"),
    ({"nodes": [{"name": "gw"}]}, "nodes[0].internalIP: required: the node's InternalIP"),
    ({"nodes": [node(), node()]}, "nodes[1].name: duplicate node 'gw-1' (also nodes[0])"),
    ({"nodes": [node(internalIP="192.0.2.300")]},
     "nodes[0].internalIP: invalid IP address '192.0.2.300'"),
    ({"nodes": [node(interfaces=[{"name": "eth0", "addresses": ["192.0.2.1"]}])]},
     "nodes[0].interfaces[0].addresses[0]: invalid address '192.0.2.1': give it with its prefix"),
    ({"nodes": [node(interfaces=[{"name": "eth0"}, {"name": "eth0"}])]},
     "nodes[0].interfaces[1].name: duplicate interface 'eth0'"),
    ({"nodes": [node(defaultRouteInterface="eth9", interfaces=[{"name": "eth0"}])]},
     "nodes[0].defaultRouteInterface: no interface named 'eth9' on node 'gw-1'"),
    ({"nodes": [node(labels={"egress": True})]},
     "nodes[0].labels.egress: must be a string, not a boolean (true) (quote it in YAML)"),
    ({"nodes": [node(lables={})]}, "nodes[0].lables: unknown field"),
    ({"endpoints": [{"name": "c"}]}, "endpoints[0].ips: required: at least one IP"),
    ({"endpoints": [{"name": "c", "ips": ["192.0.2.10/24"]}]},
     "endpoints[0].ips[0]: invalid IP address '192.0.2.10/24' (an endpoint IP has no /prefix)"),
    ({"endpoints": [{"name": "c", "ips": ["192.0.2.10"]}, {"name": "d", "ips": ["192.0.2.10"]}]},
     "endpoints[1].ips[0]: 192.0.2.10 is already the IP of endpoint 'default/c'"),
    ({"endpoints": [{"name": "c", "ips": ["192.0.2.10"]}, {"name": "c", "ips": ["192.0.2.11"]}]},
     "endpoints[1].name: duplicate endpoint 'default/c'"),
    ({"endpoints": [{"name": "c", "ips": ["192.0.2.10"], "node": "nowhere"}]},
     "endpoints[0].node: no node named 'nowhere' in nodes[]"),
    ({"endpoints": [{"name": "c", "namespace": "Shop", "ips": ["192.0.2.10"]}]},
     "endpoints[0].namespace: invalid namespace 'Shop'"),
    ({"namespaces": [{"name": "shop", "labels": {"team": "web"}}],
      "endpoints": [{"name": "c", "namespace": "shop", "namespaceLabels": {"team": "db"},
                     "ips": ["192.0.2.10"]}]},
     "endpoints[0].namespaceLabels.team: namespace 'shop' has team='web' in namespaces[]"),
    ({"pods": []}, "pods: unknown field"),
])
def test_invalid_inventories_name_file_and_field(tmp_path, body, message):
    path = inventory_file(tmp_path, body)
    with pytest.raises(InputError) as caught:
        load_inventory(path)
    assert str(caught.value).startswith(f"{path}: {message}"), str(caught.value)


def test_inventory_must_be_one_document(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text("nodes: []\n---\nnodes: []\n")
    with pytest.raises(InputError, match="expected one YAML document"):
        load_inventory(path)
    path.write_text("")
    with pytest.raises(InputError, match="the file is empty"):
        load_inventory(path)


def test_inventory_class_rejects_duplicate_node_names():
    from egressgw.policy import Node  # noqa: PLC0415

    a = Node("a", ipaddress.ip_address("192.0.2.1"))
    with pytest.raises(ValueError, match="unique"):
        Inventory([a, a])


def test_missing_or_directory_inventory_is_one_clear_line(tmp_path):
    with pytest.raises(InputError) as caught:
        load_inventory(tmp_path / "absent.yaml")
    assert str(caught.value) == f"{tmp_path / 'absent.yaml'}: no such file or directory"
    with pytest.raises(InputError) as caught:
        load_inventory(tmp_path)
    assert str(caught.value) == f"{tmp_path}: is a directory, expected a YAML file"
