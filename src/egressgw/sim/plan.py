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
from collections.abc import Callable, Sequence
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
    egress_ips: int = 0


@dataclass(frozen=True, slots=True)
class PortRangeAlternative:
    """Keeping the egress IPs and widening the NAT port range: offered only when it
    widens the range, keeps NodePorts clear of ports nodes use, and the simulation of it
    meets the targets; else ``reason`` says why not."""

    node_port_range: NodePortRange | None
    reason: str
    check: Check | None = None

    @property
    def offered(self) -> bool:
        return self.node_port_range is not None and self.check is not None and self.check.ok


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
    alternative: PortRangeAlternative | None = None
    scale: float = 1.0
    # The ports per tuple ``node_port_range`` leaves, by the datapath's limit.
    node_port_ports: int = 0

    @property
    def confirmed(self) -> Check | None:
        """The simulated candidate with the fewest egress IPs that met the targets."""
        ok = [c for c in self.checks if c.ok]
        return min(ok, key=lambda c: c.egress_ips) if ok else None


def _check(label: str, workload: Workload, settings: SimSettings, *,
           egress_ips: Sequence[IPAddress] | None, target: float,
           max_drop_rate: float, progress: bool | None = None) -> Check:
    routes = route_workload(workload, egress_override=egress_ips)
    result = simulate(workload, settings, routes=routes, progress=progress)
    totals = result.totals
    refused = totals.refused / totals.attempted if totals.attempted else 0.0
    ok = result.peak_saturation <= target and refused <= max_drop_rate and totals.evictions == 0
    return Check(label, result, refused, ok, len(egress_ips) if egress_ips else 0)


# Ports a Kubernetes node (or egressgw) listens on above 1024: a NodePort range must not
# cover them (kube-apiserver rejects a --service-node-port-range that does not fit, and a
# NodePort on one of these would shadow the node's own service).
RESERVED_PORTS: dict[int, str] = {
    2379: "etcd client", 2380: "etcd peer", 4240: "cilium-health", 4244: "hubble",
    6081: "geneve", 6443: "kube-apiserver", 8472: "vxlan", 9962: "cilium metrics",
    9963: "cilium-operator metrics", 9964: "cilium-envoy metrics", 9965: "hubble metrics",
    9966: "hubble-relay metrics", 9967: "egressgw agent", 10250: "kubelet",
    10256: "kube-proxy health",
    10257: "kube-controller-manager", 10259: "kube-scheduler", 51871: "wireguard",
}
# NodePorts stay at or above this (below 1024 are privileged, well-known services).
NODE_PORT_FLOOR = 1024


def suggest_node_port_range(
    needed_ports: float, current: NodePortRange | None = None, datapath: str = "cilium"
) -> tuple[NodePortRange | None, str]:
    """A --node-port-range whose NAT range has ``needed_ports`` ports, and why (not).

    The ports are the datapath's limit (egressgw.limits): Cilium's divisor
    65535 - (MAX + 1), or for netfilter every port of egressgw's rule MAX+1..65535. The
    NodePort range keeps its width and moves down; it is offered only if that widens the
    NAT range, keeps NodePorts at or above 1024 and off the ports nodes listen on.
    """
    current = current or NodePortRange()
    ports = math.ceil(needed_ports)
    have = datapath_limit(datapath, node_port_range=current).ports
    if ports <= have:
        return None, f"not needed: {ports} ports fit in the {have} of --node-port-range {current}"
    high = MAX_PORT - 1 - ports if datapath == "cilium" else MAX_PORT - ports
    low = high - (current.max - current.min)
    if low < NODE_PORT_FLOOR:
        where = f" ({low}-{high})" if low >= 1 else ""
        return None, f"{ports} NAT ports would put NodePorts below {NODE_PORT_FLOOR}{where}"
    clash = [f"{p} ({name})" for p, name in sorted(RESERVED_PORTS.items()) if low <= p <= high]
    if clash:
        return None, (f"{ports} NAT ports would put NodePorts {low}-{high} on ports nodes "
                      f"use: {', '.join(clash)}")
    return NodePortRange(low, high), "widens the NAT range"


def scale_workload(workload: Workload, factor: float) -> Workload:
    """The workload with every group's connection rate multiplied by ``factor``."""
    if not (math.isfinite(factor) and factor > 0):
        raise InputError(f"{factor}: must be a positive factor", field="--scale")
    if factor == 1:
        return workload
    if workload.replay is not None:
        raise InputError("recorded flows cannot be scaled; --scale needs client groups",
                         source=workload.source, field="replay")
    groups = tuple(
        replace(g, arrivals=replace(g.arrivals,
                                    per_connection=g.arrivals.per_connection / factor))
        for g in workload.groups
    )
    return replace(workload, groups=groups)


