"""The agent's nat-stats pass on a big NAT table: how long it takes, how long a policy
change waits for it, and how scrapes answer meanwhile; before against after, per datapath.

``--datapath`` picks the NAT table, ``--entries`` its size:

  kernel  a network namespace's conntrack table, filled with ``--entries`` source-NATed TCP
          entries (ctnetlink with a NAT request, as bench_conntrack.py: 4 egress IPs x 32
          remotes, port 443)
  bpf     the BPF datapath's pinned NAT map (``--bpf-nat-global-max`` 524,288), filled
          through bpf(2) (BPF_MAP_UPDATE_BATCH) with ``--entries`` / 2 connections (an OUT
          and an IN entry each) before the agent starts; the agent attaches its tc program
          to the namespace's uplink and finds the map pinned
  model   the model datapath in the agent's process, ``--entries`` / 2 connections opened
          through ``ModelAgentDatapath.connect`` (the reference engine) before it starts

then runs the agent (its own process inside the namespace, ``--nat-map-stats-interval``
``--interval``, poll 0.1 s) in two modes, alternating:

  before  ``--baseline-src DIR`` given: the agent of the tree at DIR (its ``src``, first on
          PYTHONPATH) as it is; else this tree with AgentConfig(background_recount=False):
          the pass runs on the agent's loop
  after   this tree as it is: the pass runs on the recount thread

In each run a scraper GETs /metrics every 50 ms (a new connection each); each answer says
whether a pass was running when it was built (egressgw_nat_stats_recount_in_progress).
``--edits`` times the policy file is then rewritten (switching the egress IP) at a random
moment inside a running pass, and the time until the agent logs "applied" is the
reconcile latency; whether the apply landed before that pass finished comes from the
agent's own timestamps (reconcile success vs the pass's publication). Then ``--edits``
more edits while no pass runs: the reconcile's own latency, the baseline. The pass time
is the agent's own egressgw_nat_stats_recount_duration_seconds, one per pass; the number
of connections it published is checked against the number created.

Before the agent runs, in this process: one pass timed alone (kernel, bpf); the model's
pass in its two steps, the snapshot (on the loop) and the count of the copy (on the
thread), against the whole pass (model); kernel: the p99
of a 1 ms Python step on another thread with no pass, a pass on a thread, and a pass in a
forked process (does the pass hold the GIL?).

Prints, per mode, the median and range over runs of: the pass time, the reconcile latency
during a pass and with no pass running, and the scrape p50/p99 during a pass and outside
one; with the load average.
Needs root. nf_conntrack_max is global (only settable from the root namespace): raised for
the run if lower than needed and restored. The namespace, and the BPF program and pins,
are removed whatever happens.

    .venv/bin/python bench/bench_agent_recount.py [--datapath kernel|bpf|model]
        [--entries 524288] [--repeat 3] [--edits 5] [--interval 2]
        [--baseline-src /path/to/other/tree/src] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import ipaddress
import json
import multiprocessing
import os
import random
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from bpf_support import fill_nat_map, synthetic_connections
from egressgw.agent.counting import ConntrackCounter
from egressgw.config import NodePortRange
from egressgw.datapath.bpf.datapath import BpfDatapath, BpfSettings
from egressgw.datapath.bpf.loader import PinnedMaps
from egressgw.datapath.bpf.natmap import endpoint_counts, read_nat_map
from egressgw.datapath.bpf.pins import BPFFS_DIR, ensure_bpffs
from egressgw.datapath.kernel.ctfill import fill, synthetic_entries
from egressgw.datapath.kernel.netns import call_in
from egressgw.net import Family
from gateway_files import POD_IP, POLICY_FILE, gateway_files, policy_yaml

CT_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
EGRESS = [f"203.0.113.{10 + i}" for i in range(4)]
REMOTES = [f"198.51.100.{10 + i}" for i in range(32)]
NODE = "gateway-1"
SCRAPE_EVERY = 0.05
TIMEOUT = 120.0
PR_SET_PDEATHSIG = 1
NAT_MAX = 524288  # --bpf-nat-global-max of the bpf agent (Cilium's default)

AGENT = """
import ipaddress, json, logging, sys
from pathlib import Path
from egressgw.agent import AgentConfig, ListenAddress, make_datapath, run_agent
a = json.loads(sys.argv[1])
logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
config = AgentConfig(Path(a["policies"]), Path(a["inventory"]), a["node"],
                     datapath=a["datapath"], stats_interval=a["interval"], poll_interval=0.1,
                     listen=ListenAddress("127.0.0.1", 0),
                     **({"background_recount": False} if a["serial"] else {}))
