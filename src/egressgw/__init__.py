"""egressgw: an egress gateway that accounts for its SNAT source ports.

The names below are the public API for scripts and notebooks (docs/api.md); everything
else may change between releases. They are imported on first use, so ``import egressgw``
stays cheap and a core install without the simulation extras can still use the parts it
has::

    import egressgw

    counts = egressgw.count_file("nat-list.txt")            # cilium-dbg bpf nat list
    stats = egressgw.compute_nat_stats(counts.counts, limit=egressgw.dump_limit(counts.format))
    print(egressgw.render_table(stats.rows))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from egressgw.lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from egressgw.config import NodePortRange
    from egressgw.datapath.model import ModelConfig, ModelDatapath
    from egressgw.dumps import DumpCounts, count_endpoints, count_file, iter_entries
    from egressgw.errors import AgentError, ConfigError, DatapathError, EgressgwError, InputError
    from egressgw.limits import NatPortRange, PortLimit, datapath_limit, dump_limit
    from egressgw.net import Direction, Family, NatEndpoint, NatEntry, Proto
    from egressgw.policy import (
        EgressRule,
        compile_policies,
        compile_rules,
        load_inventory,
        load_policies,
    )
    from egressgw.sim.simulate import SimSettings, SimulationResult, simulate
    from egressgw.sim.workload import Workload, load_workload
    from egressgw.stats import (
        NatStats,
        NatStatsRow,
        compute_nat_stats,
        render_saturation,
        render_table,
        stats_document,
    )

# Public name -> the module that defines it. One table, so the API is one glance.
_EXPORTS: dict[str, str] = {
    # errors: every failure a caller can meet
    "EgressgwError": "egressgw.errors",
    "InputError": "egressgw.errors",
    "ConfigError": "egressgw.errors",
    "DatapathError": "egressgw.errors",
    "AgentError": "egressgw.errors",
    # value types
    "Family": "egressgw.net",
    "Proto": "egressgw.net",
    "Direction": "egressgw.net",
    "NatEndpoint": "egressgw.net",
    "NatEntry": "egressgw.net",
    "NodePortRange": "egressgw.config",
    # the limit a saturation divides by
    "PortLimit": "egressgw.limits",
    "NatPortRange": "egressgw.limits",
    "datapath_limit": "egressgw.limits",
    "dump_limit": "egressgw.limits",
    # dumps taken on real nodes
    "DumpCounts": "egressgw.dumps",
    "count_file": "egressgw.dumps",
    "count_endpoints": "egressgw.dumps",
    "iter_entries": "egressgw.dumps",
    # nat-stats
    "NatStats": "egressgw.stats",
    "NatStatsRow": "egressgw.stats",
    "compute_nat_stats": "egressgw.stats",
    "render_table": "egressgw.stats",
    "render_saturation": "egressgw.stats",
    "stats_document": "egressgw.stats",
    # policies
    "EgressRule": "egressgw.policy",
    "load_policies": "egressgw.policy",
    "load_inventory": "egressgw.policy",
    "compile_rules": "egressgw.policy",
    "compile_policies": "egressgw.policy",
    # the model datapath and the simulator (need the simulation extras)
    "ModelConfig": "egressgw.datapath.model",
    "ModelDatapath": "egressgw.datapath.model",
    "Workload": "egressgw.sim.workload",
    "load_workload": "egressgw.sim.workload",
    "SimSettings": "egressgw.sim.simulate",
    "SimulationResult": "egressgw.sim.simulate",
    "simulate": "egressgw.sim.simulate",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "AgentError",
    "ConfigError",
    "DatapathError",
    "Direction",
    "DumpCounts",
    "EgressRule",
    "EgressgwError",
    "Family",
    "InputError",
    "ModelConfig",
    "ModelDatapath",
    "NatEndpoint",
    "NatEntry",
    "NatPortRange",
    "NatStats",
    "NatStatsRow",
    "NodePortRange",
    "PortLimit",
    "Proto",
    "SimSettings",
    "SimulationResult",
    "Workload",
    "compile_policies",
    "compile_rules",
    "compute_nat_stats",
    "count_endpoints",
    "count_file",
    "datapath_limit",
    "dump_limit",
    "iter_entries",
    "load_inventory",
    "load_policies",
    "load_workload",
    "render_saturation",
    "render_table",
    "simulate",
    "stats_document",
]
