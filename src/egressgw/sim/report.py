"""A simulation's results as text, as a JSON/YAML document, and as markdown."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from egressgw.datapath.model import DropReason
from egressgw.datapath.model.types import LATENCY_STEP
from egressgw.errors import InputError
from egressgw.net import NatEndpoint, format_ip
from egressgw.render.tabwriter import tabwrite
from egressgw.sim.simulate import THRESHOLDS, SimulationResult, Totals
from egressgw.stats import render_saturation, render_table, stats_document


def format_seconds(seconds: float) -> str:
    """``1h2m3s`` style, as Go prints durations (whole seconds; ms below one second)."""
    if not math.isfinite(seconds):
        return "never"
    if 0 < seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f"{hours / 24:.1f}d"
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    return text + f"{secs}s"


def reason_text(code: int) -> str:
    try:
        return DropReason(code).text
    except ValueError:
        return f"reason {code}"


def tries_buckets(tries: npt.NDArray[np.int64]) -> list[tuple[str, int]]:
    """The tries histogram in powers of two; the last slot (all tries used) on its own."""
    limit = len(tries) - 1
    buckets = [("0", int(tries[0]))] if limit > 0 else []
    low = 1
    while low < limit:
        high = min(2 * low - 1, limit - 1)
        label = str(low) if low == high else f"{low}-{high}"
        buckets.append((label, int(tries[low : high + 1].sum())))
        low = high + 1
    buckets.append((f"{limit} (all used: dropped)", int(tries[limit])))
    return buckets


def per_interval(result: SimulationResult, counter: str) -> npt.NDArray[np.int64]:
    """A counter of ``Totals`` per nat-stats interval (the increase since the pass before)."""
    cumulative = np.array([0] + [getattr(r.totals, counter) for r in result.intervals],
                          dtype=np.int64)
    return cumulative[1:] - cumulative[:-1]


def first_refusal(result: SimulationResult) -> tuple[float, float, int] | None:
    """(time, busiest tuple's saturation, refused) at the first pass that saw refusals."""
    refused = per_interval(result, "refused")
    hits = np.nonzero(refused > 0)[0]
    if not len(hits):
        return None
    record = result.intervals[int(hits[0])]
    top = max((row.count for row in record.stats.rows), default=0)
    return record.time, top / result.settings.divisor, int(refused[hits[0]])


def first_refusal_text(result: SimulationResult) -> str:
    """One sentence for reports: when connections were first refused, and how full."""
    first = first_refusal(result)
    if first is None:
        return "No connection was refused."
    when, saturation, count = first
    return (f"First refused connections: {count} in the nat-stats interval ending at "
            f"{format_seconds(when)}, when the busiest tuple held {saturation:.1%} of its "
            "ports.")


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.2%}" if whole else "0.00%"


def latency_buckets(totals: Totals) -> list[tuple[str, int]]:
    """Delayed connections by extra connect latency, in power-of-two second buckets."""
    values = np.flatnonzero(totals.delayed) * LATENCY_STEP
    counts = totals.delayed[np.flatnonzero(totals.delayed)]
    buckets: list[tuple[str, int]] = []
    low, high = 0.0, 1.0
    while len(values):
        inside = values <= high
        if inside.any():
            label = f"<= {format_seconds(high)}" if low == 0 else (
                f"{format_seconds(low)}-{format_seconds(high)}")
            buckets.append((label, int(counts[inside].sum())))
        values, counts = values[~inside], counts[~inside]
        low, high = high, high * 2
    return buckets


