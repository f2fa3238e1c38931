"""Simulated connections per second on a 10,000,000-connection workload, and the demo.

Three measurements, side by side in one run:

1. generation alone: the workload's connections drawn into numpy columns, window by
   window, without a datapath (the simulator's own share of the work);
2. ``simulate``: the same workload through the compiled model datapath with a nat-stats
   pass every 30 s of virtual time (goal: at least 1,000,000 connections/s on one core);
3. the baseline: the model's per-connection Python API (``connect`` then ``close``, one
   call per packet) on a slice of the same connections.

Prints connections/s for each and the ratio simulate / baseline. Then times
``egressgw demo`` as a subprocess (interpreter start-up and numba compilation included;
the goal is under a minute).

    .venv/bin/python bench/bench_sim.py [--connections 10000000] [--baseline 50000]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from egressgw.datapath.model import EndKind, ModelConfig, ModelDatapath
from egressgw.net import Endpoint, FiveTuple, Proto
from egressgw.sim.flows import AddressBook
from egressgw.sim.generate import WorkloadFlows
from egressgw.sim.routing import route_workload
from egressgw.sim.simulate import SimSettings, simulate
from egressgw.sim.workload import Workload, parse_workload

RATE = 10_000.0  # new connections per second of virtual time


def bench_workload() -> Workload:
    """2000 clients, 50 servers, 4 egress IPs, 1 s mean connections closed with FIN."""
    return parse_workload(
        {
            "egress_ips": ["10.1.0.0", "10.1.0.1", "10.1.0.2", "10.1.0.3"],
            "destinations": [{"address": f"10.2.0.{i}:443"} for i in range(50)],
            "clients": [{
                "count": 2000,
                "cidr": "10.244.0.0/16",
                "arrivals": {"process": "poisson", "rate": RATE},
                "duration": {"distribution": "exponential", "mean": "1s"},
                "end": "fin",
            }],
        },
        source="bench",
    )


def time_generation(workload: Workload, duration: float) -> tuple[int, float]:
    flows = WorkloadFlows(workload, route_workload(workload), AddressBook(),
                          np.random.default_rng(0))
    n = 0
    start = time.perf_counter()
    for t in np.arange(0.0, duration, 30.0):
        n += len(flows.window(float(t), float(min(t + 30.0, duration))))
    return n, time.perf_counter() - start


def time_simulate(workload: Workload, duration: float) -> tuple[int, float, str]:
    settings = SimSettings(duration=duration, seed=0)
    simulate(workload, SimSettings(duration=1.0))  # compile outside the timing
    start = time.perf_counter()
    result = simulate(workload, settings, progress=False)
    elapsed = time.perf_counter() - start
    t = result.totals
    note = (f"established {t.established}, refused {t.refused}, evictions {t.evictions}, "
            f"peak saturation {result.peak_saturation:.1%}, {len(result.intervals)} passes")
    return t.attempted, elapsed, note


def time_per_connection_api(workload: Workload, count: int) -> tuple[int, float]:
    """The same kind of connections through connect/close, one Python call per packet."""
    routes = route_workload(workload)
    book = AddressBook()
    flows = WorkloadFlows(workload, routes, book, np.random.default_rng(1)).window(
        0.0, count / RATE
    )
    datapath = ModelDatapath(ModelConfig(), random.Random(0))
    datapath.advance(0.0)
    n = len(flows)
    start = time.perf_counter()
    for i in range(n):
        tup = FiveTuple(
            Proto.TCP,
            Endpoint(book.ips[flows.src[i]], int(flows.sport[i])),
            Endpoint(book.ips[flows.dst[i]], int(flows.dport[i])),
        )
        egress = routes.egress.ips[int(flows.egress[i])]
        datapath.connect(tup, egress)
        datapath.close(tup, EndKind.FIN)
    return n, time.perf_counter() - start


def time_demo() -> float:
    script = Path(sys.executable).with_name("egressgw")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "egressgw.cli"]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([*command, "demo", "--quiet", "--out", out], check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000_000)
    parser.add_argument("--baseline", type=int, default=50_000,
                        help="connections for the per-connection API baseline")
    parser.add_argument("--no-demo", action="store_true")
    args = parser.parse_args()
    workload = bench_workload()
    duration = args.connections / RATE

    n_gen, t_gen = time_generation(workload, duration)
    print(f"generation:            {n_gen:>11,} connections in {t_gen:7.2f}s = "
          f"{n_gen / t_gen:>12,.0f}/s")
    n_api, t_api = time_per_connection_api(workload, args.baseline)
    api_rate = n_api / t_api
    print(f"baseline (per call):   {n_api:>11,} connections in {t_api:7.2f}s = "
          f"{api_rate:>12,.0f}/s")
    n_sim, t_sim, note = time_simulate(workload, duration)
    sim_rate = n_sim / t_sim
    print(f"simulate:              {n_sim:>11,} connections in {t_sim:7.2f}s = "
          f"{sim_rate:>12,.0f}/s  ({note})")
    print(f"ratio simulate / per-connection API: {sim_rate / api_rate:.1f}x")
    print(f"goal 1,000,000/s: {'met' if sim_rate >= 1e6 else 'not met'} "
          f"({sim_rate / 1e6:.2f} of it)")
    if not args.no_demo:
        wall = time_demo()
        print(f"egressgw demo (subprocess, compile included): {wall:.1f}s "
              f"(goal under 60 s: {'met' if wall < 60 else 'not met'})")


if __name__ == "__main__":
    main()
