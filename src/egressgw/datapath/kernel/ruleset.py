"""Render egress rules into one nftables table (pure: rules in, nft script out).

Why one ``inet`` table: both address families live in one table of egressgw's own, so a
single ``delete table`` removes everything egressgw installed, and a single transaction
replaces the IPv4 and IPv6 rules together. Nothing outside the table is touched.

Shape of the table (the rule count is constant; only map elements grow with the rules):

- ``snat4`` / ``snat6``: verdict maps keyed by ``source . destination`` (interval flag, so
  destinations are CIDRs) that ``goto`` one chain per egress IP. A chain per egress IP is
  needed because nft cannot load an IPv6 address+port-range map, and port ranges need a
  protocol match first (ICMP has no ports, so it gets its own rule without a range).
- ``nogw4`` / ``nogw6``: sets of ``source . destination`` whose traffic is dropped in the
  forward hook (no gateway node matched: Cilium drop reason 194).
- Excluded CIDRs are holes: before rendering, the destinations of each source are cut
  into disjoint pieces by longest-prefix match, so an excluded CIDR inside a masqueraded
  one leaves no element behind, and interval elements never overlap.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from egressgw.config import NodePortRange
from egressgw.errors import InputError, excerpt
from egressgw.net import IPAddress, IPNetwork
from egressgw.rules import EgressRule, RuleKind, precedence

TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")

# What a piece of destination space resolves to: a kind and, for masquerade, the egress IP.
Action = tuple[RuleKind, IPAddress | None]


@dataclass(frozen=True, slots=True, order=True)
class Element:
    """One map/set element: traffic from ``source`` to ``destination`` gets ``action``."""

    source: IPAddress
    destination: IPNetwork
    kind: RuleKind
    egress_ip: IPAddress | None


def check_table_name(table: str) -> str:
    """A table name nft accepts without quoting (letters, digits, underscore)."""
    if not isinstance(table, str) or not TABLE_NAME.fullmatch(table):
        raise InputError(
            f"{excerpt(table)}: a table name is a letter then up to 31 letters, digits or '_'",
            field="table",
        )
    return table


def _checked(rule: EgressRule, index: int) -> None:
    """Accept only address objects without an IPv6 zone, of one family per rule.

    Every address the script holds comes from a rule, and a rule's addresses must be
    ``ipaddress`` objects, never text: a string (or an object whose ``str`` is arbitrary
    text, like an IPv6 address with a zone) is refused here, and the script prints each
    address from its integer value (:func:`nft_address`), so no input text can reach it.
    """

    def bad(message: str) -> InputError:
        return InputError(message, source=rule.policy[:200] or "rules", field=f"rule[{index}]")

    if not isinstance(rule.source_ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise bad(f"source IP must be an address object, not {type(rule.source_ip).__name__}")
    if not isinstance(rule.destination, ipaddress.IPv4Network | ipaddress.IPv6Network):
        raise bad(f"destination must be a network object, not {type(rule.destination).__name__}")
    egress = rule.egress_ip
    if egress is not None and not isinstance(egress, ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise bad(f"egress IP must be an address object, not {type(egress).__name__}")
    for what, address in (("source IP", rule.source_ip),
                          ("destination", rule.destination.network_address),
                          ("egress IP", egress)):
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise bad(f"the {what} carries an IPv6 zone, which nft rules cannot hold")
    if not isinstance(rule.kind, RuleKind):
        raise bad(f"unknown rule kind {type(rule.kind).__name__}")
    source, destination = rule.source_ip, rule.destination
    if source.version != destination.version:
        raise bad(f"{nft_address(source)} and {nft_network(destination)} differ in family")
    if rule.kind is RuleKind.MASQUERADE:
        if egress is None:
            raise bad("a masquerade rule needs an egress IP")
        if egress.version != source.version:
            raise bad(f"egress IP {nft_address(egress)} is not of the family of "
                      f"{nft_address(source)}")


def nft_address(ip: IPAddress) -> str:
    """``ip`` as nft reads it, printed from its integer value (never from input text)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ipaddress.IPv4Address(int(ip)))
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Address(int(ip)))
    raise TypeError(f"not an address object: {type(ip).__name__}")


