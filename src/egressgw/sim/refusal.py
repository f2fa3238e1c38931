"""The refusal curve: how likely a new connection is refused, given a tuple's occupancy.

nat.h's ``snat_v4_new_mapping`` (Cilium v1.16.2, bpf/lib/nat.h) tries at most
``SNAT_COLLISION_RETRIES`` ports for a new connection: the client's own source port when
it lies in the NAT range (``__snat_try_keep_port``), else a random one; after the first
collision a random port ``p1 = clamp(random16)``; then ``clamp(port + 1)`` per try. The
search is a deterministic walk from a random start, so a connection is refused exactly
when the kept port and every port of the walk are taken.

Two curves answer "what share of new connections is refused at this occupancy":

- :func:`uniform_curve`, exact: the occupied ports are a uniformly random set of k of
  the ports the tuple can use. Then P(refusal) = sum over walks of
  P(walk) * P(all ports of {kept} + walk are taken), and P(j given ports all taken) is
  the hypergeometric product prod_{i<j} (k-i)/(M-i). No clustering: a lower bound.
- :func:`growth_curve` and :func:`steady_curve`, measured: the occupied set a real
  tuple has. Ports are taken by walks (the first free port after a run of taken ones),
  which grows runs of taken ports like linear probing in a hash table, and clients that
  walk their own source ports one by one (Linux's ephemeral ports, the workload
  generator's ``sequential``) lay down runs of their own; long runs swallow whole walks.
  ``growth``: the tuple fills up with no connection ending (a ramp faster than the
  connections live). ``steady``: the tuple is held at k connections, each new one that
  gets a port ending the oldest (connections of about equal length; ``fifo=False``
  ends a random one, as exponential lengths would). Both run the same search on a
  bitmap of the tuple's ports (refusal_kernel.py). ``growth`` counts refusals; Cilium's
  ``steady`` (fifo) computes each sampled state's refusal probability exactly over all
  walks and samples only the states (sim/refusal_exact.py), which its low tail needs.

Alerts use the higher of the two measured curves at each occupancy
(:func:`planning_curve`); forecasts the steady one unless told otherwise.
tests/test_refusal.py checks the exact curve and the growth
curve against the model datapath itself.

The clamp (``__snat_clamp_port_range``) differs by version: v1.16
``(v % (u16)(end - start)) + start``; v1.17 on (commit 3621830f87)
``start + (((u32)v * (end - start + 1)) >> 16)``. Retries: 128 up to v1.17, 32 from
v1.18. Both clamps are parameters here (:class:`PortSearch`).

A Linux gateway's search (nf_nat, ``PortSearch.netfilter``) gives the same three curves:
the exact one from nf_refusal.py (the rounds of ``nf_nat_l4proto_unique_tuple``), the
measured ones from the same kernels running nf_nat's search instead of nat.h's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from egressgw.config import MAX_PORT, NodePortRange
from egressgw.datapath.model.ports import PORT_SEARCH, Clamp, clamp_modulo, clamp_multiply_shift
from egressgw.errors import ConfigError
from egressgw.limits import NatPortRange, PortLimit
from egressgw.sim import nf_refusal
from egressgw.sim import refusal_kernel as kernel
from egressgw.sim.workload import EPHEMERAL_MAX, EPHEMERAL_MIN

U16 = 0xFFFF
VALUES = 1 << 16

# The refusal rates the limits table, the alerts and forecast name.
RATES = (1e-4, 1e-3, 1e-2, 1e-1)

# Cilium version -> (clamp, SNAT_COLLISION_RETRIES), from the model's per-version table.
MOD_CLAMP = "mod"  # v1.16
MUL_CLAMP = "mul"  # v1.17 on
NF_SEARCH = "nf_nat"  # a Linux gateway: no clamp, nf_nat_l4proto_unique_tuple's rounds
CILIUM, NETFILTER = "cilium", "netfilter"
VERSIONS: dict[str, tuple[str, int]] = {
    version: (MUL_CLAMP if search.clamp == Clamp.MULTIPLY_SHIFT else MOD_CLAMP, search.retries)
    for version, search in PORT_SEARCH.items()
}
clamp_v117 = clamp_multiply_shift


@dataclass(frozen=True, slots=True)
class PortSearch:
    """A datapath's port search for one tuple: nat.h's (NAT range, clamp and retries)
    or nf_nat's (the SNAT rule's range; ``retries`` is then every port one search can
    try, 248 on a range wider than 128)."""

    start: int
    end: int
    clamp_kind: str = MOD_CLAMP
    retries: int = 128
    version: str = "1.16"
    datapath: str = CILIUM
    # nf_nat only: the connections' hold time in seconds; each ended one lingers 120 s in
    # TIME_WAIT (see nf_refusal), which the steady curve counts. None: no TIME_WAIT.
    hold: float | None = None

    @classmethod
    def netfilter(cls, port_range: NatPortRange,
                  hold: float | None = nf_refusal.DEFAULT_HOLD) -> PortSearch:
        """nf_nat's search over an SNAT rule's ports ``min-max``, connections holding
        their port ``hold`` seconds before TIME_WAIT (None: ending with no TIME_WAIT)."""
        tries = sum(nf_refusal.round_sizes(port_range.ports))
        return cls(port_range.min, port_range.max, NF_SEARCH, tries, NETFILTER, NETFILTER,
                   hold)

    @classmethod
    def for_limit(cls, limit: PortLimit, cilium_version: str) -> PortSearch:
        """The search of the datapath behind a port limit: nf_nat's over the rule's
        range, or Cilium ``cilium_version``'s over the NAT range (65535 - NodePortMax
        ports from NodePortMax + 1)."""
        if limit.datapath == NETFILTER:
            return cls.netfilter(limit.port_range)
        nat = limit.port_range
        return cls.for_version(cilium_version, NodePortRange(min(30000, nat.min - 1), nat.min - 1))

    @property
    def is_netfilter(self) -> bool:
        return self.datapath == NETFILTER

    @classmethod
    def for_version(cls, version: str, node_port_range: NodePortRange) -> PortSearch:
        if version not in VERSIONS:
            raise ConfigError(f"{version!r}: expected one of {', '.join(VERSIONS)}",
                              field="--cilium-version")
        kind, retries = VERSIONS[version]
        return cls(node_port_range.nat_min, node_port_range.nat_max, kind, retries, version)

    def clamp(self, value: int) -> int:
        if self.clamp_kind == MOD_CLAMP:
            return clamp_modulo(self.start, self.end, value)
        return clamp_multiply_shift(self.start, self.end, value)

    def clamp_table(self) -> npt.NDArray[np.int64]:
        """clamp(v) for every 16-bit v."""
        return np.array([self.clamp(v) for v in range(VALUES)], dtype=np.int64)

    def walk_from(self, first: int) -> list[int]:
        """The ports tried after the kept one collided, starting at ``first`` = clamp(random)."""
        ports = [first]
        while len(ports) < self.retries - 1:
            ports.append(self.clamp(ports[-1] + 1))
        return ports


@dataclass(frozen=True, slots=True)
class SourcePorts:
    """The clients' source ports: uniform over ``low..high`` (Linux: 32768-60999)."""

    low: int = EPHEMERAL_MIN
    high: int = EPHEMERAL_MAX
    # Sequential clients (each walks its ports one by one, from a random start, as the
    # workload generator's ``source_ports: sequential``); 0: every port drawn at random.
    clients: int = 0

    @classmethod
    def parse(cls, text: str) -> SourcePorts:
        """``linux`` (32768-60999), ``uniform`` (1-65535), or ``LOW-HIGH``."""
        if text == "linux":
            return cls()
        if text == "uniform":
            return cls(1, MAX_PORT)
        low, sep, high = text.partition("-")
        try:
            result = cls(int(low), int(high)) if sep else None
        except ValueError:
            result = None
        if result is None or not 0 <= result.low <= result.high <= MAX_PORT:
            raise ConfigError(f"{text!r}: expected linux, uniform or LOW-HIGH such as "
                              "32768-60999", field="--source-ports")
        return result

    def weights(self) -> npt.NDArray[np.float64]:
        """P(source port = p) for every p."""
        w = np.zeros(VALUES)
        w[self.low : self.high + 1] = 1.0 / (self.high - self.low + 1)
        return w

    def with_clients(self, clients: int) -> SourcePorts:
        if clients < 0:
            raise ConfigError(f"{clients}: must not be negative", field="--clients")
        return SourcePorts(self.low, self.high, clients)

    def __str__(self) -> str:
        how = f"{self.clients} sequential clients" if self.clients else "random"
        return f"{self.low}-{self.high}, {how}"


