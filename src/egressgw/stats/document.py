"""nat-stats as a plain document for ``-o json`` and ``-o yaml``."""

from __future__ import annotations

from typing import Any

from egressgw.stats.compute import NatStats, NatStatsRow


def row_document(row: NatStatsRow, *, takeover_known: bool = False) -> dict[str, Any]:
    """Every field of a row; names follow cilium's JSON casing (egressIP, remoteAddr).

    With ``takeover_known`` (Linux gateways) the row also says how many of its entries
    the kernel can take over (``reusable``) and how many really hold a port
    (``blocking``)."""
    extra = {"reusable": row.reusable, "blocking": row.blocking} if takeover_known else {}
    return {
        "family": str(row.family),
        "proto": row.proto.label,
        "egressIP": str(row.egress_ip),
        "remoteIP": str(row.remote_ip),
        "remotePort": row.remote_port,
        "remoteAddr": row.remote_addr,
        "count": row.count,
        "rank": row.rank,
        **extra,
    }


def stats_document(stats: NatStats) -> dict[str, Any]:
    """Rows in display order, saturation per family (ratio 0..1), the divisor used and,
    when known, ``limit``: which limit that divisor is and where it came from."""
    return {
        "rows": [row_document(row, takeover_known=stats.takeover_known) for row in stats.rows],
        "saturation": {str(family): ratio for family, ratio in stats.saturation.items()},
        "topCount": {
            str(family): top.count
            for family in stats.saturation
            if (top := stats.top(family)) is not None
        },
        **({"topBlocking": {str(f): n for f, n in stats.blocking.items()}}
           if stats.takeover_known else {}),
        "divisor": stats.divisor,
        **({"limit": stats.limit.document()} if stats.limit is not None else {}),
    }


__all__ = ["row_document", "stats_document"]
