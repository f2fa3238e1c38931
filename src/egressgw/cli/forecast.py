"""``egressgw forecast``: when each tuple runs out of ports, from nat-stats snapshots."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import click

from egressgw.cli.limits import curve_options, search_and_sources
from egressgw.cli.options import (
    given,
    nat_port_range_option,
    node_port_range_option,
    output_option,
    parse_duration_flag,
)
from egressgw.config import NodePortRange
from egressgw.limits import NatPortRange, PortLimit, resolve_limit

# Times above this are taken for Unix timestamps and also printed as dates.
_UNIX_TIME = 1e9
# Beyond this a linear trend says nothing useful; the table says so instead of a date.
_FAR = 10 * 365 * 86400.0


def _when(base: float, eta: float | None) -> str:
    if eta is None or base < _UNIX_TIME:
        return ""
    try:
        moment = datetime.fromtimestamp(base + eta, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return " (after the year 9999)"
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
    if trend.eta is None or trend.eta > _FAR:
        return "beyond 10 years"
    text = f"in {format_seconds(trend.eta)}{_when(last_time, trend.eta)}"
    if trend.has_band:
        latest = "never" if trend.latest is None else format_seconds(trend.latest)
        text += f" [{format_seconds(trend.earliest or 0.0)} .. {latest}]"
    return text


# The column of the time at which a first refusal is more likely than not (Λ = ln 2).
FIRST_REFUSAL = "First refusal likely"


def _first_refusal_cell(first: Any, last_time: float) -> str:
    from egressgw.sim.forecast import Outlook  # noqa: PLC0415
    from egressgw.sim.report import format_seconds  # noqa: PLC0415

    if first.outlook is Outlook.TOO_FEW:
        return "too few snapshots"
    if first.eta is None or first.eta > _FAR:
        return "not growing" if first.outlook is Outlook.NOT_GROWING else "beyond 10 years"
    if first.eta < 1:
        return "now"
    text = f"in {format_seconds(first.eta)}{_when(last_time, first.eta)}"
    if first.has_band:
        latest = "never" if first.latest is None else format_seconds(first.latest)
        earliest = first.earliest or 0.0
        text += f" [{'now' if earliest < 1 else format_seconds(earliest)} .. {latest}]"
    return text


def render_forecast(results: Any, *, marks: Any, divisor: int, last_time: float,
                    span: float = 0.0, first: Any = None) -> str:
    """The table; ``first`` (tuple -> FirstRefusal) adds the first-refusal column."""
    from egressgw.net import format_ip  # noqa: PLC0415
    from egressgw.render.tabwriter import tabwrite  # noqa: PLC0415

    # Growth per minute, or per day when the snapshots span days.
    unit, per = ("day", 86400.0) if span >= 86400 else ("min", 60.0)
    rows = [["EgressIP", "RemoteAddr", "Proto", "Count", "Saturation", f"Growth/{unit}",
             *([FIRST_REFUSAL] if first is not None else []), *(m.name for m in marks)]]
    for item in results:
        any_trend = item.trends[marks[0].name]
        growth = f"{item.slope * per:+.1f}" if any_trend.samples >= 2 else "-"
        rows.append([
            format_ip(item.endpoint.egress_ip), item.endpoint.remote_addr,
            item.endpoint.proto.label, f"{any_trend.last_count:.0f}",
            f"{any_trend.last_count / divisor:.1%}", growth,
            *([_first_refusal_cell(first[item.endpoint], last_time)] if first is not None
              else []),
            *(_cell(item.trends[m.name], last_time) for m in marks),
        ])
    return tabwrite(rows)


def forecast_document(results: Any, *, marks: Any, port_limit: PortLimit, scale: float,
                      last_time: float, first: Any = None,
                      assumptions: dict[str, Any] | None = None,
                      refusal_curve: dict[str, str] | None = None) -> dict[str, Any]:
    """The forecast as data; ``first`` and ``assumptions`` (hold, curve, limit, the
    criterion) come with --hold; ``refusal_curve`` names the curve the refusal marks
    were read from (its kind, datapath search and clients)."""
    keys = ["oneIn10000Refused", "refusalRate", "limit"][-len(marks):]
    return {
        "portLimit": port_limit.document(),
        "refusalCurve": refusal_curve,
        "scale": scale,
        "firstRefusal": assumptions if first is not None else None,
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
                "growthPerSecond": r.slope,
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
                **({"firstRefusal": _first_refusal_doc(first[r.endpoint])}
                   if first is not None else {}),
            }
            for r in results
        ],
    }


def _first_refusal_doc(first: Any) -> dict[str, Any]:
    return {"seconds": first.eta, "earliest": first.earliest, "latest": first.latest,
            "coverage": first.coverage, "outlook": first.outlook.value, "count": first.count,
            "fittedCountNow": first.fitted, "refusedPerDayNow": first.refused_per_day}


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
  egressgw forecast a.json b.json c.json --hold 10m  # when the first refusal is likely
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
              help="The last column: time until this share of the limit (e.g. 0.8).")
@click.option("--refusal-rate", type=float, default=0.001, show_default=True,
              help="A column: time until this share of new connections is refused "
                   "(from the refusal curve, see egressgw limits).")
@click.option("--curve", type=click.Choice(["steady", "growth", "worst"]), default="steady",
              show_default=True,
              help="Refusal curve: steady (the tuple grows slower than its connections "
                   "turn over, a trend over days), growth (a ramp faster than connections "
                   "live), worst (the higher of the two).")
@click.option("--scale", type=float, default=1.0, show_default=True, metavar="FACTOR",
              help="Traffic multiplied by FACTOR (e.g. 3 for 3x): counts and growth scale.")
@click.option("--hold", callback=parse_duration_flag, metavar="DURATION",
              help="How long a connection holds its port, e.g. 14m: its length plus "
                   "the CT close timeout and GC wait (plan's MeanHold column for plan "
                   "--connection-length), or count / new connections per second as "
                   "measured: new connections/s = count / hold (Little's law). "
                   "Adds 'First refusal likely': when the refused connections expected "
                   "along the trend, the integral of rate x P(refusal), reach ln 2, i.e. "
                   "a first refusal is more likely than not. Replaces the 0.01% column.")
@curve_options
@click.option("--confidence", type=float, default=0.9, show_default=True,
              help="Coverage of the trend's prediction band (the times to the marks; "
                   "'First refusal likely' states its own, 80%, which uses these bounds).")
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
    refusal_rate: float,
    curve: str,
    scale: float,
    hold: float | None,
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

    \b
    Columns: "0.01% refused" and "0.1% refused" (--refusal-rate) are when the refusal
    curve (egressgw limits) says that share of new connections is refused; with
    --hold, "First refusal likely" is when the expected number of refused connections,
    the integral of (count / hold) x P(refusal at count) along the trend, reaches
    ln 2: P(at least one refusal) = 1 - exp(-expected) passes 1/2. Its band holds the
    first refusal 80% of the time: from expected -ln 0.9 (the trend's upper bound, the
    curve's high side) to -ln 0.1 (its lower bound, the curve's low side).
    """
    from egressgw.errors import ConfigError  # noqa: PLC0415
    from egressgw.render.documents import dump_document  # noqa: PLC0415
    from egressgw.sim.forecast import Mark, forecast_marks  # noqa: PLC0415
    from egressgw.sim.refusal import named_curve, search_name, search_text  # noqa: PLC0415
    from egressgw.sim.snapshots import load_snapshots  # noqa: PLC0415

    if not 0 < threshold <= 1:
        raise ConfigError(f"{threshold}: must be in (0, 1]", field="--threshold")
    if not 0 < confidence < 1:
        raise ConfigError(f"{confidence}: must be in (0, 1)", field="--confidence")
    if not 0 < refusal_rate < 1:
        raise ConfigError(f"{refusal_rate}: must be in (0, 1)", field="--refusal-rate")
    if not (0 < scale < 1e6):
        raise ConfigError(f"{scale}: must be a positive factor", field="--scale")
    if hold is not None and not (0 < hold < math.inf):
        raise ConfigError(f"{hold:g}: must be a positive duration", field="--hold")
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
        node_port_range=node_port_range if given(click.get_current_context(),
                                                 "node_port_range") else None,
        nat_port_range=nat_port_range,
    )
    divisor = port_limit.ports
    marks = [Mark(f"{threshold:.0%} of ports" if threshold < 1 else "Full (100%)",
                  divisor * threshold)]
    # The refusal curve of the limit's datapath (nf_nat or nat.h) over its port range.
    search, sources = search_and_sources(cilium_version, node_port_range, source_ports,
                                         clients, limit=port_limit, hold=hold)
    refusals = named_curve(curve, search, sources, divisor)
    first = refusals.held_at(1e-4)
    at_rate = refusals.held_at(refusal_rate)
    marks = [
        Mark("0.01% refused", first if first is not None else float(divisor)),
        Mark(f"{refusal_rate * 100:g}% refused",
             at_rate if at_rate is not None else float(divisor)),
        *marks,
    ]
    curve_note = (
        f"Refusals from the {curve} refusal curve (egressgw limits, {search_name(search)}, "
        f"clients {sources}): 0.01% at {marks[0].count / divisor:.1%}, "
        f"{refusal_rate * 100:g}% at {marks[1].count / divisor:.1%} of the ports."
    )
    first_refusal = None
    if hold is not None:
        marks = marks[1:]  # the first refusal replaces the 0.01% mark
        first_refusal = _first_refusals(loaded, hold=hold, curve=refusals, scale=scale,
                                        confidence=confidence)
        curve_note += "\n" + _first_refusal_note(hold, curve, divisor)
    results = forecast_marks(loaded, marks, scale=scale, confidence=confidence)
    last = loaded[-1].time
    if output == "table":
        span = f"{len(loaded)} snapshots over {loaded[-1].time - loaded[0].time:.0f}s"
        traffic = f"; traffic x{scale:g}" if scale != 1 else ""
        click.echo(
            f"Limit {port_limit.describe()}; {span}{traffic}; "
            f"times from the last one, [{confidence:.0%} band].\n{curve_note}"
        )
        click.echo(render_forecast(results, marks=marks, divisor=divisor, last_time=last,
                                   span=loaded[-1].time - loaded[0].time, first=first_refusal),
                   nl=False)
        if first_refusal is not None and results:
            why = _first_refusal_why(results[0].endpoint, first_refusal[results[0].endpoint],
                                     refusals, divisor)
            click.echo(why, nl=False)
    else:
        assumptions = None if hold is None or refusals is None else _assumptions(
            hold, curve, refusals, divisor)
        click.echo(dump_document(forecast_document(
            results, marks=marks, port_limit=port_limit, scale=scale, last_time=last,
            first=first_refusal, assumptions=assumptions,
            refusal_curve={"curve": curve, "datapath": search_name(search),
                           "search": search_text(search), "clients": str(sources)},
        ), output), nl=False)


