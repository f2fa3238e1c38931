"""The nat.h port arithmetic (unsigned 16-bit), shared by both implementations."""

from __future__ import annotations

from collections.abc import Callable

U16 = 0xFFFF


def clamp(start: int, end: int, value: int) -> int:
    """``__snat_clamp_port_range``: ``(value % (u16)(end - start)) + start``.

    The modulus is ``end - start``, so ``end`` itself is never produced.
    """
    return ((value & U16) % ((end - start) & U16) + start) & U16


def keep(start: int, end: int, value: int, random16: Callable[[], int]) -> int:
    """``__snat_try_keep_port``: the original port if it is in range, else a random one."""
    if start <= value <= end:
        return value
    return clamp(start, end, random16())


def walk(
    start: int, end: int, original: int, retries: int, random16: Callable[[], int]
) -> list[int]:
    """The ports ``snat_v4_new_mapping`` would try if every attempt collided, in order.

    Draws from ``random16`` exactly as the allocator does (one draw for an out-of-range
    original port, one after the first collision), so it can replay an allocation.
    """
    port = keep(start, end, original, random16)
    tried = []
    for attempt in range(retries):
        tried.append(port)
        port = clamp(start, end, port + 1 if attempt else random16())
    return tried
