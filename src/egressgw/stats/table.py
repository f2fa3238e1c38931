"""The ``cilium-dbg statedb nat-stats`` table, byte for byte."""

from __future__ import annotations

from collections.abc import Iterable

from egressgw.net import format_ip
from egressgw.render.tabwriter import tabwrite
from egressgw.stats.compute import NatStats, NatStatsRow

HEADER = ("# IPFamily", "Proto", "EgressIP", "RemoteAddr", "Count")


def table_cells(row: NatStatsRow) -> tuple[str, str, str, str, str]:
    """A row's cells as cilium-dbg prints them (IPv6 in brackets, no port for ICMP)."""
    return (
        str(row.family),
        row.proto.label,
        format_ip(row.egress_ip),
        row.remote_addr,
        str(row.count),
    )


def render_table(rows: Iterable[NatStatsRow]) -> str:
    """Header and rows aligned like Go's tabwriter in cilium-dbg (minwidth 6, padding 3)."""
    return tabwrite([HEADER, *(table_cells(row) for row in rows)])


def render_saturation(stats: NatStats) -> str:
    """One line per family: ``saturation ipv4: 0.90% (294/32767)``.

    When the kernel can take over some entries (Linux: TIME_WAIT, CLOSE), the count is
    of the entries that block a port, and the line says how many more there are.
    """
    lines = []
    for family, ratio in stats.saturation.items():
        top = stats.top(family)
        count = stats.blocking.get(family, top.count if top is not None else 0)
        more = ""
        if stats.takeover_known and top is not None and top.reusable:
            more = (f"; top tuple {top.count} entries, {top.reusable} of them the kernel "
                    "can take over")
        lines.append(f"saturation {family}: {ratio:.2%} ({count}/{stats.divisor}{more})\n")
    return "".join(lines)
