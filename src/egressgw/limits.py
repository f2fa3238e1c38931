"""The one rule for a tuple's port limit (the saturation divisor): the datapath decides.

Saturation is the busiest tuple's connections divided by the source ports the datapath
can hand out to that tuple. Which number that is depends on who does the SNAT, never on
the command asking:

- **Cilium** (``cilium-dbg bpf nat list`` dumps, the model datapath): Cilium v1.16.2's
  nat-stats divides by ``65535 - (NodePortMax + 1)`` (``pkg/maps/nat/stats``), 32767 with
  the default ``--node-port-range 30000,32767``; it is also the number of ports nat.h's
  clamp can reach.
- **netfilter** (``conntrack -L`` dumps, the kernel datapath, the netfilter model):
  every port of the SNAT rule's range, since ``nf_nat_l4proto_unique_tuple`` can hand
  out each of them. The agent knows its own nft range (``--node-port-range MIN,MAX``
  renders ``snat to IP:MAX+1-65535``); for a dump the range is ``--nat-port-range``,
  else egressgw's rule for an explicit ``--node-port-range``, else what a plain
  ``masquerade`` uses: 1024-65535, 64512 ports (measured on this kernel,
  docs/kernel-datapath.md).

Every command (nat-stats, statedb nat-stats, /metrics, simulate, plan, forecast) asks
this module, and their documents carry :meth:`PortLimit.document`, which says which
limit was used and where it came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from egressgw.config import MAX_PORT, NodePortRange
from egressgw.errors import ConfigError, excerpt

DatapathKind = Literal["cilium", "netfilter"]
DATAPATH_KINDS: tuple[DatapathKind, ...] = ("cilium", "netfilter")

NAT_PORT_RANGE_FLAG = "--nat-port-range"
NODE_PORT_RANGE_FLAG = "--node-port-range"

# TCP conntrack states (enum tcp_conntrack) whose port nf_nat takes over for a new
# connection when its port search gets hard: nf_nat_used_tuple_harder lets
# nf_nat_may_kill end a source-NATed entry from TCP_CONNTRACK_TIME_WAIT on. Measured on
# this kernel (tests/test_takeover_kernel.py): TIME_WAIT, CLOSE and SYN_SENT2 entries are
# taken over; SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK and UDP
# entries never are. Such entries still count in Cilium's columns, but do not block.
TAKEOVER_TCP_STATES: dict[int, str] = {7: "TIME_WAIT", 8: "CLOSE", 9: "SYN_SENT2"}

# Linux's nf_nat_l4proto_unique_tuple without a port range in the rule (a plain
# `masquerade` or `snat to IP`): ports 1024-65535 for a source port of 1024 or more.
LINUX_DEFAULT_MIN = 1024


@dataclass(frozen=True, slots=True)
class NatPortRange:
    """The source ports an nftables/iptables SNAT rule hands out, ``MIN-MAX`` inclusive."""

    min: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.max <= MAX_PORT:
            raise ConfigError(
                f"{self.min}-{self.max}: need 1 <= MIN <= MAX <= {MAX_PORT}",
                field=NAT_PORT_RANGE_FLAG,
            )

    @classmethod
    def parse(cls, text: str) -> NatPortRange:
        """``MIN-MAX`` as nft writes it (``MIN,MAX`` and ``MIN:MAX`` are accepted too)."""
        # ASCII digits, at most 5 each: a 5,000-digit value must not reach int().
        match = re.fullmatch(r"\s*([0-9]{1,5})\s*[-,:]\s*([0-9]{1,5})\s*", text[:64])
        if not match or len(text) > 64:
            raise ConfigError(
                f"{excerpt(text)}: expected MIN-MAX such as 1024-65535",
                field=NAT_PORT_RANGE_FLAG,
            )
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def of_node_ports(cls, node_port_range: NodePortRange) -> NatPortRange:
        """The range egressgw's nft rule hands out for ``--node-port-range``: MAX+1..65535."""
        return cls(node_port_range.nat_min, node_port_range.nat_max)

    @property
    def ports(self) -> int:
        return self.max - self.min + 1

    def __str__(self) -> str:
        return f"{self.min}-{self.max}"


LINUX_MASQUERADE_RANGE = NatPortRange(LINUX_DEFAULT_MIN, MAX_PORT)


@dataclass(frozen=True, slots=True)
class PortLimit:
    """The ports a tuple can use, which saturation is a fraction of, and why."""

    ports: int
    datapath: DatapathKind
    # The setting it comes from, as a user would write it.
    source: str
    # The ports themselves: Cilium's NAT range, or the SNAT rule's range.
    port_range: NatPortRange

    def __post_init__(self) -> None:
        if self.ports < 1:
            raise ConfigError(f"{self.ports}: the port limit must be positive", field="limit")

    @property
    def rule(self) -> str:
        """How ``ports`` follows from the range, with the source of that rule."""
        if self.datapath == "cilium":
            return "65535 - (NodePortMax + 1), Cilium v1.16.2 pkg/maps/nat/stats"
        return "every port of the SNAT rule's range, nf_nat_l4proto_unique_tuple"

    def document(self) -> dict[str, Any]:
        """Which limit was used and where it came from, for JSON and YAML documents."""
        return {
            "ports": self.ports,
            "datapath": self.datapath,
            "portRange": str(self.port_range),
            "rule": self.rule,
            "source": self.source,
        }

    def describe(self) -> str:
        """One line for tables: ``64512 ports (netfilter, Linux masquerade default ...)``."""
        return f"{self.ports} ports ({self.datapath}: {self.source})"


