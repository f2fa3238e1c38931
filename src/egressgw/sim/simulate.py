"""Run a workload through the model datapath on a virtual clock.

Each gateway node is one ``ModelDatapath`` (its own NAT map, CT table and GC). Time
advances one ``--nat-map-stats-interval`` at a time; at the end of each interval the
nat-stats pass runs (top K per family, saturation), exactly when Cilium's controller
would, and each tuple's count is checked against the 80%, 95% and 100% marks.
Connections are generated window by window, and a window expected to hold more than
``max_window`` connections is split, so memory stays bounded however long the run.
"""

from __future__ import annotations

import itertools
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from egressgw.config import NAT_MAP_STATS_ENTRIES_DEFAULT, NodePortRange, check_stats_entries
from egressgw.datapath.model import ConnectionBatch, ModelConfig, ModelCounters, ModelDatapath
from egressgw.datapath.model.config import (
    CT_MAP_ANY_DEFAULT,
    CT_MAP_TCP_DEFAULT,
    GC_PASS_SECONDS,
)
from egressgw.datapath.model.types import LATENCY_BINS, LATENCY_STEP
from egressgw.errors import ConfigError
from egressgw.limits import NatPortRange, PortLimit, datapath_limit
from egressgw.net import NatEndpoint
from egressgw.rules import EgressRule
from egressgw.sim.flows import AddressBook, Flows
from egressgw.sim.generate import FlowSource, MergedFlows, WorkloadFlows
from egressgw.sim.replay import ReplayFlows
from egressgw.sim.routing import Routes, route_workload
from egressgw.sim.workload import Workload
from egressgw.stats import NatStats, compute_nat_stats

THRESHOLDS = (0.8, 0.95, 1.0)
DEFAULT_DURATION = 3600.0
# Bounds on one run, from the simulator's measured 400,000 connections/s on this 2-core
# machine (docs/performance.md): 100 million connections are about 4 minutes, and each
# nat-stats pass costs a top-K over every tuple (docs/reliability.md).
MAX_CONNECTIONS = 100_000_000
MAX_STATS_PASSES = 100_000
MIN_STATS_INTERVAL = 1.0
MIN_GC_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class SimSettings:
    """How to run: Cilium's flags plus the run's length, seed and window size."""

    duration: float = DEFAULT_DURATION
    seed: int = 0
    node_port_range: NodePortRange = field(default_factory=NodePortRange)
    bpf_nat_global_max: int = 524288
    stats_interval: float = 30.0
    stats_entries: int = NAT_MAP_STATS_ENTRIES_DEFAULT
    cilium_version: str = "1.16"
    conntrack_gc_interval: float | None = None
    bpf_ct_global_tcp_max: int = CT_MAP_TCP_DEFAULT
    bpf_ct_global_any_max: int = CT_MAP_ANY_DEFAULT
    gc_pass_seconds: float = GC_PASS_SECONDS  # not a Cilium flag: see ModelConfig
    # The NAT map's LRU (ModelConfig.nat_lru): "exact", or "kernel" (runs the reference
    # engine), with the CPUs that LRU depends on.
    nat_lru: str = "exact"
    possible_cpus: int = 8
    flow_cpus: str = "hash"
    bpf_distributed_lru: bool = False
    max_window: int = 250_000
    # Which datapath the model reproduces: "cilium" (BPF SNAT) or "netfilter" (nf_nat).
    datapath_model: str = "cilium"
    # netfilter only: the SNAT rule's port range (default: egressgw's rule, MAX+1-65535).
    nat_port_range: NatPortRange | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise ConfigError(f"{self.duration}: must be a positive duration", field="--duration")
        if not (math.isfinite(self.stats_interval) and self.stats_interval > 0):
            raise ConfigError(
                f"{self.stats_interval}: the simulation needs a positive interval",
                field="--nat-map-stats-interval",
            )
        if self.stats_interval < MIN_STATS_INTERVAL:
            raise ConfigError(
                f"{self.stats_interval:g} s: the simulation needs at least "
                f"{MIN_STATS_INTERVAL:g} s",
                field="--nat-map-stats-interval",
            )
        if self.duration / self.stats_interval > MAX_STATS_PASSES:
            raise ConfigError(
                f"{self.duration:g} s / {self.stats_interval:g} s is more than "
                f"{MAX_STATS_PASSES:,} nat-stats passes: lengthen the interval",
                field="--nat-map-stats-interval",
            )
        gc = self.conntrack_gc_interval
        if gc is not None and not (math.isfinite(gc) and gc >= MIN_GC_INTERVAL):
            raise ConfigError(f"{gc:g} s: at least {MIN_GC_INTERVAL:g} s",
                              field="--conntrack-gc-interval")
        check_stats_entries(self.stats_entries)
        self.limit  # noqa: B018 - validates datapath_model and nat_port_range together

    @property
    def limit(self) -> PortLimit:
        """The ports per tuple that saturation divides by (egressgw.limits decides)."""
        return datapath_limit(self.datapath_model, node_port_range=self.node_port_range,
                              nat_port_range=self.nat_port_range)

    @property
    def divisor(self) -> int:
        return self.limit.ports

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            node_port_range=self.node_port_range,
            bpf_nat_global_max=self.bpf_nat_global_max,
            cilium_version=self.cilium_version,
            nat_lru=self.nat_lru,
            possible_cpus=self.possible_cpus,
            flow_cpus=self.flow_cpus,
            bpf_distributed_lru=self.bpf_distributed_lru,
            conntrack_gc_interval=self.conntrack_gc_interval,
            bpf_ct_global_tcp_max=self.bpf_ct_global_tcp_max,
            bpf_ct_global_any_max=self.bpf_ct_global_any_max,
            gc_pass_seconds=self.gc_pass_seconds,
            datapath_model=self.datapath_model,
            nat_port_range=self.nat_port_range,
        )


