"""Configuration values shared by every layer, named after Cilium's flags."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from egressgw.errors import ConfigError, excerpt

MAX_PORT = 65535


@dataclass(frozen=True, slots=True)
class NodePortRange:
    """``--node-port-range``: Kubernetes NodePorts; NAT source ports lie above it.

    Cilium hands out masquerade source ports from ``[max + 1, 65535]``.
    """

    min: int = 30000
    max: int = 32767

    def __post_init__(self) -> None:
        if not 0 < self.min <= self.max < MAX_PORT:
            raise ConfigError(
                f"{self.min},{self.max}: need 0 < MIN <= MAX < {MAX_PORT} so that NAT ports "
                f"{self.max + 1}..{MAX_PORT} remain",
                field="--node-port-range",
            )

    @classmethod
    def parse(cls, text: str) -> NodePortRange:
        """Parse ``MIN,MAX`` (Cilium's form) or ``MIN-MAX``; ASCII digits, at most 5 each."""
        match = re.fullmatch(r"\s*([0-9]{1,5})\s*[,-]\s*([0-9]{1,5})\s*", text[:64])
        if not match or len(text) > 64:
            raise ConfigError(
                f"{excerpt(text)}: expected MIN,MAX such as 30000,32767", field="--node-port-range"
            )
        return cls(int(match[1]), int(match[2]))

    @property
    def nat_min(self) -> int:
        """The lowest NAT source port."""
        return self.max + 1

    @property
    def nat_max(self) -> int:
        """The highest NAT source port."""
        return MAX_PORT

    @property
    def nat_ports(self) -> int:
        """Ports in the NAT range, as the seed counts them (32768 by default)."""
        return MAX_PORT - self.max

    @property
    def cilium_saturation_divisor(self) -> int:
        """What Cilium v1.16 divides the top count by: ``65535 - (NodePortMax + 1)``.

        It equals the ports the clamp in nat.h can reach (32767 by default).
        """
        return max(1, MAX_PORT - (self.max + 1))

    def __str__(self) -> str:
        return f"{self.min},{self.max}"


# pkg/maps/nat/stats/cell.go (v1.16.2): NatMapStatKStoredEntries defaults to 32 (the
# troubleshooting guide says "top 30"; the code is what runs).
NAT_MAP_STATS_ENTRIES_DEFAULT = 32
NAT_MAP_STATS_ENTRIES_MAX = 4096


def check_stats_entries(k: int) -> int:
    """Validate ``--nat-map-stats-entries`` (Cilium accepts 1..4096)."""
    if not 1 <= k <= NAT_MAP_STATS_ENTRIES_MAX:
        raise ConfigError(
            f"{k}: must be between 1 and {NAT_MAP_STATS_ENTRIES_MAX}",
            field="--nat-map-stats-entries",
        )
    return k


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
# Longest duration text and value accepted anywhere: a year of seconds is far beyond any
# interval, timeout or simulated run, and bounds every loop and array sized by time.
MAX_DURATION_CHARS = 32
MAX_DURATION = 366 * 86400.0


def parse_duration(text: str, *, field: str = "duration") -> float:
    """Parse a Go-style duration (``30s``, ``1m30s``, ``2h``, ``0``) into seconds.

    ASCII digits only, at most :data:`MAX_DURATION_CHARS` characters and
    :data:`MAX_DURATION` seconds.
    """
    if not isinstance(text, str):
        raise ConfigError(f"expected a duration such as 30s, not {excerpt(text)}", field=field)
    stripped = text.strip()
    if len(stripped) > MAX_DURATION_CHARS:
        raise ConfigError(f"{excerpt(text)}: too long for a duration", field=field)
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", stripped):
        seconds = float(stripped)
    else:
        parts = _DURATION_PART.findall(stripped)
        if not parts or "".join(n + u for n, u in parts) != stripped:
            raise ConfigError(
                f"{excerpt(text)}: expected a duration such as 30s, 5m or 1h30m", field=field
            )
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    return check_duration(seconds, field=field)


def check_duration(seconds: float, *, field: str, minimum: float = 0.0) -> float:
    """``seconds`` if finite and within [minimum, MAX_DURATION] (0 always passes)."""
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_DURATION:
        raise ConfigError(
            f"{excerpt(seconds)} s: a duration must be between 0 and {MAX_DURATION:.0f} s "
            "(366 days)",
            field=field,
        )
    if 0 < seconds < minimum:
        raise ConfigError(f"{seconds:g} s: must be 0 or at least {minimum:g} s", field=field)
    return seconds
