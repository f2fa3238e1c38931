"""The kernel datapath: nftables does the SNAT, conntrack (read over ctnetlink) is the NAT table.

Public API::

    KernelDatapath(node_port_range, *, table="egressgw", netns=None)   # a Datapath
    render_ruleset(rules, node_port_range, *, table="egressgw") -> str  # pure
    ConntrackReader(netns=None)  .snat_counts() .stats() .allocation_failures()
    snat_counts(netns=None), conntrack_stats(netns=None)                # one-shot
"""

from egressgw.datapath.kernel.conntrack import ConntrackReader, conntrack_stats, snat_counts
from egressgw.datapath.kernel.datapath import KernelDatapath
from egressgw.datapath.kernel.ruleset import render_delete, render_ruleset, resolve_elements

__all__ = [
    "ConntrackReader",
    "KernelDatapath",
    "conntrack_stats",
    "render_delete",
    "render_ruleset",
    "resolve_elements",
    "snat_counts",
]
