"""``egressgw limits``: the occupancy at which new connections start being refused."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from egressgw.cli.options import (
    check_linux_gateway_flags,
    given,
    nat_port_range_option,
    node_port_range_option,
    output_option,
    parse_duration_flag,
)
from egressgw.cli.outputs import check_output_path
from egressgw.config import NodePortRange
from egressgw.limits import NatPortRange, PortLimit, datapath_limit


def curve_options(func: Any) -> Any:
    """The flags that pick a refusal curve (shared by limits, alerts and forecast)."""
    options = [
        click.option("--cilium-version", type=click.Choice(["1.16", "1.17", "1.18"]),
                     default="1.16", show_default=True,
                     help="Port search: 1.16 mod clamp, 128 tries; 1.17 multiply clamp, "
                          "128 tries; 1.18 multiply clamp, 32 tries. Cilium only: an "
                          "error with a Linux gateway's (netfilter) search."),
        click.option("--source-ports", default="linux", show_default=True,
                     metavar="linux|uniform|LOW-HIGH",
                     help="The clients' source ports (Linux: 32768-60999)."),
        click.option("--clients", type=int, default=400, show_default=True, metavar="N",
                     help="Clients walking their source ports one by one (the workload "
                          "default, sequential); 0: every port drawn at random."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def datapath_options(func: Any) -> Any:
    """--datapath-model and --nat-port-range: whose port search the curve is of."""
    func = nat_port_range_option(
        "Linux gateways (--datapath-model netfilter): the SNAT rule's ports. Default: "
        "egressgw's rule (MAX+1-65535) when --node-port-range is given, else Linux's "
        "masquerade range 1024-65535.")(func)
    return click.option(
        "--datapath-model", type=click.Choice(["cilium", "netfilter"]), default="cilium",
        show_default=True,
        help="Whose port search: cilium (nat.h, --cilium-version) or netfilter (a Linux "
             "gateway's nf_nat).")(func)


def chosen_limit(datapath_model: str, node_port_range: NodePortRange,
                 nat_port_range: NatPortRange | None) -> PortLimit:
    """The limit of the command's --datapath-model, from the range flags the user gave."""
    npr = node_port_range if given(click.get_current_context(), "node_port_range") else None
    return datapath_limit(datapath_model, node_port_range=npr, nat_port_range=nat_port_range)


def search_and_sources(cilium_version: str, node_port_range: NodePortRange,
                       source_ports: str, clients: int, *,
                       limit: PortLimit | None = None,
                       hold: float | None = None) -> tuple[Any, Any]:
    """The port search whose refusal curve answers, and the clients' source ports.

    With ``limit``, the search of that limit's datapath over its range (a Linux
    gateway's nf_nat, or Cilium's nat.h); without, Cilium's for ``node_port_range``.
    ``hold`` (nf_nat): the connections' hold time before TIME_WAIT, infinite for none;
    None: nf_refusal's default.
    """
    import dataclasses  # noqa: PLC0415

    from egressgw.sim.refusal import PortSearch, SourcePorts  # noqa: PLC0415

    check_linux_gateway_flags(None if limit is None else limit.datapath)
    search = (PortSearch.for_version(cilium_version, node_port_range) if limit is None
              else PortSearch.for_limit(limit, cilium_version))
    if search.is_netfilter and hold is not None:
        search = dataclasses.replace(search, hold=None if math.isinf(hold) else hold)
    return search, SourcePorts.parse(source_ports).with_clients(clients)


