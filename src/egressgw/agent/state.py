"""What the agent knows at a moment, shared between its loop and its HTTP server.

The loop replaces whole immutable values; the server only reads them. One lock guards the
references so a scrape never sees a nat-stats pass from one moment and counters from
another half-written.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from egressgw.net import Family
from egressgw.stats import NatStats

if TYPE_CHECKING:  # importing the policy package would slow down API clients
    from egressgw.rules import RuleKind


@dataclass(frozen=True, slots=True)
class CountSnapshot:
    """The result of one nat-stats pass over the datapath's NAT table."""

    stats: NatStats
    # Connections holding a NAT source port per family, over all tuples (not only top K).
    entries: Mapping[Family, int]
    # Wall-clock time the pass finished, and how long it took (seconds).
    taken_at: float
    duration: float


@dataclass(frozen=True, slots=True)
class FailureSnapshot:
    """Datapath failure counters since the agent started, by reason."""

    allocation_failures: Mapping[str, int] = field(default_factory=dict)
    drops: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReconcileStatus:
    """How applying the policy files has gone so far."""

    errors_total: int = 0
    applies_total: int = 0
    # Wall-clock time of the last reconcile that left the datapath matching the files.
    last_success: float | None = None
    # The latest attempt was rejected: the rules in force are older than the files.
    failing: bool = False
    last_error: str | None = None
    rules: Mapping[RuleKind, int] = field(default_factory=dict)


class AgentState:
    """The agent's current view: the last count, failure counters, reconcile status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: CountSnapshot | None = None
        self._failures = FailureSnapshot()
        self._reconcile = ReconcileStatus()

    @property
    def counts(self) -> CountSnapshot | None:
        """The last nat-stats pass, or None before the first one."""
        with self._lock:
            return self._counts

    @property
    def failures(self) -> FailureSnapshot:
        with self._lock:
            return self._failures

    @property
    def reconcile(self) -> ReconcileStatus:
        with self._lock:
            return self._reconcile

    def publish_counts(self, counts: CountSnapshot) -> None:
        with self._lock:
            self._counts = counts

    def publish_failures(self, failures: FailureSnapshot) -> None:
        with self._lock:
            self._failures = failures

    def record_success(self, at: float, rules: Mapping[RuleKind, int], *, applied: bool) -> None:
        with self._lock:
            status = self._reconcile
            self._reconcile = replace(
                status,
                applies_total=status.applies_total + int(applied),
                last_success=at,
                failing=False,
                last_error=None,
                rules=dict(rules),
            )

    def record_error(self, message: str) -> None:
        with self._lock:
            status = self._reconcile
            self._reconcile = replace(
                status, errors_total=status.errors_total + 1, failing=True, last_error=message
            )
