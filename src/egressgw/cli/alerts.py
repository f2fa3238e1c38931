"""``egressgw alerts``: Prometheus rules with thresholds from the refusal curve."""

from __future__ import annotations

from pathlib import Path

import click

from egressgw.cli.limits import chosen_limit, curve_options, datapath_options, search_and_sources
from egressgw.cli.options import node_port_range_option
from egressgw.cli.outputs import check_output_dir, check_output_path
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


RULES_FILE = "egressgw-rules.yaml"
FLEET_RULES_FILE = "egressgw-fleet-rules.yaml"
PROMETHEUS_RULE_FILE = "prometheusrule.yaml"


def rule_files(cilium_version: str = "1.16", node_port_range: NodePortRange | None = None,
               source_ports: str = "linux", clients: int = 400, *,
               limit: PortLimit | None = None) -> dict[str, str]:
    """The rules files by name, from one refusal curve: per instance, per node and tuple,
    and the Prometheus Operator's PrometheusRule. The curve is Cilium's search over
    ``node_port_range``, or the search of ``limit``'s datapath (a Linux gateway's nf_nat
    over its SNAT rule's range)."""
    from egressgw.sim.alerts import render_rules  # noqa: PLC0415
    from egressgw.sim.fleet_alerts import (  # noqa: PLC0415
        render_fleet_rules,
        render_prometheus_rule,
    )
    from egressgw.sim.refusal import planning_curve  # noqa: PLC0415

    npr = node_port_range or NodePortRange()
    limit = limit or datapath_limit("cilium", node_port_range=npr)
    search, sources = search_and_sources(cilium_version, npr, source_ports, clients,
                                         limit=limit)
    curve = planning_curve(search, sources, limit.ports)
    flags = _flags(cilium_version, npr, source_ports, clients, limit)
    limits_command = f"egressgw limits{flags}"
    rules = render_rules(curve, command=f"egressgw alerts{flags}", limits_command=limits_command)
    fleet = render_fleet_rules(curve, command=f"egressgw alerts --fleet{flags}",
                               limits_command=limits_command)
    return {
        RULES_FILE: rules,
        FLEET_RULES_FILE: fleet,
        PROMETHEUS_RULE_FILE: render_prometheus_rule(
            rules, fleet, command=f"egressgw alerts --kubernetes{flags}"),
    }


def rules_text(cilium_version: str = "1.16", node_port_range: NodePortRange | None = None,
               source_ports: str = "linux", clients: int = 400, *, fleet: bool = False,
               limit: PortLimit | None = None) -> str:
    files = rule_files(cilium_version, node_port_range, source_ports, clients, limit=limit)
    return files[FLEET_RULES_FILE if fleet else RULES_FILE]


@click.command(
    "alerts",
    epilog="""\b
Examples:
  egressgw alerts > egressgw-rules.yaml
  egressgw alerts --cilium-version 1.18 --out /etc/prometheus/rules/egressgw-rules.yaml
  egressgw alerts --fleet > egressgw-fleet-rules.yaml
  egressgw alerts --out-dir /etc/prometheus/rules   # both files
  egressgw alerts --kubernetes | kubectl apply -f -  # a PrometheusRule
  egressgw alerts --clients 0        # clients that draw random source ports
  egressgw alerts --datapath-model netfilter --nat-port-range 1024-65535""",
)
@curve_options
@node_port_range_option()
@datapath_options
@click.option("--fleet", is_flag=True,
              help="The fleet rules (by node and tuple) instead of the per-instance ones.")
@click.option("--kubernetes", is_flag=True,
              help="A PrometheusRule (Prometheus Operator): the fleet rules and the agent "
                   "health alerts.")
@click.option("--out", "out_path", type=click.Path(path_type=Path), metavar="FILE.yaml",
              help="Write the rules to FILE instead of standard output.")
@click.option("--out-dir", "out_dir", type=click.Path(path_type=Path), metavar="DIR",
              help=f"Write both rules files into DIR: {RULES_FILE} and {FLEET_RULES_FILE}.")
def alerts_command(*, cilium_version: str, source_ports: str, clients: int,
                   node_port_range: NodePortRange, datapath_model: str,
                   nat_port_range: NatPortRange | None, fleet: bool, kubernetes: bool,
                   out_path: Path | None, out_dir: Path | None) -> None:
    """Prometheus alerting rules whose thresholds come from the refusal curve.

    \b
    The warning fires per tuple 5 points below the saturation at which 0.01% of new
    connections are refused (see `egressgw limits`); the critical alert as soon as
    refusals are measured. --fleet: the same thresholds per node and tuple, with
    recording rules for the fleet's worst tuples. deploy/prometheus/ holds both files,
    and deploy/kubernetes/ the PrometheusRule, as this command writes them with the
    defaults.
    """
    if fleet and kubernetes:
        raise click.UsageError("--fleet and --kubernetes: give one (the PrometheusRule "
                               "holds the fleet rules)")
    if out_dir is not None:
        if out_path is not None or fleet or kubernetes:
            raise click.UsageError("--out-dir writes both rules files: give it without "
                                   "--out, --fleet or --kubernetes")
        check_output_dir(out_dir, field="--out-dir")
    if out_path is not None:
        check_output_path(out_path, (".yaml", ".yml"), field="--out")
    limit = chosen_limit(datapath_model, node_port_range, nat_port_range)
    files = rule_files(cilium_version, node_port_range, source_ports, clients, limit=limit)
    if out_dir is not None:
        out_dir.mkdir(exist_ok=True)
        for name in (RULES_FILE, FLEET_RULES_FILE):
            (out_dir / name).write_text(files[name], encoding="utf-8")
        return
    text = files[PROMETHEUS_RULE_FILE if kubernetes else FLEET_RULES_FILE if fleet else RULES_FILE]
    if out_path is None:
        click.echo(text, nl=False)
    else:
        out_path.write_text(text, encoding="utf-8")
