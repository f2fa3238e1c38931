"""Arrival-rate profiles and how arrival times are drawn from them.

A profile is a rate function r(t) (arrivals per second) with a closed-form cumulative
intensity L(t) = integral of r from 0 to t. Arrival times come from L by time rescaling:

- a Poisson process puts N ~ Poisson(L(t1) - L(t0)) points uniformly on [L(t0), L(t1))
  and maps them back through the inverse of L;
- a constant (evenly spaced) process puts one arrival where L crosses k + 1/2.

Inverting L on a fine grid of the window with linear interpolation keeps this vectorized
for every profile, including a daily curve whose inverse has no closed form.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

DAY = 86400.0
# Grid points per window used to invert the cumulative intensity.
_INVERSION_GRID = 513


class Process(enum.StrEnum):
    POISSON = "poisson"
    CONSTANT = "constant"


@dataclass(frozen=True, slots=True)
class ConstantRate:
    """The same rate all the time."""

    rate: float

    def rate_at(self, t: FloatArray) -> FloatArray:
        return np.full_like(t, self.rate)

    def cumulative(self, t: FloatArray) -> FloatArray:
        return self.rate * t

    def peak(self, until: float) -> float:
        return self.rate

    def breakpoints(self) -> tuple[float, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class RampRate:
    """``start_rate`` until ``begin``, linear to ``end_rate`` over ``over`` s, then held."""

    start_rate: float
    end_rate: float
    begin: float
    over: float

    def rate_at(self, t: FloatArray) -> FloatArray:
        frac = np.clip((t - self.begin) / self.over, 0.0, 1.0) if self.over > 0 else (
            (t >= self.begin).astype(np.float64)
        )
        return self.start_rate + (self.end_rate - self.start_rate) * frac

    def cumulative(self, t: FloatArray) -> FloatArray:
        t = np.asarray(t, dtype=np.float64)
        before = np.minimum(t, self.begin)
        ramp_t = np.clip(t - self.begin, 0.0, self.over)
        after = np.maximum(t - self.begin - self.over, 0.0)
        slope = (self.end_rate - self.start_rate) / self.over if self.over > 0 else 0.0
        ramped = self.start_rate * ramp_t + 0.5 * slope * ramp_t**2
        return self.start_rate * before + ramped + self.end_rate * after

    def peak(self, until: float) -> float:
        if until <= self.begin:
            return self.start_rate
        reached = float(self.rate_at(np.array([until]))[0])
        return max(self.start_rate, reached)

    def breakpoints(self) -> tuple[float, ...]:
        return (self.begin, self.begin + self.over)


@dataclass(frozen=True, slots=True)
class DailyRate:
    """A daily curve: ``low`` at night, ``high`` at ``peak_at`` (cosine shaped)."""

    low: float
    high: float
    peak_at: float
    period: float = DAY

    def rate_at(self, t: FloatArray) -> FloatArray:
        phase = 2.0 * math.pi * (t - self.peak_at) / self.period
        return self.low + (self.high - self.low) * (1.0 + np.cos(phase)) / 2.0

    def cumulative(self, t: FloatArray) -> FloatArray:
        t = np.asarray(t, dtype=np.float64)
        mean = (self.low + self.high) / 2.0
        amplitude = (self.high - self.low) / 2.0
        omega = 2.0 * math.pi / self.period
        wave = np.sin(omega * (t - self.peak_at)) - math.sin(-omega * self.peak_at)
        return mean * t + amplitude / omega * wave

    def peak(self, until: float) -> float:
        grid = np.linspace(0.0, until, 2049) if until > 0 else np.zeros(1)
        return float(self.rate_at(grid).max())

    def breakpoints(self) -> tuple[float, ...]:
        return ()


RateProfile = ConstantRate | RampRate | DailyRate


@dataclass(frozen=True, slots=True)
class Arrivals:
    """When new connections start: a process over a rate profile, thinned by reuse.

    ``per_connection`` requests share one connection, so connections arrive at the
    request rate divided by it.
    """

    process: Process
    profile: RateProfile
    per_connection: float = 1.0

    def expected(self, t0: float, t1: float) -> float:
        """The expected number of connections starting in [t0, t1)."""
        ends = self.profile.cumulative(np.array([t0, t1], dtype=np.float64))
        return float(ends[1] - ends[0]) / self.per_connection

    def peak_rate(self, until: float) -> float:
        """The highest connection rate (per second) reached in [0, until]."""
        return self.profile.peak(until) / self.per_connection

    def draw(self, rng: np.random.Generator, t0: float, t1: float) -> FloatArray:
        """Sorted start times of the connections in [t0, t1)."""
        inner = [b for b in self.profile.breakpoints() if t0 < b < t1]
        grid = np.unique(np.concatenate([np.linspace(t0, t1, _INVERSION_GRID), inner]))
        cum = self.profile.cumulative(grid) / self.per_connection
        low, high = float(cum[0]), float(cum[-1])
        if high <= low:
            return np.empty(0, dtype=np.float64)
        if self.process is Process.POISSON:
            n = int(rng.poisson(high - low))
            points = np.sort(rng.uniform(low, high, n))
        else:
            first = math.ceil(low - 0.5)
            points = np.arange(first, math.ceil(high - 0.5), dtype=np.float64) + 0.5
            points = points[(points >= low) & (points < high)]
        times = np.interp(points, cum, grid)
        # Interpolation can land a hair outside the window at its edges.
        clipped: FloatArray = np.clip(times, t0, np.nextafter(t1, t0))
        return clipped
