"""One nat-stats pass and one failure-counter sample, published to the agent state.

A pass begins on the loop (``begin_pass``: the counter's snapshot, agent/counting.py) and
may end on the recount thread (``recountthread``) while the loop samples the failure
counters: the rest of the pass reads through its own ``EndpointCounter`` and only ever
touches the state to publish, so the two share nothing but the state's lock.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from egressgw.datapath.base import Datapath
from egressgw.limits import PortLimit
from egressgw.net import Family
from egressgw.stats import compute_nat_stats

from .counters import CounterDeltas
from .counting import EndpointCounter, ReadUsage
from .guard import Guard
from .state import AgentState, CountSnapshot, FailureSnapshot

log = logging.getLogger(__name__)


@runtime_checkable
class CountsDrops(Protocol):
    """A datapath that knows drop reasons beyond port allocation (the model does)."""

    def drop_counts(self) -> Mapping[str, int]: ...


def drop_counts(datapath: Datapath) -> Mapping[str, int]:
    """Packets dropped by reason: where the datapath counts them (kernel: conntrack,
    model: Cilium's reasons), else its allocation failures."""
    if isinstance(datapath, CountsDrops):
        return datapath.drop_counts()
    return datapath.allocation_failures()


class Recounter:
    """Counts the datapath's NAT table into nat-stats and samples its failure counters."""

    def __init__(
        self,
        datapath: Datapath,
        state: AgentState,
        *,
        counter: EndpointCounter,
        entries: int,
        limit: PortLimit,
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self._datapath = datapath
        self._counter = counter
        self._state = state
        self._entries = entries
        self._limit = limit
        self._clock = clock
        self._wall = wall
        self._failures = CounterDeltas()
        self._drops = CounterDeltas()
        # One Guard per thread: the snapshot runs on the loop, the read on the thread.
        self._snapshot_guard = Guard("taking the nat-stats snapshot")
        self._guard = Guard("counting nat-stats")

    def run_pass(self) -> CountSnapshot | None:
        """One whole pass on the calling thread (the loop, when it counts inline)."""
        finish = self.begin_pass()
        return None if finish is None else finish()

    def begin_pass(self) -> Callable[[], CountSnapshot | None] | None:
        """On the loop: mark a pass as running and take the counter's snapshot. Returns
        the rest of the pass (for the recount thread), or None when the snapshot failed.

        Neither step raises: a failure is logged (once while it repeats), counted in the
        state, and leaves the last good snapshot published.
        """
        started = self._clock()
        self._state.recount_started(self._wall())
        read = self._snapshot_guard.run(self._counter.snapshot,
                                        on_error=self._state.recount_failed)
        if read is None:
            return None
        return lambda: self._guard.run(lambda: self._publish(read, started),
                                       on_error=self._state.recount_failed)

    def _publish(self, read: ReadUsage, started: float) -> CountSnapshot:
        """Read the NAT table, compute the top K per family, and publish it."""
        counts, reusable = read()
        stats = compute_nat_stats(counts, entries=self._entries, limit=self._limit,
                                  reusable=reusable)
        entries: Counter[Family] = Counter()
        for endpoint, n in counts.items():
            entries[endpoint.family] += n
        snapshot = CountSnapshot(
            stats=stats,
            entries={family: entries.get(family, 0) for family in Family},
            taken_at=self._wall(),
            duration=max(0.0, self._clock() - started),
        )
        self._state.publish_counts(snapshot)
        log.debug("nat-stats: %d rows, %d tuples in %.3fs", len(stats.rows), len(counts),
                  snapshot.duration)
        return snapshot

    def close(self) -> None:
        """Release what the counter holds (a ctnetlink socket); not during a pass."""
        self._counter.close()

    def sample_failures(self) -> FailureSnapshot:
        """Read the datapath's failure counters (cheap) and publish totals since start."""
        snapshot = FailureSnapshot(
            allocation_failures=self._failures.update(self._datapath.allocation_failures()),
            drops=self._drops.update(drop_counts(self._datapath)),
        )
        self._state.publish_failures(snapshot)
        return snapshot