def _first_refusals(loaded: Any, *, hold: float, curve: Any, scale: float,
                    confidence: float) -> Any:
    from egressgw.sim.expected_refusals import curve_band, first_refusals  # noqa: PLC0415

    return first_refusals(loaded, hold=hold, probability=curve_band(curve), scale=scale,
                          confidence=confidence)


def _first_refusal_why(endpoint: Any, first: Any, curve: Any, divisor: int) -> str:
    """The figures behind the first row's first refusal, to redo by hand."""
    import numpy as np  # noqa: PLC0415

    from egressgw.net import format_ip  # noqa: PLC0415
    from egressgw.sim.report import format_seconds  # noqa: PLC0415

    if first.eta is None or first.count is None or first.eta > _FAR:
        return ""
    held = curve.held
    i = min(max(int(np.searchsorted(held, first.count)), 1), len(held) - 1)
    low, high = float(held[i - 1]), float(held[i])

    def at(count: float) -> str:
        return (f"{curve.rate_at(count):.2g} [{curve.rate_at(count, 'low'):.2g} .. "
                f"{curve.rate_at(count, 'high'):.2g}] at {count:.0f} ({count / divisor:.1%})")

    if first.count >= high:  # past the curve's last level: its last value
        levels = f"{at(high)} and beyond"
    else:
        kind = "linear" if curve.rate_at(low) <= 0 else "log-linear"
        levels = f"{at(low)} and {at(high)}, {kind} between"
    when = "now" if first.eta < 1 else f"in {format_seconds(first.eta)}"
    return (
        f"Why, for {format_ip(endpoint.egress_ip)} {endpoint.remote_addr} (to redo by hand):\n"
        f"  the trend is at {first.fitted:.1f} now and grows {first.slope:.6f}/s; "
        f"{first.fitted:.1f} / {first.hold:g}s = {first.fitted / first.hold:.1f} new "
        "connections/s;\n"
        f"  the curve refuses {levels};\n"
        f"  the expected refusals reach ln 2 at {first.count:.1f} ({first.count / divisor:.2%}):"
        f" {when}.\n"
    )


