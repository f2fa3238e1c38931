"""``egressgw lab``: a gateway, pods and servers in network namespaces on this machine."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from egressgw.cli.options import (
    bpf_nat_global_max_option,
    cilium_version_option,
    nat_map_stats_entries_option,
    node_port_range_option,
    output_option,
)
from egressgw.config import NodePortRange
from egressgw.datapath.base import Datapath
from egressgw.errors import ConfigError, DatapathError
from egressgw.lab import Lab, LabSpec, lab_rules, remove_lab
from egressgw.lab.load import MAX_CONNECTIONS, LoadResult, check_load_flags
from egressgw.limits import cilium_limit, netfilter_rule_limit
from egressgw.net import parse_cidr, parse_ip
from egressgw.policy import compile_rules, load_inventory, load_policies, rules_for_gateway
from egressgw.stats import compute_nat_stats, render_saturation, render_table

NAME_OPTION = click.option("--name", default="lab", show_default=True,
                           help="Lab name; namespaces are egw-NAME-{client,gw,server}.")
DATAPATH_OPTION = click.option(
    "--datapath", type=click.Choice(["kernel", "bpf"]), default="kernel", show_default=True,
    help="kernel: nftables SNAT; bpf: Cilium's SNAT as a tc program on the gateway's uplink.")


def _gateway_datapath(found: Lab, datapath: str, node_port_range: NodePortRange,
                      nat_global_max: int = 524288, cilium_version: str = "1.16", *,
                      create: bool = True) -> Datapath:
    if datapath == "kernel":
        return found.datapath(node_port_range)
    from egressgw.datapath.bpf import BpfDatapath, BpfSettings  # noqa: PLC0415

    return BpfDatapath(BpfSettings(node_port_range, nat_global_max=nat_global_max,
                                   cilium_version=cilium_version,
                                   netns=found.topology.gateway_ns), create=create)


@click.group(
    "lab",
    epilog="""\b
Examples:
  egressgw lab up
  egressgw lab apply --egress-ip 203.0.113.10 --node-port-range 30000,65471
  egressgw lab load --to 198.51.100.10:443 --connections 100 --hold 60 &
  egressgw lab nat-stats --node-port-range 30000,65471
  egressgw lab down""",
)
def lab() -> None:
    """Real network namespaces: pods, an egress gateway node and servers (needs root)."""


@lab.command("up")
@NAME_OPTION
@click.option("--pods", type=int, default=4, show_default=True, help="Pod addresses per family.")
@click.option("--egress-ips", type=int, default=2, show_default=True,
              help="Egress IPs per family on the gateway.")
@click.option("--servers", type=int, default=2, show_default=True,
              help="Server addresses per family.")
def up(*, name: str, pods: int, egress_ips: int, servers: int) -> None:
    """Build the lab and start its TCP/UDP servers."""
    built = Lab.up(LabSpec(name, pods=pods, egress_ips=egress_ips, servers=servers))
    _print_summary(built)
    # The BPF datapath pins on a bpffs that must be mounted here, in the host's mount
    # namespace, before an agent runs inside `ip netns exec` (see datapath/bpf/pins.py).
    from egressgw.datapath.bpf.pins import BPFFS_DIR, ensure_bpffs  # noqa: PLC0415

    try:
        ensure_bpffs()
    except DatapathError as exc:
        click.echo(f"  bpffs       not mounted ({exc}): --datapath bpf unavailable")
    else:
        click.echo(f"  bpffs       {BPFFS_DIR} (for --datapath bpf)")


@lab.command("down")
@NAME_OPTION
def down(*, name: str) -> None:
    """Remove the lab: its processes, namespaces and state (also half-built ones)."""
    remove_lab(name)
    click.echo(f"lab {name} removed")


@lab.command("status")
@NAME_OPTION
@output_option("text", "json")
def status(*, name: str, output: str) -> None:
    """Show the lab's namespaces, addresses and server."""
    found = Lab.find(name)
    if output == "json":
        click.echo(json.dumps(found.status(), indent=2))
    else:
        _print_summary(found)