@dataclass(frozen=True, slots=True)
class RefusalCurve:
    """P(refusal) at occupancies ``held`` (connections on the tuple).

    ``saturation`` is ``held / divisor``, the ratio nat-stats and the metric show.
    ``low``/``high`` bound a measured curve (counted tries: Wilson 95%; Cilium's steady
    curve: 90% over its chains); equal to ``refused`` when exact.
    """

    kind: str  # "uniform (exact)" or "steady (measured)"
    search: PortSearch
    sources: SourcePorts
    divisor: int
    ports: int  # ports a connection can hold (the universe M)
    held: npt.NDArray[np.int64]
    refused: npt.NDArray[np.float64]
    low: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]

    @property
    def saturation(self) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = self.held / self.divisor
        return out

    def held_at(self, rate: float) -> float | None:
        """The fewest connections at which ``rate`` of new ones are refused (None: never).

        Between two points the curve is interpolated in log(rate).
        """
        refused = np.maximum.accumulate(self.refused)
        above = np.nonzero(refused >= rate)[0]
        if not len(above):
            return None
        i = int(above[0])
        if i == 0 or refused[i - 1] <= 0:
            return float(self.held[i])
        x0, x1 = float(self.held[i - 1]), float(self.held[i])
        y0, y1 = math.log(refused[i - 1]), math.log(refused[i])
        return x0 + (math.log(rate) - y0) / (y1 - y0) * (x1 - x0) if y1 > y0 else x1

    def saturation_at(self, rate: float) -> float | None:
        held = self.held_at(rate)
        return None if held is None else held / self.divisor

    def rate_at(self, held: float, side: str = "refused") -> float:
        """P(refusal) at ``held`` connections (log-linear between points); ``side``
        "low" or "high" reads the curve's band instead."""
        values = {"refused": self.refused, "low": self.low, "high": self.high}[side]
        refused = np.maximum.accumulate(values)
        if held <= self.held[0]:
            return float(refused[0])
        if held >= self.held[-1]:
            return float(refused[-1])
        i = int(np.searchsorted(self.held, held))
        x0, x1 = float(self.held[i - 1]), float(self.held[i])
        y0, y1 = float(refused[i - 1]), float(refused[i])
        if y0 <= 0 or y1 <= 0:
            return y0 + (held - x0) / (x1 - x0) * (y1 - y0)
        return math.exp(math.log(y0) + (held - x0) / (x1 - x0) * (math.log(y1) - math.log(y0)))