def parse_hold(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``--hold DURATION|none``: seconds, infinite for ``none``."""
    if value is None:
        return None
    return math.inf if value == "none" else parse_duration_flag(ctx, param, value)


def workload_clients(path: Path) -> int:
    """Clients that walk their ports one by one in a workload (0 when all draw at random).

    A client's counter moves for every connection it makes, to any destination, so for
    one tuple its ports are in order but not always adjacent: an approximation.
    """
    from egressgw.sim.workload import SourcePorts, load_workload  # noqa: PLC0415

    workload = load_workload(path)
    return sum(g.count for g in workload.groups if g.source_ports == SourcePorts.SEQUENTIAL)


def _percent(value: float | None) -> str:
    return "never" if value is None else f"{value:.1%}"


def limits_document(curves: Any, divisor: int) -> dict[str, Any]:
    from egressgw.sim.refusal import CURVE_TEXT, RATES  # noqa: PLC0415

    search = curves.growth.search
    return {
        "datapath": search.datapath,
        "ciliumVersion": None if search.is_netfilter else search.version,
        "natPorts": [search.start, search.end],
        "tries": search.retries,
        "sourcePorts": [curves.growth.sources.low, curves.growth.sources.high],
        "clients": curves.growth.sources.clients,
        "divisor": divisor,
        "ports": curves.uniform.ports,
        "curves": {
            name: {
                "about": CURVE_TEXT[name],
                "kind": curve.kind,
                "saturationAt": {f"{rate:g}": curve.saturation_at(rate) for rate in RATES},
            }
            for name, curve in curves.by_name().items()
        },
        # Each measured level: the share refused on each curve and its bounds (growth:
        # Wilson 95%; steady: 90% over its chains for Cilium, Wilson 95% for nf_nat).
        "points": [
            {
                "held": int(held),
                "saturation": float(held) / divisor,
                "growth": float(curves.growth.refused[i]),
                "growthBounds": [float(curves.growth.low[i]), float(curves.growth.high[i])],
                **_steady_point(curves, int(held)),
                "uniform": float(curves.uniform.rate_at(float(held))),
            }
            for i, held in enumerate(curves.growth.held)
        ],
    }


def _steady_point(curves: Any, held: int) -> dict[str, Any]:
    steady = curves.steady
    at = [i for i, h in enumerate(steady.held) if int(h) == held]
    if not at:
        return {"steady": None, "steadyBounds": None}
    i = at[0]
    return {"steady": float(steady.refused[i]),
            "steadyBounds": [float(steady.low[i]), float(steady.high[i])]}


def render_limits(curves: Any, divisor: int) -> str:
    from egressgw.render.tabwriter import tabwrite  # noqa: PLC0415
    from egressgw.sim.refusal import CURVE_TEXT, RATES, search_text  # noqa: PLC0415

    g = curves.growth
    lines = [
        f"{search_text(g.search)}; {curves.uniform.ports} ports a connection can take; "
        f"saturation divides by {divisor}.\n",
        f"Clients' source ports: {g.sources}.\n",
        "Saturation at which this share of new connections is refused:\n",
    ]
    rows = [["Refused", "growth", "steady", "uniform"]]
    for rate in RATES:
        rows.append([f"{rate * 100:g}%",
                     *(_percent(c.saturation_at(rate)) for c in curves.by_name().values())])
    lines.append(tabwrite(rows))
    lines.append("\n")
    lines += [f"  {name}: {text}\n" for name, text in CURVE_TEXT.items()]
    if curves.uniform.kind != "uniform (exact)":
        how = curves.uniform.kind.removeprefix("uniform ").strip("()")
        lines.append(f"  (uniform here: {how}, see docs/capacity.md)\n")
    lines.append("egressgw alerts uses the higher of growth and steady at each occupancy; "
                 "forecast the steady one (--curve).\n")
    return "".join(lines)


@click.command(
    "limits",
    epilog="""\b
Examples:
  egressgw limits
  egressgw limits --cilium-version 1.18 --node-port-range 30000,32767
  egressgw limits --clients 0 -o json           # clients with random source ports
  egressgw limits --plot refusal.png
  egressgw limits --datapath-model netfilter --nat-port-range 1024-65535""",
)
@curve_options
@node_port_range_option()
@datapath_options
@output_option("table", "json", "yaml")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), metavar="FILE.png",
              help="Also draw the curves: refused share against saturation.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the measured curves.")
@click.option("--workload", "workload_path", type=click.Path(path_type=Path),
              metavar="WORKLOAD.yaml",
              help="Take the clients from a workload: its sequential clients (random "
                   "ones draw every port); instead of --clients.")
@click.option("--hold", callback=parse_hold, metavar="DURATION|none",
              help="netfilter: how long connections hold their port before they end and "
                   "linger 120 s in TIME_WAIT, which the steady curve counts (default "
                   "10m); none: they end with no TIME_WAIT (RST).")
def limits_command(
    *,
    cilium_version: str,
    source_ports: str,
    clients: int,
    workload_path: Path | None,
    node_port_range: NodePortRange,
    datapath_model: str,
    nat_port_range: NatPortRange | None,
    output: str,
    plot_path: Path | None,
    seed: int,
    hold: float | None,
) -> None:
    """The share of new connections refused as a tuple fills, and where it reaches
    0.01%, 0.1%, 1% and 10%.

    \b
    nat.h tries a bounded walk of ports per new connection (the client's own port when
    it is in the NAT range, then a random start and +1 steps), so connections are
    refused while ports are still free. Three curves: "uniform" is exact for ports taken
    at random; "growth" and "steady" run the same search on a tuple as it fills up and
    as it stays full, where taken ports form runs the walk cannot cross.
    --datapath-model netfilter: a Linux gateway's nf_nat instead (the client's port if
    free, then rounds of 128, 64, 32, 16 and 8 ports from random offsets).
    """
    from egressgw.render.documents import dump_document  # noqa: PLC0415
    from egressgw.sim.refusal import compute_curves  # noqa: PLC0415

    if plot_path is not None:
        check_output_path(plot_path, (".png",), field="--plot")
    if workload_path is not None:
        clients = workload_clients(workload_path)
    limit = chosen_limit(datapath_model, node_port_range, nat_port_range)
    if hold is not None and limit.datapath != "netfilter":
        from egressgw.errors import ConfigError  # noqa: PLC0415

        raise ConfigError("TIME_WAIT's hold time is for a Linux gateway's curve; add "
                          "--datapath-model netfilter or leave the flag out", field="--hold")
    search, sources = search_and_sources(cilium_version, node_port_range, source_ports, clients,
                                         limit=limit, hold=hold)
    divisor = limit.ports
    curves = compute_curves(search, sources, divisor, seed=seed)
    if output == "table":
        click.echo(render_limits(curves, divisor), nl=False)
    else:
        click.echo(dump_document(limits_document(curves, divisor), output), nl=False)
    if plot_path is not None:
        from egressgw.sim.plot import plot_refusal  # noqa: PLC0415

        plot_refusal(curves, plot_path)
        if output == "table":
            click.echo(f"Plot: {plot_path}")
