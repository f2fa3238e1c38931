"""``egressgw agent``: run the gateway agent in the foreground."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from egressgw.agent import AgentConfig, ListenAddress, make_datapath, run_agent
from egressgw.agent.datapaths import DATAPATHS
from egressgw.cli.options import (
    bpf_nat_global_max_option,
    check_linux_gateway_flags,
    cilium_version_option,
    nat_lru_options,
    nat_map_stats_entries_option,
    nat_map_stats_interval_option,
    node_port_range_option,
    parse_duration_flag,
)
from egressgw.config import NodePortRange
from egressgw.datapath.base import Datapath

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool) -> None:
    """Timestamped lines on stderr: the agent's log is what an operator reads first."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT
    )


@click.command(
    "agent",
    epilog="""\b
Examples:
  egressgw agent --policies policies/ --inventory inventory.yaml --node gw1
  egressgw agent ... --nat-map-stats-interval 5s --listen [::1]:9967
  egressgw agent --cleanup            # remove the installed rules and exit
  egressgw agent --datapath bpf --node-port-range 30000,65471 ...   # tc program, 64 ports

\b
Signals: SIGHUP re-applies the files; SIGTERM/SIGINT exit and leave the rules (and
every tracked connection) in place, so a restarted agent picks up where it left off.""",
)
@click.option("--policies", type=click.Path(path_type=Path),
              help="CiliumEgressGatewayPolicy YAML file or directory.")
@click.option("--inventory", type=click.Path(path_type=Path),
              help="Nodes and endpoints YAML.")
@click.option("--node", help="This gateway's node name in the inventory.")
@click.option("--datapath", "datapath_kind", type=click.Choice(DATAPATHS),
              default="kernel", show_default=True,
              help="kernel: nftables + conntrack here; model: Cilium's BPF SNAT in memory; "
                   "bpf: Cilium's SNAT as a tc program on the uplink.")
@node_port_range_option()
@bpf_nat_global_max_option("With --datapath bpf: entries of the NAT map (2 per connection).")
@cilium_version_option("Port search of --datapath model and bpf: 1.16 modulo clamp, 128 "
                       "retries; 1.17 multiply-shift, 128; 1.18 multiply-shift, 32.")
@nat_lru_options
@click.option("--bpf-device", metavar="DEV",
              help="With --datapath bpf: the uplink (default: the device holding the egress "
                   "IPs).")
@nat_map_stats_interval_option("How often nat-stats are recounted (0 disables).")
@nat_map_stats_entries_option("Top K tuples kept per family (1..4096).")
@click.option("--listen", default="127.0.0.1:9967", show_default=True,
              help="IP:PORT or [IPv6]:PORT of the HTTP API and /metrics (an IP literal; "
                   "beyond loopback, a warning is logged).")
@click.option("--poll-interval", default="1s", show_default=True, metavar="DURATION",
              callback=parse_duration_flag,
              help="How often file changes and failure counters are checked.")
@click.option("--cleanup", is_flag=True, help="Remove the installed rules and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages too.")
def agent(
    *,
    policies: Path | None,
    inventory: Path | None,
    node: str | None,
    datapath_kind: str,
    node_port_range: NodePortRange,
    bpf_nat_global_max: int,
    cilium_version: str,
    nat_lru: str,
    possible_cpus: int,
    flow_cpus: str,
    bpf_distributed_lru: bool,
    bpf_device: str | None,
    nat_map_stats_interval: float,
    nat_map_stats_entries: int,
    listen: str,
    poll_interval: float,
    cleanup: bool,
    verbose: bool,
) -> None:
    """Enforce egress policies on this gateway and watch its SNAT ports.

    Applies the policies for --node at start, whenever the files change and on SIGHUP
    (a malformed file is logged and the running rules stay), recounts nat-stats every
    --nat-map-stats-interval and serves /metrics, /v1/statedb/nat-stats and /healthz.
    """
    # --datapath kernel is nf_nat: Cilium's flags given with it are an error, not ignored.
    check_linux_gateway_flags("kernel" if datapath_kind == "kernel" else None)
    configure_logging(verbose)
    ports = node_port_range

    def build() -> Datapath:
        return make_datapath(
            datapath_kind, ports, cilium_version=cilium_version, nat_lru=nat_lru,
            possible_cpus=possible_cpus, flow_cpus=flow_cpus,
            bpf_distributed_lru=bpf_distributed_lru, nat_global_max=bpf_nat_global_max,
            device=bpf_device,
        )

    if cleanup:
        build().cleanup()
        logging.getLogger("egressgw.agent").info("removed the %s datapath's rules",
                                                 datapath_kind)
        return
    missing = [flag for flag, value in (("--policies", policies), ("--inventory", inventory),
                                        ("--node", node)) if not value]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (needed unless --cleanup)")
    assert policies is not None and inventory is not None and node is not None
    # Every flag is checked before the datapath is built (the model's is slow to load).
    config = AgentConfig(
        policies=policies,
        inventory=inventory,
        node=node,
        datapath=datapath_kind,
        node_port_range=ports,
        stats_interval=nat_map_stats_interval,
        stats_entries=nat_map_stats_entries,
        listen=ListenAddress.parse(listen),
        poll_interval=poll_interval,
    )
    run_agent(config, build())
