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
reported is when a first refusal becomes more likely than not. The band is the same
integral along the trend's prediction bounds (the upper bound gives the earliest time,
the lower bound the latest), as for the other marks of sim/forecast.py.

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
# The time grid: u = 0, then geometric from 1 ms to the horizon.
_GRID = np.concatenate(([0.0], np.geomspace(1e-3, HORIZON, 16384)))
# The refusal curve is sampled at most this many times between 0 and its last level.
_TABLE_POINTS = 8192


class Curve(Protocol):
    """What is used of sim/refusal.py's RefusalCurve."""

    @property
    def held(self) -> Any: ...

    def rate_at(self, held: float) -> float: ...


def probability_of(curve: Curve) -> Probability:
    """p(count) for arrays of counts, from the curve's own ``rate_at`` (log-linear between
    its levels), sampled on a grid of counts and interpolated linearly between samples.
    Beyond the curve's last level p stays at its last value, as ``rate_at`` does."""
    top = float(curve.held[-1])
    counts = np.linspace(0.0, top, int(min(_TABLE_POINTS, max(top, 1.0))) + 1)
    table = np.array([curve.rate_at(float(c)) for c in counts], dtype=np.float64)

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


def first_refusal(times: Sequence[float], counts: Sequence[float], *, hold: float,
                  probability: Probability, confidence: float = 0.9) -> FirstRefusal:
    """Fit one tuple's counts and integrate its expected refusals (module doc)."""
    line = Line.fit(times, counts, confidence=confidence)
    if line is None:
        return FirstRefusal(Outlook.TOO_FEW, len(times), hold, confidence=confidence)
    outlook = Outlook.GROWING if line.slope > 0 else Outlook.NOT_GROWING
    now = max(float(line.fitted(0.0)), 0.0)
    per_day = now / hold * float(probability(np.array([now]))[0]) * 86400.0
    eta = time_to_expected(line.fitted, hold=hold, probability=probability)
    count = None if eta is None else float(line.fitted(eta))
    if not line.has_band:
        return FirstRefusal(outlook, line.n, hold, now, line.slope, eta, count=count,
                            refused_per_day=per_day, confidence=confidence)

    def upper(u: FloatArray) -> FloatArray:
        out: FloatArray = line.fitted(u) + line.spread(u)
        return out

    def lower(u: FloatArray) -> FloatArray:
        out: FloatArray = line.fitted(u) - line.spread(u)
        return out

    return FirstRefusal(
        outlook, line.n, hold, now, line.slope, eta,
        earliest=time_to_expected(upper, hold=hold, probability=probability),
        latest=time_to_expected(lower, hold=hold, probability=probability),
        count=count, refused_per_day=per_day, confidence=confidence, has_band=True,
    )


def first_refusals(snapshots: Sequence[Snapshot], *, hold: float, probability: Probability,
                   scale: float = 1.0, confidence: float = 0.9,
                   ) -> dict[NatEndpoint, FirstRefusal]:
    """:func:`first_refusal` for every tuple of ``snapshots``, counts times ``scale``
    (3x traffic: three times the connections held and the new ones a second)."""
    return {
        endpoint: first_refusal(times, counts, hold=hold, probability=probability,
                                confidence=confidence)
        for endpoint, (times, counts) in tuple_series(snapshots, scale=scale).items()
    }
