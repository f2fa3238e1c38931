"""Simulated connections per second on a 10,000,000-connection workload, what bounds it,
and the demo.

Measured side by side in one run, ``--repeat`` rounds alternating:

1. generation alone: the workload's connections drawn into numpy columns, window by
   window, without a datapath (the simulator's own share of the work);
2. ``simulate``: the same workload through the compiled model datapath with a nat-stats
   pass every 30 s of virtual time (goal: at least 1,000,000 connections/s on one core);
3. ``simulate`` again with its public calls timed from outside (bench/simtiming.py):
   generation, the batch columns, the compiled kernel's ``run`` calls alone (event
   processing, CT GC passes included), the engine's Python around them (random state,
   array growth), the nat-stats passes (the kernel's count, then Python) and the rest of
   the driver. The instrumented total is printed next to the plain one so the timers'
   own cost shows;
4. the baseline: the model's per-connection Python API (``connect`` then ``close``, one
   call per packet) on a slice of the same connections, with the share of its time spent
   copying the random state into and out of the compiled engine.

Prints connections/s (median and range over the rounds), the breakdown of the median
instrumented run, the load average before and after, and the ratio simulate / baseline.
Then times ``egressgw demo`` as a subprocess (interpreter start-up and numba compilation
included; the goal is under a minute).

    .venv/bin/python bench/bench_sim.py [--connections 10000000] [--baseline 20000]
        [--repeat 3] [--no-demo] [--demo-cold] [--quick]

On a shared machine wall time follows the other work; the CPU time of the process
(printed for the plain simulate runs) follows the code.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchutil import egressgw_command, format_load, load_average, spread
from egressgw.datapath.model import EndKind, ModelConfig, ModelDatapath
from egressgw.net import Endpoint, FiveTuple, Proto
from egressgw.sim.flows import AddressBook
from egressgw.sim.generate import WorkloadFlows
from egressgw.sim.routing import route_workload
from egressgw.sim.simulate import SimSettings, simulate
from egressgw.sim.workload import Workload, parse_workload
from simtiming import Breakdown, RandomStateTimer

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


def time_simulate(workload: Workload, duration: float) -> tuple[int, float, float, str]:
    """(connections, wall seconds, CPU seconds of this process, counters)."""
    settings = SimSettings(duration=duration, seed=0)
    cpu = time.process_time()
    start = time.perf_counter()
    result = simulate(workload, settings, progress=False)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    t = result.totals
    note = (f"established {t.established:,}, refused {t.refused:,}, "
            f"evictions {t.evictions:,}, gc passes {t.gc_runs}, "
            f"peak saturation {result.peak_saturation:.1%}, "
            f"{len(result.intervals)} nat-stats passes")
    return t.attempted, elapsed, cpu, note


def time_simulate_breakdown(workload: Workload, duration: float) -> tuple[int, Breakdown]:
    settings = SimSettings(duration=duration, seed=0)
    with Breakdown() as breakdown:
        result = simulate(workload, settings, progress=False)
    return result.totals.attempted, breakdown


def time_per_connection_api(workload: Workload, count: int) -> tuple[int, float, float]:
    """The same kind of connections through connect/close, one Python call per packet:
    (connections, seconds, seconds copying the random state in and out)."""
    routes = route_workload(workload)
    book = AddressBook()
    flows = WorkloadFlows(workload, routes, book, np.random.default_rng(1)).window(
        0.0, count / RATE
    )
    datapath = ModelDatapath(ModelConfig(), random.Random(0))
    datapath.advance(0.0)
    n = len(flows)
    with RandomStateTimer() as rng_timer:
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
        elapsed = time.perf_counter() - start
    return n, elapsed, rng_timer.seconds


def time_demo(cold: bool) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``egressgw demo`` as a process; ``cold``: with an
    empty numba cache (``NUMBA_CACHE_DIR``), so every kernel compiles.

    The peak is the child's ``VmHWM``, read every 20 ms while it runs: the rusage of a
    waited child would report this (large) process's own peak, since the child is
    vforked from it before its exec.
    """
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache} if cold else None
        start = time.perf_counter()
        peak_kib = 0
        with subprocess.Popen([*egressgw_command(), "demo", "--quiet", "--out", out],
                              stdout=subprocess.DEVNULL, env=env) as process:
            status = Path(f"/proc/{process.pid}/status")
            while process.poll() is None:
                try:
                    for line in status.read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peak_kib = max(peak_kib, int(line.split()[1]))
                except (OSError, ValueError):  # exiting between poll() and the read
                    pass
                time.sleep(0.02)
        wall = time.perf_counter() - start
        if process.returncode:
            raise SystemExit(f"egressgw demo exited {process.returncode}")
        return wall, peak_kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000_000)
    parser.add_argument("--baseline", type=int, default=20_000,
                        help="connections for the per-connection API baseline")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--demo-cold", action="store_true",
                        help="also time the demo once with an empty numba cache")
    parser.add_argument("--quick", action="store_true",
                        help="one round of 200,000 connections, baseline 2,000, no demo")
    args = parser.parse_args()
    if args.quick:
        args.connections, args.baseline, args.repeat, args.no_demo = 200_000, 2_000, 1, True
    workload = bench_workload()
    duration = args.connections / RATE
    simulate(workload, SimSettings(duration=1.0), progress=False)  # compile outside timing

    gen: list[float] = []
    api: list[float] = []
    api_rng: list[float] = []
    sim: list[float] = []
    sim_cpu: list[float] = []
    timed: list[tuple[float, Breakdown]] = []
    n_gen = n_api = n_sim = 0
    note = ""
    load_before = load_average()
    for round_ in range(args.repeat):
        print(f"round {round_ + 1} of {args.repeat}", flush=True)
        n_gen, t_gen = time_generation(workload, duration)
        gen.append(n_gen / t_gen)
        n_api, t_api, t_rng = time_per_connection_api(workload, args.baseline)
        api.append(n_api / t_api)
        api_rng.append(t_rng / t_api)
        # The plain and the timed run alternate which goes first.
        for timed_run in (False, True) if round_ % 2 == 0 else (True, False):
            if timed_run:
                n_timed, breakdown = time_simulate_breakdown(workload, duration)
                timed.append((n_timed / breakdown.total, breakdown))
            else:
                n_sim, t_sim, cpu_sim, note = time_simulate(workload, duration)
                sim.append(n_sim / t_sim)
                sim_cpu.append(n_sim / cpu_sim)
    load_after = load_average()

    print(f"generation:          {n_gen:>11,} connections, {spread(gen, unit='/s')}")
    print(f"baseline (per call): {n_api:>11,} connections, {spread(api, unit='/s')}; "
          f"copying the random state in and out: {spread(api_rng, '.0%')} of its time")
    print(f"simulate:            {n_sim:>11,} connections, {spread(sim, unit='/s')}")
    print(f"   per CPU second of this process: {spread(sim_cpu, unit='/s')}")
    print(f"   {note}")
    print(f"simulate, timed:     {n_sim:>11,} connections, "
          f"{spread([rate for rate, _ in timed], unit='/s')}")
    rate, breakdown = sorted(timed, key=lambda pair: pair[0])[len(timed) // 2]
    print(f"where simulate's time goes (the median timed run, {breakdown.total:.2f} s, "
          f"{rate:,.0f}/s):")
    for line in breakdown.report(n_sim):
        print(f"   {line}")
    print(format_load(load_before, load_after))
    sim_rate = statistics.median(sim)
    api_rate = statistics.median(api)
    print(f"ratio simulate / per-connection API (medians): {sim_rate / api_rate:.1f}x")
    print(f"goal 1,000,000/s: {'met' if sim_rate >= 1e6 else 'not met'} "
          f"({sim_rate / 1e6:.2f} of it)")
    if not args.no_demo:
        for cold in (False, True) if args.demo_cold else (False,):
            load_before = load_average()
            wall, rss = time_demo(cold)
            cache = "empty numba cache, every kernel compiles" if cold else "numba cache warm"
            print(f"egressgw demo (a process, {cache}): {wall:.1f} s, peak RSS {rss:.0f} MB "
                  f"(goal under 60 s: {'met' if wall < 60 else 'not met'}); "
                  f"{format_load(load_before, load_average())}")


if __name__ == "__main__":
    main()
