"""nat-stats from a 1,000,000-line ``cilium-dbg bpf nat list`` dump, against awk.

Generates the dump into a temporary file, checks that ``egressgw nat-stats`` and the awk
one-liner count the same, then times both end to end as subprocesses (interpreter start-up
included), alternating, several repetitions: once free to use every CPU, once pinned to
one CPU with ``taskset -c 0``. Prints wall and CPU times (median and range), the ratios
egressgw / awk (the requirement: wall at most 1.0) and the load average, since other work
on the machine skews wall times. ``--stages`` adds where egressgw's CPU time goes, stage by
stage, in one process.

    .venv/bin/python bench/bench_natstats_dump.py [--lines 1000000] [--repeat 7] [--stages]
    .venv/bin/python bench/bench_natstats_dump.py --quick    # 100,000 lines, 3 repeats
    .venv/bin/python bench/bench_natstats_dump.py --conntrack [--lines 524288] [--quick]

``--conntrack`` does the same with a ``conntrack -L`` text dump (524,288 masqueraded
connections by default: TCP in several states, UDP, ICMP; 4 egress IPs, 32 remotes, 1,000
pods) against an awk one-liner that counts it the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

from benchutil import egressgw_command, format_load, load_average, spread
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
Key = tuple[str, str, str, int]

# conntrack -L: masqueraded connections of the counted protocols by {proto, egress IP =
# the reply's destination, remote = the reply's source ip:port (0 for ICMP)}; a connection
# is masqueraded when the reply's destination is not the original source.
CONNTRACK_AWK_PROGRAM = """
$1 == "tcp" || $1 == "udp" || $1 == "icmp" || $1 == "icmpv6" {
  k = 0
  for (i = 4; i <= NF; i++)
    if (substr($i, 1, 4) == "src=") { if (++k == 1) o = substr($i, 5); else { r = i; break } }
  d = substr($(r + 1), 5)
  if (d != o) {
    p = ($1 == "tcp" || $1 == "udp") ? substr($(r + 2), 7) : 0
    n[$1 " " d " " substr($r, 5) ":" p]++
  }
}
END { for (k in n) print n[k], k }
"""
CONNTRACK_PROTOS = {"tcp": "TCP", "udp": "UDP", "icmp": "ICMP", "icmpv6": "ICMPv6"}


def conntrack_lines(count: int, seed: int = 1) -> list[str]:
    """``conntrack -L`` lines as conntrack-tools prints them (default output format)."""
    rng = random.Random(seed)
    states = ["ESTABLISHED"] * 7 + ["TIME_WAIT", "SYN_SENT", "CLOSE_WAIT"]
    lines = []
    for i in range(count):
        pod = f"10.244.{i % 4}.{i % 250 + 1}"
        remote = f"198.51.100.{rng.randrange(1, 33)}"
        egress = f"203.0.113.{rng.randrange(1, 5)}"
        sport, nat_port = rng.randrange(1024, 65536), rng.randrange(1024, 65536)
        kind = rng.random()
        if kind < 0.85:
            lines.append(
                f"tcp      6 431999 {rng.choice(states)} src={pod} dst={remote} sport={sport} "
                f"dport=443 src={remote} dst={egress} sport=443 dport={nat_port} [ASSURED] "
                "mark=0 use=1\n")
        elif kind < 0.97:
            lines.append(
                f"udp      17 29 src={pod} dst={remote} sport={sport} dport=53 src={remote} "
                f"dst={egress} sport=53 dport={nat_port} mark=0 use=1\n")
        else:
            lines.append(
                f"icmp     1 29 src={pod} dst={remote} type=8 code=0 id={sport} src={remote} "
                f"dst={egress} type=0 code=0 id={nat_port} mark=0 use=1\n")
    return lines


def awk_binary() -> str:
    found = shutil.which("mawk") or shutil.which("awk")
    if found is None:
        sys.exit("bench needs awk (mawk preferred)")
    return found


def awk_counts(awk: str, program: str, path: str) -> dict[Key, int]:
    out = subprocess.run([awk, program, path], check=True, capture_output=True, text=True)
    counts = {}
    for line in out.stdout.splitlines():
        count, proto, egress, remote = line.split()
        endpoint = Endpoint.parse(remote)
        proto = CONNTRACK_PROTOS.get(proto, proto)
        counts[(proto, str(parse_ip(egress)), str(endpoint.ip), endpoint.port)] = int(count)
    return counts


def egressgw_counts(path: str) -> dict[Key, int]:
    command = [*egressgw_command(), "nat-stats", "--from", path, "-o", "json"]
    command += ["--nat-map-stats-entries", "4096"]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    rows = json.loads(out.stdout)["rows"]
    return {(r["proto"], r["egressIP"], r["remoteIP"], r["remotePort"]): r["count"] for r in rows}


def timed(command: list[str]) -> tuple[float, float, float]:
    """Wall time, CPU time (user + system, the command and its children) and minor page
    faults of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, after.ru_minflt - before.ru_minflt


