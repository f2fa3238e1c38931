"""Turn a datapath's absolute counters into counters that start at the agent's start.

The kernel's conntrack statistics count since the network namespace was created, and they
restart from zero if the datapath is rebuilt. Exporting them as they are would show
failures that happened before this agent ran, and a drop to zero would read as a counter
reset in the middle of a run. So the agent keeps its own totals: the first reading is the
baseline, and every later reading adds its increase (a lower reading counts as a restart
from zero, the way Prometheus treats counter resets).
"""

from __future__ import annotations

from collections.abc import Mapping


class CounterDeltas:
    """Totals since the first reading, per counter name."""

    def __init__(self) -> None:
        self._previous: dict[str, int] | None = None
        self._totals: dict[str, int] = {}

    def update(self, reading: Mapping[str, int]) -> dict[str, int]:
        """Add ``reading``'s increase since the previous reading; return the totals."""
        if self._previous is None:
            self._previous = dict(reading)
            self._totals = dict.fromkeys(reading, 0)
            return dict(self._totals)
        for name, value in reading.items():
            before = self._previous.get(name)
            if before is None:
                # A counter that appears later (a new drop reason) started at zero.
                increase = value
            elif value >= before:
                increase = value - before
            else:
                increase = value
            self._totals[name] = self._totals.get(name, 0) + increase
            self._previous[name] = value
        return dict(self._totals)
