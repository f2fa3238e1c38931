"""nat-stats: count connections per {egress IP, remote endpoint}, keep the top K per family.

This reproduces Cilium's ``pkg/maps/nat/stats`` and ``cilium-dbg statedb nat-stats``. The
package is pure: it takes counts (from a dump, the kernel or the model datapath) and
returns rows, a table, or a document.
"""

from egressgw.stats.compute import NatStats, NatStatsRow, compute_nat_stats
from egressgw.stats.document import stats_document
from egressgw.stats.table import render_saturation, render_table

__all__ = [
    "NatStats",
    "NatStatsRow",
    "compute_nat_stats",
    "render_saturation",
    "render_table",
    "stats_document",
]