datapath = make_datapath(a["datapath"], config.node_port_range, nat_global_max=a["nat_max"],
                         device="ext0" if a["datapath"] == "bpf" else None)
if a["datapath"] == "model":
    # The connections, through the rule the policy compiles to (the agent applies the
    # same one on start): a NAT map of 2 entries per connection.
    from egressgw.net import Endpoint, FiveTuple, Proto
    from egressgw.rules import EgressRule, RuleKind
    pod = ipaddress.ip_address(a["pod"])
    datapath.apply([EgressRule(pod, ipaddress.ip_network("198.51.100.0/24"),
                               RuleKind.MASQUERADE, ipaddress.ip_address(a["egress"]),
                               a["node"])])
    remotes = [ipaddress.ip_address(r) for r in a["remotes"]]
    for i in range(a["connections"]):
        datapath.connect(FiveTuple(Proto.TCP, Endpoint(pod, 1024 + i // len(remotes)),
                                   Endpoint(remotes[i % len(remotes)], 443)))
    logging.info("model filled with %d connections", a["connections"])
run_agent(config, datapath)
"""

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


@dataclass
class Scrape:
    at: float  # monotonic, when the request was sent
    seconds: float
    metrics: dict[str, float]


@dataclass
class Run:
    mode: str
    passes: dict[int, float] = field(default_factory=dict)  # pass number -> seconds
    reconciles: list[float] = field(default_factory=list)
    # Edits made while no pass ran: the reconcile's own cost, the baseline.
    idle_reconciles: list[float] = field(default_factory=list)
    applied_during_pass: int = 0
    busy: list[float] = field(default_factory=list)  # scrape seconds during a pass
    idle: list[float] = field(default_factory=list)
    entries: set[int] = field(default_factory=set)

    @property
    def edits(self) -> int:
        return len(self.reconciles) + len(self.idle_reconciles)


LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _die_with_parent() -> None:
    """SIGTERM to the agent when the benchmark dies, even by kill -9 (prctl(2)); only a
    call into the already loaded libc, safe between fork and exec."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class AgentProcess:
    """The agent inside ``netns``; its log lines kept with their arrival time."""

    def __init__(self, netns: str, args: dict[str, object], src: str | None = None) -> None:
        """``src``: import egressgw from there (a baseline tree) instead of this one."""
        self.netns = netns
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", AGENT, json.dumps(args)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509 (before any thread)
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_for("serving /metrics", after=0)[1]
        match = re.search(r"on http://([\d.]+):(\d+)", line)
        assert match, line
        self.port = int(match[2])

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, *, after: int) -> tuple[float, str]:
        deadline = time.monotonic() + TIMEOUT
        with self._changed:
            while True:
                for at, line in self.lines[after:]:
                    if text in line:
                        return at, line
                if time.monotonic() > deadline or self.process.poll() is not None:
                    log = "\n".join(line for _, line in self.lines[-20:])
                    sys.exit(f"the agent did not log {text!r}:\n{log}")
                self._changed.wait(0.2)

    def mark(self) -> int:
        with self._changed:
            return len(self.lines)

    def scrape(self) -> Scrape:
        start = time.monotonic()
        sock = call_in(self.netns, lambda: socket.create_connection(("127.0.0.1", self.port),
                                                                    timeout=10))
        with sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        seconds = time.monotonic() - start
        body = b"".join(chunks).partition(b"\r\n\r\n")[2].decode()
        metrics: dict[str, float] = {}
        for line in body.splitlines():
            match = SAMPLE.match(line)
            if match is None:
                continue
            name, labels = match[1], match[2] or ""
            if name == "egressgw_nat_entries" and 'family="ipv4"' in labels:
                name = "entries_ipv4"
            metrics.setdefault(name, float(match[3]))
        return Scrape(start, seconds, metrics)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Scraper:
    """GET /metrics every SCRAPE_EVERY seconds on a thread; keeps every answer."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.scrapes: list[Scrape] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                scrape = self.agent.scrape()
            except OSError as exc:
                print(f"scrape failed: {exc}", file=sys.stderr)
                return  # wait() notices the thread is gone
            with self._lock:
                self.scrapes.append(scrape)
            self._stop.wait(max(0.0, SCRAPE_EVERY - scrape.seconds))

    def latest(self) -> Scrape | None:
        with self._lock:
            return self.scrapes[-1] if self.scrapes else None

    def wait(self, check: Callable[[Scrape], bool], what: str) -> Scrape:
        """The first scrape sent from now on for which ``check`` holds."""
        since = time.monotonic()
        deadline = since + TIMEOUT
        with self._lock:
            seen = len(self.scrapes)
        while time.monotonic() < deadline and self._thread.is_alive():
            with self._lock:
                fresh = self.scrapes[seen:]
                seen = len(self.scrapes)
            for scrape in fresh:
                if scrape.at >= since and check(scrape):
                    return scrape
            time.sleep(SCRAPE_EVERY / 2)
        sys.exit(f"timed out waiting for {what}")

    def stop(self) -> list[Scrape]:
        self._stop.set()
        self._thread.join(15)
        return self.scrapes


def edit_and_wait(agent: AgentProcess, policy: Path, edit: int) -> float:
    """Switch the policy's egress IP (atomically, by rename); seconds until "applied"."""
    mark = agent.mark()
    tmp = policy.with_suffix(".tmp")
    tmp.write_text(policy_yaml(EGRESS[(edit + 1) % 2]))
    written = time.monotonic()
    tmp.rename(policy)
    applied_at, _ = agent.wait_for("applied ", after=mark)
    return applied_at - written


