"""``egressgw simulate``: run a workload through the model datapath on a virtual clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from egressgw.cli.options import (
    check_linux_gateway_flags,
    cilium_version_option,
    nat_lru_options,
    nat_map_stats_entries_option,
    nat_map_stats_interval_option,
    nat_port_range_option,
    node_port_range_option,
    output_option,
    parse_duration_flag,
)
from egressgw.config import NodePortRange
from egressgw.datapath.model.config import CT_MAP_ANY_DEFAULT, CT_MAP_TCP_DEFAULT
from egressgw.errors import ConfigError
from egressgw.limits import NatPortRange
from egressgw.rules import EgressRule

F = TypeVar("F", bound=Callable[..., Any])


def datapath_options(func: F) -> F:
    """The Cilium flags a simulation takes (shared by simulate and plan)."""
    options = [
        click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True,
                     help="Seed of every random draw: equal seeds, equal results."),
        click.option("--duration", callback=parse_duration_flag, metavar="DURATION",
                     help="Virtual time to simulate, e.g. 30m or 2h "
                          "(default: the workload's duration, else 1h)."),
        node_port_range_option(),
        click.option("--bpf-nat-global-max", type=click.IntRange(1 << 10, 1 << 24),
                     default=524288, show_default=True,
                     help="NAT map entries (2 per connection), LRU when full."),
        nat_map_stats_interval_option("Virtual time between nat-stats passes."),
        nat_map_stats_entries_option(),
        click.option("--conntrack-gc-interval", callback=parse_duration_flag, metavar="DURATION",
                     help="Fixed CT GC interval (default: Cilium's adaptive one)."),
        click.option("--bpf-ct-global-tcp-max", type=int, default=CT_MAP_TCP_DEFAULT,
                     show_default=True,
                     help="TCP CT map entries: the adaptive CT GC divides deletions by it."),
        click.option("--bpf-ct-global-any-max", type=int, default=CT_MAP_ANY_DEFAULT,
                     show_default=True, help="Non-TCP CT map entries, likewise."),
        cilium_version_option(
            "Cilium version of the model datapath: its port arithmetic, retries and signal "
            "threshold (1.16: modulo clamp, 128 retries; 1.17: multiply-shift clamp, 128; "
            "1.18: multiply-shift, 32). Cilium only: an error with --datapath-model "
            "netfilter (plan: then only the form of the policy YAML), as are the "
            "--bpf-*, --conntrack-gc-interval and LRU flags."),
        click.option("--datapath-model", type=click.Choice(["cilium", "netfilter"]),
                     default="cilium", show_default=True,
                     help="cilium: Cilium's BPF SNAT (--cilium-version); netfilter: a Linux "
                          "gateway's nf_nat and conntrack."),
        nat_port_range_option("netfilter model: the SNAT rule's ports (default: egressgw's "
                              "rule, MAX+1-65535 of --node-port-range)."),
    ]
    for option in reversed(options):
        func = option(func)
    return nat_lru_options(func)


def settings_from_options(
    *,
    workload_duration: float | None,
    seed: int,
    duration: float | None,
    node_port_range: NodePortRange,
    bpf_nat_global_max: int,
    nat_map_stats_interval: float,
    nat_map_stats_entries: int,
    cilium_version: str,
    conntrack_gc_interval: float | None,
    bpf_ct_global_tcp_max: int = CT_MAP_TCP_DEFAULT,
    bpf_ct_global_any_max: int = CT_MAP_ANY_DEFAULT,
    nat_lru: str = "exact",
    possible_cpus: int = 8,
    flow_cpus: str = "hash",
    bpf_distributed_lru: bool = False,
    datapath_model: str = "cilium",
    nat_port_range: NatPortRange | None = None,
) -> Any:
    from egressgw.sim.simulate import DEFAULT_DURATION, SimSettings  # noqa: PLC0415

    return SimSettings(
        duration=duration if duration is not None else workload_duration or DEFAULT_DURATION,
        seed=seed,
        node_port_range=node_port_range,
        bpf_nat_global_max=bpf_nat_global_max,
        stats_interval=nat_map_stats_interval,
        stats_entries=nat_map_stats_entries,
        cilium_version=cilium_version,
        conntrack_gc_interval=conntrack_gc_interval,
        bpf_ct_global_tcp_max=bpf_ct_global_tcp_max,
        bpf_ct_global_any_max=bpf_ct_global_any_max,
        nat_lru=nat_lru,
        possible_cpus=possible_cpus,
        flow_cpus=flow_cpus,
        bpf_distributed_lru=bpf_distributed_lru,
        datapath_model=datapath_model,
        nat_port_range=nat_port_range,
    )


def load_rules(policies: Path | None, inventory: Path | None) -> list[EgressRule] | None:
    """Compiled rules from --policies and --inventory (both or neither)."""
    if policies is None and inventory is None:
        return None
    if policies is None or inventory is None:
        raise ConfigError("--policies and --inventory go together", field="--policies")
    from egressgw.policy import compile_rules, load_inventory, load_policies  # noqa: PLC0415

    return compile_rules(load_policies(policies), load_inventory(inventory))


@click.command(
    "simulate",
    epilog="""\b
