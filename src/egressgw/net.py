"""Small immutable value types for addresses, protocols and tuples.

These are the vocabulary every layer shares. Bulk paths (dumps, the model datapath) keep
columns of integers instead and only build these objects at their edges.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import TypeAlias

from egressgw.errors import excerpt

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface: TypeAlias = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# The longest address text with a prefix: 8 groups of 4 hex digits, 7 colons, "/128"
# (an IPv4-mapped tail is shorter). Anything longer is refused before it is parsed.
MAX_ADDRESS_CHARS = 43


class Family(enum.StrEnum):
    """An address family, spelled as Cilium spells it in nat-stats."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"

    @classmethod
    def of(cls, ip: IPAddress | IPNetwork) -> Family:
        return cls.IPV4 if ip.version == 4 else cls.IPV6


class Proto(enum.IntEnum):
    """The protocols Cilium's SNAT handles, valued by their IP protocol number."""

    ICMP = 1
    TCP = 6
    UDP = 17
    ICMPV6 = 58

    @property
    def label(self) -> str:
        """The name as Cilium prints it (``TCP``, ``UDP``, ``ICMP``, ``ICMPv6``)."""
        return "ICMPv6" if self is Proto.ICMPV6 else self.name

    @property
    def has_ports(self) -> bool:
        """Whether tuples carry ports (ICMP echo carries an identifier instead)."""
        return self in (Proto.TCP, Proto.UDP)

    @classmethod
    def parse(cls, text: str) -> Proto:
        """Parse a protocol name in any case (``tcp``, ``ICMPv6``) or number."""
        key = text.strip().upper()
        if key.isdigit():
            try:
                return cls(int(key))
            except ValueError:
                pass
        else:
            aliases = {"ICMP6": "ICMPV6", "IPV6-ICMP": "ICMPV6"}
            try:
                return cls[aliases.get(key, key)]
            except KeyError:
                pass
        raise ValueError(
            f"unknown protocol {excerpt(text)} (expected TCP, UDP, ICMP or ICMPv6)"
        )


def _address_text(text: object, what: str) -> str:
    """``text`` checked to be a short string without an IPv6 zone.

    Python's ipaddress takes anything after ``%`` as an IPv6 scope (zone), spaces, braces,
    ``;`` and newlines included, and prints it back with the address. Cilium refuses
    zones everywhere an address comes from a policy or the cluster: CIDRs go through Go's
    netip.ParsePrefix, which rejects them ("IPv6 zones cannot be present in a prefix";
    pkg/egressgateway/policy.go ParseCEGP, v1.16.2), egressIP is declared ``format=ipv4``
    in the CRD (cegp_types.go), and node and pod IPs come from net.IP, which has no zone.
    So every reader refuses them here, and no zone can reach an nft script.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected {what} as a string, not {type(text).__name__}")
    if len(text) > MAX_ADDRESS_CHARS:
        raise ValueError(
            f"{excerpt(text, MAX_ADDRESS_CHARS)}: too long for {what} ({len(text)} characters)"
        )
    if "%" in text:
        raise ValueError(f"{excerpt(text, MAX_ADDRESS_CHARS)}: IPv6 zones (%...) are not accepted")
    return text


# The protocols nat-stats counts, per family: Cilium v1.16 pkg/maps/nat/stats/stats.go,
# countNat, keeps IN entries of TCP, UDP and ICMP in the IPv4 map and of TCP, UDP and
# ICMPv6 in the IPv6 map. Every reader (dumps, ctnetlink, the model) asks this table.
COUNTED_PROTOS: dict[Family, frozenset[Proto]] = {
    Family.IPV4: frozenset((Proto.TCP, Proto.UDP, Proto.ICMP)),
    Family.IPV6: frozenset((Proto.TCP, Proto.UDP, Proto.ICMPV6)),
}


def is_counted(family: Family, proto: Proto) -> bool:
    """Whether nat-stats counts ``proto`` entries of ``family`` (see COUNTED_PROTOS)."""
    return proto in COUNTED_PROTOS[family]


def parse_ip(text: str) -> IPAddress:
    """Parse an IPv4 or IPv6 address, with or without brackets; the one address parser.

    Every reader (policies, inventories, workloads, recorded flows, snapshots, dumps,
    flags) parses addresses with this function or :func:`parse_cidr` /
    :func:`parse_ip_interface`, so the same text is accepted or refused everywhere.
    Raises ValueError with a short message quoting at most :data:`MAX_ADDRESS_CHARS`.
    """
    text = _address_text(text, "an IP address")
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        raise ValueError(f"{excerpt(text, MAX_ADDRESS_CHARS)}: not an IP address") from None


def parse_cidr(text: str, *, strict: bool = False) -> IPNetwork:
    """Parse a CIDR like Go's net.ParseCIDR: the /prefix is required.

    Host bits are masked unless ``strict`` (then ``10.0.0.1/8`` is refused).
    """
    text = _address_text(text, "a CIDR")
    if "/" not in text:
        raise ValueError(f"{excerpt(text, MAX_ADDRESS_CHARS)}: missing the /prefix length")
    network = ipaddress.IPv6Network if ":" in text else ipaddress.IPv4Network
    try:
        return network(text, strict=strict)
    except ValueError as exc:
        raise ValueError(f"{excerpt(text, MAX_ADDRESS_CHARS)}: {_reason(exc)}") from None


def parse_ip_interface(text: str) -> IPInterface:
    """Parse an interface address with its prefix (``203.0.113.10/24``)."""
    text = _address_text(text, "an interface address")
    if "/" not in text:
        example = f", e.g. {text}/24" if text.isprintable() else ""
        raise ValueError(f"{excerpt(text, MAX_ADDRESS_CHARS)}: give it with its prefix{example}")
    interface = ipaddress.IPv6Interface if ":" in text else ipaddress.IPv4Interface
    try:
        return interface(text)
    except ValueError as exc:
        raise ValueError(f"{excerpt(text, MAX_ADDRESS_CHARS)}: {_reason(exc)}") from None


def _reason(exc: ValueError) -> str:
    # ipaddress's per-family messages quote only the offending part (at most the
    # already length-checked input); keep the first line.
    reason = str(exc).splitlines()[0] if str(exc) else "invalid"
    return reason if len(reason) <= 80 else reason[:77] + "..."


def format_ip(ip: IPAddress) -> str:
    """An address as Cilium prints it next to a port: IPv6 in brackets.

    Cilium formats addresses with Go's ``net.IP.String()``, which prints an IPv4-mapped
    IPv6 address (``::ffff:192.168.64.2``) in dotted form: ``[192.168.64.2]``.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        return f"[{ip if mapped is None else mapped}]"
    return str(ip)