def compare(name: str, commands: dict[str, list[str]], repeat: int) -> None:
    """Time the commands alternately ``repeat`` times each and print the ratios."""
    wall: dict[str, list[float]] = {tool: [] for tool in commands}
    cpu: dict[str, list[float]] = {tool: [] for tool in commands}
    faults: dict[str, list[float]] = {tool: [] for tool in commands}
    load_before = load_average()
    for i in range(repeat):
        order = list(commands.items())
        for tool, command in order if i % 2 == 0 else reversed(order):
            spent_wall, spent_cpu, spent_faults = timed(command)
            wall[tool].append(spent_wall)
            cpu[tool].append(spent_cpu)
            faults[tool].append(spent_faults)
    print(f"\n{name}: {repeat} runs each, alternating; {format_load(load_before, load_average())}")
    for tool in commands:
        print(f"  {tool:9} wall {spread(wall[tool], '.3f', ' s')}")
        print(f"  {'':9} cpu  {spread(cpu[tool], '.3f', ' s')}")
        print(f"  {'':9} minor page faults {spread(faults[tool])}")
    # Ratios of runs done back to back (run i of each), then of the medians.
    wall_ratios = [a / b for a, b in zip(wall["egressgw"], wall["awk"], strict=True)]
    cpu_ratios = [a / b for a, b in zip(cpu["egressgw"], cpu["awk"], strict=True)]
    ratio = statistics.median(wall["egressgw"]) / statistics.median(wall["awk"])
    verdict = "met" if ratio <= 1.0 else "NOT met"
    print(f"  egressgw/awk: wall median {ratio:.2f} (pairs {min(wall_ratios):.2f}-"
          f"{max(wall_ratios):.2f}), cpu median "
          f"{statistics.median(cpu['egressgw']) / statistics.median(cpu['awk']):.2f}"
          f" (pairs {min(cpu_ratios):.2f}-{max(cpu_ratios):.2f});"
          f" requirement wall <= 1.0: {verdict}")


STAGES_PROGRAM = """
import sys
sys.path.insert(0, sys.argv[1])
import bench_natstats_dump
getattr(bench_natstats_dump, sys.argv[2])(sys.argv[3])
"""


def stages(path: str, repeat: int, *, conntrack: bool = False) -> None:
    """CPU seconds per stage of the bulk scan, one process, the whole file (no fork), each
    of ``repeat`` runs in a fresh process (so the imports are timed cold every time)."""
    runs: list[dict[str, float]] = []
    load_before = load_average()
    keys = ""
    for _ in range(repeat):
        done = subprocess.run(
            [sys.executable, "-c", STAGES_PROGRAM, os.path.dirname(os.path.abspath(__file__)),
             "conntrack_stages" if conntrack else "scan_stages", path],
            check=True, capture_output=True, text=True)
        result = json.loads(done.stdout)
        keys = result.pop("distinct keys")
        runs.append(result)
    print(f"\nstages, one process, whole file ({keys:,} distinct keys): CPU seconds, "
          f"{repeat} runs; {format_load(load_before, load_average())}")
    totals = [run["scan total"] for run in runs]
    outside = ("imports (numpy, digits.py)", "scan total")
    scan = sorted((name for name in runs[0] if name not in outside),
                  key=lambda name: -statistics.median(r[name] for r in runs))
    for stage in [name for name in (outside[0], *scan, outside[1]) if name in runs[0]]:
        values = [run[stage] for run in runs]
        share = ("" if stage in outside else "  share of the scan " + format(statistics.median(
            v / t for v, t in zip(values, totals, strict=True)), ".0%"))
        print(f"  {stage:32} {spread(values, '.3f', ' s')}{share}")


def scan_stages(path: str) -> None:
    """One run of the stages, printed as JSON (run by :func:`stages` in a fresh process)."""
    clock = time.process_time
    started = clock()
    # Timed: numpy and the digit check. The dump readers are loaded already (this module
    # imports bench_lines from the same package).
    from egressgw.dumps import cilium, digits  # noqa: PLC0415
    from egressgw.dumps.heap import keep_freed_memory  # noqa: PLC0415

    imported = clock() - started
    keep_freed_memory()  # as nat-stats does
    spent: defaultdict[str, float] = defaultdict(float)
    keys: Counter[bytes] = Counter()
    strict = cilium._strict_lines_regex()
    with open(path, "rb") as handle:
        descriptor = handle.fileno()
        size = os.fstat(descriptor).st_size
        position = 0
        while position < size:
            t0 = clock()
            block = os.pread(descriptor, cilium.CHUNK_BYTES, position)
            cut = block.rfind(b"\n") + 1
            t1 = clock()
            skeleton = block.translate(None, cilium.DIGITS)
            end = skeleton.rfind(b"\n") + 1
            t2 = clock()
            common, _in_lines = cilium._common_lines(skeleton, end)
            t3 = clock()
            found = cilium._keys_in(block, cut)
            t4 = clock()
            keys.update(found)
            t5 = clock()
            if common >= 0:
                valid = digits.common_digits_are_valid(block, cut, common)
                spent["digits (numpy, common chunks)"] += clock() - t5
            else:
                valid = strict.match(block, 0, cut).end() == cut  # type: ignore[union-attr]
                spent["strict regex (other chunks)"] += clock() - t5
            if not valid:
                sys.exit(f"bad chunk at {position}")
            spent["read (pread)"] += t1 - t0
            spent["translate (digits deleted)"] += t2 - t1
            spent["shape counts (bytes.count)"] += t3 - t2
            spent["keys (findall)"] += t4 - t3
            spent["count keys (Counter)"] += t5 - t4
            position += cut
    t0 = clock()
    for key in keys:
        cilium.parse_key(key.decode())
    spent["parse distinct keys"] += clock() - t0
    result = dict(spent, **{"imports (numpy, digits.py)": imported,
                            "scan total": sum(spent.values()), "distinct keys": len(keys)})
    print(json.dumps(result))


