"""Benchmark: one nat-stats pass over a big conntrack table vs ``conntrack -L``.

Fills a fresh network namespace's conntrack table with source-NATed TCP entries (created
over ctnetlink with a NAT request, so the kernel sets IPS_SRC_NAT itself), then times, on
the same table in the same run:

  baseline   conntrack -L > /dev/null        (the conntrack-tools listing)
  kernel     the dump alone: recv and discard (what the kernel costs)
  nat-stats  ConntrackReader.snat_counts() + compute_nat_stats() (dump, count, top K)

and prints the ratio nat-stats / baseline (goal: <= 1.0). Needs root. nf_conntrack_max is
global (only settable from the root namespace); it is raised for the run and restored.

    .venv/bin/python bench/bench_conntrack.py [--entries 524288] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from egressgw.config import NodePortRange
from egressgw.datapath.kernel.conntrack import IPCTNL_MSG_CT_GET, ConntrackReader
from egressgw.datapath.kernel.ctfill import fill, synthetic_entries
from egressgw.stats import compute_nat_stats

CT_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=524288)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_conntrack needs root (network namespaces, conntrack)")

    netns = f"egw-bench{os.getpid()}{secrets.token_hex(2)}"
    old_max = CT_MAX.read_text().strip()
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        CT_MAX.write_text(str(max(int(old_max), args.entries + 65536)))
        egress = [f"203.0.113.{10 + i}" for i in range(4)]
        remotes = [f"198.51.100.{10 + i}" for i in range(32)]
        entries = synthetic_entries(args.entries, egress_ips=egress, remotes=remotes)
        start = time.perf_counter()
        refused = fill(entries, netns=netns)
        print(f"filled {args.entries - refused} entries ({refused} refused) "
              f"in {time.perf_counter() - start:.1f} s", flush=True)
        del entries

        def baseline() -> None:
            subprocess.run(["ip", "netns", "exec", netns, "conntrack", "-L"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

        reader = ConntrackReader(netns)

        def kernel_only() -> None:
            for _batch in reader._dump(IPCTNL_MSG_CT_GET, 2, b""):
                pass

        ports = NodePortRange()

        def nat_stats() -> None:
            with ConntrackReader(netns) as fresh:
                counts = fresh.snat_counts()
            stats = compute_nat_stats(counts, entries=30, divisor=ports.cilium_saturation_divisor)
            assert sum(counts.values()) == args.entries - refused, sum(counts.values())
            assert stats.rows

        results = {
            "conntrack -L": timed(baseline, args.repeat),
            "kernel dump only": timed(kernel_only, args.repeat),
            "nat-stats pass": timed(nat_stats, args.repeat),
        }
        reader.close()
        for name, times in results.items():
            print(f"{name:18s} best {min(times):6.3f} s  median {statistics.median(times):6.3f} s")
        base = min(results["conntrack -L"])
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"load average {load} on {os.cpu_count()} CPUs")
        print(f"ratio nat-stats / conntrack -L: {min(results['nat-stats pass']) / base:.2f} "
              f"(kernel alone {min(results['kernel dump only']) / base:.2f})")
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False)
        CT_MAX.write_text(old_max)


if __name__ == "__main__":
    main()
