"""``egressgw forecast``: when each tuple runs out of ports, from nat-stats snapshots."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from egressgw.config import NodePortRange

# Times above this are taken for Unix timestamps and also printed as dates.
_UNIX_TIME = 1e9


def _when(base: float, eta: float | None) -> str:
    if eta is None or base < _UNIX_TIME:
        return ""
    moment = datetime.fromtimestamp(base + eta, tz=UTC)
    return moment.strftime(" (%Y-%m-%d %H:%M UTC)")


def render_forecast(results: Any, *, limit: float, last_time: float, confidence: float) -> str:
    from egressgw.net import format_ip  # noqa: PLC0415
    from egressgw.render.tabwriter import tabwrite  # noqa: PLC0415
    from egressgw.sim.forecast import Outlook  # noqa: PLC0415
    from egressgw.sim.report import format_seconds  # noqa: PLC0415

    rows = [["EgressIP", "RemoteAddr", "Proto", "Count", "Of limit", "Growth/min",
             "Reaches limit", f"{confidence:.0%} band"]]
    for item in results:
        t = item.trend
        if t.outlook is Outlook.GROWING:
            reaches = ("beyond 100 years" if t.eta is None
                       else f"in {format_seconds(t.eta)}{_when(last_time, t.eta)}")
            if t.has_band:
                latest = "never" if t.latest is None else format_seconds(t.latest)
                band = f"{format_seconds(t.earliest or 0.0)} .. {latest}"
            else:
                band = "- (3+ snapshots give a band)"
        elif t.outlook is Outlook.AT_LIMIT:
            reaches, band = "now: at the limit", "-"
        elif t.outlook is Outlook.NOT_GROWING:
            reaches, band = "not growing", "-"
        else:
            reaches, band = "too few snapshots", "-"
        growth = f"{t.slope * 60:+.1f}" if t.samples >= 2 else "-"
        rows.append([
            format_ip(item.endpoint.egress_ip), item.endpoint.remote_addr,
            item.endpoint.proto.label, f"{t.last_count:.0f}", f"{t.last_count / limit:.1%}",
            growth, reaches, band,
        ])
    return tabwrite(rows)


def forecast_document(results: Any, *, limit: float, last_time: float) -> dict[str, Any]:
    return {
        "limit": limit,
        "last_snapshot": last_time,
        "tuples": [
            {
                "family": r.endpoint.family.value,
                "proto": r.endpoint.proto.label,
                "egress_ip": str(r.endpoint.egress_ip),
                "remote_ip": str(r.endpoint.remote_ip),
                "remote_port": r.endpoint.remote_port,
                "outlook": r.trend.outlook.value,
                "samples": r.trend.samples,
                "count": r.trend.last_count,
                "growth_per_second": r.trend.slope,
                "seconds_to_limit": r.trend.eta,
                "earliest": r.trend.earliest,
                "latest": r.trend.latest,
                "confidence": r.trend.confidence,
            }
            for r in results
        ],
    }


@click.command(
    "forecast",
    epilog="""\b
Examples:
  egressgw forecast stats-0900.txt@2024-05-01T09:00Z stats-1000.txt@2024-05-01T10:00Z \\
      stats-1100.txt@2024-05-01T11:00Z
  egressgw forecast a.json b.json c.json          # JSON from the agent carries updated_at
  egressgw forecast nat-1.txt nat-2.txt nat-3.txt --at 0 --at 600 --at 1200
  egressgw forecast s*.txt --at ... --threshold 0.8  # time until 80% instead""",
)
@click.argument("snapshots", nargs=-1, required=True, metavar="SNAPSHOT...")
@click.option("--at", "at", multiple=True, metavar="TIME",
              help="The time of each snapshot in order (seconds or ISO 8601); "
                   "instead of FILE@TIME.")
@click.option("--node-port-range", default="30000,32767", show_default=True,
              metavar="MIN,MAX", help="Sets the limit: Cilium's saturation divisor.")
@click.option("--threshold", type=float, default=1.0, show_default=True,
              help="Forecast the time until this share of the limit (e.g. 0.8).")
@click.option("--confidence", type=float, default=0.9, show_default=True,
              help="Coverage of the prediction band.")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table",
              show_default=True)
def forecast_command(
    *,
    snapshots: tuple[str, ...],
    at: tuple[str, ...],
    node_port_range: str,
    threshold: float,
    confidence: float,
    output: str,
) -> None:
    """Time until each tuple reaches its source port limit, at its current growth.

    \b
    SNAPSHOT is FILE or FILE@TIME. FILE holds one nat-stats snapshot: the table of
    `cilium-dbg statedb nat-stats` (or `egressgw nat-stats`), its JSON (-o json, or
    the agent's /v1/statedb/nat-stats, whose updated_at gives the time), or a NAT
    table dump (`cilium-dbg bpf nat list`, `conntrack -L`). Each tuple's counts are
    fitted with a least-squares line; the band is where the regression's prediction
    interval reaches the limit. Shrinking or flat tuples say "not growing".
    """
    from egressgw.errors import ConfigError  # noqa: PLC0415
    from egressgw.render.documents import dump_document  # noqa: PLC0415
    from egressgw.sim.forecast import forecast_snapshots  # noqa: PLC0415
    from egressgw.sim.snapshots import load_snapshots  # noqa: PLC0415

    if not 0 < threshold <= 1:
        raise ConfigError(f"{threshold}: must be in (0, 1]", field="--threshold")
    if not 0 < confidence < 1:
        raise ConfigError(f"{confidence}: must be in (0, 1)", field="--confidence")
    limit = NodePortRange.parse(node_port_range).cilium_saturation_divisor * threshold
    loaded = load_snapshots(snapshots, at)
    results = forecast_snapshots(loaded, limit=limit, confidence=confidence)
    last = loaded[-1].time
    if output == "table":
        span = f"{len(loaded)} snapshots over {loaded[-1].time - loaded[0].time:.0f}s"
        click.echo(f"Limit {limit:.0f} connections per tuple ({threshold:.0%} of "
                   f"--node-port-range {node_port_range}); {span}; times from the last one.")
        click.echo(render_forecast(results, limit=limit, last_time=last,
                                   confidence=confidence), nl=False)
    else:
        click.echo(dump_document(forecast_document(results, limit=limit, last_time=last),
                                 output), nl=False)
