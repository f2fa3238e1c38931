"""How many egress IPs keep every tuple under a target saturation? Estimate, then check.

The estimate is Little's law with the workload's own shapes: at time t a tuple holds

    N(t) = integral over s < t of  r(s) * P(hold > t - s) ds

ports, where r is the tuple's connection rate and ``hold`` how long a connection keeps
its port: its duration, plus the CT timeout it ends with (FIN or RST: the 10 s close
timeout; idle: 8000 s for TCP, 60 s otherwise), plus the wait for the next CT garbage
collection, which is what frees the NAT entries (half a GC interval on average; the
adaptive interval is followed to its steady state). The occupancy of such a system is
Poisson distributed, so a tuple needs N + 3 sqrt(N) ports to stay under the target
nearly always. Then the simulation runs the candidate and the evidence is printed.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from egressgw.config import MAX_PORT, NodePortRange
from egressgw.datapath.model.gcpacing import SECOND, get_interval, to_ns
from egressgw.errors import InputError
from egressgw.limits import datapath_limit
from egressgw.net import Family, IPAddress, NatEndpoint, Proto
from egressgw.sim.distributions import Duration, DurationKind, EndKind
from egressgw.sim.routing import route_workload
from egressgw.sim.simulate import SimSettings, SimulationResult, simulate
from egressgw.sim.workload import ClientGroup, Workload

# Standard deviations of Poisson occupancy kept as headroom.
HEADROOM_SIGMAS = 3.0
_TIME_GRID = 241
_AGE_GRID = 801
# The default NodePort range is 2768 ports wide; a suggested range keeps that width.
_NODE_PORT_WIDTH = 2767


@dataclass(frozen=True, slots=True)
class TupleDemand:
    """The estimate for one tuple.

    ``concurrent`` is the expected number of ports held at the busiest time (with the
    mean GC wait); ``needed`` adds the entries waiting a whole GC interval just before a
    pass and 3 standard deviations of Poisson occupancy: what the tuple must have.
    """

    endpoint: NatEndpoint
    peak_rate: float
    mean_hold: float
    concurrent: float
    needed: float
    gc_interval: float = 0.0

    def saturation(self, divisor: int) -> float:
        return self.concurrent / divisor


def _normal_cdf(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    out: npt.NDArray[np.float64] = 0.5 * (1.0 + erf(x / math.sqrt(2.0)))
    return out


def duration_survival(duration: Duration, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """P(duration > x) for x >= 0 (and 1 for x < 0)."""
    x = np.asarray(x, dtype=np.float64)
    out: npt.NDArray[np.float64]
    if duration.kind is DurationKind.FOREVER:
        out = np.ones_like(x)
    elif duration.kind is DurationKind.FIXED:
        out = (x < duration.value).astype(np.float64)
    elif duration.kind is DurationKind.EXPONENTIAL:
        out = np.exp(-np.maximum(x, 0.0) / duration.value)
    else:
        with np.errstate(divide="ignore"):
            z = (np.log(np.maximum(x, 1e-300)) - math.log(duration.value)) / duration.sigma
        out = 1.0 - _normal_cdf(z)
    return np.where(x < 0, 1.0, out)


def _timeouts(proto: Proto, settings: SimSettings) -> dict[EndKind, float]:
    """How long a CT entry outlives the connection's last packet, per end kind.

    conntrack.h: only both directions closing (FIN from both sides) gets the close
    timeout; an RST after the handshake marks one direction and keeps the TCP lifetime.
    """
    config = settings.model_config()
    if config.datapath_model == "netfilter":
        # Linux: a closed TCP connection's TIME_WAIT/CLOSE entry does not block its port
        # (nf_nat takes it over); an idle one holds it for the established timeout; UDP
        # entries live 30 s after the last packet (egressgw.datapath.model.netfilter).
        if proto is Proto.TCP:
            idle = config.nf_tcp_timeout_established
            return {EndKind.FIN: 0.0, EndKind.RST: 0.0, EndKind.IDLE: idle,
                    EndKind.RST_SERVER: 0.0}
        return dict.fromkeys(EndKind, config.nf_udp_timeout)
    if proto is not Proto.TCP:
        return dict.fromkeys(EndKind, config.ct_timeout_any)
    held = config.ct_timeout_tcp
    return {EndKind.FIN: config.ct_timeout_fin, EndKind.RST: held, EndKind.IDLE: held,
            EndKind.RST_SERVER: held}


def steady_gc_interval(deletes_per_second: dict[tuple[int, bool], float],
                       settings: SimSettings) -> float:
    """The CT GC interval the adaptive controller settles on.

    ``deletes_per_second``: CT entries each map (family, TCP or not) loses per second. A
    pass I seconds after the last deletes about rate * I entries of a map; GetInterval
    (gcpacing.py, the function the model runs) takes the largest share of MaxEntries.
    """
    if settings.datapath_model == "netfilter":
        return 0.0  # conntrack entries are gone for the port search when they expire
    if settings.conntrack_gc_interval is not None:
        return settings.conntrack_gc_interval
    config = settings.model_config()
    limit = to_ns(config.conntrack_gc_max_interval or 0.0)
    cached, interval = 0, to_ns(300.0)
    history = []
    for _ in range(200):
        ratio = max((rate * interval / SECOND / (
            config.bpf_ct_global_tcp_max if tcp else config.bpf_ct_global_any_max)
            for (_family, tcp), rate in deletes_per_second.items()), default=0.0)
        interval, cached = get_interval(cached, interval, ratio, limit)
        history.append(interval / SECOND)
    return float(np.mean(history[-20:]))


@dataclass(frozen=True, slots=True)
class _Flow:
    """One (group, destination) pair: its rate profile share and its hold distribution."""

    group: ClientGroup
    share: float  # of the group's connections going to this destination
    proto: Proto
    extra: dict[EndKind, float]  # seconds held after the duration, per end kind


def _deletes_per_second(flows: Sequence[tuple[_Flow, Family]],
                        until: float) -> dict[tuple[int, bool], float]:
    """CT entries each CT map loses per second: the mean connection rate of its flows
    (every connection's entry is deleted once, after its timeout)."""
    rates: dict[tuple[int, bool], float] = {}
    for f, family in flows:
        key = (int(family is Family.IPV6), f.proto is Proto.TCP)
        rate = f.group.arrivals.expected(0.0, until) / until * f.share
        rates[key] = rates.get(key, 0.0) + rate
    return rates


def _occupancy(flow: _Flow, until: float) -> tuple[float, float, npt.NDArray[np.float64]]:
    """(peak rate, mean hold, expected ports held at each time of the grid)."""
    arrivals = flow.group.arrivals
    times = np.linspace(0.0, until, _TIME_GRID)[1:]
    shares = flow.group.ends.shares()
    total = 1.0
    curve = np.empty(len(times))
    for i, t in enumerate(times):
        ages = np.linspace(0.0, t, _AGE_GRID)
        rates = arrivals.profile.rate_at(t - ages) / arrivals.per_connection * flow.share
        survival = sum(
            shares[k] / total * duration_survival(flow.group.duration, ages - flow.extra[k])
            for k in shares if shares[k] > 0
        )
        curve[i] = float(np.trapezoid(rates * survival, ages))
    mean_hold = min(flow.group.duration.mean, until) + sum(
        shares[k] / total * flow.extra[k] for k in shares
    )
    return arrivals.peak_rate(until) * flow.share, mean_hold, curve


# Occupancy curves of one (client group, destination): (mean-case, peak-case) results of
# _occupancy. They do not depend on the egress IPs, so make_plan computes them once for
# all the egress IP counts it tries.
OccupancyCache = dict[tuple[int, int], tuple[tuple[float, float, npt.NDArray[np.float64]],
                                             npt.NDArray[np.float64]]]
# The analytic estimate costs about 0.15 s per (client group, destination) on this 2-core
# machine; a plan is refused above this many (docs/reliability.md).
MAX_PLAN_FLOWS = 200


def estimate(workload: Workload, settings: SimSettings,
             egress_ips: Sequence[IPAddress] | None = None, *,
             cache: OccupancyCache | None = None) -> list[TupleDemand]:
    """The analytic demand per tuple, largest first."""
    cache = {} if cache is None else cache
    if not workload.groups:
        raise InputError("plan needs client groups (replayed flows carry no rates)",
                         source=workload.source, field="clients")
    routes = route_workload(workload, egress_override=egress_ips)
    until = settings.duration
    flows: list[tuple[_Flow, int, npt.NDArray[np.int32], int]] = []
    for g, group in enumerate(workload.groups):
        weights = np.array([workload.destinations[d].weight for d in group.destinations])
        for d, weight in zip(group.destinations, weights / weights.sum(), strict=True):
            proto = workload.destinations[d].proto
            flows.append((_Flow(group, float(weight), proto, {}), d, routes.per_group[g][:, d],
                          g))
    if len(flows) > MAX_PLAN_FLOWS:
        raise InputError(
            f"{len(flows):,} (client group, destination) pairs: plan estimates at most "
            f"{MAX_PLAN_FLOWS} (merge alike groups, or use simulate)",
            source=workload.source, field="clients")
    deletes = _deletes_per_second(
        [(f, Family.of(workload.destinations[d].ip)) for f, d, _, _ in flows], until
    )
    gc_interval = steady_gc_interval(deletes, settings)
    rates: dict[NatEndpoint, float] = {}
    weighted_holds: dict[NatEndpoint, float] = {}
    curves: dict[NatEndpoint, npt.NDArray[np.float64]] = {}
    peaks: dict[NatEndpoint, npt.NDArray[np.float64]] = {}
    for flow, d, egress_of_client, g in flows:
        if (g, d) not in cache:
            timeouts = _timeouts(flow.proto, settings)
            # On average a closed connection waits half a GC interval for its entries to
            # go; just before a pass, the ones closed a whole interval ago are still there.
            mean_extra = {k: v + gc_interval / 2 for k, v in timeouts.items()}
            peak_extra = {k: v + gc_interval for k, v in timeouts.items()}
            # Occupancy is linear in the rate: compute it once, scale it per egress IP.
            cache[g, d] = (_occupancy(replace(flow, extra=mean_extra), until),
                           _occupancy(replace(flow, extra=peak_extra), until)[2])
        (rate, hold, curve), peak_curve = cache[g, d]
        destination = workload.destinations[d]
        for e in np.unique(egress_of_client[egress_of_client >= 0]):
            on_e = float(np.mean(egress_of_client == e))
            endpoint = NatEndpoint(
                Family.of(destination.ip), destination.proto, routes.egress.ips[int(e)],
                destination.ip, destination.port,
            )
            rates[endpoint] = rates.get(endpoint, 0.0) + rate * on_e
            weighted_holds[endpoint] = weighted_holds.get(endpoint, 0.0) + rate * on_e * hold
            curves[endpoint] = curves.get(endpoint, 0.0) + curve * on_e
            peaks[endpoint] = peaks.get(endpoint, 0.0) + peak_curve * on_e
    result = []
    for endpoint, rate in rates.items():
        held = float(np.max(curves[endpoint]))
        peak = float(np.max(peaks[endpoint]))
        result.append(TupleDemand(
            endpoint, rate, weighted_holds[endpoint] / rate if rate else 0.0, held,
            peak + HEADROOM_SIGMAS * math.sqrt(peak), gc_interval,
        ))
    return sorted(result, key=lambda t: -t.needed)


def candidate_egress_ips(workload: Workload, count: int) -> list[IPAddress]:
    """The workload's egress IPs, then the addresses after the last one, up to ``count``."""
    ips: list[IPAddress] = list(dict.fromkeys(
        workload.egress_ips + tuple(ip for g in workload.groups for ip in g.egress_ips)
    ))
    if not ips:
        ips = [ipaddress.ip_address("10.1.0.0")]
    nxt = ips[-1]
    while len(ips) < count:
        nxt = ipaddress.ip_address(int(nxt) + 1)
        if nxt not in ips:
            ips.append(nxt)
    return ips[:count]


@dataclass(frozen=True, slots=True)
class Check:
    """One simulated candidate and whether it met the targets."""

    label: str
    result: SimulationResult
    refused_rate: float
    ok: bool


@dataclass(frozen=True, slots=True)
class Plan:
    target: float
    max_drop_rate: float
    estimate_ips: int | None
    estimate: list[TupleDemand]
    egress_ips: list[IPAddress]
    checks: list[Check]
    node_port_range: NodePortRange | None
    node_port_estimate: list[TupleDemand]
    node_port_check: Check | None
    # The ports per tuple ``node_port_range`` leaves, by the datapath's limit.
    node_port_ports: int = 0

    @property
    def confirmed(self) -> Check | None:
        return next((c for c in self.checks if c.ok), None)


def _check(label: str, workload: Workload, settings: SimSettings, *,
           egress_ips: Sequence[IPAddress] | None, target: float,
           max_drop_rate: float) -> Check:
    routes = route_workload(workload, egress_override=egress_ips)
    result = simulate(workload, settings, routes=routes, progress=False)
    totals = result.totals
    refused = totals.refused / totals.attempted if totals.attempted else 0.0
    ok = result.peak_saturation <= target and refused <= max_drop_rate and totals.evictions == 0
    return Check(label, result, refused, ok)


def suggest_node_port_range(needed_ports: float, datapath: str = "cilium"
                            ) -> NodePortRange | None:
    """A --node-port-range whose NAT range has ``needed_ports`` ports (None if impossible).

    The ports are the datapath's limit (egressgw.limits): Cilium's divisor
    65535 - (MAX + 1), or for netfilter every port of egressgw's rule MAX+1..65535.
    """
    ports = math.ceil(needed_ports)
    high = MAX_PORT - 1 - ports if datapath == "cilium" else MAX_PORT - ports
    if high < 2:
        return None
    return NodePortRange(max(1, high - _NODE_PORT_WIDTH), min(high, 65533))


def make_plan(
    workload: Workload,
    settings: SimSettings,
    *,
    target: float = 0.8,
    max_drop_rate: float = 1e-4,
    max_egress_ips: int = 64,
    extra_tries: int = 3,
    confirm: bool = True,
) -> Plan:
    """The fewest egress IPs (and a node-port-range alternative) for ``target``."""
    if not 0 < target <= 1:
        raise InputError(f"{target}: must be in (0, 1]", field="--target-saturation")
    if not 0 <= max_drop_rate < 1:
        raise InputError(f"{max_drop_rate}: must be in [0, 1)", field="--max-drop-rate")
    limit = target * settings.divisor
    chosen: int | None = None
    demand: list[TupleDemand] = []
    cache: OccupancyCache = {}
    for n in range(1, max_egress_ips + 1):
        demand = estimate(workload, settings, candidate_egress_ips(workload, n), cache=cache)
        if demand and demand[0].needed <= limit:
            chosen = n
            break
    checks: list[Check] = []
    start = chosen or max_egress_ips
    # The estimate leaves out the GC passes that nat_fill_up signals wake (they free
    # closed connections' ports early), so it can ask for one IP too many: the
    # simulation tries one fewer first.
    first = max(1, start - 1) if chosen else start
    if confirm:
        for n in range(first, min(start + extra_tries, max_egress_ips) + 1):
            ips = candidate_egress_ips(workload, n)
            check = _check(f"{n} egress IP{'s' if n > 1 else ''}", workload, settings,
                           egress_ips=ips, target=target, max_drop_rate=max_drop_rate)
            checks.append(check)
            if check.ok:
                break
    # The alternative: keep the workload's own egress IPs and widen the NAT port range.
    own = estimate(workload, settings, cache=cache)
    ports_needed = own[0].needed / target if own else 0.0
    npr = suggest_node_port_range(ports_needed, settings.datapath_model) if own else None
    npr_check = None
    if confirm and npr is not None:
        npr_settings = replace(settings, node_port_range=npr)
        npr_check = _check(f"--node-port-range {npr}", workload, npr_settings,
                           egress_ips=None, target=target, max_drop_rate=max_drop_rate)
    return Plan(
        target=target,
        max_drop_rate=max_drop_rate,
        estimate_ips=chosen,
        estimate=demand,
        egress_ips=candidate_egress_ips(workload, start),
        checks=checks,
        node_port_range=npr,
        node_port_estimate=own,
        node_port_check=npr_check,
        node_port_ports=(datapath_limit(settings.datapath_model, node_port_range=npr).ports
                         if npr is not None else 0),
    )
