"""When will each tuple run out of source ports? A least-squares trend with a band.

For each tuple the counts of a series of nat-stats snapshots are fitted with a straight
line count = a + b t (ordinary least squares). The time the line reaches the limit is
the estimate; the band is where the regression's prediction interval reaches it: the
upper prediction bound reaches the limit first (the earliest plausible time) and the
lower bound last (the latest; never, when the growth is not significant).

The Student t quantile the interval needs is computed here (bisection on a numerically
integrated density) to spare a scipy dependency for one number.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from egressgw.net import NatEndpoint
from egressgw.sim.snapshots import Snapshot

# Horizons beyond this are reported as "never" (100 years).
HORIZON = 100 * 365 * 86400.0


class Outlook(enum.StrEnum):
    GROWING = "growing"
    NOT_GROWING = "not growing"
    AT_LIMIT = "at limit"
    TOO_FEW = "too few snapshots"


@dataclass(frozen=True, slots=True)
class Trend:
    """One tuple's fitted growth and when it reaches ``limit``.

    Times are seconds after the last snapshot; ``None`` means never (within 100 years).
    ``earliest``/``latest`` bound the estimate with the given ``confidence``; they are
    ``None`` too when the snapshots are too few to estimate any uncertainty.
    """

    outlook: Outlook
    samples: int
    last_count: float
    slope: float
    limit: float
    eta: float | None = None
    earliest: float | None = None
    latest: float | None = None
    confidence: float = 0.9
    has_band: bool = False


def _t_pdf(x: np.ndarray, df: float) -> np.ndarray:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    out: np.ndarray = np.exp(log_norm - (df + 1) / 2 * np.log1p(x * x / df))
    return out


def t_cdf(x: float, df: float) -> float:
    """The Student t distribution function (Simpson's rule on the density)."""
    if x == 0:
        return 0.5
    grid = np.linspace(0.0, abs(x), 4001)
    y = _t_pdf(grid, df)
    h = grid[1] - grid[0]
    area = h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())
    return 0.5 + math.copysign(float(area), x)


def t_quantile(p: float, df: float) -> float:
    """The p quantile (0.5 < p < 1) of Student's t with ``df`` degrees of freedom."""
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _first_crossing(f: Callable[[float], float], limit: float) -> float | None:
    """The first u >= 0 where f(u) >= limit, scanning a geometric grid then bisecting."""
    if f(0.0) >= limit:
        return 0.0
    previous = 0.0
    u = 1.0
    while u <= HORIZON:
        if f(u) >= limit:
            low, high = previous, u
            for _ in range(80):
                mid = (low + high) / 2
                if f(mid) >= limit:
                    high = mid
                else:
                    low = mid
            return high
        previous, u = u, u * 1.25
    return None


@dataclass(frozen=True, slots=True)
class Line:
    """An ordinary least-squares line count = intercept + slope * t, with what its
    prediction interval needs. ``u`` below is seconds after the last snapshot."""

    n: int
    intercept: float
    slope: float
    t_last: float
    t_mean: float
    sxx: float
    # Residual standard error and the t quantile of the band (0 when n < 3: no band).
    s: float = 0.0
    q: float = 0.0

    @classmethod
    def fit(cls, times: Sequence[float], counts: Sequence[float], *,
            confidence: float = 0.9) -> Line | None:
        """None for fewer than 2 snapshots or all at one time."""
        t = np.asarray(times, dtype=np.float64)
        y = np.asarray(counts, dtype=np.float64)
        n = len(t)
        if n < 2 or np.ptp(t) == 0:
            return None
        t_mean = float(t.mean())
        sxx = float(((t - t_mean) ** 2).sum())
        slope = float(((t - t_mean) * (y - y.mean())).sum() / sxx)
        intercept = float(y.mean()) - slope * t_mean
        line = cls(n, intercept, slope, float(t[-1]), t_mean, sxx)
        if n < 3:
            return line
        residuals = y - (intercept + slope * t)
        s = math.sqrt(float((residuals**2).sum()) / (n - 2))
        q = t_quantile((1 + confidence) / 2, n - 2)
        return cls(n, intercept, slope, line.t_last, t_mean, sxx, s, q)

    @property
    def has_band(self) -> bool:
        return self.n >= 3

    def fitted(self, u: Any) -> Any:
        """The line at ``u`` (a float or an array)."""
        return self.intercept + self.slope * (self.t_last + u)

    def spread(self, u: Any) -> Any:
        """Half the prediction interval's width at ``u``."""
        return self.q * self.s * np.sqrt(1 + 1 / self.n
                                         + (self.t_last + u - self.t_mean) ** 2 / self.sxx)