def _first_refusal_note(hold: float, curve_name: str, divisor: int) -> str:
    from egressgw.sim.expected_refusals import COVERAGE, chance_quantiles  # noqa: PLC0415
    from egressgw.sim.report import format_seconds  # noqa: PLC0415

    soon, late = chance_quantiles(COVERAGE)
    tail = (1 - COVERAGE) / 2
    return (f"First refusal likely: when the refused connections expected along the trend "
            f"(new connections/s = count / hold {format_seconds(hold)}, each refused with "
            f"the {curve_name} curve's probability at count/{divisor}) reach ln 2, a first "
            f"refusal more likely than not; [{COVERAGE:.0%} band]: from where they reach "
            f"{soon:.3f} ({tail:.0%} chance of a refusal by then) on the trend's upper bound "
            f"and the curve's high side, to where they reach {late:.3f} ({1 - tail:.0%}) on "
            "its lower bound and the curve's low side.")


def _assumptions(hold: float, curve_name: str, curve: Any, divisor: int) -> dict[str, Any]:
    from egressgw.sim.expected_refusals import (  # noqa: PLC0415
        COVERAGE,
        LN2,
        chance_quantiles,
    )

    soon, late = chance_quantiles(COVERAGE)
    return {
        "criterion": "expected refused connections reach ln 2: P(at least one) = 1/2",
        "expectedRefused": LN2,
        "band": {"coverage": COVERAGE, "expectedRefusedEarliest": soon,
                 "expectedRefusedLatest": late,
                 "earliest": "trend's upper prediction bound, the curve's high side",
                 "latest": "trend's lower prediction bound, the curve's low side"},
        "holdSeconds": hold,
        "newConnectionsPerSecond": "count / holdSeconds (Little's law)",
        "curve": {"name": curve_name, "kind": curve.kind,
                  "ciliumVersion": curve.search.version,
                  "natPorts": [curve.search.start, curve.search.end],
                  "tries": curve.search.retries, "sourcePorts": str(curve.sources)},
        "limit": divisor,
        # The curve as used: P(refusal) at each measured level (rate_at, non-decreasing)
        # with its band's low and high sides.
        "points": [[int(h), curve.rate_at(float(h)), curve.rate_at(float(h), "low"),
                    curve.rate_at(float(h), "high")] for h in curve.held],
    }