@dataclass(frozen=True, slots=True)
class Totals:
    """Counters of every gateway node added up, at one moment."""

    attempted: int = 0
    established: int = 0
    closed: int = 0
    drops: Mapping[int, int] = field(default_factory=dict)
    evictions: int = 0
    broken: int = 0
    reply_drops: int = 0
    signals: int = 0
    gc_runs: int = 0
    tries: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(1, np.int64))
    retransmits: int = 0
    connect_failed: int = 0
    delayed: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(LATENCY_BINS, np.int64)
    )

    @property
    def dropped(self) -> int:
        """Packets dropped, every reason: first packets and their retransmissions, and
        later packets of broken flows."""
        return sum(self.drops.values())

    @property
    def delayed_count(self) -> int:
        """Connections that got a port only after retransmitting their first packet."""
        return int(self.delayed.sum())

    @property
    def still_retrying(self) -> int:
        """Connections still retransmitting their first packet when the run ended."""
        return self.attempted - self.established - self.connect_failed

    @property
    def refused(self) -> int:
        """New connections whose first packet was dropped (no source port found), whether
        a retransmission later got a port, none did, or the run ended first."""
        return self.attempted - self.established + self.delayed_count

    def latency_percentile(self, q: float, *, all_established: bool = False) -> float:
        """The q-quantile (nearest rank) of the extra connect latency in seconds, over the
        delayed connections, or over every established one (0 for the undelayed)."""
        counts = self.delayed
        immediate = self.established - self.delayed_count if all_established else 0
        total = immediate + self.delayed_count
        if total == 0:
            return 0.0
        rank = max(1, math.ceil(q * total))
        if rank <= immediate:
            return 0.0
        index = int(np.searchsorted(np.cumsum(counts), rank - immediate))
        return index * LATENCY_STEP

    @classmethod
    def of(cls, counters: Sequence[ModelCounters]) -> Totals:
        drops: dict[int, int] = {}
        for c in counters:
            for code, n in c.drops.items():
                drops[int(code)] = drops.get(int(code), 0) + n
        width = max((len(c.tries) for c in counters), default=1)
        tries = np.zeros(width, np.int64)
        for c in counters:
            tries[: len(c.tries)] += c.tries
        return cls(
            attempted=sum(c.attempted for c in counters),
            established=sum(c.established for c in counters),
            closed=sum(c.closed for c in counters),
            drops=dict(sorted(drops.items())),
            evictions=sum(c.evictions_out + c.evictions_in for c in counters),
            broken=sum(c.broken for c in counters),
            reply_drops=sum(c.reply_drops for c in counters),
            signals=sum(c.signals for c in counters),
            gc_runs=sum(c.gc_runs for c in counters),
            tries=tries,
            retransmits=sum(c.retransmits for c in counters),
            connect_failed=sum(c.connect_failed for c in counters),
            delayed=sum((c.delayed for c in counters), np.zeros(LATENCY_BINS, np.int64)),
        )


