"""The BPF datapath: Cilium's egress-gateway SNAT as a tc program on real packets.

Public API::

    BpfSettings(node_port_range, nat_global_max=524288, cilium_version="1.16",
                device=None, netns=None)
    BpfDatapath(settings)
        .apply(rules) / .endpoint_counts() / .allocation_failures() / .drop_counts()
        .nat_tables() / .retries_histogram(family) / .handle_signals()
        .collect_garbage() / .cleanup() / .close()
    build() -> Path                       # compile snat.bpf.c (cached)
"""

from __future__ import annotations

from .build import build
from .datapath import NAT_GLOBAL_MAX_DEFAULT, BpfDatapath, BpfSettings

__all__ = ["NAT_GLOBAL_MAX_DEFAULT", "BpfDatapath", "BpfSettings", "build"]
