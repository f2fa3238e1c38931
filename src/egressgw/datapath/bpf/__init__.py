"""Real BPF: the BPF datapath (Cilium's egress-gateway SNAT as a tc program on real
packets) and the bpf(2) layer it shares with the model's LRU replay.

Public API::

    BpfSettings(node_port_range, nat_global_max=524288, cilium_version="1.16",
                device=None, netns=None)
    BpfDatapath(settings)
        .apply(rules) / .endpoint_counts() / .allocation_failures() / .drop_counts()
        .nat_tables() / .retries_histogram(family) / .handle_signals()
        .collect_garbage() / .cleanup() / .close()
    build() -> Path                       # compile snat.bpf.c (cached)

Modules: ``syscall`` (bpf(2) through ctypes), ``layout``, ``compiler`` (builds
snat.bpf.c), ``loader``, ``natmap``, ``gc``, ``signals``, ``pins``, ``datapath`` (the
datapath); ``progrun`` and ``lrureplay``
(the kernel LRU checked against the model's, tests/test_bpf_lru_kernel.py). Names are
imported on first use, so those modules do not pay for the datapath's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from egressgw.lazy import lazy_exports

if TYPE_CHECKING:
    from .compiler import build
    from .datapath import NAT_GLOBAL_MAX_DEFAULT, BpfDatapath, BpfSettings

_LAZY = {
    "build": ".compiler",
    "NAT_GLOBAL_MAX_DEFAULT": ".datapath",
    "BpfDatapath": ".datapath",
    "BpfSettings": ".datapath",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = ["NAT_GLOBAL_MAX_DEFAULT", "BpfDatapath", "BpfSettings", "build"]