def one_run(netns: str, mode: str, *, args: argparse.Namespace, rng: random.Random,
            created: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="egw-arc") as tmp:
        policies, inventory = gateway_files(Path(tmp), node=NODE, egress_ip=EGRESS[0],
                                            egress_addresses=EGRESS)
        return _one_run(netns, policies / POLICY_FILE, inventory, mode, args=args, rng=rng,
                        created=created)


def _one_run(netns: str, policy: Path, inventory: Path, mode: str, *,
             args: argparse.Namespace, rng: random.Random, created: int) -> Run:
    baseline = mode == "before" and args.baseline_src is not None
    agent = AgentProcess(netns, {"policies": str(policy.parent), "inventory": str(inventory),
                                 "node": NODE, "interval": args.interval,
                                 "datapath": args.datapath, "nat_max": NAT_MAX,
                                 "serial": mode == "before" and not baseline,
                                 "connections": created, "pod": POD_IP, "egress": EGRESS[0],
                                 "remotes": REMOTES},
                         src=args.baseline_src if baseline else None)
    run = Run(mode)
    scraper = Scraper(agent)
    try:
        agent.wait_for("applied ", after=0)
        scraper.wait(lambda s: s.metrics.get("egressgw_nat_stats_recounts_total", 0) >= 1,
                     "the first pass")
        while len(run.reconciles) < args.edits:
            # Into a pass, at a random point of its expected length.
            running = scraper.wait(
                lambda s: s.metrics.get("egressgw_nat_stats_recount_in_progress") == 1.0,
                "a pass to start")
            before = int(running.metrics["egressgw_nat_stats_recounts_total"])
            expected = running.metrics.get("egressgw_nat_stats_recount_duration_seconds", 1.0)
            time.sleep(rng.uniform(0.0, 0.6) * expected)
            latest = scraper.latest()
            if (latest is None or latest.metrics.get("egressgw_nat_stats_recount_in_progress")
                    != 1.0 or latest.metrics["egressgw_nat_stats_recounts_total"] != before):
                continue  # that pass ended meanwhile: wait for the next one
            run.reconciles.append(edit_and_wait(agent, policy, run.edits))
            done = scraper.wait(
                lambda s, b=before: s.metrics.get("egressgw_nat_stats_recounts_total", 0) > b,
                "the pass to end")
            if done.metrics["egressgw_nat_stats_recounts_total"] == before + 1 and (
                    done.metrics["egressgw_reconcile_last_success_timestamp_seconds"]
                    < done.metrics["egressgw_nat_stats_last_recount_timestamp_seconds"]):
                run.applied_during_pass += 1
        while len(run.idle_reconciles) < args.edits:
            scraper.wait(
                lambda s: s.metrics.get("egressgw_nat_stats_recount_in_progress") == 0.0,
                "a moment without a pass")
            run.idle_reconciles.append(edit_and_wait(agent, policy, run.edits))
    finally:
        scrapes = scraper.stop()
        agent.stop()
    for scrape in scrapes:
        m = scrape.metrics
        if m.get("egressgw_nat_stats_recount_in_progress") == 1.0:
            run.busy.append(scrape.seconds)
        else:
            run.idle.append(scrape.seconds)
        n = int(m.get("egressgw_nat_stats_recounts_total", 0))
        if n:
            run.passes[n] = m["egressgw_nat_stats_recount_duration_seconds"]
            run.entries.add(int(m.get("entries_ipv4", -1)))
    if run.entries != {created}:
        sys.exit(f"{mode}: the agent published {sorted(run.entries)} entries, "
                 f"created {created}")
    return run


