"""The inventory: nodes (labels, interfaces, addresses) and endpoints (pods and their IPs).

There is no Kubernetes API here: the inventory is read from a YAML file. Compile only
needs :class:`InventorySource`, so a Kubernetes watch can replace the file later.

File format::

    nodes:
      - name: gw-1
        internalIP: 192.0.2.254          # the node's InternalIP: the gateway IP of rules
        labels: {egress-gateway: "true"}
        defaultRouteInterface: eth0     # optional: the interface with the default route
        interfaces:
          - name: eth1
            addresses: [203.0.113.10/24, 2001:db8:203::10/64]   # with prefix, in order
    namespaces:                          # optional: namespace labels, shared by endpoints
      - name: shop
        labels: {team: web}
    endpoints:
      - name: client-1
        namespace: shop
        labels: {app: client}
        namespaceLabels: {env: prod}     # optional, merged with namespaces[].labels
        ips: [192.0.2.10, 2001:db8:1::10]
        node: worker-1                   # optional: where the pod runs
        uid: 1b4e28ba-...                # optional: defaults to namespace/name
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from egressgw.errors import excerpt
from egressgw.net import IPAddress, IPInterface, parse_ip, parse_ip_interface
from egressgw.policy.labels import is_dns_subdomain, parse_labels
from egressgw.policy.model import NAMESPACE_LABELS_PREFIX, POD_NAMESPACE_LABEL
from egressgw.policy.yamlfiles import (
    Where,
    as_list,
    as_mapping,
    as_string,
    check_keys,
    load_single_document,
)

# Kubernetes labels every namespace with its own name (since 1.21).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True, slots=True)
class Interface:
    """A network interface of a node and its addresses, in the order the kernel lists them."""

    name: str
    addresses: tuple[IPInterface, ...] = ()

    def first_address(self, version: int) -> IPAddress | None:
        for address in self.addresses:
            if address.version == version:
                return address.ip
        return None

    def holds(self, ip: IPAddress) -> bool:
        return any(address.ip == ip for address in self.addresses)


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    internal_ip: IPAddress
    labels: Mapping[str, str] = field(default_factory=dict)
    interfaces: tuple[Interface, ...] = ()
    default_route_interface: str | None = None
    # False for a node read from Kubernetes without its interfaces: an egressIP is then
    # taken as given, and an interface or default-route egress IP cannot be derived.
    interfaces_known: bool = True

    def interface(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if i.name == name), None)

    def interface_with(self, ip: IPAddress) -> Interface | None:
        return next((i for i in self.interfaces if i.holds(ip)), None)

    @property
    def default_interface(self) -> Interface | None:
        if self.default_route_interface is None:
            return None
        return self.interface(self.default_route_interface)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A pod: its labels, its namespace's labels, its IPs, and optionally its node."""

    name: str
    namespace: str
    ips: tuple[IPAddress, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    node: str | None = None
    uid: str = ""
    # True when ``uid`` is a Pod's (Kubernetes input without CiliumEndpoints): Cilium pins
    # an endpoint among several gateways by its CiliumEndpoint's UID, which differs.
    uid_from_pod: bool = False

    @property
    def key(self) -> str:
        """``namespace/name``: unique in an inventory."""
        return f"{self.namespace}/{self.name}"

    @property
    def stable_id(self) -> str:
        """What pins the endpoint to one of several gateways: its UID, else namespace/name."""
        return self.uid or self.key

    @property
    def identity_labels(self) -> dict[str, str]:
        """The labels Cilium's selectors see: pod labels plus the namespace as labels.

        Cilium adds ``io.kubernetes.pod.namespace`` and each namespace label as
        ``io.cilium.k8s.namespace.labels.<key>``; Kubernetes labels each namespace with
        ``kubernetes.io/metadata.name``.
        """
        labels = dict(self.labels)
        labels[POD_NAMESPACE_LABEL] = self.namespace
        namespace_labels = {NAMESPACE_NAME_LABEL: self.namespace, **self.namespace_labels}
        for key, value in namespace_labels.items():
            labels[NAMESPACE_LABELS_PREFIX + key] = value
        return labels


@runtime_checkable
class InventorySource(Protocol):
    """Where nodes and endpoints come from: a file today, a Kubernetes watch later."""

    def nodes(self) -> Sequence[Node]: ...

    def endpoints(self) -> Sequence[Endpoint]: ...


class Inventory:
    """A fixed set of nodes and endpoints, kept sorted by name for deterministic use."""

    def __init__(self, nodes: Sequence[Node] = (), endpoints: Sequence[Endpoint] = ()) -> None:
        self._nodes = tuple(sorted(nodes, key=lambda n: n.name))
        self._endpoints = tuple(sorted(endpoints, key=lambda e: (e.namespace, e.name)))
        self._by_name = {node.name: node for node in self._nodes}
        if len(self._by_name) != len(self._nodes):
            raise ValueError("node names must be unique")

    def nodes(self) -> Sequence[Node]:
        return self._nodes

    def endpoints(self) -> Sequence[Endpoint]:
        return self._endpoints

    def node(self, name: str) -> Node | None:
        return self._by_name.get(name)


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate an inventory file (errors name the file and the field)."""
    where, body = load_single_document(Path(path))
    return parse_inventory(body, where)


def parse_inventory(value: Any, where: Where) -> Inventory:
    body = as_mapping(value, where)
    check_keys(body, ("nodes", "namespaces", "endpoints"), where)
    nodes = _parse_nodes(body.get("nodes"), where.key("nodes"))
    namespaces = _parse_namespaces(body.get("namespaces"), where.key("namespaces"))
    endpoints = _parse_endpoints(
        body.get("endpoints"), where.key("endpoints"), namespaces, {n.name for n in nodes}
    )
    return Inventory(nodes, endpoints)


def _items(value: Any, where: Where) -> list[Any]:
    return [] if value is None else as_list(value, where)


def _name(body: Mapping[str, Any], where: Where) -> str:
    at = where.key("name")
    if body.get("name") in (None, ""):
        raise at.error("required")
    name = as_string(body["name"], at)
    if not is_dns_subdomain(name):
        raise at.error(f"invalid name {excerpt(name)}: lowercase letters, digits, '-' and '.'")
    return name


def _parse_nodes(value: Any, where: Where) -> list[Node]:
    nodes: list[Node] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(_items(value, where)):
        at = where.item(index)
        body = as_mapping(item, at)
        check_keys(
            body, ("name", "internalIP", "labels", "interfaces", "defaultRouteInterface"), at
        )
        name = _name(body, at)
        if name in seen:
            raise at.key("name").error(f"duplicate node {name!r} (also nodes[{seen[name]}])")
        seen[name] = index
        if body.get("internalIP") is None:
            raise at.key("internalIP").error("required: the node's InternalIP")
        internal_ip = _ip(body["internalIP"], at.key("internalIP"))
        labels = parse_labels(body.get("labels") or {}, at.key("labels"))
        interfaces = parse_interfaces(body.get("interfaces"), at.key("interfaces"))
        default = body.get("defaultRouteInterface")
        if default is not None:
            default = as_string(default, at.key("defaultRouteInterface"))
            if all(i.name != default for i in interfaces):
                raise at.key("defaultRouteInterface").error(
                    f"no interface named {excerpt(default)} on node {name!r}"
                )
        nodes.append(Node(name, internal_ip, labels, interfaces, default))
    return nodes


def parse_interfaces(value: Any, where: Where) -> tuple[Interface, ...]:
    """A node's ``interfaces`` list (names unique, addresses with their prefix)."""
    interfaces: list[Interface] = []
    for index, item in enumerate(_items(value, where)):
        at = where.item(index)
        body = as_mapping(item, at)
        check_keys(body, ("name", "addresses"), at)
        if body.get("name") in (None, ""):
            raise at.key("name").error("required")
        name = as_string(body["name"], at.key("name"))
        if any(i.name == name for i in interfaces):
            raise at.key("name").error(f"duplicate interface {excerpt(name)}")
        addresses_at = at.key("addresses")
        addresses = tuple(
            _ip_interface(a, addresses_at.item(i))
            for i, a in enumerate(_items(body.get("addresses"), addresses_at))
        )
        interfaces.append(Interface(name, addresses))
    return tuple(interfaces)


def _parse_namespaces(value: Any, where: Where) -> dict[str, dict[str, str]]:
    namespaces: dict[str, dict[str, str]] = {}
    for index, item in enumerate(_items(value, where)):
        at = where.item(index)
        body = as_mapping(item, at)
        check_keys(body, ("name", "labels"), at)
        name = _name(body, at)
        if name in namespaces:
            raise at.key("name").error(f"duplicate namespace {name!r}")
        namespaces[name] = parse_labels(body.get("labels") or {}, at.key("labels"))
    return namespaces


def _parse_endpoints(
    value: Any, where: Where, namespaces: Mapping[str, Mapping[str, str]], node_names: set[str]
) -> list[Endpoint]:
    endpoints: list[Endpoint] = []
    keys: set[str] = set()
    owners: dict[IPAddress, str] = {}
    for index, item in enumerate(_items(value, where)):
        at = where.item(index)
        body = as_mapping(item, at)
        check_keys(
            body, ("name", "namespace", "labels", "namespaceLabels", "ips", "node", "uid"), at
        )
        name = _name(body, at)
        namespace_at = at.key("namespace")
        namespace = as_string(body.get("namespace") or "default", namespace_at)
        if not is_dns_subdomain(namespace):
            raise namespace_at.error(f"invalid namespace {excerpt(namespace)}")
        key = f"{namespace}/{name}"
        if key in keys:
            raise at.key("name").error(f"duplicate endpoint {key!r}")
        keys.add(key)
        labels = parse_labels(body.get("labels") or {}, at.key("labels"))
        own_ns_at = at.key("namespaceLabels")
        own_ns_labels = parse_labels(body.get("namespaceLabels") or {}, own_ns_at)
        shared = namespaces.get(namespace, {})
        for label, label_value in own_ns_labels.items():
            if shared.get(label, label_value) != label_value:
                raise own_ns_at.key(label).error(
                    f"namespace {namespace!r} has {label}={shared[label]!r} in namespaces[]"
                )
        ips_at = at.key("ips")
        ips = tuple(_ip(v, ips_at.item(i)) for i, v in enumerate(_items(body.get("ips"), ips_at)))
        if not ips:
            raise ips_at.error("required: at least one IP")
        for i, ip in enumerate(ips):
            owner = owners.setdefault(ip, key)
            if owner != key or ips.index(ip) != i:
                raise ips_at.item(i).error(f"{ip} is already the IP of endpoint {owner!r}")
        node = body.get("node")
        if node is not None:
            node = as_string(node, at.key("node"))
            if node not in node_names:
                raise at.key("node").error(f"no node named {excerpt(node)} in nodes[]")
        uid = as_string(body.get("uid") or "", at.key("uid"))
        endpoints.append(
            Endpoint(name, namespace, ips, labels, {**shared, **own_ns_labels}, node, uid)
        )
    return endpoints


def _ip(value: Any, where: Where) -> IPAddress:
    text = as_string(value, where).strip()
    try:
        return parse_ip(text)
    except ValueError as exc:
        if "/" in text and "%" not in text:
            raise where.error(
                f"invalid IP address {excerpt(text)} (an endpoint IP has no /prefix)"
            ) from None
        raise where.error(f"invalid IP address {exc}") from None


def _ip_interface(value: Any, where: Where) -> IPInterface:
    try:
        return parse_ip_interface(as_string(value, where).strip())
    except ValueError as exc:
        raise where.error(f"invalid address {exc}") from None


__all__ = [
    "Endpoint",
    "Interface",
    "Inventory",
    "InventorySource",
    "Node",
    "load_inventory",
    "parse_interfaces",
    "parse_inventory",
]
