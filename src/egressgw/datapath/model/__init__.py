"""The model datapath: Cilium v1.16's BPF SNAT reproduced in memory.

The nat.h port search, the LRU NAT map with a global capacity, connection tracking with
Cilium's timeouts and the adaptive CT garbage collector, on a virtual clock and an
injected random source. See docs/model.md.
"""

from egressgw.datapath.model.config import ModelConfig
from egressgw.datapath.model.datapath import ModelDatapath
from egressgw.datapath.model.types import (
    ConnectionBatch,
    ConnectResult,
    DropReason,
    EndKind,
    ModelCounters,
    PacketResult,
    TcpFlags,
)

__all__ = [
    "ConnectResult",
    "ConnectionBatch",
    "DropReason",
    "EndKind",
    "ModelConfig",
    "ModelCounters",
    "ModelDatapath",
    "PacketResult",
    "TcpFlags",
]
