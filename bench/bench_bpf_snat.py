"""New connections per second through the BPF SNAT against the nftables SNAT, same lab.

Builds one lab, then alternates: nftables rules (kernel datapath) and the tc program (BPF
datapath, Cilium v1.16 search), each time opening ``--connections`` TCP connections from a
pod to a server (``lab load``, ``--parallel`` in flight, each closed after the greeting).
Prints connections per second per run (median and range) and the ratio BPF / nftables.

    .venv/bin/python bench/bench_bpf_snat.py [--connections 2000] [--parallel 64] [--repeat 3]
        [--quick]

Needs root, nft, conntrack, clang and bpftool. Removes the lab and the pins afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from benchutil import format_load, load_average, spread
from egressgw.config import NodePortRange
from egressgw.datapath.bpf import BpfDatapath, BpfSettings
from egressgw.lab import lab_rules
from netns import built_lab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 connections, one run each")
    args = parser.parse_args()
    if args.quick:
        args.connections, args.parallel, args.repeat = 100, 16, 1
    load_before = load_average()
    ports = NodePortRange()
    rates: dict[str, list[float]] = {"nftables": [], "bpf": []}
    with built_lab() as lab:
        t = lab.topology
        rules = lab_rules(t, [t.egress4[0], t.egress6[0]])
        for _ in range(args.repeat):
            for kind in ("nftables", "bpf"):
                if kind == "nftables":
                    dp = lab.datapath(ports)
                    dp.apply(rules)
                else:
                    bpf = BpfDatapath(BpfSettings(ports, netns=t.gateway_ns))
                    bpf.apply(rules)
                try:
                    r = lab.load("198.51.100.10:80", args.connections, parallel=args.parallel,
                                 timeout=5)
                finally:
                    if kind == "nftables":
                        dp.cleanup()
                        lab.flush_conntrack()
                    else:
                        bpf.cleanup()
                seen = set(r.seen_as)
                if r.failed or seen != {t.egress4[0]}:
                    sys.exit(f"{kind}: {r.failed} failed, server saw {seen}")
                rates[kind].append(r.succeeded / r.seconds)
                print(f"{kind:9} {r.succeeded} connections in {r.seconds:.2f} s: "
                      f"{r.succeeded / r.seconds:.0f}/s", flush=True)
    for kind, values in rates.items():
        print(f"{kind:9} {spread(values, unit='/s')}")
    print(format_load(load_before, load_average()))
    ratio = statistics.median(rates["bpf"]) / statistics.median(rates["nftables"])
    print(f"ratio bpf / nftables: {ratio:.2f}")


if __name__ == "__main__":
    main()