def conntrack_stages(path: str) -> None:
    """One run of the stages of ``count_conntrack`` over a ``conntrack -L`` dump, the same
    steps in the same order, printed as JSON; the result is checked against
    ``count_conntrack`` itself so the stages cannot drift from the code they time."""
    # Not timed: this module has loaded the dump readers already (for bench_lines).
    from egressgw.dumps import base, conntrack  # noqa: PLC0415

    clock = time.process_time
    spent: dict[str, float] = {}
    t0 = clock()
    with open(path, "rb") as handle:
        data = handle.read()
    t1 = clock()
    text = base.normalize(data).decode("utf-8", "replace")
    t2 = clock()
    grammar = conntrack._grammar()
    rows = grammar.lines.findall(text, 0, len(text) - 1)
    t3 = clock()
    keys = Counter(map(grammar.key_of_row, rows))
    t4 = clock()
    tally = conntrack._Tally()
    for raw, n in keys.items():
        if raw[0] is not None:
            tally.add(conntrack._Key(*(field or "" for field in raw)), n)
    t5 = clock()
    if len(rows) != text.count("\n") or tally.counts != conntrack.count_conntrack(
            data, source=path).counts:
        sys.exit("the stages do not count what count_conntrack counts")
    spent["read"] = t1 - t0
    spent["normalize and decode"] = t2 - t1
    spent["grammar (findall, every line)"] = t3 - t2
    spent["count keys (Counter)"] = t4 - t3
    spent["classify distinct keys"] = t5 - t4
    result = dict(spent, **{"scan total": sum(spent.values()), "distinct keys": len(keys)})
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="100,000 lines, 3 repeats")
    parser.add_argument("--stages", action="store_true",
                        help="CPU time per stage of the scan, too (one process)")
    parser.add_argument("--conntrack", action="store_true",
                        help="a conntrack -L dump instead (default 524,288 lines)")
    args = parser.parse_args()
    if args.quick:
        args.lines, args.repeat = 100_000, 3
    elif args.conntrack and args.lines == parser.get_default("lines"):
        args.lines = 524_288
    awk = awk_binary()
    taskset = shutil.which("taskset")
    make, program = ((conntrack_lines, CONNTRACK_AWK_PROGRAM) if args.conntrack
                     else (bench_lines, AWK_PROGRAM))
    with tempfile.TemporaryDirectory(prefix="bench-natstats-") as tmp:
        path = os.path.join(tmp, "dump.txt")
        with open(path, "w") as out:
            out.writelines(make(args.lines))
        tiny = os.path.join(tmp, "tiny.txt")
        with open(tiny, "w") as out:
            out.writelines(make(10))
        size = os.path.getsize(path)
        cpus = len(os.sched_getaffinity(0))
        kind = "conntrack -L" if args.conntrack else "bpf nat list"
        print(f"{kind} dump: {args.lines:,} lines, {size / 1e6:.1f} MB; awk: {awk}; "
              f"usable cpus: {cpus}")
        ours, theirs = egressgw_counts(path), awk_counts(awk, program, path)
        if ours != theirs:
            print(f"MISMATCH: egressgw {len(ours)} endpoints, awk {len(theirs)}")
            return 1
        print(f"same counts: {len(ours)} endpoints, {sum(ours.values()):,} connections")
        egressgw = [*egressgw_command(), "nat-stats", "--from", path]
        awk_run = [awk, program, path]
        compare("all CPUs", {"egressgw": egressgw, "awk": awk_run}, args.repeat)
        if taskset is None:
            print("\none CPU: skipped (no taskset)")
        else:
            pin = [taskset, "-c", "0"]
            compare("one CPU (taskset -c 0)", {"egressgw": [*pin, *egressgw],
                                               "awk": [*pin, *awk_run]}, args.repeat)
        startup = [timed([*egressgw_command(), "nat-stats", "--from", tiny])[1]
                   for _ in range(args.repeat)]
        print(f"\negressgw start-up (nat-stats on a 10-line dump): cpu "
              f"{spread(startup, '.3f', ' s')}")
        if args.stages:
            stages(path, args.repeat, conntrack=args.conntrack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
