"""``egressgw alerts``: Prometheus rules with thresholds from the refusal curve."""

from __future__ import annotations

from pathlib import Path

import click

from egressgw.cli.limits import chosen_limit, curve_options, datapath_options, search_and_sources
from egressgw.cli.options import node_port_range_option
from egressgw.cli.outputs import check_output_path
from egressgw.config import NodePortRange
from egressgw.limits import NatPortRange, PortLimit, datapath_limit


def _flags(cilium_version: str, node_port_range: NodePortRange, source_ports: str,
           clients: int, limit: PortLimit) -> str:
    """The flags that differ from the defaults, so the header names the real command."""
    flags = []
    if limit.datapath == "netfilter":
        flags.append(f"--datapath-model netfilter --nat-port-range {limit.port_range}")
    elif cilium_version != "1.16":
        flags.append(f"--cilium-version {cilium_version}")
    if node_port_range != NodePortRange() and limit.datapath == "cilium":
        flags.append(f"--node-port-range {node_port_range}")
    if source_ports != "linux":
        flags.append(f"--source-ports {source_ports}")
    if clients != 400:
        flags.append(f"--clients {clients}")
    return "".join(" " + f for f in flags)


def rules_text(cilium_version: str = "1.16", node_port_range: NodePortRange | None = None,
               source_ports: str = "linux", clients: int = 400, *,
               limit: PortLimit | None = None) -> str:
    """The rules for Cilium's search over ``node_port_range``, or for the datapath of
    ``limit`` (a Linux gateway's nf_nat over its SNAT rule's range)."""
    from egressgw.sim.alerts import render_rules  # noqa: PLC0415
    from egressgw.sim.refusal import planning_curve  # noqa: PLC0415

    npr = node_port_range or NodePortRange()
    limit = limit or datapath_limit("cilium", node_port_range=npr)
    search, sources = search_and_sources(cilium_version, npr, source_ports, clients,
                                         limit=limit)
    curve = planning_curve(search, sources, limit.ports)
    flags = _flags(cilium_version, npr, source_ports, clients, limit)
    return render_rules(curve, command=f"egressgw alerts{flags}",
                        limits_command=f"egressgw limits{flags}")


@click.command(
    "alerts",
    epilog="""\b
Examples:
  egressgw alerts > egressgw-rules.yaml
  egressgw alerts --cilium-version 1.18 --out /etc/prometheus/rules/egressgw-rules.yaml
  egressgw alerts --clients 0        # clients that draw random source ports
  egressgw alerts --datapath-model netfilter --nat-port-range 1024-65535""",
)
@curve_options
@node_port_range_option()
@datapath_options
@click.option("--out", "out_path", type=click.Path(path_type=Path), metavar="FILE.yaml",
              help="Write the rules to FILE instead of standard output.")
def alerts_command(*, cilium_version: str, source_ports: str, clients: int,
                   node_port_range: NodePortRange, datapath_model: str,
                   nat_port_range: NatPortRange | None, out_path: Path | None) -> None:
    """Prometheus alerting rules whose thresholds come from the refusal curve.

    \b
    The warning fires per tuple 5 points below the saturation at which 0.01% of new
    connections are refused (see `egressgw limits`), the critical saturation alert
    where 1% are, and the failure alert as soon as refusals are measured.
    deploy/prometheus/egressgw-rules.yaml is this command's output with the defaults.
    """
    if out_path is not None:
        check_output_path(out_path, (".yaml", ".yml"), field="--out")
    limit = chosen_limit(datapath_model, node_port_range, nat_port_range)
    text = rules_text(cilium_version, node_port_range, source_ports, clients, limit=limit)
    if out_path is None:
        click.echo(text, nl=False)
    else:
        out_path.write_text(text, encoding="utf-8")