def cilium_limit(node_port_range: NodePortRange, *, source: str | None = None) -> PortLimit:
    """Cilium's divisor for ``--node-port-range`` (32767 by default)."""
    return PortLimit(
        node_port_range.cilium_saturation_divisor,
        "cilium",
        source or f"{NODE_PORT_RANGE_FLAG} {node_port_range}",
        NatPortRange.of_node_ports(node_port_range),
    )


def netfilter_limit(port_range: NatPortRange, *, source: str) -> PortLimit:
    """Every port of an SNAT rule's range."""
    return PortLimit(port_range.ports, "netfilter", source, port_range)


def netfilter_rule_limit(
    *,
    nat_port_range: NatPortRange | None = None,
    node_port_range: NodePortRange | None = None,
) -> PortLimit:
    """A Linux gateway's limit: ``--nat-port-range``, else egressgw's rule for
    ``--node-port-range``, else Linux's default masquerade range (1024-65535)."""
    if nat_port_range is not None:
        return netfilter_limit(nat_port_range, source=f"{NAT_PORT_RANGE_FLAG} {nat_port_range}")
    if node_port_range is not None:
        return netfilter_limit(
            NatPortRange.of_node_ports(node_port_range),
            source=f"egressgw's nft rule for {NODE_PORT_RANGE_FLAG} {node_port_range}",
        )
    return netfilter_limit(
        LINUX_MASQUERADE_RANGE, source="Linux masquerade default (no range given)"
    )


def datapath_limit(
    datapath: str,
    *,
    node_port_range: NodePortRange | None = None,
    nat_port_range: NatPortRange | None = None,
) -> PortLimit:
    """The limit of a datapath kind, from the settings the user gave (None: not given).

    ``cilium`` takes ``--node-port-range`` (its default when not given) and refuses
    ``--nat-port-range``, which has no meaning for Cilium.
    """
    if datapath == "cilium":
        if nat_port_range is not None:
            raise ConfigError(
                f"{nat_port_range}: applies to Linux (netfilter) gateways; Cilium's limit "
                f"follows {NODE_PORT_RANGE_FLAG}",
                field=NAT_PORT_RANGE_FLAG,
            )
        return cilium_limit(node_port_range or NodePortRange())
    if datapath == "netfilter":
        return netfilter_rule_limit(
            nat_port_range=nat_port_range, node_port_range=node_port_range
        )
    raise ConfigError(f"{datapath!r}: expected one of {', '.join(DATAPATH_KINDS)}",
                      field="datapath")


def dump_datapath(fmt: str, *, nat_port_range: NatPortRange | None = None) -> DatapathKind:
    """Who made a dump of this format: ``conntrack`` is netfilter's, ``cilium`` Cilium's.

    An empty dump has no format (``auto``): a ``--nat-port-range`` then says netfilter.
    """
    if fmt == "conntrack" or (fmt not in ("cilium", "conntrack") and nat_port_range):
        return "netfilter"
    return "cilium"


def dump_limit(
    fmt: str,
    *,
    node_port_range: NodePortRange | None = None,
    nat_port_range: NatPortRange | None = None,
) -> PortLimit:
    """The limit for a dump of format ``fmt`` (``cilium`` or ``conntrack``)."""
    return datapath_limit(
        dump_datapath(fmt, nat_port_range=nat_port_range),
        node_port_range=node_port_range,
        nat_port_range=nat_port_range,
    )


def resolve_limit(
    *,
    documented: PortLimit | None = None,
    datapath: str | None = None,
    node_port_range: NodePortRange | None = None,
    nat_port_range: NatPortRange | None = None,
) -> PortLimit:
    """The limit for counts whose origin is partly known (forecast's snapshots).

    Settings the user gave win; else the limit a document says it used; else the
    datapath that made the counts (a dump's format) with its default; else Cilium's.
    A ``datapath`` other than the document's (``--datapath-model``) sets the document's
    limit aside: its range belongs to the other datapath.
    """
    if datapath is not None and documented is not None and documented.datapath != datapath:
        documented = None
    kind = datapath or (documented.datapath if documented is not None else None)
    if nat_port_range is not None and kind is None:
        kind = "netfilter"
    if nat_port_range is not None or node_port_range is not None:
        return datapath_limit(kind or "cilium", node_port_range=node_port_range,
                              nat_port_range=nat_port_range)
    if documented is not None:
        return documented
    return datapath_limit(kind or "cilium")


def limit_from_document(doc: object) -> PortLimit | None:
    """The limit a nat-stats JSON document says it used (None if it says nothing)."""
    if not isinstance(doc, dict):
        return None
    limit = doc.get("limit")
    if isinstance(limit, dict):
        try:
            kind: DatapathKind = "netfilter" if limit["datapath"] == "netfilter" else "cilium"
            if limit["datapath"] != kind:
                raise ValueError(limit["datapath"])
            ports, text, source = limit["ports"], limit["portRange"], limit.get("source")
            # Only what a nat-stats document can hold: a port count, short strings.
            if isinstance(ports, bool) or not isinstance(ports, int) or not 0 < ports <= 65536:
                return None
            if not isinstance(text, str) or not isinstance(source, str | None):
                return None
            return PortLimit(ports, kind, (source or "document")[:200], NatPortRange.parse(text))
        except (KeyError, TypeError, ValueError, ConfigError):
            return None
    return None


__all__ = [
    "DATAPATH_KINDS",
    "LINUX_MASQUERADE_RANGE",
    "TAKEOVER_TCP_STATES",
    "DatapathKind",
    "NatPortRange",
    "PortLimit",
    "cilium_limit",
    "datapath_limit",
    "dump_datapath",
    "dump_limit",
    "limit_from_document",
    "netfilter_limit",
    "netfilter_rule_limit",
    "resolve_limit",
]