def _search(
    workload: Workload, settings: SimSettings, start: int, *, target: float,
    max_drop_rate: float, max_egress_ips: int, extra_tries: int,
    announce: Callable[[str], None], progress: bool | None,
) -> list[Check]:
    """Simulate ``start`` egress IPs; then fewer while they meet the targets, or more
    (up to ``extra_tries``) until they do."""
    checks: dict[int, Check] = {}

    def run(n: int) -> Check:
        announce(f"simulating {n} egress IP{'s' if n > 1 else ''}...")
        check = _check(f"{n} egress IP{'s' if n > 1 else ''}", workload, settings,
                       egress_ips=candidate_egress_ips(workload, n), target=target,
                       max_drop_rate=max_drop_rate, progress=progress)
        checks[n] = check
        return check

    if run(start).ok:
        n = start - 1
        while n >= 1 and run(n).ok:
            n -= 1
    else:
        for n in range(start + 1, min(start + extra_tries, max_egress_ips) + 1):
            if run(n).ok:
                break
    return [checks[n] for n in sorted(checks)]


def make_plan(
    workload: Workload,
    settings: SimSettings,
    *,
    target: float = 0.8,
    max_drop_rate: float = 1e-4,
    max_egress_ips: int = 64,
    extra_tries: int = 3,
    confirm: bool = True,
    scale: float = 1.0,
    announce: Callable[[str], None] | None = None,
    progress: bool | None = False,
) -> Plan:
    """The fewest egress IPs (and a node-port-range alternative) for ``target``.

    ``announce`` hears each step of a long run (the CLI prints it on stderr);
    ``progress`` shows each simulation's bar.
    """
    if not 0 < target <= 1:
        raise InputError(f"{target}: must be in (0, 1]", field="--target-saturation")
    if not 0 <= max_drop_rate < 1:
        raise InputError(f"{max_drop_rate}: must be in [0, 1)", field="--max-drop-rate")
    say = announce or (lambda _text: None)
    workload = scale_workload(workload, scale)
    limit = target * settings.divisor
    chosen: int | None = None
    demand: list[TupleDemand] = []
    cache: OccupancyCache = {}
    say("estimating...")
    for n in range(1, max_egress_ips + 1):
        demand = estimate(workload, settings, candidate_egress_ips(workload, n), cache=cache)
        if demand and demand[0].needed <= limit:
            chosen = n
            break
    start = chosen or max_egress_ips
    checks = (_search(workload, settings, start, target=target, max_drop_rate=max_drop_rate,
                      max_egress_ips=max_egress_ips, extra_tries=extra_tries,
                      announce=say, progress=progress)
              if confirm else [])
    # The alternative: keep the workload's own egress IPs and widen the NAT port range.
    own = estimate(workload, settings, cache=cache)
    own_ips = len({d.endpoint.egress_ip for d in own})
    confirmed = next((c for c in checks if c.ok), None)
    alternative: PortRangeAlternative | None = None
    npr: NodePortRange | None = None
    npr_check = None
    if confirmed is not None and confirmed.egress_ips <= own_ips:
        alternative = PortRangeAlternative(
            None, "not needed: the workload's own egress IPs meet the targets")
    elif own:
        npr, reason = suggest_node_port_range(own[0].needed / target, settings.node_port_range,
                                              settings.datapath_model)
        if confirm and npr is not None:
            say(f"simulating --node-port-range {npr}...")
            npr_check = _check(f"--node-port-range {npr}", workload,
                               replace(settings, node_port_range=npr), egress_ips=None,
                               target=target, max_drop_rate=max_drop_rate, progress=progress)
            if not npr_check.ok:
                reason = "the simulation of it misses the targets"
        alternative = PortRangeAlternative(npr, reason, npr_check)
    return Plan(
        target=target,
        max_drop_rate=max_drop_rate,
        estimate_ips=chosen,
        estimate=demand,
        egress_ips=candidate_egress_ips(
            workload, confirmed.egress_ips if confirmed is not None else start),
        checks=checks,
        node_port_range=npr,
        node_port_estimate=own,
        node_port_check=npr_check,
        alternative=alternative,
        scale=scale,
        node_port_ports=(datapath_limit(settings.datapath_model, node_port_range=npr).ports
                         if npr is not None else 0),
    )
