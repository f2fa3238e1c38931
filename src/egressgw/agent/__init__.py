"""The egressgw agent: reconcile policies into a datapath, count nat-stats, serve an API.

Public API::

    AgentConfig(policies, inventory, node, datapath="kernel", node_port_range=...,
                stats_interval=30.0, stats_entries=32, listen=ListenAddress(...),
                poll_interval=1.0, background_recount=True)
    Agent(config, datapath, *, clock=time.monotonic, wall=time.time)
        .start() / .tick() -> float / .run(wait=None) / .request_reload() / .request_stop()
        .close()
        .state (AgentState) / .registry (CollectorRegistry) / .api (AgentAPI)
    AgentHTTPServer(listen, api).start() / .address / .stop()
    run_agent(config, datapath)                        # the CLI's foreground loop
    make_datapath("kernel" | "model", node_port_range) -> Datapath
    fetch_nat_stats_rows(server_url) -> list[NatStatsRow]

Names are imported on first use, so a client (``egressgw statedb``) does not pay for the
server, Prometheus and the datapaths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from egressgw.lazy import lazy_exports

from .endpoints import DEFAULT_SERVER, NAT_STATS_PATH

if TYPE_CHECKING:
    from .client import fetch_nat_stats, fetch_nat_stats_rows
    from .datapaths import make_datapath
    from .loop import Agent, AgentConfig, run_agent, stop_on_signals
    from .server import AgentAPI, AgentHTTPServer, ListenAddress
    from .state import (
        AgentState,
        CountSnapshot,
        FailureSnapshot,
        ReconcileStatus,
        RecountStatus,
    )

_LAZY = {
    "fetch_nat_stats": ".client",
    "fetch_nat_stats_rows": ".client",
    "make_datapath": ".datapaths",
    "Agent": ".loop",
    "AgentConfig": ".loop",
    "run_agent": ".loop",
    "stop_on_signals": ".loop",
    "AgentAPI": ".server",
    "AgentHTTPServer": ".server",
    "ListenAddress": ".server",
    "AgentState": ".state",
    "CountSnapshot": ".state",
    "FailureSnapshot": ".state",
    "ReconcileStatus": ".state",
    "RecountStatus": ".state",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "DEFAULT_SERVER",
    "NAT_STATS_PATH",
    "Agent",
    "AgentAPI",
    "AgentConfig",
    "AgentHTTPServer",
    "AgentState",
    "CountSnapshot",
    "FailureSnapshot",
    "ListenAddress",
    "ReconcileStatus",
    "RecountStatus",
    "fetch_nat_stats",
    "fetch_nat_stats_rows",
    "make_datapath",
    "run_agent",
    "stop_on_signals",
]
