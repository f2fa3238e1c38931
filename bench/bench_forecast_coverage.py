"""How often forecast's first-refusal band holds the first refusal the model simulates.

A tuple of 1024 NAT ports (64512-65535, divisor 1023) grown through the model datapath:
400 clients walking their Linux ports, connections of 60 s, arrivals ramping from 6 to 16
a second over 50 minutes, nat-stats every 10 s. For each seed the forecast sees the
snapshots a minute apart from 5 to 15 minutes in (no refusal yet), with the hold an
operator would measure (count / new connections a second), and the steady curve of
that range; the run's first refused connection is the first nat-stats pass counting
one. Prints, per seed, the first refusal, the forecast's answer and its band, and at
the end how many runs fell inside the band against the binomial range of a band that
holds 80% of them.

    .venv/bin/python bench/bench_forecast_coverage.py [--seeds 24] [--quick]

tests/test_forecast_first_refusal.py runs the first 6 seeds of this routine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from benchutil import format_load, load_average
from egressgw import SimSettings, simulate
from egressgw.config import NodePortRange
from egressgw.sim.expected_refusals import COVERAGE, curve_band, first_refusals
from egressgw.sim.forecast import Mark, forecast_marks
from egressgw.sim.refusal import PortSearch, SourcePorts, named_curve
from egressgw.sim.snapshots import Snapshot
from egressgw.sim.workload import Workload, parse_workload

# 1024 NAT ports (the clients' Linux ports lie below them, so nat.h starts at a random
# port); the tuple grows from about 45% to past 100% slowly compared with its
# connections' turnover (the steady curve's history).
SMALL = NodePortRange(30000, 64511)
GROWING = {
    "name": "growing", "duration": "40m", "egress_ips": ["10.1.0.0"],
    "destinations": [{"name": "backend", "address": "10.2.0.0:8080", "protocol": "tcp"}],
    "clients": [{
        "name": "app", "count": 400, "cidr": "10.244.0.0/16",
        "arrivals": {"process": "poisson", "ramp": {"from": 6, "to": 16, "over": "50m"}},
        "duration": 60, "end": "fin",
    }],
}
# The snapshots the forecast sees: every minute from 5 to 15 minutes into the run.
WINDOW = (300.0, 900.0)
DURATION = 2400.0


@dataclass(frozen=True, slots=True)
class Run:
    """One seed: times in seconds from the start of the run."""

    seed: int
    first: float  # the first refused connection (its nat-stats pass)
    predicted: float  # Λ = ln 2
    earliest: float
    latest: float  # inf: never
    full: float  # the trend reaches 100%

    @property
    def inside(self) -> bool:
        return self.earliest <= self.first <= self.latest


def growing_workload() -> Workload:
    return parse_workload(GROWING, source="bench_forecast_coverage")


def run_seed(workload: Workload, curve: Any, seed: int) -> Run:
    result = simulate(workload, SimSettings(duration=DURATION, seed=seed,
                                            node_port_range=SMALL, stats_interval=10,
                                            conntrack_gc_interval=10), progress=False)
    (endpoint,) = result.series
    counts = result.series[endpoint]
    first = next(r.time for r in result.intervals if r.totals.refused > 0)
    window = [(i, r) for i, r in enumerate(result.intervals)
              if WINDOW[0] <= r.time <= WINDOW[1] and r.time % 60 == 0]
    if window[-1][1].totals.refused:
        raise AssertionError(f"seed {seed}: a refusal before the forecast's snapshots")
    snapshots = [Snapshot("sim", r.time, {endpoint: counts[i]}) for i, r in window]
    # The hold as an operator measures it: count / rate of new connections.
    start, end = window[0][1], window[-1][1]
    rate = (end.totals.attempted - start.totals.attempted) / (end.time - start.time)
    hold = float(np.mean([counts[i] for i, _ in window])) / rate
    forecast = first_refusals(snapshots, hold=hold, probability=curve_band(curve))[endpoint]
    if forecast.eta is None or forecast.earliest is None:
        raise AssertionError(f"seed {seed}: no forecast")
    (outlook,) = forecast_marks(snapshots, [Mark("full", curve.divisor)])
    latest = math.inf if forecast.latest is None else end.time + forecast.latest
    return Run(seed, first, end.time + forecast.eta, end.time + forecast.earliest, latest,
               end.time + (outlook.trends["full"].eta or math.inf))


def steady_curve_of_the_range() -> Any:
    search = PortSearch.for_version("1.16", SMALL)
    return named_curve("steady", search, SourcePorts().with_clients(400),
                       SMALL.nat_ports - 1)


def coverage_runs(seeds: range) -> list[Run]:
    workload = growing_workload()
    curve = steady_curve_of_the_range()
    return [run_seed(workload, curve, seed) for seed in seeds]


def binomial_range(n: int, p: float, mass: float = 0.95) -> tuple[int, int]:
    """The central range of Binomial(n, p) holding at least ``mass`` (exact sums)."""
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    tail = (1 - mass) / 2
    low = 0
    while sum(pmf[: low + 1]) < tail:
        low += 1
    high = n
    while sum(pmf[high:]) < tail:
        high -= 1
    return low, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=24)
    parser.add_argument("--quick", action="store_true", help="2 seeds (a smoke test).")
    args = parser.parse_args()
    seeds = range(2 if args.quick else args.seeds)
    load_before = load_average()
    started = time.process_time()
    runs = coverage_runs(seeds)
    for r in runs:
        print(f"seed {r.seed:3}: first refusal {r.first:6.0f} s, forecast {r.predicted:6.0f} s "
              f"[{r.earliest:.0f} .. {r.latest:.0f}] {'inside' if r.inside else 'OUTSIDE'}"
              f"{'' if r.inside else (' (early)' if r.first < r.earliest else ' (late)')}")
    inside = sum(r.inside for r in runs)
    low, high = binomial_range(len(runs), COVERAGE)
    firsts, predicted = [r.first for r in runs], [r.predicted for r in runs]
    print(f"first refusal, simulated: median {statistics.median(firsts):.0f} s "
          f"({min(firsts):.0f}-{max(firsts):.0f}); forecast (Λ = ln 2): median "
          f"{statistics.median(predicted):.0f} s ({min(predicted):.0f}-{max(predicted):.0f}); "
          f"before its forecast in {sum(f < p for f, p in zip(firsts, predicted, strict=True))}"
          f" of {len(runs)} runs")
    print(f"CPU {time.process_time() - started:.1f} s; {format_load(load_before, load_average())}")
    print(f"coverage: {inside} of {len(runs)} runs inside the {COVERAGE:.0%} band "
          f"(binomial 95% range for {COVERAGE:.0%}: {low}..{high}); ratio inside / expected "
          f"{inside / (COVERAGE * len(runs)):.2f}")


if __name__ == "__main__":
    main()