def usable_ports(search: PortSearch, sources: SourcePorts) -> npt.NDArray[np.bool_]:
    """Ports a connection of the tuple can hold: the clamp's image and the kept ports
    (nf_nat: the rule's range, which the search reaches whole and the kept port is in)."""
    if search.is_netfilter:
        usable = np.zeros(VALUES, dtype=bool)
        usable[search.start : search.end + 1] = True
        return usable
    table = search.clamp_table()
    usable = np.zeros(VALUES, dtype=bool)
    usable[table] = True
    low, high = max(search.start, sources.low), min(search.end, sources.high)
    if low <= high:
        usable[low : high + 1] = True
    return usable


def tried_set_sizes(search: PortSearch, sources: SourcePorts) -> npt.NDArray[np.float64]:
    """w[j] = P(a refused connection would have tried exactly j distinct ports).

    The kept port p0 (the client's own, or clamp(random16) when it is outside the NAT
    range) and the walk from p1 = clamp(random16) are independent draws. The walk
    depends on p1 only; p0 adds one more distinct port unless the walk visits it.
    nf_nat's rounds: :func:`egressgw.sim.nf_refusal.tried_set_sizes`.
    """
    if search.is_netfilter:
        kept = sources.weights()[search.start : search.end + 1]
        return nf_refusal.tried_set_sizes(search.end - search.start + 1, kept)[0]
    table = search.clamp_table()
    clamp_weight = np.bincount(table, minlength=VALUES) / VALUES
    source = sources.weights()
    in_range = np.zeros(VALUES, dtype=bool)
    in_range[search.start : search.end + 1] = True
    p0 = np.where(in_range, source, 0.0) + float(source[~in_range].sum()) * clamp_weight
    firsts = np.nonzero(clamp_weight)[0]
    w = np.zeros(search.retries + 2)
    if search.retries == 1:
        w[1] = 1.0
        return w
    walks = np.empty((len(firsts), search.retries - 1), dtype=np.int64)
    walks[:, 0] = firsts
    step = np.array([search.clamp(v) for v in range(VALUES)], dtype=np.int64)
    for col in range(1, search.retries - 1):
        walks[:, col] = step[(walks[:, col - 1] + 1) & U16]
    ordered = np.sort(walks, axis=1)
    first_seen = np.ones_like(ordered, dtype=bool)
    first_seen[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    distinct = first_seen.sum(axis=1)
    covered = (p0[ordered] * first_seen).sum(axis=1)  # P(p0 is on the walk)
    weight = clamp_weight[firsts]
    np.add.at(w, distinct + 1, weight * (1.0 - covered))
    np.add.at(w, distinct, weight * covered)
    return w


def uniform_curve(
    search: PortSearch, sources: SourcePorts, divisor: int, held: Sequence[int] | None = None
) -> RefusalCurve:
    """The exact curve for a uniformly random occupied set of k ports, for every k.

    P(k) = sum_j w[j] * prod_{i<j} (k - i) / (M - i), M the ports the tuple can use.
    """
    universe = int(usable_ports(search, sources).sum())
    ks = np.arange(universe + 1, dtype=np.int64) if held is None else np.asarray(held)
    w = tried_set_sizes(search, sources)
    kind = "uniform (exact)"
    if search.is_netfilter:
        how = nf_refusal.union_sizes(universe)[1]
        if how != nf_refusal.EXACT:
            kind = f"uniform ({how})"
    refused = np.zeros(len(ks))
    # prod_{i<j} (k - i) / (M - i), one factor per j: zero once fewer than j are taken.
    all_taken = np.ones(len(ks))
    for j in range(int(np.nonzero(w)[0].max()) + 1 if w.any() else 0):
        refused += w[j] * all_taken
        # j = M: no k holds M + 1 distinct ports.
        all_taken = (all_taken * np.maximum(ks - j, 0) / (universe - j) if j < universe
                     else np.zeros(len(ks)))
    return RefusalCurve(kind, search, sources, divisor, universe,
                        ks.astype(np.int64), refused, refused, refused)


# -- the steady curve: the search run on a churning tuple -------------------------------


def _levels(saturations: Sequence[float] | None, divisor: int,
            universe: int) -> npt.NDArray[np.int64]:
    sat = (np.round(np.arange(0.30, 1.0001, 0.01), 2) if saturations is None
           else np.asarray(saturations, dtype=np.float64))
    return np.unique(np.minimum(np.round(sat * divisor), universe).astype(np.int64))


def _clients(sources: SourcePorts, seed: int) -> npt.NDArray[np.int64]:
    span = sources.high - sources.low + 1
    rng = np.random.default_rng(seed)
    return (rng.integers(0, span, sources.clients).astype(np.int64) if sources.clients
            else np.zeros(0, dtype=np.int64))


def _measured(kind: str, search: PortSearch, *, sources: SourcePorts, divisor: int,
              universe: int, levels: npt.NDArray[np.int64], counts: npt.NDArray[np.int64],
              steps: int) -> RefusalCurve:
    reached = counts >= 0
    levels, counts = levels[reached], counts[reached]
    p = counts / steps
    z = 1.96  # Wilson score interval, 95%
    centre = (p + z * z / (2 * steps)) / (1 + z * z / steps)
    half = z * np.sqrt(p * (1 - p) / steps + z * z / (4 * steps * steps)) / (1 + z * z / steps)
    return RefusalCurve(kind, search, sources, divisor, universe, levels,
                        p.astype(np.float64), np.maximum(centre - half, 0.0), centre + half)


def growth_curve(
    search: PortSearch,
    sources: SourcePorts,
    divisor: int,
    *,
    saturations: Sequence[float] | None = None,
    steps: int = 100_000,
    seed: int = 0,
    repeats: int = 1,
) -> RefusalCurve:
    """The curve of a tuple filled by new connections with none ending yet (a ramp
    faster than connections live): each level probed ``steps`` times without taking a
    port. Sequential clients' runs of ports meet and merge here, so refusals start at
    the lowest occupancy of the measured curves. ``repeats`` independent fills are
    added up (a small range's single fill is one history among many)."""
    universe = int(usable_ports(search, sources).sum())
    levels = _levels(saturations, divisor, universe)
    total = np.zeros(len(levels), dtype=np.int64)
    for repeat in range(repeats):
        taken = np.zeros(VALUES, dtype=np.bool_)
        counts = np.zeros(len(levels), dtype=np.int64)
        kernel.seed(seed + repeat)
        kernel.growth(taken, levels, steps, search.start, search.end,
                      search.clamp_kind == MUL_CLAMP, search.retries, sources.low,
                      sources.high, _clients(sources, seed + repeat), counts,
                      search.is_netfilter)
        total = np.where((total < 0) | (counts < 0), -1, total + counts)
    return _measured("growth (measured)", search, sources=sources, divisor=divisor,
                     universe=universe, levels=levels, counts=total, steps=steps * repeats)


def steady_curve(
    search: PortSearch,
    sources: SourcePorts,
    divisor: int,
    *,
    saturations: Sequence[float] | None = None,
    steps: int = 200_000,
    warm_factor: float = 3.0,
    seed: int = 0,
    fifo: bool = True,
) -> RefusalCurve:
    """The curve measured on a tuple held at each occupancy (see the module's doc).

    ``steps`` new connections are tried at each level after ``warm_factor`` x k
    connections have come and gone there; ``low``/``high`` are Wilson 95% bounds.
    Cilium's search with ``fifo``: each state's refusal probability exact, the states
    sampled by independent chains (:func:`_steady_exact`).
    """
    universe = int(usable_ports(search, sources).sum())
    levels = _levels(saturations, divisor, universe)
    if search.is_netfilter and search.hold is not None:
        # A Linux gateway: ended connections linger in TIME_WAIT (nf_refusal).
        counts, _time_wait = nf_refusal.steady_time_wait(
            search.start, search.end, levels, hold=search.hold, sport_low=sources.low,
            sport_high=sources.high, clients=_clients(sources, seed), steps=steps,
            warm_factor=warm_factor, seed=seed)
        return _measured("steady (measured)", search, sources=sources, divisor=divisor,
                         universe=universe, levels=levels, counts=counts, steps=steps)
    if not search.is_netfilter and fifo:
        return _steady_exact(search, sources, divisor, universe, levels, steps=steps,
                             warm_factor=warm_factor, seed=seed)
    taken = np.zeros(VALUES, dtype=np.bool_)
    # Held ports; in arrival order (a ring whose start is kept in the last slot) for fifo.
    held = np.zeros(universe + 2, dtype=np.int64)
    kernel.seed(seed)
    nxt = _clients(sources, seed)
    # Warm the first level for warm_factor x k replacements, later ones for k: the
    # previous level's state is already close.
    warm = int(warm_factor * levels[0]) if len(levels) else 0
    n = 0
    counts = np.zeros(len(levels), dtype=np.int64)
    for i, level in enumerate(levels):
        one = np.array([level], dtype=np.int64)
        res = np.zeros(1, dtype=np.int64)
        w = warm if i == 0 else max(int(warm_factor * level / 3), 1000)
        if fifo and n:  # the ring back in arrival order from index 0, so growth appends
            head = int(held[-1])
            held[:n] = np.roll(held[:n], -head)
            held[-1] = 0
        n = kernel.steady(taken, held, n, one, w, steps, search.start, search.end,
                          search.clamp_kind == MUL_CLAMP, search.retries, sources.low,
                          sources.high, nxt, fifo, res, search.is_netfilter)
        counts[i] = res[0]
    return _measured("steady (measured)", search, sources=sources, divisor=divisor,
                     universe=universe, levels=levels, counts=counts, steps=steps)


# The exact curve's kind: each state's P(refusal) exact, the states sampled.
STEADY_EXACT = "steady (exact per state, sampled states)"


def _steady_exact(search: PortSearch, sources: SourcePorts, divisor: int, universe: int,
                  levels: npt.NDArray[np.int64], *, steps: int, warm_factor: float,
                  seed: int) -> RefusalCurve:
    """nat.h's steady curve with every sampled state's P(refusal) computed exactly over
    all walks (egressgw.sim.refusal_exact): ``steps`` new connections per level, split
    over its chains; ``low``/``high`` its 90% band over the chains."""
    from egressgw.sim import refusal_exact as exact  # noqa: PLC0415

    chains = [(_clients(sources, seed * 64 + c), seed * 64 + c) for c in range(exact.CHAINS)]
    run = exact.steady_chains(
        start=search.start, end=search.end, mul=search.clamp_kind == MUL_CLAMP,
        retries=search.retries, sport_lo=sources.low, sport_hi=sources.high, chains=chains,
        clamp=search.clamp_table(), universe=universe, levels=levels,
        steps=max(steps // exact.CHAINS, exact.EVALUATIONS), warm_factor=warm_factor)
    estimate, low, high = exact.smooth_tail(run)
    return RefusalCurve(STEADY_EXACT, search, sources, divisor, universe, run.levels,
                        estimate, low, high)


__all__ = [
    "RATES",
    "VERSIONS",
    "PortSearch",
    "RefusalCurve",
    "SourcePorts",
    "clamp_v117",
    "growth_curve",
    "steady_curve",
    "tried_set_sizes",
    "uniform_curve",
    "usable_ports",
]


# -- the curves together -----------------------------------------------------------------

GROWTH, STEADY, UNIFORM = "growth", "steady", "uniform"
CURVE_TEXT = {
    GROWTH: "filling up: new connections only, none ended yet (measured)",
    STEADY: "held steady: each new connection ends the oldest (measured; Cilium: each "
            "state's refusal exact)",
    UNIFORM: "ports taken at random, no runs (exact)",
}
# Clients the default curve assumes: the seed scenario's 400, each walking its ephemeral
# ports one by one (the workload default, ``source_ports: sequential``).
DEFAULT_CLIENTS = 400


@dataclass(frozen=True, slots=True)
class Curves:
    """The three curves for one port search and client population.

    ``planning`` is the higher of the two measured curves at each occupancy: a warning
    derived from it comes before the first refusal of either history (filling up with
    sequential clients refuses first in v1.16; staying full refuses first in v1.18).
    """

    growth: RefusalCurve
    steady: RefusalCurve
    uniform: RefusalCurve

    @property
    def planning(self) -> RefusalCurve:
        return worst_of(self.growth, self.steady)

    def by_name(self) -> dict[str, RefusalCurve]:
        return {GROWTH: self.growth, STEADY: self.steady, UNIFORM: self.uniform}


def compute_curves(
    search: PortSearch,
    sources: SourcePorts,
    divisor: int,
    *,
    steps: int = 100_000,
    seed: int = 0,
) -> Curves:
    return Curves(
        growth_curve(search, sources, divisor, steps=steps, seed=seed),
        steady_curve(search, sources, divisor, steps=steps, seed=seed),
        uniform_curve(search, sources, divisor),
    )


def worst_of(a: RefusalCurve, b: RefusalCurve) -> RefusalCurve:
    """The higher refusal rate of two measured curves at each occupancy both reached."""
    held = np.intersect1d(a.held, b.held)
    ia, ib = np.searchsorted(a.held, held), np.searchsorted(b.held, held)
    pick_a = a.refused[ia] >= b.refused[ib]
    return RefusalCurve(
        "worst of growth and steady", a.search, a.sources, a.divisor, a.ports, held,
        np.where(pick_a, a.refused[ia], b.refused[ib]),
        np.where(pick_a, a.low[ia], b.low[ib]), np.where(pick_a, a.high[ia], b.high[ib]),
    )


def planning_curve(search: PortSearch, sources: SourcePorts, divisor: int, *,
                   steps: int = 50_000, seed: int = 0) -> RefusalCurve:
    """The curve forecasts and alerts use (see :class:`Curves`)."""
    return worst_of(growth_curve(search, sources, divisor, steps=steps, seed=seed),
                    steady_curve(search, sources, divisor, steps=steps, seed=seed))


WORST = "worst"
CURVE_CHOICES = (STEADY, GROWTH, WORST)


def named_curve(name: str, search: PortSearch, sources: SourcePorts, divisor: int, *,
                steps: int = 50_000, seed: int = 0) -> RefusalCurve:
    """``steady``, ``growth`` or ``worst`` (of the two) for forecasts and alerts."""
    if name == STEADY:
        return steady_curve(search, sources, divisor, steps=steps, seed=seed)
    if name == GROWTH:
        return growth_curve(search, sources, divisor, steps=steps, seed=seed)
    if name == WORST:
        return planning_curve(search, sources, divisor, steps=steps, seed=seed)
    raise ConfigError(f"{name!r}: expected one of {', '.join(CURVE_CHOICES)}", field="--curve")


def search_name(search: PortSearch) -> str:
    """The curve's datapath in a few words: ``Cilium 1.16`` or ``Linux nf_nat``."""
    return "Linux nf_nat" if search.is_netfilter else f"Cilium {search.version}"


def search_text(search: PortSearch) -> str:
    if search.is_netfilter:
        size = search.end - search.start + 1
        rounds = "+".join(str(r) for r in nf_refusal.round_sizes(size))
        ended = ("no TIME_WAIT" if search.hold is None else
                 f"ended connections {nf_refusal.TIME_WAIT_TIMEOUT:g} s in TIME_WAIT "
                 f"after a {search.hold:g} s hold")
        return (f"Linux nf_nat port search: SNAT ports {search.start}-{search.end}, the "
                f"client's port if free, then {rounds} tries from random offsets; {ended}")
    clamp = ("(v % (end - start)) + start" if search.clamp_kind == MOD_CLAMP
             else "start + ((v * (end - start + 1)) >> 16)")
    return (f"Cilium {search.version} port search: NAT ports {search.start}-{search.end}, "
            f"{search.retries} tries, clamp {clamp}")
