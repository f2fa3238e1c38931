"""How long connections stay open and how they end, drawn into numpy columns."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


class DurationKind(enum.StrEnum):
    FIXED = "fixed"
    EXPONENTIAL = "exponential"
    LOGNORMAL = "lognormal"
    FOREVER = "forever"


@dataclass(frozen=True, slots=True)
class Duration:
    """A connection's open time (before it closes or goes idle).

    ``value`` is the fixed time, the exponential mean, or the lognormal median; ``sigma``
    is the lognormal shape (the standard deviation of the log).
    """

    kind: DurationKind
    value: float = 0.0
    sigma: float = 0.0

    @property
    def mean(self) -> float:
        if self.kind is DurationKind.FOREVER:
            return math.inf
        if self.kind is DurationKind.LOGNORMAL:
            return self.value * math.exp(self.sigma**2 / 2.0)
        return self.value

    def draw(self, rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
        if self.kind is DurationKind.FIXED:
            return np.full(n, self.value)
        if self.kind is DurationKind.EXPONENTIAL:
            return rng.exponential(self.value, n)
        if self.kind is DurationKind.LOGNORMAL:
            return rng.lognormal(math.log(self.value), self.sigma, n)
        return np.full(n, np.inf)


class EndKind(enum.IntEnum):
    """How a connection ends; the values are the model datapath's EndKind codes.

    FIN: both sides close; RST: the client aborts; RST_SERVER: the server resets;
    IDLE: nothing more is sent."""

    FIN = 0
    RST = 1
    IDLE = 2
    RST_SERVER = 3


@dataclass(frozen=True, slots=True)
class Ends:
    """The share of connections ending each way (see EndKind)."""

    fin: float = 1.0
    rst: float = 0.0
    idle: float = 0.0
    rst_server: float = 0.0

    def shares(self) -> dict[EndKind, float]:
        """Each end kind's share of connections (they sum to 1)."""
        values = {EndKind.FIN: self.fin, EndKind.RST: self.rst, EndKind.IDLE: self.idle,
                  EndKind.RST_SERVER: self.rst_server}
        total = sum(values.values())
        return {kind: share / total for kind, share in values.items()}

    def draw(self, rng: np.random.Generator, n: int) -> npt.NDArray[np.uint8]:
        shares = np.array([self.fin, self.rst, self.idle, self.rst_server])
        if np.count_nonzero(shares) == 1:
            return np.full(n, int(np.argmax(shares)), dtype=np.uint8)
        return rng.choice(4, size=n, p=shares / shares.sum()).astype(np.uint8)
