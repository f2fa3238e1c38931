"""A workload made from what an operator has: nat-stats counts and a hold time.

Tuples of the busiest tuple's family with at least 1% of its count are kept.

A tuple holding N ports whose connections hold a port for H on average sees new
connections at N / H per second (Little's law). Each tuple of a snapshot becomes a
client group: Poisson arrivals at that rate, lognormal durations (sigma 0.5, as the
seed scenario's) with median ``hold``, closed with FIN, from ``clients`` clients that
walk their ephemeral ports one by one. The rates are then set so that the planner's own
estimate of the ports held (duration + close timeout + the wait for CT GC) equals the
observed count: the simulation starts from the occupancy that was measured.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from egressgw.errors import InputError
from egressgw.net import Family, NatEndpoint
from egressgw.sim.simulate import SimSettings
from egressgw.sim.workload import Workload, parse_workload

# Tuples below this share of the largest one are left out: they do not decide the plan.
MIN_SHARE = 0.01
# Runs cover this many holds, so the occupancy settles (at least 30 minutes).
HOLDS_SIMULATED = 4.0
MIN_DURATION = 1800.0
SIGMA = 0.5


def _client_cidr(index: int, family: Family) -> str:
    if family is Family.IPV4:
        return str(ipaddress.ip_network((int(ipaddress.ip_address("10.64.0.0")) + (index << 16),
                                         16)))
    return f"fd00:e9e:{index:x}::/64"


def workload_from_counts(
    counts: Mapping[NatEndpoint, int],
    *,
    hold: float,
    settings: SimSettings,
    clients: int = 400,
    source: str = "nat-stats",
    simulate_once: bool = True,
) -> Workload:
    """One client group per tuple, at the rate that holds its observed count: first by
    the planner's estimate, then (``simulate_once``) by one simulation of the result."""
    from egressgw.sim.plan import estimate  # noqa: PLC0415 - plan builds on this module

    if not (math.isfinite(hold) and hold > 0):
        raise InputError(f"{hold}: must be a positive duration", field="--hold")
    if clients < 1:
        raise InputError(f"{clients}: must be at least 1", field="--clients")
    if not counts:
        raise InputError("no tuples to plan for", source=source)
    top = max(counts.values())
    # The planner spreads every client over one list of candidate egress IPs, so one
    # family is planned: the busiest tuple's.
    family = max(counts, key=lambda e: counts[e]).family
    tuples = sorted((e for e, n in counts.items()
                     if n >= MIN_SHARE * top and n > 0 and e.family is family),
                    key=lambda e: -counts[e])
    mean_hold = hold * math.exp(SIGMA * SIGMA / 2)
    doc: dict[str, Any] = {
        "name": f"observed {source}",
        "duration": max(MIN_DURATION, 60.0 * math.ceil(HOLDS_SIMULATED * mean_hold / 60)),
        "egress_ips": sorted({str(e.egress_ip) for e in tuples}),
        "destinations": [],
        "clients": [],
    }
    for i, endpoint in enumerate(tuples):
        doc["destinations"].append({
            "name": f"tuple-{i}", "address": endpoint.remote_addr,
            "protocol": endpoint.proto.label.lower(),
        })
        doc["clients"].append({
            "name": f"{endpoint.egress_ip} -> {endpoint.remote_addr}",
            "count": clients,
            "cidr": _client_cidr(i, endpoint.family),
            "destinations": [f"tuple-{i}"],
            "egress_ips": [str(endpoint.egress_ip)],
            "arrivals": {"process": "poisson", "rate": counts[endpoint] / mean_hold},
            "duration": {"distribution": "lognormal", "median": hold, "sigma": SIGMA},
            "end": "fin",
        })
    workload = parse_workload(doc, source=source)
    # Calibrate: the planner's steady occupancy per tuple equals the observed count.
    run = replace(settings, duration=float(doc["duration"]))
    held = {d.endpoint: d.concurrent for d in estimate(workload, run)}
    workload = _rescale(workload, tuples, counts, held)
    if not simulate_once:
        return workload
    # Then by the simulation itself: near the limit the model frees ports early (GC
    # passes that nat_fill_up signals wake), which the estimate leaves out, so the rates
    # that hold the observed counts in the simulation are higher.
    from egressgw.sim.simulate import simulate  # noqa: PLC0415

    result = simulate(workload, run, progress=False)
    simulated = {e: float(np.mean(series[len(series) // 2:]))
                 for e, series in result.series.items() if series}
    return _rescale(workload, tuples, counts, simulated)


def _rescale(workload: Workload, tuples: list[NatEndpoint], counts: Mapping[NatEndpoint, int],
             held: Mapping[NatEndpoint, float]) -> Workload:
    """Each tuple's group at the rate that turns ``held`` into its observed count."""
    groups = []
    for group, endpoint in zip(workload.groups, tuples, strict=True):
        key = next((k for k in held if k.remote_ip == endpoint.remote_ip
                    and k.remote_port == endpoint.remote_port
                    and k.egress_ip == endpoint.egress_ip and k.proto == endpoint.proto), None)
        factor = counts[endpoint] / held[key] if key is not None and held[key] > 0 else 1.0
        groups.append(replace(group, arrivals=replace(
            group.arrivals, per_connection=group.arrivals.per_connection / factor)))
    return replace(workload, groups=tuple(groups))