def nft_network(network: IPNetwork) -> str:
    """``network`` as nft reads it: its address from its integer value, then the prefix."""
    prefixlen = network.prefixlen
    if not isinstance(prefixlen, int) or not 0 <= prefixlen <= network.max_prefixlen:
        raise TypeError("not a network object")
    return f"{nft_address(network.network_address)}/{prefixlen}"


def _check_ports(ports: NodePortRange) -> None:
    for value in (ports.nat_min, ports.nat_max):
        if type(value) is not int or not 1 <= value <= 0xFFFF:
            raise InputError("the NAT port range must be whole numbers in 1..65535",
                             field="--node-port-range")


def _maximal_inner(ordered: Sequence[IPNetwork], index: int) -> list[IPNetwork]:
    """The largest networks strictly inside ``ordered[index]``, disjoint, in order.

    ``ordered`` is sorted by (network address, prefix length), so every network inside
    ``ordered[index]`` follows it directly (CIDRs either nest or are disjoint); the scan
    stops at the first network past its end. The work is the number of networks inside.
    """
    outer = ordered[index]
    end = int(outer.broadcast_address)
    inner: list[IPNetwork] = []
    last_end = -1
    for position in range(index + 1, len(ordered)):  # no slice: that would copy the tail
        other = ordered[position]
        start = int(other.network_address)
        if start > end:
            break
        if start > last_end:  # not inside the previous maximal one
            inner.append(other)
            last_end = int(other.broadcast_address)
    return inner


def _pieces(network: IPNetwork, holes: Sequence[IPNetwork]) -> list[IPNetwork]:
    """``network`` minus ``holes`` (disjoint, sorted, inside it) as CIDRs.

    The gaps between holes are summarized as address ranges, so the work grows with the
    number of holes (times the address width), not with holes times pieces.
    """
    address = ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address
    pieces: list[IPNetwork] = []
    cursor = int(network.network_address)
    for hole in holes:
        start = int(hole.network_address)
        if start > cursor:
            pieces.extend(ipaddress.summarize_address_range(address(cursor), address(start - 1)))
        cursor = int(hole.broadcast_address) + 1
    end = int(network.broadcast_address)
    if cursor <= end:
        pieces.extend(ipaddress.summarize_address_range(address(cursor), address(end)))
    return pieces


def resolve_elements(rules: Sequence[EgressRule]) -> list[Element]:
    """Disjoint elements that give every (source, destination) its longest-prefix action.

    For each source, each destination CIDR keeps the part of it not covered by a more
    specific CIDR of the same source; equal CIDRs are settled by egressgw.rules.precedence
    (the resolver every datapath shares), so the result never depends on the input order.
    Near-linear in the number of rules: destinations are sorted once per source, and each
    one is cut only by the networks directly inside it.
    """
    winners: dict[IPAddress, dict[IPNetwork, EgressRule]] = defaultdict(dict)
    for index, rule in enumerate(rules):
        _checked(rule, index)
        current = winners[rule.source_ip].get(rule.destination)
        if current is None or precedence(rule) < precedence(current):
            winners[rule.source_ip][rule.destination] = rule
    by_source: dict[IPAddress, dict[IPNetwork, Action]] = {
        source: {
            destination: (r.kind, r.egress_ip if r.kind is RuleKind.MASQUERADE else None)
            for destination, r in rules_by_destination.items()
        }
        for source, rules_by_destination in winners.items()
    }

    elements: list[Element] = []
    for source, destinations in by_source.items():
        ordered = sorted(destinations, key=lambda n: (int(n.network_address), n.prefixlen))
        by_action: dict[Action, list[IPNetwork]] = defaultdict(list)
        for index, destination in enumerate(ordered):
            pieces = _pieces(destination, _maximal_inner(ordered, index))
            by_action[destinations[destination]].extend(pieces)
        for (kind, egress), pieces in by_action.items():
            if kind is RuleKind.EXCLUDED:
                continue  # a hole: neither masqueraded nor dropped
            for piece in ipaddress.collapse_addresses(pieces):  # type: ignore[type-var]
                elements.append(Element(source, piece, kind, egress))
    return sorted(elements, key=_element_key)


