"""Build the datapath the agent drives, by name (``--datapath``)."""

from __future__ import annotations

from egressgw.config import NodePortRange
from egressgw.datapath.base import Datapath
from egressgw.datapath.kernel import KernelDatapath
from egressgw.errors import ConfigError

DATAPATHS = ("kernel", "model")


def make_datapath(
    kind: str, node_port_range: NodePortRange, *, cilium_version: str = "1.16",
    nat_lru: str = "exact", possible_cpus: int = 8, flow_cpus: str = "hash",
    bpf_distributed_lru: bool = False,
) -> Datapath:
    """The kernel datapath (nftables + conntrack in this network namespace) or the model.

    ``cilium_version`` picks the model's port search (``datapath/model/ports.py``) and
    the ``nat_lru`` settings its NAT map (``ModelConfig``); the kernel datapath is Linux's
    nf_nat and has neither. The model is imported only when asked for: it pulls in the
    compiled SNAT engine.
    """
    if kind == "kernel":
        return KernelDatapath(node_port_range, table="egressgw")
    if kind == "model":
        from .modeldp import ModelAgentDatapath  # noqa: PLC0415 (slow to import)

        return ModelAgentDatapath.for_node_ports(
            node_port_range, cilium_version=cilium_version, nat_lru=nat_lru,
            possible_cpus=possible_cpus, flow_cpus=flow_cpus,
            bpf_distributed_lru=bpf_distributed_lru,
        )
    raise ConfigError(f"{kind!r}: expected one of {', '.join(DATAPATHS)}", field="--datapath")
