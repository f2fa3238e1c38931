"""The netfilter model's speed against the compiled Cilium model, side by side.

Runs one workload (the bundled seed scenario by default: 20 minutes, one tuple filling
up, about 57,000 connections) through ``simulate`` with ``--datapath-model cilium``
(compiled, after a warm-up run so numba compilation is not counted) and
``--datapath-model netfilter`` (plain Python and numpy), each ``--repeat`` times, and
prints CPU seconds (median and range) and connections per CPU second for each, and the
ratio netfilter / cilium.

    .venv/bin/python bench/bench_netfilter.py [--workload FILE] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchutil import format_load, load_average, spread
from egressgw.sim.simulate import SimSettings, simulate
from egressgw.sim.workload import load_workload

SEED_SCENARIO = (Path(__file__).parents[1]
                 / "src/egressgw/examples/workloads/seed-scenario.yaml")


def cpu_seconds(workload_path: Path, model: str,
                duration: float | None) -> tuple[float, int, int]:
    """CPU seconds of one ``simulate``, the connections attempted and those refused."""
    workload = load_workload(workload_path)
    settings = SimSettings(duration=duration or workload.duration or 3600.0,
                           datapath_model=model)
    started = time.process_time()
    result = simulate(workload, settings, progress=False)
    return time.process_time() - started, result.totals.attempted, result.totals.refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", type=Path, default=SEED_SCENARIO)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="One run of 2 virtual minutes each (a smoke test).")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    duration = 120.0 if args.quick else None
    cpu_seconds(args.workload, "cilium", 30.0)  # compile the Cilium model first
    load_before = load_average()
    medians = {}
    for model in ("cilium", "netfilter"):
        runs = [cpu_seconds(args.workload, model, duration) for _ in range(repeat)]
        times = [t for t, _n, _r in runs]
        _t, connections, refused = runs[0]
        medians[model] = statistics.median(times)
        rates = [connections / t for t in times]
        print(f"{model:9}  {connections:,} connections, {refused:,} refused; "
              f"CPU {spread(times, '.2f', ' s')}; connections per CPU second "
              f"{spread(rates)}")
    print(format_load(load_before, load_average()))
    print(f"netfilter / cilium CPU time: {medians['netfilter'] / medians['cilium']:.1f}x")


if __name__ == "__main__":
    main()
