"""CPU seconds of one ``simulate`` of bench_sim.py's workload: process time, not wall.

On a shared machine wall time follows the load; the process's CPU time follows the
code. Run it from two trees side by side, alternating, to compare them:

    cd bench && PYTHONPATH=../src:. ../.venv/bin/python sim_cpu.py [--connections 3000000]
        [--quick]
"""

from __future__ import annotations

import argparse
import time

import bench_sim
from benchutil import format_load, load_average
from egressgw.sim.simulate import SimSettings, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=3_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 connections")
    args = parser.parse_args()
    if args.quick:
        args.connections = 100_000
    load_before = load_average()
    workload = bench_sim.bench_workload()
    simulate(workload, SimSettings(duration=10.0), progress=False)  # load the kernel
    cpu, wall = time.process_time(), time.perf_counter()
    result = simulate(
        workload, SimSettings(duration=args.connections / bench_sim.RATE), progress=False
    )
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = result.totals.attempted
    print(f"cpu {cpu:.2f}s wall {wall:.2f}s connections {n} cpu-rate {n / cpu:,.0f}/s")
    print(format_load(load_before, load_average()))


if __name__ == "__main__":
    main()
