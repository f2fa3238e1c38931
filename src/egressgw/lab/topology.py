"""The lab's shape as data (pure): namespace names, interfaces, addresses, ports.

Three network namespaces per lab, named ``egw-<name>-<role>``:

    client (pods)            gateway node                        servers
    eth0 192.0.2.10..   <->  pods0 192.0.2.1          ext0 198.51.100.1   <->  eth0 198.51.100.10..
         2001:db8:1::10..    2001:db8:1::1                 2001:db8:100::1       2001:db8:100::10..
                                                      egress 203.0.113.10..
                                                             2001:db8:203::10..

Only documentation ranges are used, and traffic never leaves the three namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from egressgw.errors import InputError
from egressgw.net import IPAddress, IPNetwork, parse_cidr, parse_ip
from egressgw.rules import EgressRule, RuleKind

_T = TypeVar("_T")

PREFIX = "egw"
LAB_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")

POD_NET4 = ipaddress.ip_network("192.0.2.0/24")
POD_NET6 = ipaddress.ip_network("2001:db8:1::/64")
SERVER_NET4 = ipaddress.ip_network("198.51.100.0/24")
SERVER_NET6 = ipaddress.ip_network("2001:db8:100::/64")
EGRESS_NET4 = ipaddress.ip_network("203.0.113.0/24")
EGRESS_NET6 = ipaddress.ip_network("2001:db8:203::/64")
# .1 is the gateway's side of each link; hosts count up from .10 (IPv6: ::10, so the
# last digits read the same in both families).
FIRST_HOST = {4: 10, 6: 0x10}
MAX_HOSTS = 100


def check_lab_name(name: str) -> str:
    if not LAB_NAME.fullmatch(name):
        raise InputError(
            f"{name!r}: a lab name is 1-31 lowercase letters, digits or '-'", field="--name"
        )
    return name


def _hosts(network: IPNetwork, count: int) -> list[str]:
    first = FIRST_HOST[network.version]
    return [str(network.network_address + first + i) for i in range(count)]


@dataclass(frozen=True, slots=True)
class LabSpec:
    """How big a lab to build."""

    name: str
    pods: int = 4
    egress_ips: int = 2
    servers: int = 2
    tcp_ports: tuple[int, ...] = (80, 443, 8080)
    udp_ports: tuple[int, ...] = (53, 443)

    def __post_init__(self) -> None:
        check_lab_name(self.name)
        for what, count in (("pods", self.pods), ("egress-ips", self.egress_ips),
                            ("servers", self.servers)):
            if not 1 <= count <= MAX_HOSTS:
                raise InputError(f"{count}: must be 1..{MAX_HOSTS}", field=f"--{what}")
        for port in (*self.tcp_ports, *self.udp_ports):
            if not 1 <= port <= 65535:
                raise InputError(f"{port}: not a port", field="--port")


@dataclass(frozen=True, slots=True)
class Topology:
    """Every name and address of one lab; saved as the lab's state file."""

    name: str
    client_ns: str
    gateway_ns: str
    server_ns: str
    pods4: list[str]
    pods6: list[str]
    egress4: list[str]
    egress6: list[str]
    servers4: list[str]
    servers6: list[str]
    tcp_ports: list[int]
    udp_ports: list[int]
    server_pid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: LabSpec) -> Topology:
        base = f"{PREFIX}-{spec.name}"
        return cls(
            name=spec.name,
            client_ns=f"{base}-client",
            gateway_ns=f"{base}-gw",
            server_ns=f"{base}-server",
            pods4=_hosts(POD_NET4, spec.pods),
            pods6=_hosts(POD_NET6, spec.pods),
            egress4=_hosts(EGRESS_NET4, spec.egress_ips),
            egress6=_hosts(EGRESS_NET6, spec.egress_ips),
            servers4=_hosts(SERVER_NET4, spec.servers),
            servers6=_hosts(SERVER_NET6, spec.servers),
            tcp_ports=list(spec.tcp_ports),
            udp_ports=list(spec.udp_ports),
        )

    @property
    def namespaces(self) -> list[str]:
        return [self.client_ns, self.gateway_ns, self.server_ns]

    @property
    def gateway_node(self) -> str:
        """The node name rules use for this lab's gateway (its namespace)."""
        return self.gateway_ns

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str) -> Topology:
        try:
            data = json.loads(text)
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise InputError(f"not a lab state file: {exc}", source=source) from None

    def with_server(self, pid: int | None) -> Topology:
        data = asdict(self)
        data["server_pid"] = pid
        return Topology(**data)


def lab_rules(
    topology: Topology,
    egress_ips: Sequence[str],
    *,
    pods: Iterable[str] | None = None,
    destinations: Iterable[str] | None = None,
    excluded: Iterable[str] = (),
    no_gateway: bool = False,
) -> list[EgressRule]:
    """Egress rules for the lab's pods, spreading pods round robin over ``egress_ips``.

    Every pod is masqueraded towards ``destinations`` (default: both server networks)
    behind an egress IP of its family, except ``excluded`` CIDRs; ``no_gateway`` makes
    the rules drops instead (as when no gateway node matches).
    """
    pod_ips = [_parsed(parse_ip, p, "--from")
               for p in (pods or [*topology.pods4, *topology.pods6])]
    default_destinations = [str(SERVER_NET4), str(SERVER_NET6)]
    dests = [_parsed(parse_cidr, d, "--destination")
             for d in (destinations or default_destinations)]
    excl = [_parsed(parse_cidr, e, "--exclude") for e in excluded]
    egress = [_parsed(parse_ip, e, "--egress-ip") for e in egress_ips]
    rules: list[EgressRule] = []
    index = {4: 0, 6: 0}
    for pod in pod_ips:
        family_egress: list[IPAddress] = [e for e in egress if e.version == pod.version]
        if not family_egress and not no_gateway:
            continue
        chosen = None
        if family_egress:
            chosen = family_egress[index[pod.version] % len(family_egress)]
            index[pod.version] += 1
        for dest in (d for d in dests if d.version == pod.version):
            if no_gateway:
                rules.append(EgressRule(pod, dest, RuleKind.NO_GATEWAY, policy="lab"))
            else:
                rules.append(EgressRule(pod, dest, RuleKind.MASQUERADE, chosen,
                                        topology.gateway_node, policy="lab"))
        for cidr in (c for c in excl if c.version == pod.version):
            rules.append(EgressRule(pod, cidr, RuleKind.EXCLUDED, policy="lab"))
    return rules


def _parsed(parse: Callable[[str], _T], text: str, flag: str) -> _T:
    """``parse(text)`` (one of net's parsers), a ValueError becoming an error naming ``flag``."""
    try:
        return parse(text)
    except ValueError as exc:
        raise InputError(str(exc), field=flag) from None