Examples:
  egressgw simulate workload.yaml
  egressgw simulate workload.yaml --duration 2h --seed 7 --plot saturation.png
  egressgw simulate workload.yaml --policies policies.yaml --inventory inventory.yaml
  egressgw simulate workload.yaml --node-port-range 30000,32767 -o json""",
)
@click.argument("workload_path", metavar="WORKLOAD.yaml", type=click.Path(path_type=Path))
@click.option("--policies", type=click.Path(path_type=Path),
              help="CiliumEgressGatewayPolicy file or directory: picks each client's egress IP.")
@click.option("--inventory", type=click.Path(path_type=Path),
              help="Nodes and endpoints the policies are compiled against.")
@datapath_options
@output_option("table", "json", "yaml")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), metavar="FILE.png",
              help="Also draw saturation over time for the top tuples.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), metavar="DIR",
              help="Also write DIR/report.md and DIR/saturation.png (as the demo does).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
def simulate_command(
    *,
    workload_path: Path,
    policies: Path | None,
    inventory: Path | None,
    output: str,
    plot_path: Path | None,
    report_dir: Path | None,
    progress: bool | None,
    **options: Any,
) -> None:
    """Simulate WORKLOAD.yaml on the model of Cilium's egress-gateway SNAT.

    Runs on a virtual clock with a nat-stats pass every interval, and reports connections
    attempted and established, drops by reason, NAT map evictions, broken connections,
    the port search's tries histogram, and when each tuple first reached 80%, 95% and
    100% of its source ports.
    """
    from egressgw.cli.outputs import (  # noqa: PLC0415
        check_output_dir,
        check_output_path,
        notice_model_compile,
    )
    from egressgw.render.documents import dump_document  # noqa: PLC0415
    from egressgw.sim.report import render_summary, result_document  # noqa: PLC0415
    from egressgw.sim.simulate import simulate  # noqa: PLC0415
    from egressgw.sim.workload import load_workload  # noqa: PLC0415

    # First: the settings' own checks would otherwise speak first of a flag that has no
    # meaning for the datapath chosen.
    check_linux_gateway_flags(options["datapath_model"])
    # Where the output goes is checked before the run, so a typo costs nothing.
    if plot_path is not None:
        check_output_path(plot_path, (".png",), field="--plot")
    if report_dir is not None:
        check_output_dir(report_dir, field="--report")
    workload = load_workload(workload_path)
    rules = load_rules(policies, inventory)
    settings = settings_from_options(workload_duration=workload.duration, **options)
    notice_model_compile()
    result = simulate(workload, settings, rules=rules, progress=progress)
    title = f"egressgw simulate {workload_path.name}"
    if plot_path is not None:
        from egressgw.sim.plot import plot_saturation  # noqa: PLC0415

        plot_saturation(result, plot_path, title=title)
    written = None
    if report_dir is not None:
        from egressgw.sim.report import write_report  # noqa: PLC0415

        written = write_report(result, report_dir, title=title)
    if output == "table":
        click.echo(render_summary(result), nl=False)
        if plot_path is not None:
            click.echo(f"\nPlot: {plot_path}")
        if written is not None:
            click.echo(f"Report: {written[0]} (plot: {written[1]})")
    else:
        click.echo(dump_document(result_document(result), output), nl=False)
