"""``egressgw plan``: the fewest egress IPs that keep every tuple under a target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from egressgw.cli.simulate import datapath_options, settings_from_options


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


def render_plan(plan: Any, divisor: int, limit: Any = None) -> str:
    from egressgw.render.tabwriter import tabwrite  # noqa: PLC0415

    out = [f"Limit: {limit.describe()} per tuple.\n"] if limit is not None else []
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
        out.append("\nSimulation:\n")
        out += [_check_line(c, plan.target, plan.max_drop_rate) for c in plan.checks]
        confirmed = plan.confirmed
        if confirmed is not None:
            ips = ", ".join(str(ip) for ip in confirmed.result.egress_ips)
            out.append(f"\nPlan: {confirmed.label} ({ips}), clients spread over them.\n")
        else:
            out.append("\nPlan: not confirmed; see the simulation lines above.\n")
    out.append("\nAlternative: keep the workload's egress IPs and widen the NAT port range\n")
    if plan.node_port_range is None:
        needed = plan.node_port_estimate[0].needed if plan.node_port_estimate else 0
        out.append(f"  not possible: {needed / plan.target:.0f} ports per tuple exceed what "
                   "any --node-port-range leaves.\n")
    else:
        npr = plan.node_port_range
        out.append(f"  --node-port-range {npr} leaves {npr.cilium_saturation_divisor} NAT ports "
                   "per tuple (NodePorts move below it).\n")
        if plan.node_port_check is not None:
            out.append(_check_line(plan.node_port_check, plan.target, plan.max_drop_rate))
    return "".join(out)


@click.command(
    "plan",
    epilog="""\b
Examples:
  egressgw plan workload.yaml
  egressgw plan workload.yaml --target-saturation 0.7 --max-drop-rate 0
  egressgw plan workload.yaml --duration 2h --estimate-only""",
)
@click.argument("workload_path", metavar="WORKLOAD.yaml", type=click.Path(path_type=Path))
@click.option("--target-saturation", "target", type=float, default=0.8, show_default=True,
              help="Highest share of a tuple's ports any tuple may use.")
@click.option("--max-drop-rate", type=float, default=1e-4, show_default=True,
              help="Highest share of new connections the simulation may refuse.")
@click.option("--max-egress-ips", type=int, default=64, show_default=True)
@click.option("--estimate-only", is_flag=True, help="Skip the confirming simulations.")
@datapath_options
def plan_command(
    *,
    workload_path: Path,
    target: float,
    max_drop_rate: float,
    max_egress_ips: int,
    estimate_only: bool,
    **options: Any,
) -> None:
    """Find the fewest egress IPs that keep every tuple under --target-saturation.

    First an analytic estimate per tuple (Little's law over the workload's arrival
    profile, durations, CT timeouts and GC), then simulations of the candidate confirm
    it (adding egress IPs until the targets hold), and the alternative of a wider NAT
    port range (a lower --node-port-range). Prints the evidence.
    """
    from egressgw.sim.plan import make_plan  # noqa: PLC0415
    from egressgw.sim.workload import load_workload  # noqa: PLC0415

    workload = load_workload(workload_path)
    settings = settings_from_options(workload_duration=workload.duration, **options)
    plan = make_plan(workload, settings, target=target, max_drop_rate=max_drop_rate,
                     max_egress_ips=max_egress_ips, confirm=not estimate_only)
    click.echo(render_plan(plan, settings.divisor, settings.limit), nl=False)
