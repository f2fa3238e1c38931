"""What the agent knows at a moment, shared between its loop, its recount thread and its
HTTP server.

The loop and the recount thread replace whole immutable values; the server only reads
them. One lock guards the references (held only to read or swap one), so a scrape never
sees a value half-written, never waits for a pass over the NAT table, and a failed pass
leaves the last good snapshot in place.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
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

    def __post_init__(self) -> None:
        # Read by scrapes on other threads while the next pass runs: never to change.
        object.__setattr__(self, "entries", MappingProxyType(dict(self.entries)))


@dataclass(frozen=True, slots=True)
class RecountStatus:
    """How the nat-stats passes are going (the snapshot itself is ``CountSnapshot``)."""

    # Wall-clock time the pass now running started; None while none runs.
    running_since: float | None = None
    passes_total: int = 0
    # Passes that failed; the previous snapshot stayed published.
    errors_total: int = 0
    # Periods whose pass did not start because the previous one was still running.
    skipped_total: int = 0
    last_error: str | None = None


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
        self._recount = RecountStatus()

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

    @property
    def recount(self) -> RecountStatus:
        with self._lock:
            return self._recount

    def publish_counts(self, counts: CountSnapshot) -> None:
        """A pass finished: its snapshot replaces the previous one."""
        with self._lock:
            self._counts = counts
            self._recount = replace(self._recount, running_since=None,
                                    passes_total=self._recount.passes_total + 1,
                                    last_error=None)

    def recount_started(self, at: float) -> None:
        with self._lock:
            self._recount = replace(self._recount, running_since=at)

    def recount_failed(self, message: str) -> None:
        """A pass failed: counted, and the last good snapshot stays published."""
        with self._lock:
            status = self._recount
            self._recount = replace(status, running_since=None,
                                    errors_total=status.errors_total + 1, last_error=message)

    def recount_skipped(self, periods: int = 1) -> None:
        with self._lock:
            status = self._recount
            self._recount = replace(status, skipped_total=status.skipped_total + periods)

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
