"""The seed document's scenario, its failure, and its remedy, on the model datapath.

Cilium's "SNAT Connection Limits": egress IP 10.1.0.0 masquerades many clients of a
server at 10.2.0.0:8080 behind a firewall. Every connection to that server needs its own
source port on the one tuple {10.1.0.0, 10.2.0.0, 8080}, and there are 32768 of them.

Act 1 grows the connections past the limit on one gateway: nat-stats shows the tuple
climbing towards 100%, then new connections are dropped ("No mapping for NAT masquerade") and,
because this gateway's NAT map is also full, old connections are evicted and break.
Act 2 applies the seed's remedy, splitting the traffic over a second egress IP (on a
second gateway node), and shows the same workload running clean.

``scale`` shrinks ports, NAT map and rates together, for a quicker run with the same
shape (the tests use it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egressgw.config import MAX_PORT, NodePortRange
from egressgw.datapath.model.config import CT_MAP_ANY_DEFAULT, CT_MAP_TCP_DEFAULT
from egressgw.errors import InputError
from egressgw.sim.plot import plot_saturation
from egressgw.sim.report import format_seconds, markdown_section, reason_text
from egressgw.sim.simulate import IntervalRecord, SimSettings, SimulationResult, simulate
from egressgw.sim.workload import Workload, parse_workload
from egressgw.stats import render_saturation, render_table

EGRESS_IP = "10.1.0.0"
SECOND_EGRESS_IP = "10.1.0.1"
SERVER = "10.2.0.0:8080"
# A gateway whose NAT map holds 73728 entries (36864 connections): large enough that the
# hot tuple runs out of ports first (drops 167 near 100%), small enough that the seed's
# second symptom, eviction of old connections, follows at demo scale. With 65536 the map
# fills first and evictions keep the tuple near 91%; from 81920 on nothing is evicted.
DEMO_NAT_MAP = 73728
DEMO_DURATION = 15 * 60.0
DEMO_INTERVAL = 60.0


def demo_workload(scale: float = 1.0, *, split: bool = False) -> Workload:
    """The scenario as a workload; ``split`` spreads clients over two egress IPs/nodes."""
    egress = [EGRESS_IP, SECOND_EGRESS_IP] if split else [EGRESS_IP]
    doc: dict[str, Any] = {
        "name": "seed scenario, split over two egress IPs" if split else "seed scenario",
        "duration": DEMO_DURATION,
        "egress_ips": egress,
        "gateways": {"gateway-1": [EGRESS_IP], "gateway-2": [SECOND_EGRESS_IP]},
        "destinations": [
            {"name": "backend", "address": SERVER, "protocol": "tcp"},
            {"name": "saas-api", "address": "104.198.14.52:443", "protocol": "tcp"},
            {"name": "kube-apiserver", "address": "172.18.0.4:6443", "protocol": "tcp"},
        ],
        "clients": [
            {
                "name": "backend clients",
                "count": 400,
                "cidr": "10.244.0.0/16",
                "destinations": ["backend"],
                "arrivals": {"process": "poisson",
                             "ramp": {"from": 20 * scale, "to": 120 * scale, "over": "10m"}},
                "duration": {"distribution": "lognormal", "median": "5m", "sigma": 0.5},
                "end": {"fin": 0.9, "rst": 0.1},
            },
            {
                "name": "api clients",
                "count": 50,
                "cidr": "10.245.0.0/24",
                "destinations": ["saas-api"],
                "arrivals": {"process": "poisson", "rate": 10 * scale},
                "duration": {"distribution": "lognormal", "median": "8m", "sigma": 0.5},
                "end": "fin",
            },
            {
                "name": "operators",
                "count": 5,
                "cidr": "10.246.0.0/24",
                "destinations": ["kube-apiserver"],
                "arrivals": {"process": "constant", "rate": 0.1},
                "duration": "forever",
            },
        ],
    }
    return parse_workload(doc, source="demo")


def demo_settings(scale: float = 1.0, seed: int = 0, cilium_version: str = "1.16"
                  ) -> SimSettings:
    """Cilium's defaults, but ports, NAT map and CT maps shrunk by ``scale`` (the CT maps'
    sizes set the adaptive GC's pace, so they shrink with the rates)."""
    ports = max(8, round(NodePortRange().nat_ports * scale))
    nat_map = max(1024, round(DEMO_NAT_MAP * scale))
    return SimSettings(
        duration=DEMO_DURATION,
        seed=seed,
        node_port_range=NodePortRange(min(30000, MAX_PORT - ports), MAX_PORT - ports),
        bpf_nat_global_max=nat_map,
        stats_interval=DEMO_INTERVAL,
        bpf_ct_global_tcp_max=max(1024, round(CT_MAP_TCP_DEFAULT * scale)),
        bpf_ct_global_any_max=max(1024, round(CT_MAP_ANY_DEFAULT * scale)),
        cilium_version=cilium_version,
    )