@dataclass(frozen=True, slots=True)
class IntervalRecord:
    """One nat-stats pass: the table and the counters so far."""

    time: float
    stats: NatStats
    totals: Totals


@dataclass(slots=True)
class SimulationResult:
    """Everything a run produced."""

    name: str
    settings: SimSettings
    gateways: list[str]
    egress_ips: list[str]
    intervals: list[IntervalRecord] = field(default_factory=list)
    # Every tuple's count at every pass (0 before it first appeared).
    series: dict[NatEndpoint, list[int]] = field(default_factory=dict)
    crossings: dict[NatEndpoint, dict[float, float]] = field(default_factory=dict)
    not_masqueraded: int = 0
    wall_seconds: float = 0.0

    @property
    def totals(self) -> Totals:
        return self.intervals[-1].totals if self.intervals else Totals()

    @property
    def times(self) -> list[float]:
        return [record.time for record in self.intervals]

    def peak(self, endpoint: NatEndpoint) -> int:
        return max(self.series.get(endpoint, [0]))

    @property
    def peak_saturation(self) -> float:
        top = max((max(s) for s in self.series.values()), default=0)
        return top / self.settings.divisor

    def top_endpoints(self, n: int) -> list[NatEndpoint]:
        """The ``n`` tuples with the highest peak count."""
        return sorted(self.series, key=lambda e: -max(self.series[e]))[:n]


@dataclass(slots=True)
class _Gateway:
    name: str
    datapath: ModelDatapath
    address_ids: npt.NDArray[np.uint32]
    egress_ids: npt.NDArray[np.uint32]


def _batch(flows: Flows, gateway: _Gateway) -> ConnectionBatch:
    return ConnectionBatch(
        start=flows.start,
        duration=flows.duration,
        end=flows.end,
        src=gateway.address_ids[flows.src],
        sport=flows.sport,
        dst=gateway.address_ids[flows.dst],
        dport=flows.dport,
        proto=flows.proto,
        egress=gateway.egress_ids[flows.egress],
        keepalive=flows.keepalive,
        retries=flows.retries,
        rto=flows.rto,
    )


def prepare(
    workload: Workload,
    settings: SimSettings,
    *,
    rules: Sequence[EgressRule] | None = None,
    routes: Routes | None = None,
) -> tuple[FlowSource, Routes, AddressBook, Callable[[], int]]:
    """The run's flow source, routes and addresses (and a counter of unrouted flows)."""
    routes = routes or route_workload(workload, rules)
    book = AddressBook()
    rng = np.random.default_rng(settings.seed)
    generated = WorkloadFlows(workload, routes, book, rng)
    sources: list[FlowSource] = [generated]
    replayed: ReplayFlows | None = None
    if workload.replay is not None:
        replayed = ReplayFlows.from_file(
            workload.replay.path, routes=routes, book=book,
            egress_ips=workload.replay.egress_ips or workload.egress_ips,
        )
        sources.append(replayed)

    def unrouted() -> int:
        return generated.unrouted + (replayed.unrouted if replayed else 0)

    return MergedFlows(sources), routes, book, unrouted


def simulate(
    workload: Workload,
    settings: SimSettings,
    *,
    rules: Sequence[EgressRule] | None = None,
    routes: Routes | None = None,
    progress: bool | None = None,
    on_interval: Callable[[IntervalRecord], None] | None = None,
) -> SimulationResult:
    """Run ``workload`` for ``settings.duration`` seconds of virtual time.

    ``progress`` shows a bar on stderr (default: when stderr is a terminal);
    ``on_interval`` is called after every nat-stats pass.
    """
    check_size(workload, settings.duration)
    wall = time.perf_counter()
    source, routes, book, unrouted = prepare(workload, settings, rules=rules, routes=routes)
    config = settings.model_config()
    node_names = sorted(set(routes.egress.nodes)) or ["gateway"]
    seeds = np.random.SeedSequence(settings.seed).spawn(len(node_names))
    gateways: list[_Gateway] = []
    for name, seed in zip(node_names, seeds, strict=True):
        datapath = ModelDatapath(config, random.Random(int(seed.generate_state(1)[0])))
        ids = np.array([datapath.intern(ip) for ip in book.ips], dtype=np.uint32)
        egress_ids = np.array([datapath.intern(ip) for ip in routes.egress.ips], np.uint32)
        gateways.append(_Gateway(name, datapath, ids, egress_ids))
    node_of_egress = np.array(
        [node_names.index(node) for node in routes.egress.nodes], dtype=np.int64
    )
    result = SimulationResult(
        name=workload.name,
        settings=settings,
        gateways=node_names,
        egress_ips=[str(ip) for ip in routes.egress.ips],
    )
    bar = _progress_bar(settings.duration, progress)
    t = 0.0
    try:
        while t < settings.duration:
            t_next = min(t + settings.stats_interval, settings.duration)
            _run_window(source, gateways, node_of_egress, t0=t, t1=t_next,
                        max_window=settings.max_window)
            record = _stats_pass(result, gateways, t_next, settings)
            if on_interval is not None:
                on_interval(record)
            if bar is not None:
                bar.update(t_next - t)
            t = t_next
    finally:
        if bar is not None:
            bar.close()
    result.not_masqueraded = unrouted()
    result.wall_seconds = time.perf_counter() - wall
    return result


