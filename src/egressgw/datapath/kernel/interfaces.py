"""This host's interfaces, addresses and default-route interface, read with iproute2.

The agent runs on its gateway node: when the inventory comes from Kubernetes (which does
not know a node's interfaces), the agent fills its own node's from the kernel, so
``interface`` gateways and default-route egress IPs work without an interfaces document.
Addresses come in the order the kernel lists them (``ip -j addr``), which is the order
Cilium's "first address of the interface" follows (netlink's address dump).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass
from typing import Any

from egressgw.errors import DatapathError

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True, slots=True)
class HostInterfaces:
    """Interfaces (name, addresses with prefix) and the IPv4 default route's interface."""

    interfaces: tuple[tuple[str, tuple[IPInterface, ...]], ...]
    default_route_interface: str | None


def _ip_json(argv: list[str]) -> list[dict[str, Any]]:
    try:
        done = subprocess.run(["ip", "-j", *argv], capture_output=True, text=True, timeout=10,
                              check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DatapathError(f"cannot list this host's interfaces (ip -j {' '.join(argv)}): "
                            f"{exc}") from exc
    parsed = json.loads(done.stdout or "[]")
    return parsed if isinstance(parsed, list) else []


def host_interfaces() -> HostInterfaces:
    """This network namespace's interfaces with their global addresses, and the interface
    holding the IPv4 default route (as Cilium's NodeDeviceWithDefaultRoute looks for it)."""
    interfaces = []
    for link in _ip_json(["addr", "show"]):
        name = str(link.get("ifname", ""))
        addresses = tuple(
            ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
            for a in link.get("addr_info", [])
            if a.get("scope") == "global" and "local" in a
        )
        if name and name != "lo":
            interfaces.append((name, addresses))
    routes = _ip_json(["-4", "route", "show", "default"]) or _ip_json(
        ["-6", "route", "show", "default"])
    default = next((str(r["dev"]) for r in routes if "dev" in r), None)
    return HostInterfaces(tuple(interfaces), default)