def connection_lines(totals: Totals) -> list[tuple[str, str]]:
    """What the clients saw: refusals, retransmissions, the extra connect latency."""
    delayed = totals.delayed_count
    lines = [
        ("attempted", f"{totals.attempted}"),
        ("got a port (established)", f"{totals.established}"),
        ("first packet dropped",
         f"{totals.refused} ({_percent(totals.refused, totals.attempted)})"),
        ("  got a port after retransmitting", f"{delayed}"),
        ("  never got a port (gave up)", f"{totals.connect_failed}"),
        ("  still retransmitting at the end", f"{totals.still_retrying}"),
        ("retransmissions sent", f"{totals.retransmits}"),
    ]
    if delayed:
        lines.append((
            "extra connect latency of the delayed",
            f"p50 {format_seconds(totals.latency_percentile(0.5))}, "
            f"p99 {format_seconds(totals.latency_percentile(0.99))}",
        ))
        lines.append((
            "extra connect latency of all established",
            f"p50 {format_seconds(totals.latency_percentile(0.5, all_established=True))}, "
            f"p99 {format_seconds(totals.latency_percentile(0.99, all_established=True))}",
        ))
    return lines


def counter_lines(totals: Totals, *, not_masqueraded: int = 0) -> list[tuple[str, str]]:
    lines = [
        *connection_lines(totals),
        ("packets dropped, by reason", f"{totals.dropped}"),
    ]
    lines += [(f"  {code} {reason_text(code)}", f"{n}") for code, n in totals.drops.items()]
    lines += [
        ("NAT entries evicted (LRU)", f"{totals.evictions}"),
        ("connections broken", f"{totals.broken}"),
        ("replies without mapping", f"{totals.reply_drops}"),
        ("nat_fill_up signals", f"{totals.signals}"),
        ("CT GC runs", f"{totals.gc_runs}"),
    ]
    if not_masqueraded:
        lines.append(("not masqueraded (no policy)", f"{not_masqueraded}"))
    return lines


def _endpoint_cells(endpoint: NatEndpoint) -> list[str]:
    return [format_ip(endpoint.egress_ip), endpoint.remote_addr, endpoint.proto.label]


def crossing_rows(result: SimulationResult, limit: int = 10) -> list[list[str]]:
    header = ["EgressIP", "RemoteAddr", "Proto", "Peak", "Peak%"] + [
        f"{t:.0%}" for t in THRESHOLDS
    ]
    rows = [header]
    divisor = result.settings.divisor
    for endpoint in result.top_endpoints(limit):
        peak = result.peak(endpoint)
        marks = result.crossings.get(endpoint, {})
        rows.append(
            [*_endpoint_cells(endpoint), str(peak), f"{peak / divisor:.1%}"]
            + [format_seconds(marks[t]) if t in marks else "-" for t in THRESHOLDS]
        )
    return rows


