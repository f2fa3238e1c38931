"""The adaptive CT GC interval, exactly as Cilium v1.16.2 computes it.

``pkg/maps/ctmap/ctmap.go``, ``GetInterval`` and ``calculateInterval``; the deletion ratio
comes from ``pkg/maps/ctmap/gc/gc.go`` (``runGC``): entries a pass deleted from a CT map
divided by that map's MaxEntries (``--bpf-ct-global-tcp-max``, ``--bpf-ct-global-any-max``),
the largest over the maps of the pass.

Durations are integer nanoseconds, as Go's ``time.Duration``, so the rounding is Go's:
``time.Duration(float64(d) * f)`` truncates toward zero, ``Round(time.Second)`` rounds
halves up. This is the one definition: the reference engine and the planner call it, the
compiled kernel compiles this same function with numba.
"""

from __future__ import annotations

SECOND = 1_000_000_000
# pkg/defaults: ConntrackGCStartingInterval, ConntrackGCMinInterval,
# ConntrackGCMaxLRUInterval.
START_NS = 300 * SECOND
MIN_NS = 10 * SECOND
MAX_LRU_NS = 12 * 3600 * SECOND


def get_interval(
    cached_ns: int, actual_prev_ns: int, max_delete_ratio: float, max_interval_ns: int
) -> tuple[int, int]:
    """``GetInterval`` (adaptive case): (the next interval, the new ``cachedGCInterval``).

    ``cached_ns`` is the package's ``cachedGCInterval`` (0 = never set: calculateInterval
    leaves it unset while every ratio is 0); ``actual_prev_ns`` the time since the previous
    pass started (0 for the first pass); ``max_interval_ns`` ``--conntrack-gc-max-interval``
    (0 = none). A fixed ``--conntrack-gc-interval`` is the caller's business.
    """
    expected = cached_ns
    ratio = max_delete_ratio
    if expected == 0:
        expected = START_NS
    elif 0 < actual_prev_ns < expected:
        # The previous pass came early (a signal): scale the ratio up accordingly.
        ratio *= float(expected) / float(actual_prev_ns)
    interval = expected
    cached = cached_ns
    if ratio != 0.0:  # calculateInterval returns early on 0, leaving the cache alone
        factor = 1.0
        if ratio > 0.25:
            factor = 1.0 - min(ratio, 0.9)
        elif ratio < 0.05:
            factor = 1.5
        if factor != 1.0:
            # time.Duration(float64(d) * f) truncates; Round(time.Second) rounds halves up.
            scaled = int(float(interval) * factor)
            rest = scaled % SECOND
            interval = scaled - rest if rest + rest < SECOND else scaled + (SECOND - rest)
            # Floor ConntrackGCMinInterval when shrinking, cap ConntrackGCMaxLRUInterval.
            interval = max(interval, MIN_NS) if ratio > 0.25 else min(interval, MAX_LRU_NS)
        cached = interval
    if max_interval_ns != 0 and interval > max_interval_ns:
        interval = max_interval_ns
    return interval, cached


def to_ns(seconds: float) -> int:
    """Virtual seconds as a Duration (nearest nanosecond)."""
    return round(seconds * SECOND)
