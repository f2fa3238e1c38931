"""nat.h's steady refusal curve with each state's refusal probability computed exactly.

Counting refusals of single tries (``refusal_kernel.steady``) measures P(refusal) with
Bernoulli noise: at 1 in 1,000,000, 50,000 tries per level see no refusal or one, and the
first level that sees one moves by points of occupancy from seed to seed. But nat.h's
search (Cilium v1.16.2, bpf/lib/nat.h ``snat_v4_new_mapping``) is a walk with known
steps from two independent random draws: the kept port p0 (the client's own, or
``clamp(random16)``) and the walk's start ``p1 = clamp(random16)``, then
``clamp(port + 1)``. Given the taken ports, P(refused) = P(p0 taken) x P(the walk from
p1 is all taken), summed exactly over every client's next port and all 65536 values of
random16 (``refusal_kernel.cilium_refused_given``, through run lengths along the walk).

What is left to sample is the state: which ports a tuple held at k connections has
taken, as connections come and go. :func:`steady_chains` runs independent chains (the
same churn as the measured curve: each new connection that gets a port ends the oldest)
and averages the exact value over the states each passes through.

In the low tail (below ``TAIL_TOP``, 0.1%) a level's value still hangs on a few states
with a long run of taken ports, so :func:`smooth_tail` pools neighbouring levels: at
each level, log P is fitted
as a straight line in the occupancy over the levels within ``TAIL_WINDOW`` (a Poisson
quasi-likelihood, zeros included), the curve's shape a few points either side. The
chains give the uncertainty: each is smoothed alone, and the band is the chains' mean
plus or minus a Student t quantile times its standard error (``CURVE_CONFIDENCE``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from egressgw.sim import refusal_kernel as kernel

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

VALUES = 1 << 16
# Independent chains per curve; their spread is the curve's uncertainty.
CHAINS = 8
# Exact evaluations per chain and level (spread evenly over its new connections).
EVALUATIONS = 50
# Levels either side pooled by the local log-linear fit (1% of the ports apart).
TAIL_WINDOW = 4
# Two-sided coverage of the curve's band (low, high): a t interval over the chains.
CURVE_CONFIDENCE = 0.9
# The tail the fit pools: levels whose mean over the chains is below this.
TAIL_TOP = 1e-3
# The steepest local slope the fit may take: a factor 100 per level.
MAX_SLOPE = math.log(100.0)


@dataclass(frozen=True, slots=True)
class ChainRun:
    """Each chain's mean exact P(refusal) per level (rows: chains), and the levels all
    chains reached (a level a search cannot fill to is left out)."""

    levels: IntArray
    means: FloatArray
    samples: int


def clamp_tables(clamp: IntArray) -> tuple[IntArray, IntArray, FloatArray]:
    """(clamp(v) for every 16-bit v, the ports clamp reaches, P(clamp(random16) = port))."""
    step = np.asarray(clamp, dtype=np.int64)
    image, counts = np.unique(step, return_counts=True)
    return step, image.astype(np.int64), counts.astype(np.float64) / VALUES


def steady_chains(*, start: int, end: int, mul: bool, retries: int, sport_lo: int,
                  sport_hi: int, chains: list[tuple[IntArray, int]], clamp: IntArray,
                  universe: int, levels: IntArray, steps: int,
                  warm_factor: float = 3.0, rewarm: float = 1 / 3) -> ChainRun:
    """Run one churning chain per entry of ``chains`` (its clients' next source ports,
    empty for random ones, and its random seed), ``steps`` new connections tried per
    level each, and average the exact P(refused | taken) over ``EVALUATIONS`` states."""
    step, image, weight = clamp_tables(clamp)
    every = max(steps // EVALUATIONS, 1)
    samples = max(steps // every, 1)
    rows = []
    for clients, chain_seed in chains:
        nxt = clients.copy()
        kernel.seed(int(chain_seed))
        taken = np.zeros(VALUES, dtype=np.bool_)
        held = np.zeros(universe + 2, dtype=np.int64)
        n = 0
        out = np.zeros((len(levels), samples))
        warm = int(warm_factor * levels[0]) if len(levels) else 0
        for i, level in enumerate(levels):
            # After 1% more ports are filled, a third of a turnover before measuring.
            w = warm if i == 0 else max(int(rewarm * level), 1000)
            if n:  # the ring back in arrival order from index 0, so growth appends
                head = int(held[-1])
                held[:n] = np.roll(held[:n], -head)
                held[-1] = 0
            one = np.zeros((1, samples))
            n = kernel.cilium_steady_exact(taken, held, n, np.array([level], dtype=np.int64),
                                           w, steps, every, start, end, mul, retries,
                                           sport_lo, sport_hi, nxt, step, image, weight, one)
            out[i] = one[0]
        rows.append(np.where(out[:, 0] < 0, -1.0, out.mean(axis=1)))
    means = np.array(rows)
    reached = (means >= 0).all(axis=0)
    return ChainRun(levels[reached], means[:, reached], samples)


def local_loglinear(x: FloatArray, p: FloatArray, half_width: int = TAIL_WINDOW) -> FloatArray:
    """At each x[i], exp(a + b x[i]) for the a, b that maximise the Poisson
    quasi-likelihood sum_j (p_j log mu_j - mu_j) over the levels within ``half_width``
    of i (mu_j = exp(a + b x_j), 0 <= b <= MAX_SLOPE per unit of x). All zeros: 0."""
    out = np.zeros(len(x))
    for i in range(len(x)):
        lo, hi = max(0, i - half_width), min(len(x), i + half_width + 1)
        xs, ps = x[lo:hi] - x[i], p[lo:hi]
        if ps.sum() <= 0:
            continue
        out[i] = math.exp(_fit_intercept(xs, ps))
    return out


def _fit_intercept(xs: FloatArray, ps: FloatArray) -> float:
    """a of the quasi-Poisson log-linear fit (x centred on the level: a = log mu there).

    The likelihood is concave in (a, b); for a fixed b the best a is closed form,
    log(sum p / sum exp(b x)), so b is found by golden-section search on [0, MAX_SLOPE].
    """
    total = float(ps.sum())

    def profile(b: float) -> tuple[float, float]:
        a = math.log(total) - math.log(float(np.exp(b * xs).sum()))
        mu = np.exp(a + b * xs)
        return float((ps * (a + b * xs)).sum() - mu.sum()), a

    low, high = 0.0, MAX_SLOPE
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        m1, m2 = high - ratio * (high - low), low + ratio * (high - low)
        if profile(m1)[0] < profile(m2)[0]:
            low = m1
        else:
            high = m2
    return profile((low + high) / 2)[1]


def t_quantile_two_sided(confidence: float, df: int) -> float:
    from egressgw.sim.forecast import t_quantile  # noqa: PLC0415 - forecast imports refusal

    return t_quantile((1 + confidence) / 2, df)


def smooth_tail(run: ChainRun, confidence: float = CURVE_CONFIDENCE,
                ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(estimate, low, high) per level: each chain smoothed alone, then their mean and a
    t interval over the chains; made non-decreasing in the occupancy (the curve is:
    more taken ports never make a walk likelier to find a free one)."""
    x = run.levels.astype(np.float64)
    spacing = float(np.median(np.diff(x))) if len(x) > 1 else 1.0
    smoothed = np.array([local_loglinear(x / spacing, row) for row in run.means])
    # Above the tail every state refuses some walks and each level stands alone; the
    # log-linear fit would also bend the curve's top, where p turns towards 1.
    chains = np.where(run.means.mean(axis=0) >= TAIL_TOP, run.means, smoothed)
    mean = chains.mean(axis=0)
    r = len(chains)
    if r > 1:
        half = t_quantile_two_sided(confidence, r - 1) * chains.std(axis=0, ddof=1) / math.sqrt(r)
    else:
        half = np.zeros(len(x))
    estimate = np.maximum.accumulate(mean)
    low = np.maximum.accumulate(np.maximum(mean - half, 0.0))
    # An upper bound holds below too: p(k) <= p(k') <= high(k') for k < k'.
    high = np.minimum.accumulate((mean + half)[::-1])[::-1]
    return estimate, np.minimum(low, estimate), np.maximum(high, estimate)


def refused_given(taken: npt.NDArray[np.bool_], *, start: int, end: int, retries: int,
                  clamp: IntArray, sport_lo: int, sport_hi: int,
                  clients_next: IntArray | None = None) -> float:
    """P(the next new connection is refused) for one set of taken ports (a bool per
    port), exactly: over every client's next port (``clients_next``, offsets into
    sport_lo..sport_hi; None: a port drawn uniformly from that range) and all 65536
    values of each random16."""
    step, image, weight = clamp_tables(clamp)
    nxt = np.zeros(0, dtype=np.int64) if clients_next is None else clients_next
    run = np.zeros(VALUES, dtype=np.int64)
    stack = np.zeros(VALUES, dtype=np.int64)
    return float(kernel.cilium_refused_given(np.asarray(taken, dtype=np.bool_), start, end,
                                             step, image, weight, retries, sport_lo,
                                             sport_hi, nxt, run, stack))
