"""``egressgw forecast``: when each tuple runs out of ports, from nat-stats snapshots."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from egressgw.cli.options import given, nat_port_range_option, node_port_range_option, output_option
from egressgw.config import NodePortRange
from egressgw.limits import NatPortRange, PortLimit, resolve_limit

# Times above this are taken for Unix timestamps and also printed as dates.
_UNIX_TIME = 1e9


def _when(base: float, eta: float | None) -> str:
    if eta is None or base < _UNIX_TIME:
        return ""
    try:
        moment = datetime.fromtimestamp(base + eta, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return " (after the year 9999)"
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


def forecast_document(results: Any, *, limit: float, last_time: float,
                      port_limit: PortLimit | None = None) -> dict[str, Any]:
    return {
        "limit": limit,
        **({"portLimit": port_limit.document()} if port_limit is not None else {}),
        "lastSnapshot": last_time,
        "tuples": [
            {
                "family": r.endpoint.family.value,
                "proto": r.endpoint.proto.label,
                "egressIP": str(r.endpoint.egress_ip),
                "remoteIP": str(r.endpoint.remote_ip),
                "remotePort": r.endpoint.remote_port,
                "remoteAddr": r.endpoint.remote_addr,
                "outlook": r.trend.outlook.value,
                "samples": r.trend.samples,
                "count": r.trend.last_count,
                "growthPerSecond": r.trend.slope,
                "secondsToLimit": r.trend.eta,
                "earliest": r.trend.earliest,
                "latest": r.trend.latest,
                "confidence": r.trend.confidence,
            }
            for r in results
        ],
    }


def _poll(server: str, samples: int, every_text: str) -> Any:
    import time  # noqa: PLC0415

    from egressgw.agent.client import fetch_nat_stats, nat_stats_url  # noqa: PLC0415
    from egressgw.config import parse_duration  # noqa: PLC0415
    from egressgw.errors import ConfigError  # noqa: PLC0415
    from egressgw.sim.snapshots import poll_snapshots  # noqa: PLC0415

    if samples < 2:
        raise ConfigError(f"{samples}: a trend needs at least 2", field="--samples")
    every = parse_duration(every_text, field="--every")
    click.echo(f"Polling {nat_stats_url(server)}: {samples} passes, every {every_text}...",
               err=True)
    return poll_snapshots(lambda: fetch_nat_stats(server), samples=samples, every=every,
                          sleep=time.sleep, clock=time.time, source=nat_stats_url(server))


@click.command(
    "forecast",
    epilog="""\b
Examples:
  egressgw forecast stats-0900.txt@2024-05-01T09:00Z stats-1000.txt@2024-05-01T10:00Z \\
      stats-1100.txt@2024-05-01T11:00Z
  egressgw forecast a.json b.json c.json          # JSON from the agent carries updatedAt
  egressgw forecast nat-1.txt nat-2.txt nat-3.txt --at 0 --at 600 --at 1200
  egressgw forecast s*.txt --at ... --threshold 0.8  # time until 80% instead
  egressgw forecast --server http://127.0.0.1:9967 --samples 10 --every 30s""",
)
@click.argument("snapshots", nargs=-1, metavar="SNAPSHOT...")
@click.option("--server", metavar="URL",
              help="Poll the agent's nat-stats instead of reading files, e.g. "
                   "http://127.0.0.1:9967.")
@click.option("--samples", type=int, default=5, show_default=True,
              help="With --server: how many distinct nat-stats passes to take.")
@click.option("--every", "every_text", default="30s", show_default=True, metavar="D",
              help="With --server: time between polls (the agent's stats interval).")
@click.option("--at", "at", multiple=True, metavar="TIME",
              help="The time of each snapshot in order (seconds or ISO 8601); "
                   "instead of FILE@TIME.")
@node_port_range_option("Cilium: the limit is 65535-(MAX+1); Linux (conntrack dumps): "
                        "egressgw's rule, MAX+1-65535. Default: what the snapshots say.")
