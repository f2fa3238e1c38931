"""``egressgw forecast``: when each tuple runs out of ports, from nat-stats snapshots."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from egressgw.cli.limits import curve_options, search_and_sources
from egressgw.cli.options import output_option, parse_node_port_range
from egressgw.config import NodePortRange

# Times above this are taken for Unix timestamps and also printed as dates.
_UNIX_TIME = 1e9


def _when(base: float, eta: float | None) -> str:
    if eta is None or base < _UNIX_TIME:
        return ""
    moment = datetime.fromtimestamp(base + eta, tz=UTC)
    return moment.strftime(" (%Y-%m-%d %H:%M UTC)")


def _cell(trend: Any, last_time: float) -> str:
    from egressgw.sim.forecast import Outlook  # noqa: PLC0415
    from egressgw.sim.report import format_seconds  # noqa: PLC0415

    if trend.outlook is Outlook.AT_LIMIT:
        return "now"
    if trend.outlook is Outlook.NOT_GROWING:
        return "not growing"
    if trend.outlook is Outlook.TOO_FEW:
        return "too few snapshots"
    if trend.eta is None:
        return "beyond 100 years"
    text = f"in {format_seconds(trend.eta)}{_when(last_time, trend.eta)}"
    if trend.has_band:
        latest = "never" if trend.latest is None else format_seconds(trend.latest)
        text += f" [{format_seconds(trend.earliest or 0.0)} .. {latest}]"
    return text


def render_forecast(results: Any, *, marks: Any, divisor: int, last_time: float,
                    span: float = 0.0) -> str:
    from egressgw.net import format_ip  # noqa: PLC0415
    from egressgw.render.tabwriter import tabwrite  # noqa: PLC0415

    # Growth per minute, or per day when the snapshots span days.
    unit, per = ("day", 86400.0) if span >= 86400 else ("min", 60.0)
    rows = [["EgressIP", "RemoteAddr", "Proto", "Count", "Saturation", f"Growth/{unit}",
             *(m.name for m in marks)]]
    for item in results:
        any_trend = item.trends[marks[0].name]
        growth = f"{any_trend.slope * per:+.1f}" if any_trend.samples >= 2 else "-"
        rows.append([
            format_ip(item.endpoint.egress_ip), item.endpoint.remote_addr,
            item.endpoint.proto.label, f"{any_trend.last_count:.0f}",
            f"{any_trend.last_count / divisor:.1%}", growth,
            *(_cell(item.trends[m.name], last_time) for m in marks),
        ])
    return tabwrite(rows)


def forecast_document(results: Any, *, marks: Any, divisor: int, divisor_source: str,
                      scale: float, last_time: float) -> dict[str, Any]:
    keys = ["firstRefusals", "refusalRate", "limit"]
    return {
        "divisor": divisor,
        "divisorFrom": divisor_source,
        "scale": scale,
        "marks": {key: {"name": m.name, "count": m.count} for key, m in zip(keys, marks,
                                                                           strict=True)},
        "limit": marks[-1].count,
        "lastSnapshot": last_time,
        "tuples": [
            {
                "family": r.endpoint.family.value,
                "proto": r.endpoint.proto.label,
                "egressIP": str(r.endpoint.egress_ip),
                "remoteIP": str(r.endpoint.remote_ip),
                "remotePort": r.endpoint.remote_port,
                "remoteAddr": r.endpoint.remote_addr,
                "outlook": r.trends[marks[-1].name].outlook.value,
                "samples": r.trends[marks[-1].name].samples,
                "count": r.trends[marks[-1].name].last_count,
                "growthPerSecond": r.trends[marks[-1].name].slope,
                "secondsToLimit": r.trends[marks[-1].name].eta,
                "earliest": r.trends[marks[-1].name].earliest,
                "latest": r.trends[marks[-1].name].latest,
                "confidence": r.trends[marks[-1].name].confidence,
                **{
                    key: {"seconds": t.eta, "earliest": t.earliest, "latest": t.latest,
                          "outlook": t.outlook.value}
                    for key, m in zip(keys, marks, strict=True)
                    for t in [r.trends[m.name]]
                },
            }
            for r in results
        ],
    }


def _divisor(loaded: Any, flag: NodePortRange | None) -> tuple[int, str]:
    """The divisor to use and where it came from: the flag, the source, or the default."""
    reported = {s.divisor for s in loaded if s.divisor is not None}
    if flag is not None:
        if reported and reported != {flag.cilium_saturation_divisor}:
            click.echo(f"egressgw: warning: the source reports divisor "
                       f"{', '.join(map(str, sorted(reported)))}; using --node-port-range "
                       f"{flag} ({flag.cilium_saturation_divisor})", err=True)
        return flag.cilium_saturation_divisor, f"--node-port-range {flag}"
    if len(reported) > 1:
        from egressgw.errors import InputError  # noqa: PLC0415

        listed = ", ".join(map(str, sorted(reported)))
        raise InputError(f"snapshots report different divisors ({listed}); "
                         "give --node-port-range", field="divisor")
    if reported:
        return reported.pop(), "reported by the source"
    return NodePortRange().cilium_saturation_divisor, (
        "Cilium's default --node-port-range 30000,32767; the source does not say"
    )


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
  egressgw forecast --server http://127.0.0.1:9964 --samples 10 --every 30s""",
)
@click.argument("snapshots", nargs=-1, metavar="SNAPSHOT...")
@click.option("--server", metavar="URL",
              help="Poll the agent's nat-stats instead of reading files, e.g. "
                   "http://127.0.0.1:9964.")