def interval_rows(result: SimulationResult, max_rows: int = 24) -> list[list[str]]:
    """Saturation per nat-stats pass (every Nth pass when there are many), with the
    refusals and evictions since the previous row."""
    records = result.intervals
    step = max(1, -(-len(records) // max_rows))
    shown = list(range(step - 1, len(records), step))
    if records and shown[-1] != len(records) - 1:
        shown.append(len(records) - 1)
    rows = [["Time", "Top tuple", "Count", "Saturation", "Refused", "Evicted", "Broken"]]
    previous: Totals = Totals()
    for i in shown:
        record = records[i]
        top = max(record.stats.rows, key=lambda r: r.count, default=None)
        t = record.totals
        rows.append([
            format_seconds(record.time),
            f"{format_ip(top.egress_ip)} -> {top.remote_addr}" if top else "-",
            str(top.count) if top else "0",
            f"{top.count / result.settings.divisor:.1%}" if top else "0.0%",
            f"+{t.refused - previous.refused}",
            f"+{t.evictions - previous.evictions}",
            f"+{t.broken - previous.broken}",
        ])
        previous = t
    return rows


def render_summary(result: SimulationResult) -> str:
    """The text report of ``egressgw simulate``."""
    s = result.settings
    totals = result.totals
    rate = totals.attempted / result.wall_seconds if result.wall_seconds > 0 else 0.0
    out = [
        f"Simulated {result.name}: {format_seconds(s.duration)} of virtual time in "
        f"{result.wall_seconds:.1f}s ({totals.attempted} connections, {rate:,.0f}/s)\n",
        f"Gateways: {', '.join(result.gateways)}; egress IPs: {', '.join(result.egress_ips)}\n",
        f"Datapath model: {s.datapath_model}; limit {s.limit.describe()}\n",
        f"--node-port-range {s.node_port_range} ({s.node_port_range.nat_ports} NAT ports, "
        f"saturation divides by {s.divisor}), --bpf-nat-global-max {s.bpf_nat_global_max}, "
        f"--nat-map-stats-interval {format_seconds(s.stats_interval)}, seed {s.seed}\n\n",
        "Connections\n",
        tabwrite([["  " + k, v] for k, v in counter_lines(
            totals, not_masqueraded=result.not_masqueraded)]),
        f"  {first_refusal_text(result)}\n",
        *([
            "\nExtra connect latency (connections that got a port after retransmitting)\n",
            tabwrite([["  " + label, str(n)] for label, n in latency_buckets(totals)]),
        ] if totals.delayed_count else []),
        "\nPort search: collisions before a free port (tries histogram)\n",
        tabwrite([["  " + label, str(n)] for label, n in tries_buckets(totals.tries)]),
        "\nTuples: peak count and first nat-stats pass at or above each mark\n",
        tabwrite(crossing_rows(result)),
        "\nPer nat-stats pass (the largest tuple; refusals, evictions, breaks since the "
        "row before)\n",
        tabwrite(interval_rows(result)),
    ]
    if result.intervals:
        last = result.intervals[-1]
        out += [
            f"\nnat-stats at {format_seconds(last.time)}:\n",
            render_table(last.stats.rows),
            render_saturation(last.stats),
        ]
    return "".join(out)


def _endpoint_doc(endpoint: NatEndpoint) -> dict[str, Any]:
    """A tuple's fields, cased like the nat-stats rows (egressIP, remoteAddr)."""
    return {
        "family": endpoint.family.value,
        "proto": endpoint.proto.label,
        "egressIP": str(endpoint.egress_ip),
        "remoteIP": str(endpoint.remote_ip),
        "remotePort": endpoint.remote_port,
        "remoteAddr": endpoint.remote_addr,
    }


def totals_document(totals: Totals) -> dict[str, Any]:
    return {
        "attempted": totals.attempted,
        "established": totals.established,
        "refused": totals.refused,
        "closed": totals.closed,
        "drops": {str(code): n for code, n in totals.drops.items()},
        "dropReasons": {str(code): reason_text(code) for code in totals.drops},
        "evictions": totals.evictions,
        "broken": totals.broken,
        "replyDrops": totals.reply_drops,
        "signals": totals.signals,
        "gcRuns": totals.gc_runs,
        "tries": [int(x) for x in totals.tries],
        "retransmits": totals.retransmits,
        "neverGotAPort": totals.connect_failed,
        "stillRetrying": totals.still_retrying,
        "delayed": totals.delayed_count,
        "connectLatency": {
            "binSeconds": LATENCY_STEP,
            "histogram": {
                f"{i * LATENCY_STEP:g}": int(totals.delayed[i])
                for i in np.flatnonzero(totals.delayed)
            },
            "p50": totals.latency_percentile(0.5),
            "p99": totals.latency_percentile(0.99),
            "p50AllEstablished": totals.latency_percentile(0.5, all_established=True),
            "p99AllEstablished": totals.latency_percentile(0.99, all_established=True),
        },
    }


def result_document(result: SimulationResult) -> dict[str, Any]:
    """Plain values for ``-o json`` / ``-o yaml``; each pass's nat-stats as nat-stats -o json."""
    s = result.settings
    return {
        "workload": result.name,
        "settings": {
            "duration": s.duration,
            "seed": s.seed,
            "nodePortRange": str(s.node_port_range),
            "bpfNatGlobalMax": s.bpf_nat_global_max,
            "natMapStatsInterval": s.stats_interval,
            "natMapStatsEntries": s.stats_entries,
            "conntrackGCInterval": s.conntrack_gc_interval,
            "bpfCtGlobalTcpMax": s.bpf_ct_global_tcp_max,
            "bpfCtGlobalAnyMax": s.bpf_ct_global_any_max,
            "ciliumVersion": s.cilium_version,
            "natLru": s.nat_lru,
            "possibleCPUs": s.possible_cpus,
            "flowCPUs": s.flow_cpus,
            "bpfDistributedLRU": s.bpf_distributed_lru,
            "saturationDivisor": s.divisor,
            "datapathModel": s.datapath_model,
            "limit": s.limit.document(),
        },
        "gateways": result.gateways,
        "egressIPs": result.egress_ips,
        "wallSeconds": round(result.wall_seconds, 3),
        "totals": {**totals_document(result.totals), "notMasqueraded": result.not_masqueraded},
        "peakSaturation": result.peak_saturation,
        "tuples": [
            {
                **_endpoint_doc(endpoint),
                "peak": result.peak(endpoint),
                "crossed": {
                    f"{t:g}": result.crossings.get(endpoint, {}).get(t) for t in THRESHOLDS
                },
            }
            for endpoint in result.top_endpoints(s.stats_entries)
        ],
        "intervals": [
            {
                "time": record.time,
                "attempted": record.totals.attempted,
                "refused": record.totals.refused,
                "dropped": record.totals.dropped,
                "evictions": record.totals.evictions,
                "broken": record.totals.broken,
                "natStats": stats_document(record.stats),
            }
            for record in result.intervals
        ],
    }


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def markdown_section(title: str, result: SimulationResult, plot_name: str | None) -> str:
    """One run as a markdown section: counters, marks, the last nat-stats table, plot."""
    totals = result.totals
    parts = [
        f"## {title}\n\n",
        f"Egress IPs {', '.join(result.egress_ips)} on {', '.join(result.gateways)}; "
        f"{format_seconds(result.settings.duration)} of virtual time, seed "
        f"{result.settings.seed}.\n\n",
        markdown_table([["counter", "value"], *[
            [k.strip(), v] for k, v in counter_lines(totals)
        ]]),
        "\n",
        f"{first_refusal_text(result)}\n\n",
        markdown_table(crossing_rows(result, 5)),
        "\n",
    ]
    if totals.delayed_count:
        parts += [
            "Extra connect latency of the connections that got a port after "
            "retransmitting:\n\n",
            markdown_table([["latency", "connections"], *[
                [label, str(n)] for label, n in latency_buckets(totals)
            ]]),
            "\n",
        ]
    if result.intervals:
        last = result.intervals[-1]
        parts += [
            f"nat-stats at {format_seconds(last.time)}:\n\n```\n",
            render_table(last.stats.rows),
            render_saturation(last.stats),
            "```\n\n",
        ]
    if plot_name:
        parts.append(f"![saturation over time]({plot_name})\n\n")
    return "".join(parts)


def write_report(result: SimulationResult, out_dir: Path, *, title: str) -> tuple[Path, Path]:
    """``out_dir``/report.md and saturation.png, as the demo writes them, for one run."""
    from egressgw.sim.plot import plot_saturation  # noqa: PLC0415 - loads matplotlib

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create: {exc.strerror}", source=str(out_dir)) from None
    plot = plot_saturation(result, out_dir / "saturation.png", title=title)
    s = result.settings
    text = "".join([
        f"# {title}\n\n",
        f"Model datapath: Cilium v{s.cilium_version} semantics, limit "
        f"{s.limit.describe()}, --bpf-nat-global-max "
        f"{s.bpf_nat_global_max}, nat-stats every {format_seconds(s.stats_interval)}, "
        f"seed {s.seed}.\n\n",
        f"![saturation over time]({plot.name})\n\n",
        markdown_section("Run", result, None),
        "## Per nat-stats pass\n\n",
        markdown_table(interval_rows(result)),
    ])
    report = out_dir / "report.md"
    try:
        report.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror}", source=str(report)) from None
    return report, plot
