"""Parse and validate CiliumEgressGatewayPolicy documents.

Input forms: one document, several documents in one file (``---``), a ``kind: List`` with
``items``, and a directory of *.yaml/*.yml files read in name order. The rules follow
Cilium's ParseCEGP (pkg/egressgateway/policy.go) and the CRD (cegp_types.go); where the
API server would reject a document (unknown fields, bad label selectors) so does this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from egressgw.errors import InputError, excerpt
from egressgw.net import IPAddress, IPNetwork
from egressgw.net import parse_cidr as parse_cidr_text
from egressgw.net import parse_ip as parse_ip_text
from egressgw.policy.cilium import DEFAULT_CILIUM_VERSION, CiliumVersion
from egressgw.policy.crd import validate_crd
from egressgw.policy.labels import LabelSelector, is_dns_subdomain, parse_label_selector
from egressgw.policy.model import EgressPolicy, EndpointSelector, GatewaySpec
from egressgw.policy.yamlfiles import (
    Where,
    as_list,
    as_mapping,
    as_string,
    check_keys,
    load_documents,
    yaml_files,
)

API_VERSION = "cilium.io/v2"
KIND = "CiliumEgressGatewayPolicy"

_SPEC_FIELDS = (
    "selectors",
    "destinationCIDRs",
    "excludedCIDRs",
    "egressGateway",
    "egressGateways",
)
_GATEWAY_FIELDS = ("nodeSelector", "interface", "egressIP")
_SELECTOR_FIELDS = ("podSelector", "namespaceSelector", "nodeSelector")
# metadata written by kubectl or Kubernetes that a policy file may carry and we ignore.
_METADATA_FIELDS = (
    "name",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "finalizers",
    "namespace",
)


def load_policies(
    path: str | Path, version: CiliumVersion = DEFAULT_CILIUM_VERSION
) -> list[EgressPolicy]:
    """All policies in a file or a directory (*.yaml, *.yml, in name order).

    Raises InputError naming file, document and field on the first problem, and on two
    policies with the same name (cluster-scoped names are unique).
    """
    policies: list[EgressPolicy] = []
    for file in yaml_files(Path(path)):
        policies.extend(parse_documents(load_documents(file), version))
    _check_unique_names(policies)
    return policies


def parse_documents(
    documents: Iterable[tuple[Where, Any]], version: CiliumVersion = DEFAULT_CILIUM_VERSION
) -> list[EgressPolicy]:
    """Policies from YAML documents (each a policy or a ``kind: List`` of policies)."""
    policies: list[EgressPolicy] = []
    for where, body in documents:
        mapping = as_mapping(body, where)
        if mapping.get("kind") == "List":
            check_keys(mapping, ("apiVersion", "kind", "metadata", "items"), where)
            items_at = where.key("items")
            items = mapping.get("items")
            for index, item in enumerate([] if items is None else as_list(items, items_at)):
                policies.append(parse_policy(item, items_at.item(index), version))
        else:
            policies.append(parse_policy(mapping, where, version))
    return policies


def parse_policy(
    value: Any, where: Where, version: CiliumVersion = DEFAULT_CILIUM_VERSION
) -> EgressPolicy:
    """One CiliumEgressGatewayPolicy object, valid for the CRD of Cilium ``version``.

    egressgw's own checks come first (their messages name Cilium's reasons), then the
    CRD's schema as ``kubectl apply`` applies it (policy/crd.py).
    """
    body = as_mapping(value, where)
    check_keys(body, ("apiVersion", "kind", "metadata", "spec", "status"), where)
    api_version = body.get("apiVersion")
    if api_version != API_VERSION:
        raise where.key("apiVersion").error(f"must be {API_VERSION}, not {excerpt(api_version)}")
    kind = body.get("kind")
    if kind != KIND:
        raise where.key("kind").error(f"must be {KIND}, not {excerpt(kind)}")
    name = _parse_metadata(body.get("metadata"), where.key("metadata"))
    spec_at = where.key("spec")
    if body.get("spec") is None:
        raise spec_at.error("required")
    spec = as_mapping(body["spec"], spec_at)
    check_keys(spec, _SPEC_FIELDS, spec_at)
    spellings: dict[IPNetwork, str] = {}
    policy = EgressPolicy(
        name=name,
        selectors=_parse_selectors(spec.get("selectors"), spec_at.key("selectors")),
        destination_cidrs=_parse_cidrs(
            spec.get("destinationCIDRs"), spec_at.key("destinationCIDRs"), spellings,
            required=True,
        ),
        excluded_cidrs=_parse_cidrs(
            spec.get("excludedCIDRs"), spec_at.key("excludedCIDRs"), spellings, required=False
        ),
        gateways=_parse_gateways(spec, spec_at),
        source=_describe(where),
        cidr_spellings={c: text for c, text in spellings.items() if text != str(c)},
    )
    validate_crd(body, where, version)
    return policy


def _describe(where: Where) -> str:
    parts = [where.source]
    if where.document is not None:
        parts.append(f"document {where.document}")
    if where.field:
        parts.append(where.field)
    return ": ".join(parts)


def _parse_metadata(value: Any, where: Where) -> str:
    if value is None:
        raise where.key("name").error("required: CiliumEgressGatewayPolicy must have a name")
    metadata = as_mapping(value, where)
    check_keys(metadata, _METADATA_FIELDS, where)
    if metadata.get("namespace") is not None:
        raise where.key("namespace").error(
            "CiliumEgressGatewayPolicy is cluster-scoped: select namespaces with "
            "spec.selectors[].namespaceSelector instead"
        )
    name_at = where.key("name")
    if metadata.get("name") in (None, ""):
        raise name_at.error("required: CiliumEgressGatewayPolicy must have a name")
    name = as_string(metadata["name"], name_at)
    if not is_dns_subdomain(name):
        raise name_at.error(
            f"invalid name {excerpt(name)}: lowercase letters, digits, '-' and '.', "
            "starting and ending alphanumeric, at most 253 characters"
        )
    return name


def _parse_selectors(value: Any, where: Where) -> tuple[EndpointSelector, ...]:
    if value is None:
        raise where.error("required: at least one selector")
    items = as_list(value, where)
    if not items:
        raise where.error("must not be empty: at least one selector")
    selectors: list[EndpointSelector] = []
    for index, item in enumerate(items):
        at = where.item(index)
        body = as_mapping(item, at)
        check_keys(body, _SELECTOR_FIELDS, at)
        pod = _optional_selector(body, "podSelector", at)
        namespace = _optional_selector(body, "namespaceSelector", at)
        node = _optional_selector(body, "nodeSelector", at)
        if pod is None and namespace is None:
            raise at.error(
                "needs a podSelector or a namespaceSelector (Cilium rejects a selector "
                "with neither)"
            )
        selectors.append(EndpointSelector(pod, namespace, node))
    return tuple(selectors)


def _optional_selector(body: Mapping[str, Any], key: str, where: Where) -> LabelSelector | None:
    if body.get(key) is None:
        return None
    return parse_label_selector(body[key], where.key(key))


def _parse_cidrs(
    value: Any, where: Where, spellings: dict[IPNetwork, str], *, required: bool
) -> tuple[IPNetwork, ...]:
    if value is None:
        if required:
            raise where.error("required: at least one CIDR")
        return ()
    items = as_list(value, where)
    if required and not items:
        raise where.error("must not be empty: at least one CIDR")
    # A dict keeps the first occurrence's order and drops repeats in O(1) each (a list
    # membership test made 20,000 CIDRs take 19 s).
    cidrs: dict[IPNetwork, None] = {}
    for index, item in enumerate(items):
        cidr = parse_cidr(item, where.item(index))
        # Cilium keys its map with the address as written (netip.ParsePrefix keeps host
        # bits, the kernel's LPM trie stores the key as given), so cilium-dbg shows it.
        address = parse_ip_text(item.partition("/")[0])
        spellings[cidr] = f"{address}/{cidr.prefixlen}"
        cidrs.setdefault(cidr, None)
    return tuple(cidrs)


def parse_cidr(value: Any, where: Where) -> IPNetwork:
    """A CIDR as Cilium's netip.ParsePrefix reads it: a prefix length is required, no zone,
    no leading zeros; host bits are masked (the datapath matches the prefix only).

    No spaces are stripped: the CRD's pattern refuses them, so ``kubectl apply`` would.
    The text goes through net.parse_cidr, the one CIDR parser of every reader.
    """
    text = as_string(value, where)
    if "/" not in text:
        raise where.error(f"invalid CIDR {excerpt(text)}: missing the /prefix length")
    if "%" in text:
        raise where.error(
            f"invalid CIDR {excerpt(text)}: an IPv6 zone index is not allowed in a prefix "
            "(Cilium's netip.ParsePrefix rejects it)"
        )
    try:
        return parse_cidr_text(text)
    except ValueError as exc:
        raise where.error(f"invalid CIDR {exc}") from None


def parse_ip(value: Any, where: Where) -> IPAddress:
    try:
        return parse_ip_text(as_string(value, where).strip())
    except ValueError as exc:
        raise where.error(f"invalid IP address {exc}") from None


def _parse_gateways(spec: Mapping[str, Any], where: Where) -> tuple[GatewaySpec, ...]:
    many = spec.get("egressGateways")
    if many is not None:
        many_at = where.key("egressGateways")
        # No upper bound: the CRD sets no maxItems on egressGateways.
        items = as_list(many, many_at)
        gateways = [_parse_gateway(item, many_at.item(i)) for i, item in enumerate(items)]
        if spec.get("egressGateway") is not None:
            # Still validated: a broken egressGateway would be rejected by the API server.
            _parse_gateway(spec["egressGateway"], where.key("egressGateway"))
        if gateways:
            return tuple(gateways)
    one_at = where.key("egressGateway")
    if spec.get("egressGateway") is None:
        raise one_at.error("required (or a non-empty egressGateways)")
    return (_parse_gateway(spec["egressGateway"], one_at),)


def _parse_gateway(value: Any, where: Where) -> GatewaySpec:
    body = as_mapping(value, where)
    check_keys(body, _GATEWAY_FIELDS, where)
    if body.get("nodeSelector") is None:
        raise where.key("nodeSelector").error("required")
    node_selector = parse_label_selector(body["nodeSelector"], where.key("nodeSelector"))
    interface = body.get("interface") or None
    egress_ip_text = body.get("egressIP") or None
    if interface is not None and egress_ip_text is not None:
        raise where.error("interface and egressIP are mutually exclusive")
    if interface is not None:
        interface = as_string(interface, where.key("interface"))
    egress_ip = None if egress_ip_text is None else parse_ip(egress_ip_text, where.key("egressIP"))
    if egress_ip is not None and egress_ip.is_unspecified:
        # Cilium treats 0.0.0.0 as "not set"; say so rather than silently ignoring it.
        raise where.key("egressIP").error(f"{egress_ip} is not a usable egress IP")
    return GatewaySpec(node_selector, interface, egress_ip, where.field)


def _check_unique_names(policies: list[EgressPolicy]) -> None:
    seen: dict[str, EgressPolicy] = {}
    for policy in policies:
        first = seen.setdefault(policy.name, policy)
        if first is not policy:
            raise InputError(
                f"duplicate policy name {excerpt(policy.name)} (first defined at {first.source})",
                source=policy.source,
            )