def python_step() -> float:
    """A fixed bit of pure Python (about 1 ms here): what a scrape's own work is like."""
    start = time.perf_counter()
    sum(range(60000))
    return time.perf_counter() - start


def step_latencies(during: Callable[[], None] | None, seconds: float = 3.0) -> list[float]:
    """Time python_step every 10 ms on a thread while ``during()`` runs (or ``seconds``)."""
    stop = threading.Event()
    latencies: list[float] = []

    def probe() -> None:
        while not stop.is_set():
            latencies.append(python_step())
            time.sleep(0.01)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        if during is None:
            time.sleep(seconds)
        else:
            during()
    finally:
        stop.set()
        thread.join()
    return latencies


def gil_probe(netns: str, repeat: int) -> dict[str, list[float]]:
    """Where the pass runs, thread or process: p99 of a 1 ms Python step meanwhile.

    A pass spends its time in recv (the kernel's dump) and numpy, which release the GIL;
    this measures how much a pass on a thread still holds back Python on other threads,
    against the same pass in a forked process (no GIL shared, only the CPUs).
    """
    def passes() -> None:
        counter = ConntrackCounter(netns)
        try:
            counter.usage()
        finally:
            counter.close()

    def in_process() -> None:
        child = multiprocessing.get_context("fork").Process(target=passes)
        child.start()
        child.join()

    p99: dict[str, list[float]] = {"no pass": [], "pass on a thread": [],
                                   "pass in a process": []}
    for _ in range(repeat):
        p99["no pass"].append(percentile(step_latencies(None), 99))
        p99["pass on a thread"].append(percentile(step_latencies(passes), 99))
        p99["pass in a process"].append(percentile(step_latencies(in_process), 99))
    return p99