@dataclass(frozen=True, slots=True)
class DemoResult:
    before: SimulationResult
    after: SimulationResult
    report: Path
    plot: Path


def _interval_text(record: IntervalRecord, previous: IntervalRecord | None) -> str:
    totals = record.totals
    dropped = totals.dropped - (previous.totals.dropped if previous else 0)
    evicted = totals.evictions - (previous.totals.evictions if previous else 0)
    broken = totals.broken - (previous.totals.broken if previous else 0)
    head = (f"--- t={format_seconds(record.time)}  new in this interval: {dropped} packets "
            f"dropped, {evicted} NAT entries evicted, {broken} connections broken\n")
    return head + render_table(record.stats.rows) + render_saturation(record.stats)


def _act(
    title: str, workload: Workload, settings: SimSettings, echo: Callable[[str], None],
    *, tables: bool,
) -> SimulationResult:
    echo(f"\n== {title} ==\n")
    previous: list[IntervalRecord] = []

    def show(record: IntervalRecord) -> None:
        if tables:
            echo(_interval_text(record, previous[-1] if previous else None))
        previous.append(record)

    result = simulate(workload, settings, on_interval=show, progress=False)
    echo(_verdict(result))
    return result


def _verdict(result: SimulationResult) -> str:
    totals = result.totals
    lines = [f"\nAfter {format_seconds(result.settings.duration)}: "
             f"{totals.attempted} connections attempted, {totals.established} established.\n"]
    for endpoint in result.top_endpoints(1):
        marks = result.crossings.get(endpoint, {})
        reached = ", ".join(f"{t:.0%} at {format_seconds(v)}" for t, v in sorted(marks.items()))
        lines.append(
            f"Top tuple {endpoint.egress_ip} -> {endpoint.remote_addr}: peak "
            f"{result.peak(endpoint)}/{result.settings.divisor} "
            f"({result.peak(endpoint) / result.settings.divisor:.1%})"
            + (f"; reached {reached}" if reached else "") + ".\n"
        )
    reasons = ", ".join(f"{n} x {code} {reason_text(code)}" for code, n in totals.drops.items())
    lines.append(f"New connections whose first SYN was dropped: {totals.refused}; "
                 f"packets dropped: {reasons or 'none'}.\n")
    if totals.refused:
        delayed = totals.delayed_count
        latency = (f" (extra connect latency p50 {format_seconds(totals.latency_percentile(0.5))}"
                   f", p99 {format_seconds(totals.latency_percentile(0.99))})" if delayed else "")
        lines.append(
            f"Clients retransmit a dropped SYN (1, 3, 7, 15, 31, 63 s later): {delayed} got "
            f"a port that way{latency}, {totals.connect_failed} never got one, "
            f"{totals.still_retrying} were still trying at the end.\n"
        )
    lines.append(f"NAT entries evicted: {totals.evictions}; connections broken: "
                 f"{totals.broken}.\n")
    if totals.dropped and result.peak_saturation < 1.0:
        lines.append(
            "Drops below 100%: nat.h tries at most "
            f"{result.settings.model_config().retries} ports per new connection, and the "
            "clients' own source ports (kept when free) crowd part of the range, so a "
            "search can fail while ports are still free.\n"
        )
    if totals.evictions:
        lines.append(
            "The NAT map was full: the least recently used entries were evicted, freeing "
            "ports for new connections and breaking old ones.\n"
        )
    return "".join(lines)