def _run_window(
    source: FlowSource,
    gateways: Sequence[_Gateway],
    node_of_egress: npt.NDArray[np.int64],
    *,
    t0: float,
    t1: float,
    max_window: int,
) -> None:
    pieces = max(1, math.ceil(source.expected(t0, t1) / max_window))
    edges = np.linspace(t0, t1, pieces + 1)
    edges[-1] = t1
    for a, b in itertools.pairwise(edges):
        flows = source.window(float(a), float(b))
        if len(gateways) == 1:
            gateways[0].datapath.run(_batch(flows, gateways[0]), float(b))
            continue
        node = node_of_egress[flows.egress] if len(flows) else np.empty(0, np.int64)
        for k, gateway in enumerate(gateways):
            gateway.datapath.run(_batch(flows.take(node == k), gateway), float(b))


def _stats_pass(
    result: SimulationResult, gateways: Sequence[_Gateway], now: float, settings: SimSettings
) -> IntervalRecord:
    counts: dict[NatEndpoint, int] = {}
    reusable: dict[NatEndpoint, int] | None = None
    for gateway in gateways:
        for endpoint, n in gateway.datapath.endpoint_counts().items():
            counts[endpoint] = counts.get(endpoint, 0) + n
        taken_over = gateway.datapath.reusable_counts()
        if taken_over is not None:
            reusable = reusable if reusable is not None else {}
            for endpoint, n in taken_over.items():
                reusable[endpoint] = reusable.get(endpoint, 0) + n
    stats = compute_nat_stats(counts, entries=settings.stats_entries, limit=settings.limit,
                              reusable=reusable)
    record = IntervalRecord(now, stats, Totals.of([g.datapath.counters for g in gateways]))
    index = len(result.intervals)
    result.intervals.append(record)
    for endpoint in counts.keys() | result.series.keys():
        series = result.series.setdefault(endpoint, [0] * index)
        series.append(counts.get(endpoint, 0))
    divisor = settings.divisor
    for endpoint, n in counts.items():
        for threshold in THRESHOLDS:
            if n >= threshold * divisor:
                result.crossings.setdefault(endpoint, {}).setdefault(threshold, now)
    return record


def _progress_bar(total: float, enabled: bool | None) -> Any:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm  # noqa: PLC0415 - loaded only for a terminal

    return tqdm(total=total, unit="s", desc="simulated", file=sys.stderr, leave=False)


def expected_connections(workload: Workload, duration: float) -> float:
    """How many connections the workload's client groups are expected to open."""
    return sum(group.arrivals.expected(0.0, duration) for group in workload.groups)


def check_size(workload: Workload, duration: float) -> None:
    """Refuse a run expected to open more than :data:`MAX_CONNECTIONS` connections."""
    expected = expected_connections(workload, duration)
    if not expected <= MAX_CONNECTIONS:
        raise ConfigError(
            f"{workload.source}: about {expected:,.0f} connections in {duration:g} s; a run "
            f"may open at most {MAX_CONNECTIONS:,} (lower the rates or --duration)",
            field="--duration",
        )


def workload_duration(workload: Workload, override: float | None) -> float:
    """The run length: the flag, else the workload's ``duration``, else one hour."""
    if override is not None:
        return override
    return workload.duration or DEFAULT_DURATION


__all__ = [
    "THRESHOLDS",
    "IntervalRecord",
    "SimSettings",
    "SimulationResult",
    "Totals",
    "simulate",
    "workload_duration",
]