def spread(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    if not values:
        return "n/a"
    v = [x * scale for x in values]
    return f"{statistics.median(v):.3f} {unit} ({min(v):.3f}-{max(v):.3f})"


def fill_kernel(netns: str, entries: int, repeat: int) -> tuple[int, list[float]]:
    """Conntrack entries (one per connection); a pass timed alone ``repeat`` times."""
    start = time.perf_counter()
    refused = fill(synthetic_entries(entries, egress_ips=EGRESS, remotes=REMOTES),
                   netns=netns)
    created = entries - refused
    print(f"filled {created} conntrack entries ({refused} refused) in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    counter = ConntrackCounter(netns)
    alone: list[float] = []
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            counts, _reusable = counter.usage()
            alone.append(time.perf_counter() - start)
            if sum(counts.values()) != created:
                sys.exit(f"counted {sum(counts.values())}, created {created}")
    finally:
        counter.close()
    return created, alone


def fill_bpf(netns: str, entries: int, repeat: int) -> tuple[int, list[float]]:
    """The NAT maps created and pinned where the agent in ``netns`` looks for them, the v4
    one filled with ``entries`` / 2 connections; a pass (the agent's walk and count) timed
    alone ``repeat`` times."""
    ensure_bpffs()
    maps = PinnedMaps.open_or_create(BPFFS_DIR / netns, NAT_MAX)
    try:
        start = time.perf_counter()
        connections = synthetic_connections(entries // 2, EGRESS, REMOTES)
        fill_nat_map(maps["snat_v4"], connections)
        print(f"filled {2 * len(connections)} NAT map entries ({len(connections)} "
              f"connections) in {time.perf_counter() - start:.1f} s", flush=True)
        alone: list[float] = []
        for _ in range(repeat):
            start = time.perf_counter()
            counts = endpoint_counts(read_nat_map(maps["snat_v4"], Family.IPV4))
            alone.append(time.perf_counter() - start)
            if sum(counts.values()) != len(connections):
                sys.exit(f"counted {sum(counts.values())}, created {len(connections)}")
    finally:
        maps.close()
    return len(connections), alone


def model_pass_steps(connections: int, repeat: int) -> dict[str, list[float]]:
    """The model's pass in its two steps, in this process, on a model filled as the agent
    process fills its own: the snapshot (on the loop: how long a reconcile may wait), the
    count of the copy (on the recount thread), and the whole pass on the loop (before)."""
    from egressgw.agent.datapaths import make_datapath  # noqa: PLC0415 (loads the model)
    from egressgw.agent.modeldp import ModelAgentDatapath  # noqa: PLC0415
    from egressgw.net import Endpoint, FiveTuple, Proto  # noqa: PLC0415
    from egressgw.rules import EgressRule, RuleKind  # noqa: PLC0415

    datapath = make_datapath("model", NodePortRange())
    assert isinstance(datapath, ModelAgentDatapath)
    pod = ipaddress.ip_address(POD_IP)
    datapath.apply([EgressRule(pod, ipaddress.ip_network("198.51.100.0/24"),
                               RuleKind.MASQUERADE, ipaddress.ip_address(EGRESS[0]), NODE)])
    remotes = [ipaddress.ip_address(r) for r in REMOTES]
    start = time.perf_counter()
    for i in range(connections):
        datapath.connect(FiveTuple(Proto.TCP, Endpoint(pod, 1024 + i // len(remotes)),
                                   Endpoint(remotes[i % len(remotes)], 443)))
    print(f"filled a model with {connections} connections in this process in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    steps: dict[str, list[float]] = {"snapshot (loop)": [], "count of the copy (thread)": [],
                                     "whole pass on the loop (before)": []}
    for _ in range(repeat):
        start = time.perf_counter()
        count = datapath.model.endpoint_counts_later()
        steps["snapshot (loop)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        counted = count()
        steps["count of the copy (thread)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        inline = datapath.endpoint_counts()
        steps["whole pass on the loop (before)"].append(time.perf_counter() - start)
        if counted != inline or sum(inline.values()) != connections:
            sys.exit(f"model counts differ: {sum(counted.values())} vs "
                     f"{sum(inline.values())}, opened {connections}")
    return steps


def remove_bpf(netns: str) -> None:
    """Detach the program and remove the pins the agents left (they keep them on exit)."""
    if (BPFFS_DIR / netns).exists():
        BpfDatapath(BpfSettings(NodePortRange(), netns=netns, device="ext0")).cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datapath", choices=("kernel", "bpf", "model"), default="kernel")
    parser.add_argument("--entries", type=int, default=524288,
                        help="NAT table entries: conntrack entries (kernel), NAT map "
                             "entries, 2 per connection (bpf, model)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode")
    parser.add_argument("--edits", type=int, default=5, help="policy edits per run")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="--nat-map-stats-interval of the agent (seconds)")
    parser.add_argument("--baseline-src", default=None,
                        help="the src directory of the tree whose agent runs as 'before'")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="65,536 entries, one run per mode, 2 edits (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.entries, args.repeat, args.edits = 65536, 1, 2
    if os.geteuid() != 0:
        sys.exit("bench_agent_recount needs root (network namespaces, conntrack, nft)")
    rng = random.Random(args.seed)
    netns = f"egw-arc{os.getpid()}{secrets.token_hex(2)}"
    old_max = CT_MAX.read_text().strip()
    wanted_max = max(int(old_max), args.entries + 65536)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        if wanted_max != int(old_max) and args.datapath == "kernel":
            CT_MAX.write_text(str(wanted_max))
        for argv in (["ip", "link", "set", "lo", "up"],
                     ["ip", "link", "add", "ext0", "type", "veth", "peer", "name", "ext1"],
                     *(["ip", "addr", "add", f"{ip}/24", "dev", "ext0"] for ip in EGRESS),
                     ["ip", "link", "set", "ext0", "up"]):
            subprocess.run(["ip", "netns", "exec", netns, *argv], check=True)
        alone: list[float] = []
        steps: dict[str, list[float]] = {}
        if args.datapath == "kernel":
            created, alone = fill_kernel(netns, args.entries, args.repeat)
        elif args.datapath == "bpf":
            created, alone = fill_bpf(netns, args.entries, args.repeat)
        else:
            created = args.entries // 2  # the agent process opens them before it starts
            steps = model_pass_steps(created, args.repeat)

        load_before = os.getloadavg()
        probe = gil_probe(netns, args.repeat) if args.datapath == "kernel" else {}
        runs: dict[str, list[Run]] = {"before": [], "after": []}
        for i in range(args.repeat):
            order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
            for mode in order:
                run = one_run(netns, mode, args=args, rng=rng, created=created)
                runs[mode].append(run)
                print(f"run {i + 1} {mode:6s}: {len(run.passes)} passes, median "
                      f"{statistics.median(run.passes.values()):.2f} s; reconciles "
                      f"{', '.join(f'{x:.2f}' for x in run.reconciles)} s "
                      f"({run.applied_during_pass} of {len(run.reconciles)} applied "
                      f"before the pass ended); without a pass "
                      f"{', '.join(f'{x:.2f}' for x in run.idle_reconciles)} s; "
                      f"{len(run.busy)} scrapes during a pass, "
                      f"{len(run.idle)} outside", flush=True)
        load_after = os.getloadavg()

        before = (f"the agent of {args.baseline_src}" if args.baseline_src else
                  "this tree, AgentConfig(background_recount=False)")
        print(f"\n{args.datapath} datapath, {created:,} connections "
              f"({created if args.datapath == 'kernel' else 2 * created:,} NAT table "
              f"entries), {args.repeat} run(s) per mode, --nat-map-stats-interval "
              f"{args.interval:g}s, a scrape every {SCRAPE_EVERY * 1000:.0f} ms; "
              f"before: {before}; after: this tree; median (range) over runs")
        if alone:
            print(f"one pass in the bench process (no agent running): {spread(alone)}")
        if steps:
            print("the model's pass in this process: " + "; ".join(
                f"{name} {spread(values)}" for name, values in steps.items()))
        if probe:
            print("p99 of a 1 ms Python step on another thread: " + "; ".join(
                f"{name} {spread(values, 'ms', 1000)}" for name, values in probe.items()))
        header = ("mode", "pass time", "reconcile during a pass", "applied before pass end",
                  "reconcile, no pass running",
                  "scrape p50 during", "scrape p99 during", "scrape p50 outside",
                  "scrape p99 outside")
        print(" | ".join(header))
        for mode, mode_runs in runs.items():
            passes = [statistics.median(r.passes.values()) for r in mode_runs]
            reconciles = [statistics.median(r.reconciles) for r in mode_runs if r.reconciles]
            during = sum(r.applied_during_pass for r in mode_runs)
            total = sum(len(r.reconciles) for r in mode_runs)
            alone_reconciles = [statistics.median(r.idle_reconciles) for r in mode_runs
                                if r.idle_reconciles]
            cells = [mode, spread(passes), spread(reconciles), f"{during} of {total}",
                     spread(alone_reconciles)]
            for attr in ("busy", "idle"):
                for p in (50, 99):
                    cells.append(spread([percentile(getattr(r, attr), p) for r in mode_runs
                                         if getattr(r, attr)], "ms", 1000))
            print(" | ".join(cells))
        old = [x for r in runs["before"] for x in r.reconciles]
        new = [x for r in runs["after"] for x in r.reconciles]
        if old and new:
            print(f"reconcile latency during a pass, all edits: before median "
                  f"{statistics.median(old):.3f} s, after median "
                  f"{statistics.median(new):.3f} s: "
                  f"{statistics.median(old) / statistics.median(new):.1f}x")
        print(f"load average (1, 5, 15 min) before {' '.join(f'{x:.2f}' for x in load_before)}"
              f", after {' '.join(f'{x:.2f}' for x in load_after)}, on {os.cpu_count()} CPUs")
    finally:
        if args.datapath == "bpf":
            remove_bpf(netns)
        subprocess.run(["ip", "netns", "delete", netns], check=False)
        if CT_MAX.read_text().strip() == str(wanted_max):
            CT_MAX.write_text(old_max)


if __name__ == "__main__":
    main()
