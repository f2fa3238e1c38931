"""A clock the agent tests move by hand (a support module, not collected)."""

from __future__ import annotations

WALL_OFFSET = 1_700_000_000.0


class FakeClock:
    """Monotonic time (call it) starting at 100 s, and wall time ``WALL_OFFSET`` ahead."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_OFFSET + self.now