@nat_port_range_option("Linux gateways: the SNAT rule's ports, the limit (default for "
                       "conntrack dumps: 1024-65535, Linux's masquerade range).")
@click.option("--datapath-model", type=click.Choice(["cilium", "netfilter"]), default=None,
              help="Whose limit: cilium (Cilium's divisor) or netfilter (a Linux gateway's "
                   "SNAT range). Default: what the snapshots say (a conntrack dump: netfilter).")
@click.option("--threshold", type=float, default=1.0, show_default=True,
              help="Forecast the time until this share of the limit (e.g. 0.8).")
@click.option("--confidence", type=float, default=0.9, show_default=True,
              help="Coverage of the prediction band.")
@output_option("table", "json", "yaml")
def forecast_command(
    *,
    snapshots: tuple[str, ...],
    server: str | None,
    samples: int,
    every_text: str,
    at: tuple[str, ...],
    node_port_range: NodePortRange,
    nat_port_range: NatPortRange | None,
    datapath_model: str | None,
    threshold: float,
    confidence: float,
    output: str,
) -> None:
    """Time until each tuple reaches its source port limit, at its current growth.

    \b
    SNAPSHOT is FILE or FILE@TIME. FILE holds one nat-stats snapshot: the table of
    `cilium-dbg statedb nat-stats` (or `egressgw nat-stats`), its JSON (-o json, or
    the agent's /v1/statedb/nat-stats, whose updatedAt gives the time), or a NAT
    table dump (`cilium-dbg bpf nat list`, `conntrack -L`). Each tuple's counts are
    fitted with a least-squares line; the band is where the regression's prediction
    interval reaches the limit. Shrinking or flat tuples say "not growing".
    With --server, the snapshots are taken from the running agent instead.
    """
    from egressgw.errors import ConfigError  # noqa: PLC0415
    from egressgw.render.documents import dump_document  # noqa: PLC0415
    from egressgw.sim.forecast import forecast_snapshots  # noqa: PLC0415
    from egressgw.sim.snapshots import load_snapshots  # noqa: PLC0415

    if not 0 < threshold <= 1:
        raise ConfigError(f"{threshold}: must be in (0, 1]", field="--threshold")
    if not 0 < confidence < 1:
        raise ConfigError(f"{confidence}: must be in (0, 1)", field="--confidence")
    ctx = click.get_current_context()
    if server is not None:
        if snapshots:
            raise click.UsageError("give SNAPSHOT files or --server, not both")
        loaded = _poll(server, samples, every_text)
    elif snapshots:
        loaded = load_snapshots(snapshots, at)
    else:
        raise click.UsageError("give SNAPSHOT files (FILE@TIME), or --server to poll the agent")
    if len(loaded) < 2:
        raise ConfigError(f"{len(loaded)} distinct snapshot(s): a trend needs at least 2",
                          field="--samples" if server else "SNAPSHOT")
    # One rule for the limit (egressgw.limits): the flags, else what the latest snapshot
    # says (a document's limit, a dump's datapath), else Cilium's divisor.
    port_limit = resolve_limit(
        documented=loaded[-1].limit,
        datapath=datapath_model or loaded[-1].datapath,
        node_port_range=node_port_range if given(ctx, "node_port_range") else None,
        nat_port_range=nat_port_range,
    )
    limit = port_limit.ports * threshold
    results = forecast_snapshots(loaded, limit=limit, confidence=confidence)
    last = loaded[-1].time
    if output == "table":
        span = f"{len(loaded)} snapshots over {loaded[-1].time - loaded[0].time:.0f}s"
        click.echo(f"Limit {limit:.0f} connections per tuple ({threshold:.0%} of "
                   f"{port_limit.describe()}); {span}; times from the last one.")
        click.echo(render_forecast(results, limit=limit, last_time=last,
                                   confidence=confidence), nl=False)
    else:
        click.echo(dump_document(forecast_document(results, limit=limit, last_time=last,
                                                   port_limit=port_limit), output), nl=False)
