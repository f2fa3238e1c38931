"""The inventory from Kubernetes objects: ``kubectl get nodes,pods -o yaml`` output as is.

Accepted objects, alone, in several YAML documents, or as the ``items`` of a ``kind: List``
(what ``kubectl get ... -o yaml`` prints):

- ``Node`` (v1): name, labels, and the gateway IP as Cilium's ``GetK8sNodeIP``
  (pkg/node/types/node.go) picks it: the first ``InternalIP`` of ``status.addresses``,
  else the last ``ExternalIP``.
- ``Pod`` (v1): name, namespace, labels, UID, ``spec.nodeName``, and ``status.podIPs``
  (else ``status.podIP``). Host-network pods have no Cilium endpoint and are skipped, as
  are finished pods (phase Succeeded or Failed) and pods without an IP yet.
- ``Namespace`` (v1), optional: the namespace labels that namespaceSelectors match
  (without it a namespace has only ``kubernetes.io/metadata.name``).
- ``CiliumEndpoint`` (cilium.io/v2), optional: when present for a pod it is what Cilium's
  egress gateway reads (pkg/egressgateway/endpoint.go ``getEndpointMetadata``): its UID
  (which pins the pod among several gateways: the pod's own UID differs), its addresses
  (``status.networking.addressing``) and its identity labels (``status.identity.labels``,
  ``k8s:`` source).

Kubernetes does not know a node's network interfaces, which ``interface`` gateways and
the default-route egress IP need. A document in egressgw's inventory format may add them
(``nodes: [{name, interfaces, defaultRouteInterface}]``), in the same file or another
``--inventory``; a node without them has *unknown* interfaces (see Node.interfaces_known).
Unknown object kinds (Services, Deployments...) are skipped, so ``kubectl get all`` works.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from egressgw.errors import InputError
from egressgw.net import IPAddress, parse_ip
from egressgw.policy.inventory import (
    Endpoint,
    Interface,
    Inventory,
    Node,
    parse_interfaces,
    parse_inventory,
)
from egressgw.policy.labels import parse_labels
from egressgw.policy.model import NAMESPACE_LABELS_PREFIX, POD_NAMESPACE_LABEL
from egressgw.policy.yamlfiles import Where, as_list, as_mapping, as_string, load_documents

STDIN = "-"
# A pod in these phases has no endpoint left (Cilium removes it).
_FINISHED = ("Succeeded", "Failed")


@dataclass
class _Objects:
    nodes: dict[str, Node] = field(default_factory=dict)
    pods: dict[tuple[str, str], Endpoint] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    endpoints: dict[tuple[str, str], tuple[Endpoint, IPAddress | None]] = field(
        default_factory=dict)
    overlays: list[tuple[Where, Mapping[str, Any]]] = field(default_factory=list)


def is_kubernetes_object(body: Any) -> bool:
    """A Kubernetes object or List (it has a kind), not an egressgw inventory document."""
    return isinstance(body, Mapping) and "kind" in body and "apiVersion" in body


def load_inventories(paths: Sequence[Path]) -> Inventory:
    """The inventory from one or more files (``-`` is stdin): an egressgw inventory file,
    or Kubernetes objects with optional egressgw interface documents."""
    documents = [doc for path in paths for doc in load_documents(_resolve(path))]
    if not any(is_kubernetes_object(body) for _, body in documents):
        if len(paths) == 1 and len(documents) == 1:
            where, body = documents[0]
            return parse_inventory(body, Where(where.source))
        if not documents:
            raise InputError("no inventory documents", source=", ".join(map(str, paths)))
        raise InputError("expected one inventory document, or Kubernetes objects",
                         source=", ".join(map(str, paths)))
    return inventory_from_documents(documents)


def _resolve(path: Path) -> Path:
    return Path("/dev/stdin") if str(path) == STDIN else path


def inventory_from_documents(documents: Iterable[tuple[Where, Any]]) -> Inventory:
    objects = _Objects()
    for where, body in documents:
        if is_kubernetes_object(body):
            _add_object(objects, body, where)
        else:
            objects.overlays.append((where, as_mapping(body, where)))
    nodes = _apply_overlays(objects)
    by_ip = {node.internal_ip: node.name for node in nodes.values()}
    endpoints: dict[tuple[str, str], Endpoint] = {}
    for key, pod in objects.pods.items():
        endpoints[key] = replace(pod, namespace_labels=objects.namespaces.get(pod.namespace, {}))
    for key, (cep, node_ip) in objects.endpoints.items():
        pod_node = endpoints[key].node if key in endpoints else None
        node = pod_node or (by_ip.get(node_ip) if node_ip is not None else None)
        endpoints[key] = replace(cep, node=node)
    return Inventory(list(nodes.values()), list(endpoints.values()))


def _add_object(objects: _Objects, body: Mapping[str, Any], where: Where) -> None:
    kind = body.get("kind")
    if kind == "List" or (isinstance(kind, str) and kind.endswith("List")):
        items_at = where.key("items")
        for index, item in enumerate(as_list(body.get("items") or [], items_at)):
            at = items_at.item(index)
            if is_kubernetes_object(item):
                _add_object(objects, as_mapping(item, at), at)
        return
    if kind == "Node":
        node = _node(body, where)
        objects.nodes[node.name] = node
    elif kind == "Pod":
        pod = _pod(body, where)
        if pod is not None:
            objects.pods[(pod.namespace, pod.name)] = pod
    elif kind == "Namespace":
        meta = _metadata(body, where)
        name = _required_string(meta, "name", where.key("metadata"))
        objects.namespaces[name] = parse_labels(meta.get("labels") or {},
                                                where.key("metadata").key("labels"))
    elif kind == "CiliumEndpoint":
        found = _cilium_endpoint(body, where)
        if found is not None:
            objects.endpoints[(found[0].namespace, found[0].name)] = found


def _metadata(body: Mapping[str, Any], where: Where) -> Mapping[str, Any]:
    return as_mapping(body.get("metadata") or {}, where.key("metadata"))


def _required_string(body: Mapping[str, Any], key: str, where: Where) -> str:
    if body.get(key) in (None, ""):
        raise where.key(key).error("required")
    return as_string(body[key], where.key(key))


def _ip(value: Any, where: Where) -> IPAddress:
    # net.parse_ip: the one address parser of every reader (no zones, bounded length).
    try:
        return parse_ip(as_string(value, where))
    except ValueError as exc:
        raise where.error(f"invalid IP address {exc}") from None


def _node(body: Mapping[str, Any], where: Where) -> Node:
    meta = _metadata(body, where)
    name = _required_string(meta, "name", where.key("metadata"))
    labels = parse_labels(meta.get("labels") or {}, where.key("metadata").key("labels"))
    status = as_mapping(body.get("status") or {}, where.key("status"))
    addresses_at = where.key("status").key("addresses")
    internal: IPAddress | None = None
    external: IPAddress | None = None
    for index, item in enumerate(as_list(status.get("addresses") or [], addresses_at)):
        at = addresses_at.item(index)
        address = as_mapping(item, at)
        if address.get("type") == "InternalIP" and internal is None:
            internal = _ip(address.get("address"), at.key("address"))
        elif address.get("type") == "ExternalIP":
            external = _ip(address.get("address"), at.key("address"))
    gateway_ip = internal or external
    if gateway_ip is None:
        raise addresses_at.error(f"node {name!r} has no InternalIP or ExternalIP address")
    return Node(name, gateway_ip, labels, (), None, interfaces_known=False)


def _pod(body: Mapping[str, Any], where: Where) -> Endpoint | None:
    meta = _metadata(body, where)
    meta_at = where.key("metadata")
    name = _required_string(meta, "name", meta_at)
    namespace = as_string(meta.get("namespace") or "default", meta_at.key("namespace"))
    spec = as_mapping(body.get("spec") or {}, where.key("spec"))
    status = as_mapping(body.get("status") or {}, where.key("status"))
    if spec.get("hostNetwork") is True or status.get("phase") in _FINISHED:
        return None
    ips_at = where.key("status").key("podIPs")
    ips = [
        _ip(as_mapping(item, ips_at.item(i)).get("ip"), ips_at.item(i).key("ip"))
        for i, item in enumerate(as_list(status.get("podIPs") or [], ips_at))
    ]
    if not ips and status.get("podIP"):
        ips = [_ip(status["podIP"], where.key("status").key("podIP"))]
    if not ips:
        return None
    node = spec.get("nodeName")
    return Endpoint(
        name, namespace, tuple(dict.fromkeys(ips)),
        parse_labels(meta.get("labels") or {}, meta_at.key("labels")), {},
        None if node is None else as_string(node, where.key("spec").key("nodeName")),
        as_string(meta.get("uid") or "", meta_at.key("uid")),
        uid_from_pod=True,
    )


def _cilium_endpoint(
    body: Mapping[str, Any], where: Where
) -> tuple[Endpoint, IPAddress | None] | None:
    meta = _metadata(body, where)
    meta_at = where.key("metadata")
    name = _required_string(meta, "name", meta_at)
    namespace = as_string(meta.get("namespace") or "default", meta_at.key("namespace"))
    status_at = where.key("status")
    status = as_mapping(body.get("status") or {}, status_at)
    networking = as_mapping(status.get("networking") or {}, status_at.key("networking"))
    addressing_at = status_at.key("networking").key("addressing")
    ips: list[IPAddress] = []
    for index, pair in enumerate(as_list(networking.get("addressing") or [], addressing_at)):
        at = addressing_at.item(index)
        for family in ("ipv4", "ipv6"):
            value = as_mapping(pair, at).get(family)
            if value:
                ips.append(_ip(value, at.key(family)))
    if not ips:
        return None  # Cilium skips an endpoint without addresses (getEndpointMetadata)
    identity = as_mapping(status.get("identity") or {}, status_at.key("identity"))
    labels_at = status_at.key("identity").key("labels")
    pod_labels: dict[str, str] = {}
    namespace_labels: dict[str, str] = {}
    for index, item in enumerate(as_list(identity.get("labels") or [], labels_at)):
        text = as_string(item, labels_at.item(index))
        source, _, pair = text.partition(":")
        key, _, value = pair.partition("=")
        if source != "k8s" or key == POD_NAMESPACE_LABEL:
            continue  # namespace added back from metadata; non-k8s sources unused
        if key.startswith(NAMESPACE_LABELS_PREFIX):
            namespace_labels[key.removeprefix(NAMESPACE_LABELS_PREFIX)] = value
        else:
            pod_labels[key] = value
    node_ip = networking.get("node")
    return (
        Endpoint(
            name, namespace, tuple(dict.fromkeys(ips)),
            parse_labels(pod_labels, labels_at), parse_labels(namespace_labels, labels_at),
            None, as_string(meta.get("uid") or "", meta_at.key("uid")),
        ),
        None if not node_ip else _ip(node_ip, status_at.key("networking").key("node")),
    )


def _apply_overlays(objects: _Objects) -> dict[str, Node]:
    """Add the interfaces that egressgw-format documents give for Kubernetes nodes."""
    nodes = dict(objects.nodes)
    for where, body in objects.overlays:
        unknown = [k for k in body if k != "nodes"]
        if unknown:
            raise where.key(unknown[0]).error(
                "next to Kubernetes objects an egressgw document may only give nodes' "
                "interfaces (nodes: [{name, interfaces, defaultRouteInterface}])"
            )
        nodes_at = where.key("nodes")
        for index, item in enumerate(as_list(body.get("nodes") or [], nodes_at)):
            at = nodes_at.item(index)
            entry = as_mapping(item, at)
            for key in entry:
                if key not in ("name", "interfaces", "defaultRouteInterface"):
                    raise at.key(str(key)).error(
                        "unknown field (expected one of: name, interfaces, "
                        "defaultRouteInterface; the rest comes from the Node object)"
                    )
            name = _required_string(entry, "name", at)
            if name not in nodes:
                raise at.key("name").error(f"no Node {name!r} among the Kubernetes objects")
            interfaces: tuple[Interface, ...] = parse_interfaces(
                entry.get("interfaces"), at.key("interfaces"))
            default = entry.get("defaultRouteInterface")
            if default is not None:
                default = as_string(default, at.key("defaultRouteInterface"))
                if all(i.name != default for i in interfaces):
                    raise at.key("defaultRouteInterface").error(
                        f"no interface named {default!r} on node {name!r}")
            nodes[name] = replace(nodes[name], interfaces=interfaces,
                                  default_route_interface=default, interfaces_known=True)
    return nodes



def with_node_interfaces(
    inventory: Inventory,
    node: str,
    interfaces: Sequence[tuple[str, Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface]]],
    default_route_interface: str | None,
) -> Inventory:
    """``inventory`` with ``node``'s interfaces filled in when they are unknown (a node read
    from Kubernetes without an interfaces document); unchanged otherwise."""
    found = inventory.node(node)
    if found is None or found.interfaces_known:
        return inventory
    filled = replace(
        found,
        interfaces=tuple(Interface(name, tuple(addresses)) for name, addresses in interfaces),
        default_route_interface=default_route_interface,
        interfaces_known=True,
    )
    nodes = [filled if n.name == node else n for n in inventory.nodes()]
    return Inventory(nodes, inventory.endpoints())