def _element_key(element: Element) -> tuple[int, int, int, int]:
    return (
        element.source.version,
        int(element.source),
        int(element.destination.network_address),
        element.destination.prefixlen,
    )


def snat_chain_name(egress_ip: IPAddress) -> str:
    """The chain that source-NATs to ``egress_ip``: ``snat4_203_0_113_10``."""
    digits = nft_address(egress_ip).replace(".", "_").replace(":", "_")
    return f"snat{egress_ip.version}_{digits}"


# Failed connection attempts, counted once per tuple (docs/kernel-datapath.md). Only the
# first packet of a connection goes through nat chains, and a packet whose connection was
# refused at conntrack confirm (no free NAT port) leaves no entry behind, so the client's
# retransmission comes through again: a tuple seen before (``tried``) that comes through
# again has failed. ``failed`` keeps it for longer than TCP's SYN retries last (63 s) so
# its later retransmissions are not counted again; ``tried`` must outlive the longest gap
# between two retransmissions (32 s) and stay below a client's TIME_WAIT (60 s), after
# which the same tuple may be a new connection.
FAILED_COUNTER = "failed{v}"
TRIED_TIMEOUT = "40s"
FAILED_TIMEOUT = "2m"
TRACK_SET_SIZE = 262144  # nf_conntrack_max's default: one element per tracked connection


def _flow_key(version: int) -> str:
    family = "ip" if version == 4 else "ip6"
    return f"{family} saddr . meta l4proto . th sport . {family} daddr . th dport"


def _failure_sets(version: int) -> list[str]:
    addr = "ipv4_addr" if version == 4 else "ipv6_addr"
    lines = [f'	counter {FAILED_COUNTER.format(v=version)} {{', "	}"]
    for name, timeout in (("tried", TRIED_TIMEOUT), ("failed", FAILED_TIMEOUT)):
        lines += [
            f"	set {name}{version} {{",
            f"		type {addr} . inet_proto . inet_service . {addr} . inet_service",
            f"		size {TRACK_SET_SIZE}",
            "		flags dynamic,timeout",
            f"		timeout {timeout}",
            "	}",
        ]
    return lines


def _snat_chain(egress_ip: IPAddress, ports: NodePortRange) -> list[str]:
    family = "ip" if egress_ip.version == 4 else "ip6"
    text = nft_address(egress_ip)
    bracketed = text if egress_ip.version == 4 else f"[{text}]"
    v = egress_ip.version
    key = _flow_key(v)
    return [
        f"\tchain {snat_chain_name(egress_ip)} {{",
        f"\t\tmeta l4proto {{ tcp, udp }} {key} @tried{v} {key} != @failed{v} "
        f'add @failed{v} {{ {key} }} counter name "{FAILED_COUNTER.format(v=v)}"',
        f"\t\tmeta l4proto {{ tcp, udp }} update @tried{v} {{ {key} }}",
        # Port ranges need a protocol with ports; nf_nat keeps the source port when it is
        # free in the range, otherwise searches the range.
        f"\t\tmeta l4proto {{ tcp, udp }} snat {family} to "
        f"{bracketed}:{ports.nat_min}-{ports.nat_max}",
        # ICMP echo: the kernel rewrites the echo identifier when it must.
        f"\t\tsnat {family} to {text}",
        "\t}",
    ]