def format_addr(ip: IPAddress, port: int) -> str:
    """``ip:port``, or just the (bracketed) ip when the port is 0 as for ICMP."""
    return f"{format_ip(ip)}:{port}" if port else format_ip(ip)


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """An address and a port (an ICMP echo identifier for ICMP)."""

    ip: IPAddress
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} is outside 0..65535")

    @property
    def family(self) -> Family:
        return Family.of(self.ip)

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``1.2.3.4:80``, ``[2001:db8::1]:80``, or an address alone (port 0)."""
        if text.startswith("["):
            host, sep, port = text[1:].partition("]")
            if sep and port.startswith(":"):
                return cls(parse_ip(host), int(port[1:]))
            if sep and not port:
                return cls(parse_ip(host), 0)
            raise ValueError(f"bad endpoint {excerpt(text)}")
        if text.count(":") == 1:
            host, _, port = text.partition(":")
            return cls(parse_ip(host), int(port))
        return cls(parse_ip(text), 0)

    def __str__(self) -> str:
        return f"{format_ip(self.ip)}:{self.port}"


@dataclass(frozen=True, slots=True, order=True)
class FiveTuple:
    """A connection's tuple in one direction: protocol, source and destination."""

    proto: Proto
    src: Endpoint
    dst: Endpoint

    def __post_init__(self) -> None:
        if self.src.ip.version != self.dst.ip.version:
            raise ValueError("source and destination are of different address families")

    @property
    def family(self) -> Family:
        return self.src.family

    def reversed(self) -> FiveTuple:
        return FiveTuple(self.proto, self.dst, self.src)

    def __str__(self) -> str:
        return f"{self.proto.label} {self.src} -> {self.dst}"


class Direction(enum.StrEnum):
    """Which way a NAT entry translates: OUT rewrites sources, IN rewrites destinations."""

    OUT = "OUT"
    IN = "IN"


@dataclass(frozen=True, slots=True)
class NatEntry:
    """One entry of a NAT table, from any producer (kernel, model, dump).

    For OUT the tuple is the original one (pod -> remote) and ``xlate`` the new source
    (egress IP and allocated port); for IN the tuple is the reply (remote -> egress IP and
    port) and ``xlate`` the original source it maps back to.
    """

    direction: Direction
    tuple: FiveTuple
    xlate: Endpoint
    created_ago: float | None = None
    needs_ct: bool | None = None

    @property
    def endpoint(self) -> NatEndpoint | None:
        """The nat-stats key this entry counts towards (IN entries only)."""
        if self.direction is not Direction.IN:
            return None
        return NatEndpoint(
            self.tuple.family,
            self.tuple.proto,
            self.tuple.dst.ip,
            self.tuple.src.ip,
            self.tuple.src.port if self.tuple.proto.has_ports else 0,
        )


@dataclass(frozen=True, slots=True)
class NatEndpoint:
    """What nat-stats counts connections by: {family, proto, egress IP, remote IP:port}.

    Every connection to the same NatEndpoint needs its own source port.
    """

    family: Family
    proto: Proto
    egress_ip: IPAddress
    remote_ip: IPAddress
    remote_port: int

    @property
    def remote_addr(self) -> str:
        return format_addr(self.remote_ip, self.remote_port)
