"""Memory per live connection of the compiled model, measured at scale.

Each measurement runs in a fresh process: the kernel is loaded and warmed on a tiny
datapath, then one ``ModelDatapath`` (compiled engine, NAT map of 4,194,304 entries so
the map never limits the live connections) is driven through ``run()`` window by window
(10 s of virtual time each, each batch dropped after its window) as ``simulate`` drives it,
and the memory it holds is measured two ways:

- tracemalloc: bytes allocated since the datapath was created and still held, numpy's
  arrays included (numpy reports its data buffers to tracemalloc), and the peak;
- RSS: the process's resident set (``VmRSS``) after, minus before.

Both include everything the engine keeps: connection records, NAT entries, both hash
indexes, the event heap with every pending event, the address table. They are divided by
the connections open at the end (established, not yet closed) and by the CT entries;
the tracemalloc peak by the most CT entries seen at a window's end.

Scenarios, each at ``--sizes`` live connections N (default 100,000 and 1,000,000):

- held: N connections start within 10 s and stay open (3600 s, FIN); measured at 10 s.
  Each has a CT entry, its OUT and IN NAT entries and one pending event (its close).
- churn: the simulate bench's shape, Poisson arrivals at 10,000/s, exponential durations
  with mean N / 10,000 s (N open on average), FIN, for max(3 means, 360 s), so the first
  CT GC pass (at 300 s) has run. Closed connections keep their CT entry (10 s FIN
  timeout) until a pass collects them, and the arrays keep the size of their peak.

    .venv/bin/python bench/bench_memory.py [--sizes 100000 1000000] [--repeat 1] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import numpy.typing as npt

from benchutil import format_load, load_average, spread
from egressgw.datapath.model import ConnectionBatch, EndKind, ModelConfig, ModelDatapath

NAT_MAP = 4_194_304
CHURN_RATE = 10_000.0
WINDOW = 10.0


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def batches(dp: ModelDatapath, scenario: str, live: int, until: float, seed: int):
    """(batch, window end) pairs for ``scenario`` until ``until``."""
    gen = np.random.default_rng(seed)
    def ids(first: str, count: int) -> npt.NDArray[np.uint32]:
        base = ipaddress.ip_address(first)
        return np.array([dp.intern(base + i) for i in range(count)], np.uint32)

    pods, remotes, egress = ids("10.244.0.1", 2000), ids("198.51.100.1", 50), ids("203.0.113.10", 4)
    mean = live / CHURN_RATE
    t = 0.0
    while t < until:
        end = min(t + WINDOW, until)
        if scenario == "held":
            n = live if t == 0.0 else 0
            duration = np.full(n, 3600.0)
        else:
            n = int(gen.poisson(CHURN_RATE * (end - t)))
            duration = gen.exponential(mean, n)
        yield ConnectionBatch(
            start=np.sort(gen.uniform(t, end, n)),
            duration=duration,
            end=np.full(n, int(EndKind.FIN), np.uint8),
            src=gen.choice(pods, n),
            sport=gen.integers(1024, 61000, n).astype(np.uint16),
            dst=gen.choice(remotes, n),
            dport=np.full(n, 443, np.uint16),
            proto=np.full(n, 6, np.uint8),
            egress=gen.choice(egress, n),
            keepalive=np.zeros(n, np.float32),
        ), end
        t = end


def measure(scenario: str, live: int, gc_after: float) -> dict[str, float]:
    """One measurement in this process (call it in a fresh one)."""
    warm = ModelDatapath(ModelConfig(), random.Random(0))
    warm.run(ConnectionBatch.empty(), 1.0)  # load the kernel before the baseline
    del warm
    until = WINDOW if scenario == "held" else max(3 * live / CHURN_RATE, gc_after)
    gc.collect()
    rss_before = rss_bytes()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    dp = ModelDatapath(ModelConfig(bpf_nat_global_max=NAT_MAP), random.Random(1))
    engine = dp.engine
    peak_ct = 0
    for batch, end in batches(dp, scenario, live, until, seed=2):
        dp.run(batch, end)
        del batch
        peak_ct = max(peak_ct, int(getattr(engine, "tracked_connections", 0)))
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = rss_bytes() - rss_before
    counters = dp.counters
    ct_entries = int(getattr(engine, "tracked_connections", 0))
    return {
        "open": counters.established - counters.closed,
        "ct_entries": ct_entries,
        "attempted": counters.attempted,
        "gc_runs": counters.gc_runs,
        "evictions": counters.evictions_in + counters.evictions_out,
        "traced": held - base,
        "traced_peak": peak - base,
        "peak_ct_entries": peak_ct,
        "rss": rss,
        "virtual_seconds": until,
    }


def run_child(scenario: str, live: int, gc_after: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", scenario, str(live), str(gc_after)],
        check=True, capture_output=True, text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="20,000 live connections, churn without waiting for the first GC")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        scenario, live, gc_after = args.child
        print(json.dumps(measure(scenario, int(live), float(gc_after))))
        return
    sizes, gc_after = ([20_000], 0.0) if args.quick else (args.sizes, 360.0)
    load_before = load_average()
    print("bytes per connection, measured (tracemalloc: held allocations of the datapath; "
          "RSS: resident set after minus before), each in a fresh process")
    ratios: dict[str, float] = {}
    for live in sizes:  # held, then churn (the order does not matter: a process each)
        for scenario in ("held", "churn"):
            runs = [run_child(scenario, live, gc_after) for _ in range(args.repeat)]
            last = runs[-1]
            per_open = [r["traced"] / r["open"] for r in runs]
            rss_open = [r["rss"] / r["open"] for r in runs]
            per_ct = [r["traced"] / r["ct_entries"] for r in runs]
            print(f"{scenario:5} N={live:>9,}: {last['open']:,.0f} open, "
                  f"{last['ct_entries']:,.0f} CT entries, {last['attempted']:,.0f} started in "
                  f"{last['virtual_seconds']:g} s, {last['gc_runs']:.0f} GC passes, "
                  f"{last['evictions']:,.0f} evictions")
            print(f"      tracemalloc {last['traced'] / 1e6:8.1f} MB: per open connection "
                  f"{spread(per_open, unit=' B')}; per CT entry {spread(per_ct, unit=' B')}")
            print(f"      RSS         {last['rss'] / 1e6:8.1f} MB: per open connection "
                  f"{spread(rss_open, unit=' B')}")
            peak = [r["traced_peak"] / r["peak_ct_entries"] for r in runs]
            print(f"      peak: {last['peak_ct_entries']:,.0f} CT entries at a window's end, "
                  f"tracemalloc peak (array growth copies included) "
                  f"{last['traced_peak'] / 1e6:.1f} MB: "
                  f"{spread(peak, unit=' B')} per CT entry at the peak")
            ratios[f"{scenario} {live:,}"] = float(np.median(per_open))
    held_small = ratios[f"held {sizes[0]:,}"]
    print("ratio churn / held, bytes per open connection (tracemalloc): " + ", ".join(
        f"N={n:,} {ratios[f'churn {n:,}'] / ratios[f'held {n:,}']:.2f}" for n in sizes))
    print(f"held at N={sizes[-1]:,} / held at N={sizes[0]:,}: "
          f"{ratios[f'held {sizes[-1]:,}'] / held_small:.2f}")
    print(format_load(load_before, load_average()))


if __name__ == "__main__":
    main()
