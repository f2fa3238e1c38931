"""CiliumEgressGatewayPolicy validated against the CRD schema of a Cilium version.

The schema is the CRD's ``openAPIV3Schema`` (pkg/k8s/apis/cilium.io/client/crds/v2/
ciliumegressgatewaypolicies.yaml at the release commits named in policy/cilium.py),
restated structurally here: the same properties, types, required fields, enums, lengths,
formats and patterns, without the descriptions. ``scripts/check-crd-schema.py`` compares
it with the published CRD file of a Cilium checkout, property by property and pattern by
pattern on a corpus of spellings; docs/policies.md records its last run.

Two additions make it behave like ``kubectl apply`` (strict field validation, the kubectl
default since 1.27) rather than like a bare schema: unknown fields are errors
(``additionalProperties: false`` on every object the CRD describes; ``metadata`` keeps any
field), and the formats are checked as the API server checks them:

- ``ipv4`` (kube-openapi strfmt ``isIPv4``): Go's ParseIPSloppy accepts it (leading zeros
  allowed) and it contains a dot;
- the CIDR pattern, per version: v1.16 accepts IPv4 only; v1.18 also IPv6 and a
  ``%zone`` suffix. :func:`crd_cidr_syntax` states that language in its own terms. The
  published v1.18 pattern has quirks (a literal ``s`` where ``\\s`` was meant, ``d``
  where ``\\d`` was meant) that let through spellings such as ``s2001:db8::/64`` or a
  ``d.d.d.d`` tail; Cilium's parser (netip.ParsePrefix) rejects those, so the outcome
  of loading a policy is the same. The check script lists every such difference.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

import jsonschema

from egressgw.policy.cilium import CiliumVersion
from egressgw.policy.yamlfiles import Where

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
# The Kubernetes label value syntax (apimachinery validation.LabelValueRegex).
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"

_OCTET = r"[0-9]{1,3}"
_IPV4_PREFIX_LEN = r"(?:[0-9]|[12][0-9]|3[0-2])"
_IPV6_PREFIX_LEN = r"(?:[0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])"
_IPV4_CIDR = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}/{_IPV4_PREFIX_LEN}")
_IPV6_CIDR = re.compile(rf"(?P<addr>[0-9A-Fa-f:]+)(?:%.+)?/{_IPV6_PREFIX_LEN}")


def crd_cidr_syntax(text: str, version: CiliumVersion) -> bool:
    """Whether the CRD's CIDR pattern of ``version`` accepts ``text``.

    IPv4 (both versions): four dot-separated groups of 1-3 digits, each at most 255
    (leading zeros allowed by the pattern), and a prefix length 0-32 without leading
    zeros. IPv6 (v1.18): hexadecimal groups as RFC 4291 writes them (``::`` at most once,
    no dotted-quad tail), an optional ``%zone``, and a prefix length 0-128 without leading
    zeros.
    """
    match = _IPV4_CIDR.fullmatch(text)
    if match is not None:
        return all(int(octet) <= 255 for octet in text.split("/", maxsplit=1)[0].split("."))
    if not version.has_ipv6:
        return False
    match = _IPV6_CIDR.fullmatch(text)
    return match is not None and _hex_ipv6(match["addr"])


def _hex_ipv6(text: str) -> bool:
    """An IPv6 address of 1-4 digit hex groups only (no dotted quad, no zone)."""
    if text.count("::") > 1 or ":::" in text:
        return False
    groups = [g for g in text.replace("::", ":").split(":") if g]
    if not all(1 <= len(g) <= 4 for g in groups):
        return False
    if text.startswith(":") and not text.startswith("::"):
        return False
    if text.endswith(":") and not text.endswith("::"):
        return False
    return len(groups) <= 7 if "::" in text else len(groups) == 8


def kube_ipv4_format(text: str) -> bool:
    """kube-openapi's ``ipv4`` format: ParseIPSloppy succeeds and the text has a dot."""
    if "." not in text or "%" in text:
        return False
    parts = text.split(".")
    if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 for p in parts):
        return all(int(p) <= 255 for p in parts)
    try:
        ipaddress.IPv6Address(text)  # an IPv6 address with a dotted-quad tail
    except ValueError:
        return False
    return True