def _map_block(name: str, version: int, elements: list[Element], *, verdicts: bool) -> list[str]:
    addr = "ipv4_addr" if version == 4 else "ipv6_addr"
    kind = "map" if verdicts else "set"
    value = " : verdict" if verdicts else ""
    lines = [f"\t{kind} {name} {{", f"\t\ttype {addr} . {addr}{value}", "\t\tflags interval"]
    if elements:
        items = []
        for element in elements:
            item = f"{nft_address(element.source)} . {nft_network(element.destination)}"
            if verdicts:
                assert element.egress_ip is not None
                item += f" : goto {snat_chain_name(element.egress_ip)}"
            items.append(item)
        lines.append("\t\telements = {")
        lines.extend(f"\t\t\t{item}," for item in items)
        lines.append("\t\t}")
    lines.append("\t}")
    return lines


def render_ruleset(
    rules: Sequence[EgressRule], ports: NodePortRange, *, table: str = "egressgw"
) -> str:
    """The nft script that atomically replaces table ``inet <table>`` with ``rules``.

    ``add table`` then ``delete table`` makes the delete succeed whether or not the table
    exists; the table is then declared in full. nft runs the script as one transaction.
    """
    check_table_name(table)
    _check_ports(ports)
    elements = resolve_elements(rules)
    masq = {v: [e for e in elements if e.kind is RuleKind.MASQUERADE and e.source.version == v]
            for v in (4, 6)}
    drop = {v: [e for e in elements if e.kind is RuleKind.NO_GATEWAY and e.source.version == v]
            for v in (4, 6)}
    egress_ips = sorted(
        {e.egress_ip for e in elements if e.egress_ip is not None},
        key=lambda ip: (ip.version, int(ip)),
    )

    lines = [
        f"add table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        '\tcomment "egress gateway SNAT; replaced as a whole by egressgw"',
    ]
    lines += _map_block("snat4", 4, masq[4], verdicts=True)
    lines += _map_block("snat6", 6, masq[6], verdicts=True)
    lines += _map_block("nogw4", 4, drop[4], verdicts=False)
    lines += _map_block("nogw6", 6, drop[6], verdicts=False)
    lines += _failure_sets(4) + _failure_sets(6)
    for egress_ip in egress_ips:
        lines += _snat_chain(egress_ip, ports)
    lines += [
        "\tchain postrouting {",
        # NAT port ranges only take effect in a nat-type chain.
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        "\t\tip saddr . ip daddr vmap @snat4",
        "\t\tip6 saddr . ip6 daddr vmap @snat6",
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        '\t\tip saddr . ip daddr @nogw4 counter drop comment "no egress gateway found"',
        '\t\tip6 saddr . ip6 daddr @nogw6 counter drop comment "no egress gateway found"',
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


_TRACKING_ELEMENTS = re.compile(
    r"(\tset (?:tried|failed)[46] \{\n(?:\t\t[^\n]*\n)*?)\t\telements = \{[^}]*\}\n")
_NAMED_COUNTER_VALUES = re.compile(r"(\tcounter failed[46] \{\n)\t\tpackets \d+ bytes \d+\n")


def without_tracking_state(listing: str) -> str:
    """``nft list table`` output without what traffic changes in it: the elements of the
    failure-tracking sets and the failed counters' values (the rules stay)."""
    return _NAMED_COUNTER_VALUES.sub(r"\1", _TRACKING_ELEMENTS.sub(r"\1", listing))


def failed_counter_names() -> tuple[str, ...]:
    """The named counters of failed connection attempts (IPv4, IPv6)."""
    return tuple(FAILED_COUNTER.format(v=v) for v in (4, 6))


def render_delete(*, table: str = "egressgw") -> str:
    """The nft script that removes the table if present, and nothing else."""
    check_table_name(table)
    return f"add table inet {table}\ndelete table inet {table}\n"
