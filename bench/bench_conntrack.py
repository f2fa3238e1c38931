"""Benchmark: one nat-stats pass over a big conntrack table vs ``conntrack -L``.

Fills a fresh network namespace's conntrack table with source-NATed TCP entries (created
over ctnetlink with a NAT request, so the kernel sets IPS_SRC_NAT itself), then times, on
the same table in the same run, each as a whole process started through
``ip netns exec`` (interpreter start-up and imports included), alternating the order:

  conntrack -L      conntrack -L > /dev/null         (the conntrack-tools listing)
  nat-stats pass    a Python process: ConntrackReader.snat_counts() (ctnetlink dump and
                    count) + compute_nat_stats() + the table printed to /dev/null
  text path         conntrack -L | egressgw nat-stats --from - > /dev/null

and, in this process, the dump alone (receive and discard: what the kernel costs). Prints
median and range of wall times, the CPU time of the processes, the load average before
and after, and the ratio nat-stats / conntrack -L of the medians (goal: <= 1.0). Needs
root. nf_conntrack_max is global (only settable from the root namespace); it is raised
for the run and restored.

    .venv/bin/python bench/bench_conntrack.py [--entries 524288] [--repeat 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchutil import egressgw_command, format_load, load_average, spread
from egressgw.datapath.kernel.conntrack import IPCTNL_MSG_CT_GET, ConntrackReader
from egressgw.datapath.kernel.ctfill import fill, synthetic_entries

CT_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run_timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU time (user + system of the process and its children) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# The nat-stats pass as its own process (what the agent does at each recount).
NAT_STATS_PASS = """
import sys
from egressgw.config import NodePortRange
from egressgw.datapath.kernel.conntrack import snat_counts
from egressgw.stats import compute_nat_stats, render_table
counts = snat_counts()
stats = compute_nat_stats(counts, entries=30, divisor=NodePortRange().cilium_saturation_divisor)
print(render_table(stats.rows))
if sum(counts.values()) != int(sys.argv[1]):
    sys.exit(f"counted {sum(counts.values())}, expected {sys.argv[1]}")
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=524288)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="5,000 entries, one run each")
    args = parser.parse_args()
    if args.quick:
        args.entries, args.repeat = 5_000, 1
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

        created = args.entries - refused
        netns_exec = ["ip", "netns", "exec", netns]
        egressgw = " ".join(egressgw_command())
        commands = {
            "conntrack -L": [*netns_exec, "conntrack", "-L"],
            "nat-stats pass": [*netns_exec, sys.executable, "-c", NAT_STATS_PASS, str(created)],
            "text path": [*netns_exec, "sh", "-c",
                          f"conntrack -L 2>/dev/null | {egressgw} nat-stats --from -"],
        }
        walls: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        load_before = load_average()
        for i in range(args.repeat):
            order = list(commands.items())
            for name, command in order if i % 2 == 0 else reversed(order):
                wall, cpu = run_timed(command)
                walls[name].append(wall)
                cpus[name].append(cpu)
        load_after = load_average()
        with ConntrackReader(netns) as reader:
            def kernel_only() -> None:
                for _batch in reader._dump(IPCTNL_MSG_CT_GET, 2, b""):
                    pass

            dump_only = timed(kernel_only, args.repeat)
        print(f"{created} entries, {args.repeat} runs each, whole processes, alternating:")
        for name, times in walls.items():
            print(f"{name:15s} wall {spread(times, '.3f', ' s')}")
            print(f"{'':15s} cpu  {spread(cpus[name], '.3f', ' s')}")
        print(f"{'dump only':15s} wall {spread(dump_only, '.3f', ' s')} (in-process, IPv4)")
        print(format_load(load_before, load_after))
        base = statistics.median(walls["conntrack -L"])
        print(f"ratio nat-stats pass / conntrack -L (medians): "
              f"{statistics.median(walls['nat-stats pass']) / base:.2f}; "
              f"text path / conntrack -L: {statistics.median(walls['text path']) / base:.2f}")
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False)
        CT_MAX.write_text(old_max)


if __name__ == "__main__":
    main()
