"""One nat-stats pass over a BPF NAT map of 524,288 entries, against `bpftool map dump`.

Creates an LRU hash map with the BPF datapath's layout (Cilium's ipv4_ct_tuple ->
ipv4_nat_entry), fills it with BPF_MAP_UPDATE_BATCH (262,144 connections = OUT + IN
entries, spread over 64 remote endpoints and 4 egress IPs), checks that the nat-stats pass
(batch lookups + counting IN entries, as pkg/maps/nat/stats) counts every connection, then
times, alternating, the pass in this process against `bpftool -j map dump id N` (what an
operator would otherwise read the map with; its JSON is not even parsed here).

    .venv/bin/python bench/bench_bpf_natstats.py [--connections 262144] [--repeat 5] [--quick]

Needs root. No program is loaded and no pin is made; the map goes with the process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import numpy as np

from benchutil import format_load, load_average, spread
from egressgw.datapath.bpf import layout
from egressgw.datapath.bpf.natmap import endpoint_counts, read_nat_map
from egressgw.datapath.bpf.syscall import MAP_TYPE_LRU_HASH, BpfMap
from egressgw.net import Family


def fill(nat_map: BpfMap, connections: int) -> None:
    keys = np.zeros(2 * connections, layout.KEY4)
    values = np.zeros(2 * connections, layout.VALUE4)
    i = np.arange(connections)
    pod = (np.uint32(0xC0000200) + (i // 65536)).astype(">u4").view("V4")  # 192.0.2.x
    remote = (np.uint32(0xC6336400) + (i % 64)).astype(">u4").view("V4")  # 198.51.100.x
    egress = (np.uint32(0xCB00710A) + (i % 4)).astype(">u4").view("V4")  # 203.0.113.10+
    nat_port = 32768 + (i // 64) % 32768  # unique per {egress, remote} below 2M connections
    out, inn = keys[:connections], keys[connections:]
    out["daddr"], out["saddr"], out["dport"], out["sport"] = remote, pod, 443, i % 65536
    out["nexthdr"], out["flags"] = 6, 0
    inn["daddr"], inn["saddr"], inn["dport"], inn["sport"] = egress, remote, nat_port, 443
    inn["nexthdr"], inn["flags"] = 6, 1
    values["needs_ct"] = 1
    values["addr"][:connections] = egress
    values["port"][:connections] = nat_port
    values["addr"][connections:] = pod
    values["port"][connections:] = out["sport"]
    step = 65536
    for start in range(0, 2 * connections, step):
        k = keys[start:start + step]
        nat_map.update_batch(k.tobytes(), values[start:start + step].tobytes(), len(k))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=262144)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="8,192 connections, one run each")
    args = parser.parse_args()
    if args.quick:
        args.connections, args.repeat = 8192, 1
    load_before = load_average()
    entries = 2 * args.connections
    nat_map = BpfMap.create("bench_snat_v4", MAP_TYPE_LRU_HASH, layout.KEY4.itemsize,
                            layout.VALUE4.itemsize, max_entries=entries)
    try:
        fill(nat_map, args.connections)
        counted = sum(endpoint_counts(read_nat_map(nat_map, Family.IPV4)).values())
        table = read_nat_map(nat_map, Family.IPV4)
        print(f"map: {len(table)} entries ({entries} max), nat-stats counts {counted} "
              "connections")
        ours: list[float] = []
        tool: list[float] = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            endpoint_counts(read_nat_map(nat_map, Family.IPV4))
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run(["bpftool", "-j", "map", "dump", "id", str(nat_map.info.id)],
                           stdout=subprocess.DEVNULL, check=True)
            tool.append(time.perf_counter() - t0)
        m_ours, m_tool = statistics.median(ours), statistics.median(tool)
        print(f"nat-stats pass (batch lookups + count): {spread(ours, '.3f', ' s')}")
        print(f"bpftool -j map dump:                    {spread(tool, '.3f', ' s')}")
        print(format_load(load_before, load_average()))
        print(f"ratio nat-stats / bpftool: {m_ours / m_tool:.3f}")
    finally:
        nat_map.close()


if __name__ == "__main__":
    main()