def fit_trend(
    times: Sequence[float],
    counts: Sequence[float],
    limit: float,
    *,
    confidence: float = 0.9,
) -> Trend:
    """Fit one tuple's counts over time and project when it reaches ``limit``."""
    n = len(times)
    last = float(counts[-1]) if n else 0.0
    if n and last >= limit:
        return Trend(Outlook.AT_LIMIT, n, last, 0.0, limit, 0.0, 0.0, 0.0, confidence)
    line = Line.fit(times, counts, confidence=confidence)
    if line is None:
        return Trend(Outlook.TOO_FEW, n, last, 0.0, limit, confidence=confidence)
    slope = line.slope
    if slope <= 0:
        return Trend(Outlook.NOT_GROWING, n, last, slope, limit, confidence=confidence)
    eta = (limit - line.intercept) / slope - line.t_last
    eta = max(eta, 0.0)
    if not line.has_band:
        return Trend(Outlook.GROWING, n, last, slope, limit, eta, confidence=confidence)

    def upper(u: float) -> float:
        return float(line.fitted(u) + line.spread(u))

    def lower(u: float) -> float:
        return float(line.fitted(u) - line.spread(u))

    earliest = _first_crossing(upper, limit)
    latest = _first_crossing(lower, limit)
    return Trend(
        Outlook.GROWING, n, last, slope, limit, eta if eta <= HORIZON else None,
        earliest, latest, confidence, has_band=True,
    )


def tuple_series(snapshots: Sequence[Snapshot], *, scale: float = 1.0,
                 ) -> dict[NatEndpoint, tuple[list[float], list[float]]]:
    """Each tuple's snapshot times and counts (times ``scale``), in snapshot order.

    A tuple missing from a snapshot is left out of that snapshot's fit rather than
    counted as 0: nat-stats lists only the top K, so absence says little.
    """
    series: dict[NatEndpoint, tuple[list[float], list[float]]] = {}
    for snapshot in snapshots:
        for endpoint, count in snapshot.counts.items():
            times, counts = series.setdefault(endpoint, ([], []))
            times.append(snapshot.time)
            counts.append(float(count) * scale)
    return series


@dataclass(frozen=True, slots=True)
class TupleForecast:
    """A tuple's trend, with the snapshot times it was seen in."""

    endpoint: NatEndpoint
    trend: Trend


def forecast_snapshots(
    snapshots: Sequence[Snapshot],
    *,
    limit: float,
    confidence: float = 0.9,
) -> list[TupleForecast]:
    """A trend per tuple seen in any snapshot, soonest to reach ``limit`` first.

    A tuple missing from a snapshot is left out of that snapshot's fit rather than
    counted as 0: nat-stats lists only the top K, so absence says little.
    """
    series = tuple_series(snapshots)
    results = [
        TupleForecast(endpoint, fit_trend(times, counts, limit, confidence=confidence))
        for endpoint, (times, counts) in series.items()
    ]

    def urgency(item: TupleForecast) -> tuple[int, float, float]:
        rank = {Outlook.AT_LIMIT: 0, Outlook.GROWING: 1, Outlook.NOT_GROWING: 2,
                Outlook.TOO_FEW: 3}[item.trend.outlook]
        eta = item.trend.eta if item.trend.eta is not None else math.inf
        return rank, eta, -item.trend.last_count

    return sorted(results, key=urgency)


@dataclass(frozen=True, slots=True)
class Mark:
    """A count a forecast projects to: its name and the connections it stands for."""

    name: str
    count: float


@dataclass(frozen=True, slots=True)
class TupleOutlook:
    """A tuple's trend towards each mark (first refusals, a refusal rate, the limit)."""

    endpoint: NatEndpoint
    trends: dict[str, Trend]
    # Connections per second, least squares over every snapshot (also when at a mark).
    slope: float = 0.0


def forecast_marks(
    snapshots: Sequence[Snapshot],
    marks: Sequence[Mark],
    *,
    scale: float = 1.0,
    confidence: float = 0.9,
) -> list[TupleOutlook]:
    """A trend per tuple towards each mark; counts multiplied by ``scale`` ("3x traffic":
    ports held grow with the connection rate, so every count is 3 times larger).

    Sorted by the first mark's time, soonest first.
    """
    series = tuple_series(snapshots, scale=scale)
    results = [
        TupleOutlook(endpoint, {
            m.name: fit_trend(times, counts, m.count, confidence=confidence) for m in marks
        }, _slope(times, counts))
        for endpoint, (times, counts) in series.items()
    ]
    first = marks[0].name

    def urgency(item: TupleOutlook) -> tuple[int, float, float]:
        trend = item.trends[first]
        rank = {Outlook.AT_LIMIT: 0, Outlook.GROWING: 1, Outlook.NOT_GROWING: 2,
                Outlook.TOO_FEW: 3}[trend.outlook]
        eta = trend.eta if trend.eta is not None else math.inf
        return rank, eta, -trend.last_count

    return sorted(results, key=urgency)


def _slope(times: Sequence[float], counts: Sequence[float]) -> float:
    t = np.asarray(times, dtype=np.float64)
    y = np.asarray(counts, dtype=np.float64)
    if len(t) < 2 or np.ptp(t) == 0:
        return 0.0
    return float(((t - t.mean()) * (y - y.mean())).sum() / ((t - t.mean()) ** 2).sum())