@click.option("--samples", type=int, default=5, show_default=True,
              help="With --server: how many distinct nat-stats passes to take.")
@click.option("--every", "every_text", default="30s", show_default=True, metavar="D",
              help="With --server: time between polls (the agent's stats interval).")
@click.option("--at", "at", multiple=True, metavar="TIME",
              help="The time of each snapshot in order (seconds or ISO 8601); "
                   "instead of FILE@TIME.")
@click.option("--node-port-range", default=None, metavar="MIN,MAX",
              callback=parse_node_port_range,
              help="Sets the limit, 65535-(MAX+1) (default: the divisor the source "
                   "reports, else 32767).")
@click.option("--threshold", type=float, default=1.0, show_default=True,
              help="The last column: time until this share of the limit (e.g. 0.8).")
@click.option("--refusal-rate", type=float, default=0.001, show_default=True,
              help="A column: time until this share of new connections is refused "
                   "(from the refusal curve, see egressgw limits).")
@click.option("--scale", type=float, default=1.0, show_default=True, metavar="FACTOR",
              help="Traffic multiplied by FACTOR (e.g. 3 for 3x): counts and growth scale.")
@curve_options
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
    node_port_range: NodePortRange | None,
    threshold: float,
    refusal_rate: float,
    scale: float,
    cilium_version: str,
    source_ports: str,
    clients: int,
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
    from egressgw.sim.forecast import Mark, forecast_marks  # noqa: PLC0415
    from egressgw.sim.refusal import planning_curve  # noqa: PLC0415
    from egressgw.sim.snapshots import load_snapshots  # noqa: PLC0415

    if not 0 < threshold <= 1:
        raise ConfigError(f"{threshold}: must be in (0, 1]", field="--threshold")
    if not 0 < confidence < 1:
        raise ConfigError(f"{confidence}: must be in (0, 1)", field="--confidence")
    if not 0 < refusal_rate < 1:
        raise ConfigError(f"{refusal_rate}: must be in (0, 1)", field="--refusal-rate")
    if not (0 < scale < 1e6):
        raise ConfigError(f"{scale}: must be a positive factor", field="--scale")
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
    divisor, divisor_source = _divisor(loaded, node_port_range)
    # The curve of the Cilium port search whose NAT range this divisor implies.
    nat_max = 65534 - divisor
    curve_range = node_port_range or NodePortRange(min(30000, max(1, nat_max)), max(1, nat_max))
    search, sources = search_and_sources(cilium_version, curve_range, source_ports, clients)
    curve = planning_curve(search, sources, divisor)
    first = curve.held_at(1e-4)
    at_rate = curve.held_at(refusal_rate)
    marks = [
        Mark("First refusals (0.01%)", first if first is not None else float(divisor)),
        Mark(f"{refusal_rate * 100:g}% refused",
             at_rate if at_rate is not None else float(divisor)),
        Mark(f"{threshold:.0%} of ports" if threshold < 1 else "Full (100%)",
             divisor * threshold),
    ]
    results = forecast_marks(loaded, marks, scale=scale, confidence=confidence)
    last = loaded[-1].time
    if output == "table":
        span = f"{len(loaded)} snapshots over {loaded[-1].time - loaded[0].time:.0f}s"
        traffic = f"; traffic x{scale:g}" if scale != 1 else ""
        click.echo(
            f"Divisor {divisor} ports per tuple ({divisor_source}); {span}{traffic}; "
            f"times from the last one, [{confidence:.0%} band].\n"
            f"Refusals from the refusal curve (egressgw limits, Cilium {cilium_version}, "
            f"clients {sources}): 0.01% at {marks[0].count / divisor:.1%}, "
            f"{refusal_rate * 100:g}% at {marks[1].count / divisor:.1%} of the ports."
        )
        click.echo(render_forecast(results, marks=marks, divisor=divisor, last_time=last,
                                   span=loaded[-1].time - loaded[0].time), nl=False)
    else:
        click.echo(dump_document(forecast_document(
            results, marks=marks, divisor=divisor, divisor_source=divisor_source,
            scale=scale, last_time=last), output), nl=False)