def run_demo(
    out_dir: Path,
    *,
    seed: int = 0,
    scale: float = 1.0,
    echo: Callable[[str], None] = print,
    tables: bool = True,
    cilium_version: str = "1.16",
) -> DemoResult:
    """Run both acts, print as they go, and write report.md and saturation.png."""
    if not (0 < scale <= 1 and math.isfinite(scale)):
        raise InputError(f"{scale}: must be in (0, 1]", field="--scale")
    settings = demo_settings(scale, seed, cilium_version)
    echo(
        "egressgw demo: Cilium's \"SNAT Connection Limits\" scenario on the model datapath.\n"
        f"Egress IP {EGRESS_IP} masquerades clients of a server at {SERVER} behind a "
        "firewall. New connections\n"
        f"ramp up; each needs its own source port on {{{EGRESS_IP}, {SERVER}}}: "
        f"{settings.divisor} ports (--node-port-range {settings.node_port_range}).\n"
        f"The gateway's NAT map holds {settings.bpf_nat_global_max} entries "
        f"(--bpf-nat-global-max), 2 per connection. nat-stats every "
        f"{format_seconds(settings.stats_interval)} of virtual time.\n"
    )
    before = _act(f"Act 1: one egress IP ({EGRESS_IP} on gateway-1)",
                  demo_workload(scale), settings, echo, tables=tables)
    after = _act(
        f"Act 2: the remedy, clients split over {EGRESS_IP} (gateway-1) and "
        f"{SECOND_EGRESS_IP} (gateway-2)",
        demo_workload(scale, split=True), settings, echo, tables=tables,
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create: {exc.strerror}", source=str(out_dir)) from None
    plot = plot_saturation(
        [("Act 1: one egress IP", before), ("Act 2: split over two egress IPs", after)],
        out_dir / "saturation.png",
        title="SNAT port saturation per {egress IP, remote endpoint}",
    )
    report = out_dir / "report.md"
    report.write_text(_markdown(before, after, plot.name), encoding="utf-8")
    echo(f"\nReport: {report} (plot: {plot})\n")
    return DemoResult(before, after, report, plot)


def _markdown(before: SimulationResult, after: SimulationResult, plot_name: str) -> str:
    s = before.settings
    return "".join([
        "# egressgw demo: SNAT connection limits\n\n",
        f"The scenario of Cilium's egress gateway troubleshooting guide: egress IP "
        f"{EGRESS_IP} masquerades clients of a server at {SERVER} behind a firewall. Each "
        f"connection needs its own source port on that tuple: {s.divisor} ports "
        f"(--node-port-range {s.node_port_range}); the gateway's NAT map holds "
        f"{s.bpf_nat_global_max} entries. Model datapath: Cilium v{s.cilium_version} "
        f"semantics, seed {s.seed}.\n\n",
        f"![saturation over time]({plot_name})\n\n",
        markdown_section("Act 1: one egress IP", before, None),
        markdown_section("Act 2: split over two egress IPs", after, None),
        "## Effect of the remedy\n\n",
        f"- peak saturation: {before.peak_saturation:.1%} -> {after.peak_saturation:.1%}\n",
        f"- new connections whose first SYN was dropped: {before.totals.refused} -> "
        f"{after.totals.refused}\n",
        f"- connections that never got a port: {before.totals.connect_failed} -> "
        f"{after.totals.connect_failed}\n",
        f"- packets dropped: {before.totals.dropped} -> {after.totals.dropped}\n",
        f"- NAT entries evicted: {before.totals.evictions} -> {after.totals.evictions}\n",
        f"- connections broken: {before.totals.broken} -> {after.totals.broken}\n",
    ])
