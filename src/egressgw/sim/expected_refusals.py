"""When the first refused connection is expected, at a tuple's current growth.

A tuple holding c connections, each holding its port for H seconds on average, sees
c / H new connections a second (Little's law). Each is refused with probability p(c),
the refusal curve at that occupancy (sim/refusal.py, ``RefusalCurve.rate_at``). Along
the fitted trend c(u), u seconds after the last snapshot, the expected number of
refused connections by time T is

    Λ(T) = ∫_0^T c(u) / H · p(c(u)) du.

Given the occupancy, refusals are independent rare events, so their number by T is
Poisson with mean Λ(T) (near enough: P(none) = Π(1 - p_i) ≈ exp(-Σ p_i) for small p_i),
and P(at least one by T) = 1 - exp(-Λ(T)). That passes 1/2 where Λ(T) = ln 2: the time
reported is when a first refusal becomes more likely than not: the median of its time.

The band states its coverage (``coverage``, 80% by default) and carries three
uncertainties:

- the first refusal's own chance: with refusals a Poisson process of mean Λ(T),
  P(first refusal by T) = 1 - exp(-Λ(T)), so its 10% and 90% quantiles are where
  Λ(T) = -ln 0.9 = 0.105 and Λ(T) = -ln 0.1 = 2.303 (for an 80% band);
- the trend's: Λ along the trend's prediction bounds (``confidence``, 90%);
- the curve's: p's own band (``RefusalCurve.low``/``high``; for nat.h's steady curve
  a 90% band over independent chains, sim/refusal_exact.py).

The band's earliest time is where Λ along the upper trend bound with the curve's high
side reaches the lower quantile's Λ; its latest where Λ along the lower bound with the
curve's low side reaches the upper quantile's. Taking each side's worst case makes the
band at least as wide as the first refusal's own chance alone asks;
bench/bench_forecast_coverage.py measures how often simulated first refusals fall in it.

The integral is a cumulative trapezoid on a geometric grid of u (0.18% steps from 1 ms
to 100 years): a step in p moves the answer by at most one step, 0.18%.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from egressgw.net import NatEndpoint
from egressgw.sim.forecast import HORIZON, Line, Outlook, tuple_series
from egressgw.sim.snapshots import Snapshot

FloatArray = npt.NDArray[np.float64]
Probability = Callable[[FloatArray], FloatArray]

# Λ at which P(at least one refusal) = 1 - exp(-Λ) reaches 1/2.
LN2 = math.log(2)
# The share of first refusals the band is to hold: from its 10% to its 90% quantile.
COVERAGE = 0.8
# The time grid: u = 0, then geometric from 1 ms to the horizon.
_GRID = np.concatenate(([0.0], np.geomspace(1e-3, HORIZON, 16384)))
# The refusal curve is sampled at most this many times between 0 and its last level.
_TABLE_POINTS = 8192


class Curve(Protocol):
    """What is used of sim/refusal.py's RefusalCurve."""

    @property
    def held(self) -> Any: ...

    def rate_at(self, held: float, side: str = "refused") -> float: ...


def probability_of(curve: Curve, side: str = "refused") -> Probability:
    """p(count) for arrays of counts, from the curve's own ``rate_at`` (log-linear between
    its levels; ``side`` "low" or "high" for its band), sampled on a grid of counts and
    interpolated linearly between samples. Beyond the curve's last level p stays at its
    last value, as ``rate_at`` does."""
    top = float(curve.held[-1])
    counts = np.linspace(0.0, top, int(min(_TABLE_POINTS, max(top, 1.0))) + 1)
    table = np.array([curve.rate_at(float(c), side) for c in counts], dtype=np.float64)

    def p(x: FloatArray) -> FloatArray:
        out: FloatArray = np.interp(x, counts, table)
        return out

    return p


def expected_refused(count_at: Callable[[FloatArray], FloatArray], u: FloatArray, *,
                     hold: float, probability: Probability) -> FloatArray:
    """Λ at each of ``u`` (starting at 0, increasing): refused connections expected."""
    counts = np.maximum(count_at(u), 0.0)
    refused_per_second = counts / hold * probability(counts)
    steps = np.diff(u) * (refused_per_second[1:] + refused_per_second[:-1]) / 2
    out: FloatArray = np.concatenate(([0.0], np.cumsum(steps)))
    return out


