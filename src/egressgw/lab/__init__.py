"""A lab of real network namespaces (pods, a gateway node, servers) and a traffic generator.

Public API::

    Lab.up(LabSpec(name, pods=4, egress_ips=2, servers=2)) -> Lab
    Lab.find(name) -> Lab;  lab.down();  remove_lab(name)
    lab.datapath(node_port_range) -> KernelDatapath (in the gateway namespace)
    lab.load(to, connections, proto=, hold=, pod=, timeout=, parallel=) -> LoadResult
    lab.start_load(...) -> LoadRun (connections held open until .stop())
    lab_rules(lab.topology, egress_ips, excluded=, no_gateway=) -> list[EgressRule]
"""

from egressgw.lab.lab import STATE_DIR, Lab, LoadRun, remove_lab
from egressgw.lab.load import LoadResult
from egressgw.lab.topology import LabSpec, Topology, lab_rules

__all__ = [
    "STATE_DIR",
    "Lab",
    "LabSpec",
    "LoadResult",
    "LoadRun",
    "Topology",
    "lab_rules",
    "remove_lab",
]
