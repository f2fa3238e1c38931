"""Build the datapath the agent drives, by name (``--datapath``)."""

from __future__ import annotations

from egressgw.config import NodePortRange
from egressgw.datapath.base import Datapath
from egressgw.datapath.kernel import KernelDatapath
from egressgw.errors import ConfigError

DATAPATHS = ("kernel",)


def make_datapath(kind: str, node_port_range: NodePortRange) -> Datapath:
    """The kernel datapath: nftables + conntrack in this network namespace."""
    if kind == "kernel":
        return KernelDatapath(node_port_range, table="egressgw")
    raise ConfigError(f"{kind!r}: expected one of {', '.join(DATAPATHS)}", field="--datapath")