def _object(properties: Mapping[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": dict(properties),
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


def _label_selector() -> dict[str, Any]:
    requirement = _object(
        {
            "key": {"type": "string"},
            "operator": {"type": "string", "enum": list(OPERATORS)},
            "values": {"type": "array", "items": {"type": "string"}},
        },
        required=("key", "operator"),
    )
    return _object({
        "matchExpressions": {"type": "array", "items": requirement},
        "matchLabels": {
            "type": "object",
            "additionalProperties": {
                "type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN,
            },
        },
    })


def _gateway() -> dict[str, Any]:
    return _object(
        {
            "egressIP": {"type": "string", "format": "ipv4"},
            "interface": {"type": "string"},
            "nodeSelector": _label_selector(),
        },
        required=("nodeSelector",),
    )


@functools.cache
def crd_schema(version: CiliumVersion) -> dict[str, Any]:
    """The openAPIV3Schema of the CRD at ``version``, with kubectl's strictness added."""
    cidrs = {"type": "array", "items": {"type": "string", "format": "cidr"}}
    selector_fields: dict[str, Any] = {
        "namespaceSelector": _label_selector(),
        "podSelector": _label_selector(),
    }
    spec_fields: dict[str, Any] = {
        "destinationCIDRs": cidrs,
        "egressGateway": _gateway(),
        "excludedCIDRs": cidrs,
        "selectors": {"type": "array", "items": selector_fields},
    }
    if version.has_selector_node_selector:  # v1.17 on: pods selected by their node
        selector_fields["nodeSelector"] = _label_selector()
    if version.has_ipv6:  # v1.18: several gateways (no maxItems)
        spec_fields["egressGateways"] = {"type": "array", "items": _gateway(), "default": []}
    spec_fields["selectors"]["items"] = _object(selector_fields)
    return {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # egressgw reads kubectl get output too: status is accepted (and ignored).
            "metadata": {"type": "object"},
            "spec": _object(spec_fields, required=("destinationCIDRs", "egressGateway",
                                                   "selectors")),
            "status": {"type": "object"},
        },
        "required": ["metadata"],
        "additionalProperties": False,
    }


@functools.cache
def _validator(version: CiliumVersion) -> jsonschema.protocols.Validator:
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("ipv4")(_ipv4_format)
    checker.checks("cidr")(functools.partial(_cidr_format, version=version))
    cls = jsonschema.validators.validator_for({}, default=jsonschema.Draft7Validator)
    return cls(crd_schema(version), format_checker=checker)


def _ipv4_format(text: object) -> bool:
    return not isinstance(text, str) or kube_ipv4_format(text)


def _cidr_format(text: object, *, version: CiliumVersion) -> bool:
    return not isinstance(text, str) or crd_cidr_syntax(text, version)


def validate_crd(body: Mapping[str, Any], where: Where, version: CiliumVersion) -> None:
    """Raise an InputError naming the field, as ``kubectl apply`` would reject ``body``."""
    errors = sorted(
        _validator(version).iter_errors(body),
        key=lambda e: (list(map(str, e.absolute_path)), e.validator != "additionalProperties"),
    )
    if errors:
        raise _as_input_error(errors[0], where, version)


def _as_input_error(
    error: jsonschema.ValidationError, where: Where, version: CiliumVersion
) -> Exception:
    at = where
    for part in error.absolute_path:
        at = at.item(part) if isinstance(part, int) else at.key(str(part))
    instance = error.instance
    schema: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    against = f"the v{version.value} CRD"
    kind = error.validator
    if kind == "additionalProperties" and isinstance(instance, Mapping):
        known = list(schema.get("properties", {}))
        extra = next(k for k in instance if k not in known)
        hint = ""
        if extra == "egressGateways" and not version.has_ipv6:
            hint = " (added in Cilium v1.18: choose --cilium-version 1.18)"
        elif extra == "nodeSelector" and not version.has_selector_node_selector:
            hint = " (added in Cilium v1.17: choose --cilium-version 1.17 or later)"
        return at.key(str(extra)).error(
            f"unknown field in {against}{hint} (expected one of: {', '.join(known)})"
        )
    if kind == "required" and isinstance(instance, Mapping):
        missing = next(k for k in schema["required"] if k not in instance)
        hint = ""
        if missing == "egressGateway" and instance.get("egressGateways"):
            hint = " (the CRD requires it even when egressGateways has entries)"
        return at.key(missing).error(f"required by {against}{hint}")
    if kind == "format" and schema.get("format") == "cidr":
        family = "an IPv4 or IPv6" if version.has_ipv6 else "an IPv4"
        return at.error(f"invalid CIDR {instance!r}: {against} accepts {family} CIDR "
                        "written without spaces, such as 198.51.100.0/24")
    if kind == "format":
        return at.error(f"invalid IPv4 address {instance!r} ({against} says format: ipv4)")
    if kind == "enum":
        return at.error(f"{instance!r} is not one of {', '.join(OPERATORS)}")
    if kind == "type":
        return at.error(f"must be {_article(error.validator_value)}, not {_json_type(instance)}")
    if kind in ("maxLength", "pattern"):
        return at.error(f"invalid label value {instance!r}: at most 63 characters, "
                        "alphanumerics, '-', '_' or '.', starting and ending alphanumeric")
    return at.error(f"rejected by {against}: {error.message}")


def _article(kind: object) -> str:
    text = str(kind)
    return f"an {text}" if text[:1] in "aeiou" else f"a {text}"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