def _print_summary(found: Lab) -> None:
    info = found.status()
    t = found.topology
    server = info["server"]
    assert isinstance(server, dict)
    state = "running" if server["running"] else "NOT running"
    click.echo(f"lab {t.name}")
    click.echo(f"  namespaces  client={t.client_ns} gateway={t.gateway_ns} server={t.server_ns}")
    click.echo(f"  pods        {' '.join([*t.pods4, *t.pods6])}")
    click.echo(f"  egress IPs  {' '.join([*t.egress4, *t.egress6])}")
    click.echo(f"  servers     {' '.join([*t.servers4, *t.servers6])}")
    click.echo(f"  ports       tcp {','.join(map(str, t.tcp_ports))}  "
               f"udp {','.join(map(str, t.udp_ports))}  (server pid {t.server_pid}, {state})")
    click.echo(f"  conntrack   {info['gateway_conntrack_entries']} entries on the gateway")


@lab.command("apply")
@NAME_OPTION
@click.option("--egress-ip", "egress_ips", multiple=True,
              help="Egress IP(s); pods are spread over them round robin (default: the first "
                   "egress IP of each family).")
@click.option("--exclude", "excluded", multiple=True, help="Excluded destination CIDR(s).")
@click.option("--destination", "destinations", multiple=True,
              help="Destination CIDR(s) (default: both server networks).")
@click.option("--no-gateway", is_flag=True,
              help="Drop the pods' traffic instead (no gateway node matched).")
@click.option("--policies", type=click.Path(path_type=Path),
              help="Apply CiliumEgressGatewayPolicy YAML (file or directory) instead.")
@click.option("--inventory", type=click.Path(path_type=Path),
              help="With --policies: nodes and endpoints YAML (the bundled example inventory "
                   "describes the lab).")
@click.option("--node", default="gateway-1", show_default=True,
              help="With --policies: the gateway's node name in the inventory.")
@node_port_range_option()
@DATAPATH_OPTION
@bpf_nat_global_max_option("With --datapath bpf: entries of the NAT map (2 per connection).")
@cilium_version_option("With --datapath bpf: whose nat.h port search the program runs.")
@click.option("--dry-run", is_flag=True, help="Print the nft script instead of loading it.")
def apply(*, name: str, egress_ips: tuple[str, ...], excluded: tuple[str, ...],
          destinations: tuple[str, ...], no_gateway: bool, policies: Path | None,
          inventory: Path | None, node: str, node_port_range: NodePortRange,
          datapath: str, bpf_nat_global_max: int, cilium_version: str,
          dry_run: bool) -> None:
    """Masquerade the pods' traffic on the lab gateway (one nft transaction).

    Without --policies every pod is masqueraded towards the server networks; with
    --policies and --inventory, the policies are compiled and this node's rules applied.
    """
    # Every flag is checked before anything is looked up or changed.
    _check_addresses(parse_ip, egress_ips, "--egress-ip")
    _check_addresses(parse_cidr, excluded, "--exclude")
    _check_addresses(parse_cidr, destinations, "--destination")
    found = Lab.find(name)
    t = found.topology
    if policies is not None:
        if inventory is None:
            raise ConfigError("--policies needs --inventory", field="--inventory")
        compiled = compile_rules(load_policies(policies), load_inventory(inventory))
        rules = rules_for_gateway(compiled, node)
    else:
        chosen = list(egress_ips) or [t.egress4[0], t.egress6[0]]
        rules = lab_rules(t, chosen, destinations=list(destinations) or None,
                          excluded=excluded, no_gateway=no_gateway)
    if datapath == "bpf":
        if dry_run:
            raise ConfigError("--dry-run prints nft scripts: not with --datapath bpf",
                              field="--dry-run")
        bpf = _gateway_datapath(found, datapath, node_port_range, bpf_nat_global_max,
                                cilium_version)
        bpf.apply(rules)
        click.echo(f"applied {len(rules)} rules in {t.gateway_ns} (egressgw bpf nat list "
                   f"--netns {t.gateway_ns})")
        return
    kernel = found.datapath(node_port_range)
    if dry_run:
        click.echo(kernel.render(rules), nl=False)
        return
    kernel.apply(rules)
    click.echo(f"applied {len(rules)} rules in {t.gateway_ns} (nft list table inet egressgw)")


@lab.command("load")
@NAME_OPTION
@click.option("--to", "to", required=True, help="Server IP:PORT, [IPv6]:PORT, or IP for ICMP.")
@click.option("--connections", type=int, default=1, show_default=True,
              help=f"Connections to open (1..{MAX_CONNECTIONS}).")