def time_to_expected(count_at: Callable[[FloatArray], FloatArray], *, hold: float,
                     probability: Probability, expected: float = LN2) -> float | None:
    """The first u at which Λ(u) reaches ``expected`` (None: not within 100 years)."""
    lam = expected_refused(count_at, _GRID, hold=hold, probability=probability)
    reached = np.nonzero(lam >= expected)[0]
    if not len(reached):
        return None
    i = int(reached[0])
    if i == 0:
        return 0.0
    u0, u1, l0, l1 = _GRID[i - 1], _GRID[i], lam[i - 1], lam[i]
    return float(u0 + (expected - l0) / (l1 - l0) * (u1 - u0))


@dataclass(frozen=True, slots=True)
class FirstRefusal:
    """When a tuple's first refusal becomes more likely than not (Λ = ln 2).

    Times are seconds after the last snapshot; ``None`` means not within 100 years.
    ``fitted`` and ``slope`` are the trend's count at the last snapshot and its growth
    per second; ``count`` the fitted count at ``eta``; ``refused_per_day`` the refusals
    expected per day at ``fitted`` (c / H x p(c) x 86400).
    """

    outlook: Outlook
    samples: int
    hold: float
    fitted: float = 0.0
    slope: float = 0.0
    eta: float | None = None
    earliest: float | None = None
    latest: float | None = None
    count: float | None = None
    refused_per_day: float = 0.0
    confidence: float = 0.9
    has_band: bool = False
    coverage: float = COVERAGE


def chance_quantiles(coverage: float) -> tuple[float, float]:
    """The Λ at which P(first refusal by T) = 1 - exp(-Λ) reaches the band's lower and
    upper quantiles, (1 - coverage) / 2 either side: 0.105 and 2.303 for 80%."""
    tail = (1.0 - coverage) / 2
    return -math.log1p(-tail), -math.log(tail)


@dataclass(frozen=True, slots=True)
class CurveBand:
    """p(count) and its band: ``low`` and ``high`` bound it (the same function when the
    curve is exact)."""

    central: Probability
    low: Probability
    high: Probability

    @classmethod
    def exact(cls, p: Probability) -> CurveBand:
        return cls(p, p, p)


def first_refusal(times: Sequence[float], counts: Sequence[float], *, hold: float,
                  probability: Probability | CurveBand, confidence: float = 0.9,
                  coverage: float = COVERAGE) -> FirstRefusal:
    """Fit one tuple's counts and integrate its expected refusals (module doc)."""
    curve = probability if isinstance(probability, CurveBand) else CurveBand.exact(probability)
    line = Line.fit(times, counts, confidence=confidence)
    if line is None:
        return FirstRefusal(Outlook.TOO_FEW, len(times), hold, confidence=confidence,
                            coverage=coverage)
    outlook = Outlook.GROWING if line.slope > 0 else Outlook.NOT_GROWING
    now = max(float(line.fitted(0.0)), 0.0)
    per_day = now / hold * float(curve.central(np.array([now]))[0]) * 86400.0
    eta = time_to_expected(line.fitted, hold=hold, probability=curve.central)
    count = None if eta is None else float(line.fitted(eta))
    soon, late = chance_quantiles(coverage)

    def upper(u: FloatArray) -> FloatArray:
        out: FloatArray = line.fitted(u) + line.spread(u)
        return out

    def lower(u: FloatArray) -> FloatArray:
        out: FloatArray = line.fitted(u) - line.spread(u)
        return out

    # Without residuals (fewer than 3 snapshots) the trend's bounds are the line itself.
    high_trend, low_trend = (upper, lower) if line.has_band else (line.fitted, line.fitted)
    return FirstRefusal(
        outlook, line.n, hold, now, line.slope, eta,
        earliest=time_to_expected(high_trend, hold=hold, probability=curve.high,
                                  expected=soon),
        latest=time_to_expected(low_trend, hold=hold, probability=curve.low, expected=late),
        count=count, refused_per_day=per_day, confidence=confidence, has_band=True,
        coverage=coverage,
    )


def curve_band(curve: Curve) -> CurveBand:
    """The curve's p and its band as functions of the count (see :func:`probability_of`)."""
    return CurveBand(probability_of(curve), probability_of(curve, "low"),
                     probability_of(curve, "high"))


def first_refusals(snapshots: Sequence[Snapshot], *, hold: float,
                   probability: Probability | CurveBand, scale: float = 1.0,
                   confidence: float = 0.9, coverage: float = COVERAGE,
                   ) -> dict[NatEndpoint, FirstRefusal]:
    """:func:`first_refusal` for every tuple of ``snapshots``, counts times ``scale``
    (3x traffic: three times the connections held and the new ones a second)."""
    return {
        endpoint: first_refusal(times, counts, hold=hold, probability=probability,
                                confidence=confidence, coverage=coverage)
        for endpoint, (times, counts) in tuple_series(snapshots, scale=scale).items()
    }
