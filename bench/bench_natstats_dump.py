"""nat-stats from a 1,000,000-line ``cilium-dbg bpf nat list`` dump, against awk.

Generates the dump into a temporary file, checks that ``egressgw nat-stats`` and the awk
one-liner count the same, then times both end to end as subprocesses (interpreter start-up
included), alternating, several repetitions. Prints the median and best wall times and
the ratio egressgw / awk (the requirement is at most 1.0), with CPU times and the load
average, since other work on the machine skews wall times.

    .venv/bin/python bench/bench_natstats_dump.py [--lines 1000000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from egressgw.dumps.synthetic import bench_lines
from egressgw.net import Endpoint, parse_ip

# Count IN entries of the counted protocols by {proto, egress IP, remote ip:port}: the egress
# is the IN tuple's destination without its port ($5, IPv6 in brackets), the remote its
# source ($3).
AWK_PROGRAM = (
    '$2 == "IN" && ($1 == "TCP" || $1 == "UDP" || $1 == "ICMP" || $1 == "ICMPv6") '
    '{ e = $5; sub(/:[0-9]+$/, "", e); n[$1 " " e " " $3]++ } '
    "END { for (k in n) print n[k], k }"
)


def egressgw_command() -> list[str]:
    script = Path(sys.executable).with_name("egressgw")
    return [str(script)] if script.exists() else [sys.executable, "-m", "egressgw.cli"]


def awk_binary() -> str:
    found = shutil.which("mawk") or shutil.which("awk")
    if found is None:
        sys.exit("bench needs awk (mawk preferred)")
    return found


def awk_counts(awk: str, path: str) -> dict[tuple[str, str, str, int], int]:
    out = subprocess.run([awk, AWK_PROGRAM, path], check=True, capture_output=True, text=True)
    counts = {}
    for line in out.stdout.splitlines():
        count, proto, egress, remote = line.split()
        endpoint = Endpoint.parse(remote)
        port = endpoint.port
        counts[(proto, str(parse_ip(egress)), str(endpoint.ip), port)] = int(count)
    return counts


def egressgw_counts(path: str) -> dict[tuple[str, str, str, int], int]:
    command = [*egressgw_command(), "nat-stats", "--from", path, "-o", "json"]
    command += ["--nat-map-stats-entries", "4096"]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    rows = json.loads(out.stdout)["rows"]
    return {(r["proto"], r["egressIP"], r["remoteIP"], r["remotePort"]): r["count"] for r in rows}


def timed(command: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system, the command and its children) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    awk = awk_binary()
    with tempfile.TemporaryDirectory(prefix="bench-natstats-") as tmp:
        path = os.path.join(tmp, "nat-list.txt")
        with open(path, "w") as out:
            out.writelines(bench_lines(args.lines))
        size = os.path.getsize(path)
        print(
            f"dump: {args.lines:,} lines, {size / 1e6:.1f} MB; awk: {awk}; cpus: {os.cpu_count()}"
        )
        ours, theirs = egressgw_counts(path), awk_counts(awk, path)
        if ours != theirs:
            print(f"MISMATCH: egressgw {len(ours)} endpoints, awk {len(theirs)}")
            return 1
        print(f"same counts: {len(ours)} endpoints, {sum(ours.values()):,} connections")
        egressgw = [*egressgw_command(), "nat-stats", "--from", path]
        awk_run = [awk, AWK_PROGRAM, path]
        times: dict[str, list[float]] = {"egressgw": [], "awk": []}
        cpu: dict[str, list[float]] = {"egressgw": [], "awk": []}
        load_before = os.getloadavg()[0]
        for i in range(args.repeat):
            pair = [("egressgw", egressgw), ("awk", awk_run)]
            for name, command in pair if i % 2 == 0 else reversed(pair):
                wall, used = timed(command)
                times[name].append(wall)
                cpu[name].append(used)
        load_after = os.getloadavg()[0]
    print(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after")
    for name, values in times.items():
        shown = " ".join(f"{v:.3f}" for v in values)
        median, best = statistics.median(values), min(values)
        used = statistics.median(cpu[name])
        print(f"{name:9} wall median {median:.3f}s best {best:.3f}s, cpu {used:.3f}s [{shown}]")
    ratio = statistics.median(times["egressgw"]) / statistics.median(times["awk"])
    best = min(times["egressgw"]) / min(times["awk"])
    cpu_ratio = statistics.median(cpu["egressgw"]) / statistics.median(cpu["awk"])
    verdict = "met" if ratio <= 1.0 else "NOT met"
    print(
        f"ratio egressgw/awk: wall median {ratio:.2f}, wall best {best:.2f}, cpu {cpu_ratio:.2f} "
        f"(requirement: wall <= 1.0, {verdict})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