@click.option("--proto", type=click.Choice(["tcp", "udp", "icmp"]), default="tcp",
              show_default=True)
@click.option("--hold", type=float, default=0.0, show_default=True,
              help="Seconds to keep the connections open afterwards (progress goes to "
                   "stderr meanwhile; Ctrl-C ends the hold early).")
@click.option("--from", "pod", help="Pod address to connect from (default: the first pod).")
@click.option("--timeout", type=float, default=2.0, show_default=True,
              help="Seconds a connection may take before it counts as failed.")
@click.option("--parallel", type=int, default=256, show_default=True,
              help="Connections in flight at once (1: strictly one after another).")
def load(*, name: str, to: str, connections: int, proto: str, hold: float, pod: str | None,
         timeout: float, parallel: int) -> None:
    """Open real connections from a pod through the gateway; report how many succeeded.

    The result is printed as soon as every connection is settled; with --hold the
    connections then stay open, a progress line every 5 s on stderr, and the command
    ends when the hold does. The load process dies with this command.
    """
    check_load_flags(connections, parallel, timeout, hold)
    found = Lab.find(name)

    def report(result: LoadResult) -> None:
        click.echo(f"{result.proto} {result.source} -> {result.to}: {result.attempted} "
                   f"attempted, {result.succeeded} succeeded, {result.failed} failed in "
                   f"{result.seconds:.2f} s")
        if result.errors:
            click.echo("  failures: " + ", ".join(f"{k} {v}" for k, v in result.errors.items()))
        if result.seen_as:
            click.echo("  the server saw: " + ", ".join(f"{k} x{v}" for k, v in
                                                        result.seen_as.items()))
        if hold > 0:
            click.echo(f"  holding them for {hold:g} s", err=True)

    def progress(state: dict[str, float]) -> None:
        click.echo(f"  holding: {int(state['held'])} of {int(state['connections'])} "
                   f"connections open, {state['elapsed']:.0f} s of {state['hold']:g} s",
                   err=True)

    found.load(to, connections, proto=proto, hold=hold, pod=pod, timeout=timeout,
               parallel=parallel, on_result=report, on_progress=progress)


@lab.command("nat-stats")
@NAME_OPTION
@node_port_range_option()
@nat_map_stats_entries_option()
@DATAPATH_OPTION
def nat_stats(*, name: str, node_port_range: NodePortRange, nat_map_stats_entries: int,
              datapath: str) -> None:
    """nat-stats of the lab gateway's NAT table, like cilium-dbg statedb nat-stats.

    kernel: its conntrack table; saturation divides by the ports in the NAT range
    (MAX+1..65535), since the kernel's port search can use every one of them. bpf: the
    pinned NAT map, dividing like Cilium by the ports its clamp reaches.
    """
    found = Lab.find(name)
    if datapath == "kernel":
        kernel = found.datapath(node_port_range)
        counts, reusable = kernel.endpoint_usage()
        stats = compute_nat_stats(counts, entries=nat_map_stats_entries, reusable=reusable,
                                  limit=netfilter_rule_limit(node_port_range=node_port_range))
        click.echo(render_table(stats.rows), nl=False)
        click.echo(render_saturation(stats), nl=False)
        failed = sum(kernel.allocation_failures().values())
        drops = kernel.drop_counts()
        click.echo(f"failed connection attempts (once per tuple, seen when retried): {failed}")
        click.echo("dropped packets: " + ", ".join(f"{k} {v}" for k, v in drops.items()))
        return
    gateway = _gateway_datapath(found, datapath, node_port_range, create=False)
    stats = compute_nat_stats(gateway.endpoint_counts(), entries=nat_map_stats_entries,
                              limit=cilium_limit(node_port_range))
    click.echo(render_table(stats.rows), nl=False)
    click.echo(render_saturation(stats), nl=False)
    failures = gateway.allocation_failures()
    click.echo("drops: " + ", ".join(f"{k} {v}" for k, v in failures.items()))


def _check_addresses(parse: Callable[[str], object], texts: Sequence[str], flag: str) -> None:
    for text in texts:
        try:
            parse(text)
        except ValueError as exc:
            raise ConfigError(str(exc), field=flag) from None
