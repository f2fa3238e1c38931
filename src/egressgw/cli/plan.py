"""``egressgw plan``: the fewest egress IPs that keep every tuple under the targets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from egressgw.cli.options import (
    check_linux_gateway_flags,
    given,
    output_option,
    parse_duration_flag,
)
from egressgw.cli.outputs import notice_model_compile
from egressgw.cli.simulate import datapath_options, settings_from_options

# Exit status when no simulated plan meets the targets (bad input stays 2).
NO_PLAN = 1


def _demand_rows(demand: Any, divisor: int, limit: int = 10) -> list[list[str]]:
    from egressgw.net import format_ip  # noqa: PLC0415

    rows = [["EgressIP", "RemoteAddr", "Proto", "Rate/s", "MeanHold", "Expected",
             "Needed", "Saturation"]]
    for t in demand[:limit]:
        rows.append([
            format_ip(t.endpoint.egress_ip), t.endpoint.remote_addr, t.endpoint.proto.label,
            f"{t.peak_rate:.1f}", f"{t.mean_hold:.0f}s", f"{t.concurrent:.0f}",
            f"{t.needed:.0f}", f"{t.needed / divisor:.1%}",
        ])
    if len(demand) > limit:
        rows.append([f"... {len(demand) - limit} more"])
    return rows


def _check_line(check: Any, target: float, max_drop_rate: float) -> str:
    from egressgw.sim.report import format_seconds  # noqa: PLC0415

    r = check.result
    totals = r.totals
    verdict = "OK" if check.ok else "NOT OK"
    return (
        f"  {check.label}: peak saturation {r.peak_saturation:.1%} (target {target:.0%}), "
        f"refused {totals.refused}/{totals.attempted} = {check.refused_rate:.2e} "
        f"(max {max_drop_rate:.0e}), evictions {totals.evictions}, "
        f"{format_seconds(r.settings.duration)} simulated -> {verdict}\n"
    )


NODE_PORT_WARNING = (
    "  Changing --node-port-range moves the NodePort range: NodePort services get ports in\n"
    "  the new range (set kube-apiserver's --service-node-port-range to match), and\n"
    "  clients that reach them on the old ports must be told.\n"
)


def render_plan(plan: Any, divisor: int, limit: Any = None, policies: str | None = None) -> str:
    from egressgw.render.tabwriter import tabwrite  # noqa: PLC0415

    out = [f"Limit: {limit.describe()} per tuple.\n"] if limit is not None else []
    if plan.scale != 1:
        out.append(f"Traffic x{plan.scale:g}: every connection rate multiplied by "
                   f"{plan.scale:g}.\n")
    if plan.estimate_ips is None:
        out.append(f"Estimate: no count of egress IPs up to {len(plan.egress_ips)} keeps every "
                   f"tuple under {plan.target:.0%}.\n")
    else:
        out.append(f"Estimate: {plan.estimate_ips} egress IP(s) keep every tuple under "
                   f"{plan.target:.0%} of {divisor} ports.\n")
    gc = plan.estimate[0].gc_interval if plan.estimate else 0.0
    out.append(
        "  Expected = ports held at the busiest time (rate x hold, hold = duration + CT "
        f"close/idle timeout + GC wait; CT GC interval {gc:.0f}s);\n"
        "  Needed = with a whole GC interval's closed entries and 3 sigma of Poisson "
        "occupancy.\n"
    )
    out.append(tabwrite(_demand_rows(plan.estimate, divisor)))
    if plan.checks:
        out.append("\nSimulation (fewer egress IPs tried while the targets hold):\n")
        out += [_check_line(c, plan.target, plan.max_drop_rate) for c in plan.checks]
        confirmed = plan.confirmed
        if confirmed is not None:
            ips = ", ".join(str(ip) for ip in confirmed.result.egress_ips)
            spread = ", clients spread over them" if confirmed.egress_ips > 1 else ""
            out.append(f"\nPlan: {confirmed.label} ({ips}){spread}.\n")
        else:
            out.append("\nPlan: none of the simulated counts meets the targets; see the "
                       "lines above (try --max-egress-ips, or more time with --duration).\n")
    alternative = plan.alternative
    if alternative is not None and alternative.offered:
        npr = alternative.node_port_range
        out.append("\nAlternative: keep the workload's egress IPs and widen the NAT port range\n")
        out.append(f"  --node-port-range {npr} leaves {plan.node_port_ports} NAT ports "
                   "per tuple.\n")
        out.append(_check_line(alternative.check, plan.target, plan.max_drop_rate))
        out.append(NODE_PORT_WARNING)
    if policies:
        out.append("\nCiliumEgressGatewayPolicy for the plan:\n\n")
        out.append(policies)
    return "".join(out)


def _check_doc(check: Any) -> dict[str, Any]:
    r = check.result
    return {
        "label": check.label,
        "egressIPs": r.egress_ips,
        "ok": check.ok,
        "peakSaturation": r.peak_saturation,
        "attempted": r.totals.attempted,
        "refused": r.totals.refused,
        "refusedRate": check.refused_rate,
        "evictions": r.totals.evictions,
        "simulatedSeconds": r.settings.duration,
    }


def plan_document(plan: Any, divisor: int, limit: Any = None,
                  policies: str | None = None) -> dict[str, Any]:
    confirmed = plan.confirmed
    alternative = plan.alternative
    return {
        **({"portLimit": limit.document()} if limit is not None else {}),
        "targetSaturation": plan.target,
        "maxDropRate": plan.max_drop_rate,
        "scale": plan.scale,
        "estimateEgressIPs": plan.estimate_ips,
        "estimate": [
            {"egressIP": str(t.endpoint.egress_ip), "remoteAddr": t.endpoint.remote_addr,
             "proto": t.endpoint.proto.label, "ratePerSecond": t.peak_rate,
             "meanHold": t.mean_hold, "expected": t.concurrent, "needed": t.needed,
             "saturation": t.needed / divisor}
            for t in plan.estimate
        ],
        "checks": [_check_doc(c) for c in plan.checks],
        "plan": None if confirmed is None else {
            "egressIPs": confirmed.result.egress_ips, "count": confirmed.egress_ips,
        },
        "portRangeAlternative": None if alternative is None else {
            "offered": alternative.offered,
            "nodePortRange": (str(alternative.node_port_range)
                              if alternative.node_port_range else None),
            "reason": alternative.reason,
            "check": _check_doc(alternative.check) if alternative.check else None,
        },
        "policies": policies,
    }


def _observed_counts(source: str) -> tuple[Any, Any, str | None]:
    """Counts, the limit they say and the datapath that made them (a dump's format),
    from an agent URL or a nat-stats file or dump."""
    if source.startswith(("http://", "https://")):
        from egressgw.agent.client import fetch_nat_stats  # noqa: PLC0415
        from egressgw.limits import limit_from_document  # noqa: PLC0415
        from egressgw.sim.snapshots import parse_json  # noqa: PLC0415

        doc = fetch_nat_stats(source)
        counts, _when = parse_json(doc, source=source)
        limit = limit_from_document(doc)
        return counts, limit, limit.datapath if limit is not None else None
    from egressgw.sim.snapshots import load_snapshot  # noqa: PLC0415

    snapshot = load_snapshot(source, at="0")
    datapath = snapshot.datapath or (snapshot.limit.datapath if snapshot.limit else None)
    return snapshot.counts, snapshot.limit, datapath


def _announcer(enabled: bool | None) -> Any:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None

    def say(text: str) -> None:
        click.echo(f"plan: {text}", err=True)

    return say


@click.command(
    "plan",
    epilog="""\b
Examples:
  egressgw plan workload.yaml
  egressgw plan workload.yaml --scale 3 -o yaml          # next quarter's 3x traffic
  egressgw plan --stats nat-stats.json --connection-length 10m --scale 3
  egressgw plan --stats http://127.0.0.1:9967 --connection-length 10m  # the running agent
  egressgw plan --stats nat-stats.json --connection-length 10m --policy cegp.yaml
  egressgw plan workload.yaml --target-saturation 0.7 --max-drop-rate 0""",
)
@click.argument("workload_path", metavar="[WORKLOAD.yaml]", required=False,
                type=click.Path(path_type=Path))
@click.option("--stats", "stats_source", metavar="FILE|URL",
              help="Plan from observed nat-stats instead of a workload: a nat-stats table "
                   "or JSON, a NAT dump, or the agent's URL.")
@click.option("--connection-length", callback=parse_duration_flag, metavar="DURATION",
              help="With --stats: how long a connection stays open (median), e.g. 10m. "
                   "A closed connection's port is held a while longer (CT close timeout "
                   "and GC wait: the MeanHold column), the hold forecast --hold takes.")
@click.option("--hold", "deprecated_hold", callback=parse_duration_flag, metavar="DURATION",
              hidden=True, help="Deprecated spelling of --connection-length.")
@click.option("--clients", type=int, default=400, show_default=True, metavar="N",
              help="With --stats: clients per tuple (each walks its ephemeral ports).")
@click.option("--scale", type=float, default=1.0, show_default=True, metavar="FACTOR",
              help="Multiply every connection rate by FACTOR (3: three times the traffic).")
@click.option("--target-saturation", "target", type=float, default=0.8, show_default=True,
              help="Highest share of a tuple's ports any tuple may use.")
@click.option("--max-drop-rate", type=float, default=1e-4, show_default=True,
              help="Highest share of new connections the simulation may refuse.")
@click.option("--max-egress-ips", type=click.IntRange(1, 1024), default=64, show_default=True)
@click.option("--estimate-only", is_flag=True, help="Skip the confirming simulations.")
@click.option("--policy", "policy_path", type=click.Path(path_type=Path), metavar="FILE",
              help="The CiliumEgressGatewayPolicy in force (a file or directory, e.g. "
                   "kubectl get cegp NAME -o yaml), checked against --cilium-version's CRD: "
                   "the printed YAML is it with only its gateways changed. Without it the "
                   "selector and gateway node are placeholders.")
@click.option("--progress/--no-progress", default=None,
              help="Say what is being simulated, on stderr (default: when it is a terminal).")
@output_option("table", "json", "yaml")
@datapath_options
def plan_command(
    *,
    workload_path: Path | None,
    stats_source: str | None,
    connection_length: float | None,
    deprecated_hold: float | None,
    clients: int,
    scale: float,
    target: float,
    max_drop_rate: float,
    max_egress_ips: int,
    estimate_only: bool,
    policy_path: Path | None,
    progress: bool | None,
    output: str,
    **options: Any,
) -> None:
    """Find the fewest egress IPs whose simulated saturation and refusals meet the targets.

    \b
    From a WORKLOAD.yaml, or from observed nat-stats (--stats, with
    --connection-length) where each tuple's connection rate follows from its count and
    the time its connections hold a port (their length, CT close timeout and GC
    wait). An analytic estimate per tuple (Little's law over arrivals, durations, CT
    timeouts and GC), then simulations: fewer egress IPs while the targets hold, more until they do.
    Prints the evidence, the CiliumEgressGatewayPolicy that implements the plan, and
    a wider NAT port range when that alone would do. Exits 1 when no simulated count
    meets the targets.
    """
    from egressgw.errors import ConfigError  # noqa: PLC0415
    from egressgw.render.documents import dump_document  # noqa: PLC0415
    from egressgw.sim.plan import make_plan  # noqa: PLC0415

    ctx = click.get_current_context()
    if (workload_path is None) == (stats_source is None):
        raise click.UsageError("give a WORKLOAD.yaml or --stats FILE|URL "
                               "(with --connection-length)")
    hold = _connection_length(connection_length, deprecated_hold)
    if stats_source is not None:
        if hold is None:
            raise ConfigError("--stats needs the connections' median length, e.g. "
                              "--connection-length 10m", field="--connection-length")
        from egressgw.config import NodePortRange  # noqa: PLC0415
        from egressgw.sim.observed import workload_from_counts  # noqa: PLC0415

        counts, limit, datapath = _observed_counts(stats_source)
        # Whose counts these are decides the model and its limit, unless the flags say.
        if datapath == "netfilter" and not given(ctx, "datapath_model"):
            from egressgw.limits import LINUX_MASQUERADE_RANGE  # noqa: PLC0415

            options["datapath_model"] = "netfilter"
            if options.get("nat_port_range") is None:
                options["nat_port_range"] = (limit.port_range if limit is not None
                                             else LINUX_MASQUERADE_RANGE)
        elif (limit is not None and limit.datapath == "cilium"
                and not given(ctx, "node_port_range")):
            nat_min = limit.port_range.min
            options["node_port_range"] = NodePortRange(min(30000, nat_min - 1), nat_min - 1)
        settings = settings_from_options(workload_duration=None, **options)
        workload = workload_from_counts(counts, hold=hold, settings=settings, clients=clients,
                                        source=stats_source)
        if not given(ctx, "duration"):
            settings = settings_from_options(workload_duration=workload.duration, **options)
    else:
        from egressgw.sim.workload import load_workload  # noqa: PLC0415

        assert workload_path is not None
        workload = load_workload(workload_path)
        settings = settings_from_options(workload_duration=workload.duration, **options)
    check_linux_gateway_flags(settings.datapath_model, policy_form=True)
    in_force = None
    if policy_path is not None:  # read and checked before the long part
        from egressgw.sim.remedy import policy_in_force  # noqa: PLC0415

        in_force = policy_in_force(policy_path, settings.cilium_version, _workload_ips(workload))
    notice_model_compile()
    plan = make_plan(workload, settings, target=target, max_drop_rate=max_drop_rate,
                     max_egress_ips=max_egress_ips, confirm=not estimate_only, scale=scale,
                     announce=_announcer(progress), progress=progress)
    policies = _policies(plan, workload, settings, in_force,
                         None if policy_path is None else str(policy_path))
    if output == "table":
        click.echo(render_plan(plan, settings.divisor, settings.limit, policies), nl=False)
    else:
        click.echo(dump_document(plan_document(plan, settings.divisor, settings.limit,
                                               policies), output), nl=False)
    if not estimate_only and plan.confirmed is None:
        ctx.exit(NO_PLAN)


def _connection_length(length: float | None, deprecated_hold: float | None) -> float | None:
    """--connection-length, or its old spelling --hold with a deprecation notice.

    plan --hold meant the median connection length, forecast --hold the time a
    connection holds its port (that length plus the CT close timeout and GC wait):
    one flag name now has one meaning, forecast's.
    """
    if deprecated_hold is None:
        return length
    if length is not None:
        raise click.UsageError("give --connection-length only (--hold is its old spelling)")
    click.echo("egressgw: warning: plan --hold is deprecated, use --connection-length (the "
               "median connection length; forecast --hold is the time a port is held, "
               "plan's MeanHold)", err=True)
    return deprecated_hold


def _workload_ips(workload: Any) -> list[Any]:
    """The egress IPs the workload (or the observed tuples) already use."""
    return list(dict.fromkeys(
        [*workload.egress_ips, *(ip for g in workload.groups for ip in g.egress_ips)]))


def _policies(plan: Any, workload: Any, settings: Any, in_force: Any = None,
              source: str | None = None) -> str | None:
    """The policy YAML for a confirmed plan of several egress IPs (None otherwise):
    the policy in force with its gateways changed, or one with placeholders."""
    from egressgw.sim.remedy import plan_policies, remedy_policies  # noqa: PLC0415

    confirmed = plan.confirmed
    if confirmed is None or confirmed.egress_ips < 2:
        return None
    ips = plan.egress_ips
    if in_force is not None:
        return plan_policies(in_force, ips, cilium_version=settings.cilium_version,
                             source=source or "--policy")
    return remedy_policies(
        ips, [workload.gateway_of(ip) for ip in ips],
        [d.ip for d in workload.destinations],
        cilium_version=settings.cilium_version,
    )
