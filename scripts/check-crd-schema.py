#!/usr/bin/env python3
"""Compare egressgw's CRD schema (src/egressgw/policy/crd.py) with Cilium's published one.

Usage: scripts/check-crd-schema.py VERSION CRD_YAML
  VERSION   1.16, 1.17 or 1.18
  CRD_YAML  pkg/k8s/apis/cilium.io/client/crds/v2/ciliumegressgatewaypolicies.yaml of a
            Cilium checkout at that release, e.g.
            git -C cilium show v1.16.2:pkg/k8s/.../ciliumegressgatewaypolicies.yaml > crd.yaml

Structure (properties, types, required, enums, lengths, defaults, label patterns) must be
equal, apart from egressgw's documented additions (additionalProperties: false, status).
The CIDR pattern is compared by behaviour: every spelling of a corpus is tried against the
published expression and against egressgw's format, and each disagreement is printed with
whether Cilium's parser (netip.ParsePrefix: no zone, no leading zeros, hex groups) would
reject the spelling anyway. Exit status 1 on a structural difference or on a disagreement
that changes whether a policy loads.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from egressgw.policy.cilium import CILIUM_VERSIONS, CiliumVersion
from egressgw.policy.crd import crd_cidr_syntax, crd_schema

IGNORED = {"description", "x-kubernetes-list-type", "x-kubernetes-map-type"}


def published_schema(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v2"]
    return dict(version["schema"]["openAPIV3Schema"])


def compare(ours: Any, theirs: Any, at: str, cidr_patterns: set[str]) -> list[str]:
    problems: list[str] = []
    if not isinstance(theirs, dict) or not isinstance(ours, dict):
        return [] if ours == theirs else [f"{at}: {ours!r} != {theirs!r}"]
    if theirs.get("pattern") and ours.get("format") == "cidr":
        cidr_patterns.add(theirs["pattern"])
        theirs = {k: v for k, v in theirs.items() if k != "pattern"}
        ours = {k: v for k, v in ours.items() if k != "format"}
    ours = {k: v for k, v in ours.items() if k != "additionalProperties" or v is not False}
    if at == "":
        ours = dict(ours, properties={k: v for k, v in ours["properties"].items()
                                      if k != "status"})
    for key in sorted((set(ours) | set(theirs)) - IGNORED):
        if key not in ours or key not in theirs:
            problems.append(f"{at}.{key}: only in {'ours' if key in ours else 'Cilium'}")
        elif key == "properties":
            for name in sorted(set(ours[key]) | set(theirs[key])):
                if name not in ours[key] or name not in theirs[key]:
                    side = "ours" if name in ours[key] else "Cilium"
                    problems.append(f"{at}.{name}: property only in {side}")
                else:
                    problems += compare(ours[key][name], theirs[key][name], f"{at}.{name}",
                                        cidr_patterns)
        elif key in ("items", "additionalProperties"):
            problems += compare(ours[key], theirs[key], f"{at}[{key}]", cidr_patterns)
        elif key == "required":
            if sorted(ours[key]) != sorted(theirs[key]):
                problems.append(f"{at}.required: {ours[key]} != {theirs[key]}")
        elif ours[key] != theirs[key]:
            problems.append(f"{at}.{key}: {ours[key]!r} != {theirs[key]!r}")
    return problems


def corpus() -> list[str]:
    v4 = ["198.51.100.0/24", "0.0.0.0/0", "255.255.255.255/32", "198.51.100.7/24",
          "198.051.100.0/24", "001.2.3.4/8", "256.1.1.1/8", "198.51.100.0/33",
          "198.51.100.0/024", "198.51.100.0/255.255.255.0", " 198.51.100.0/24",
          "198.51.100.0/24 ", "198.51.100.0", "198.51.100/24", "1.2.3.4/0", "1.2.3.4/05",
          "a.b.c.d/8", "198.51.100.0 /24"]
    v6 = ["2001:db8::/32", "::/0", "2001:db8:100::/64", "2001:db8::1/128",
          "2001:DB8::/32", "fe80::1%eth0/64", "2001:db8::%1/64", "::ffff:198.51.100.0/120",
          "::ffff:d.d.d.d/128", "s2001:db8::/64", "2001:db8::s/64", "2001:db8:::/64",
          "2001:db8::1::/64", "1:2:3:4:5:6:7:8/64", "1:2:3:4:5:6:7::/64", "1:2:3:4:5:6:7:8:9/64",
          "2001:db8::/129", "2001:db8::/064", " 2001:db8::/32", "2001:db8::/32 ",
          "12345::/16", ":1::/64", "1::/64", "::1/128", "1:2:3:4:5:6::8/64"]
    return v4 + v6


def netip_accepts(text: str) -> bool:
    """What Go's netip.ParsePrefix accepts (no zone, no leading zeros in IPv4 octets)."""
    if "%" in text or "/" not in text:
        return False
    address, _, bits = text.partition("/")
    if not bits.isdigit() or (len(bits) > 1 and bits[0] == "0"):
        return False
    try:
        ipaddress.ip_network(f"{address}/{int(bits)}", strict=False)
    except ValueError:
        return False
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in CILIUM_VERSIONS:
        print(__doc__, file=sys.stderr)
        return 2
    version = CiliumVersion(argv[1])
    cidr_patterns: set[str] = set()
    problems = compare(crd_schema(version), published_schema(Path(argv[2])), "",
                       cidr_patterns)
    for problem in problems:
        print(f"structure: {problem}")
    [pattern] = cidr_patterns
    expression = re.compile(pattern)
    changes_outcome = 0
    for text in corpus():
        theirs = expression.search(text) is not None
        ours = crd_cidr_syntax(text, version)
        if theirs != ours:
            loads = theirs and netip_accepts(text)
            changes_outcome += loads
            print(f"cidr {text!r}: Cilium's pattern {'accepts' if theirs else 'rejects'}, "
                  f"egressgw's format {'accepts' if ours else 'rejects'}; "
                  f"Cilium's parser then {'accepts' if loads else 'rejects'} it"
                  + (" (OUTCOME DIFFERS)" if loads else " (same outcome)"))
    print(f"v{version.value}: {len(problems)} structural differences, "
          f"{len(corpus())} CIDR spellings tried, {changes_outcome} change the outcome")
    return 1 if problems or changes_outcome else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
