"""The nat.h port arithmetic (unsigned 16-bit) of each Cilium version, shared by every engine.

Three facts change between versions (read from ``bpf/lib/nat.h`` and the agent's config):

- ``__snat_clamp_port_range``. v1.16 (commit "Prepare for release v1.16.2", nat.h
  ``__snat_clamp_port_range``) computes ``(val % (u16)(end - start)) + start``: the
  modulus is ``end - start``, so ``end`` is never produced. Since commit 3621830f87 ("bpf:
  avoid modulo in __snat_clamp_port", first released in v1.17.0, unchanged in v1.18) it is
  ``start + (((u32)val * (end - start + 1)) >> 16)``, a multiply-shift that covers
  ``start..end``.
- The walk after a collision still passes ``(u16)(port + 1)`` in every version. With the
  modulo that steps by ``start + 1`` modulo ``end - start`` (by 2 in the default range);
  with the multiply-shift it maps ``port + 1`` to about ``start + (port + 1) / 2`` in the
  default range, a short cycle (from 40000: 52768, 59152, ...).
- ``SNAT_COLLISION_RETRIES`` and ``SNAT_SIGNAL_THRES`` (signal when retries > threshold):
  128 and 64 in v1.16 and v1.17 (nat.h defines them; v1.17.6's nat.h still does); v1.18
  moves them to ``pkg/maps/nat/nat.go`` ``SnatCollisionRetries = 32``, written into the
  datapath's defines, and nat.h derives ``SNAT_SIGNAL_THRES = SNAT_COLLISION_RETRIES / 2``
  (checked at "Prepare for release v1.18.0-pre.3" and at the v1.18 branch point, "Prepare
  for v1.19 development cycle").

The compiled kernel takes the clamp as a number (``PortSearch.clamp``) in its settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

U16 = 0xFFFF

CiliumVersion = Literal["1.16", "1.17", "1.18"]
CILIUM_VERSIONS: tuple[CiliumVersion, ...] = ("1.16", "1.17", "1.18")


class Clamp(IntEnum):
    """Which ``__snat_clamp_port_range`` a version has."""

    MODULO = 0  # v1.16 and earlier
    MULTIPLY_SHIFT = 1  # v1.17 and later (commit 3621830f87)


@dataclass(frozen=True, slots=True)
class PortSearch:
    """What one Cilium version's ``snat_v4_new_mapping`` search is made of."""

    clamp: Clamp
    retries: int  # SNAT_COLLISION_RETRIES
    signal_thres: int  # SNAT_SIGNAL_THRES: nat_fill_up when retries > this
    source: str


PORT_SEARCH: dict[str, PortSearch] = {
    "1.16": PortSearch(Clamp.MODULO, 128, 64,
                       "bpf/lib/nat.h at v1.16.2"),
    "1.17": PortSearch(Clamp.MULTIPLY_SHIFT, 128, 64,
                       "bpf/lib/nat.h at v1.17.0 and v1.17.6"),
    "1.18": PortSearch(Clamp.MULTIPLY_SHIFT, 32, 16,
                       "bpf/lib/nat.h and pkg/maps/nat/nat.go at v1.18.0-pre.3"),
}  # fmt: skip


def port_search(version: str) -> PortSearch:
    """The search of ``version`` (one of :data:`CILIUM_VERSIONS`); KeyError otherwise."""
    return PORT_SEARCH[version]


def clamp_modulo(start: int, end: int, value: int) -> int:
    """v1.16 ``__snat_clamp_port_range``: ``(value % (u16)(end - start)) + start``."""
    return ((value & U16) % ((end - start) & U16) + start) & U16


def clamp_multiply_shift(start: int, end: int, value: int) -> int:
    """v1.17+ ``__snat_clamp_port_range``: ``start + (((u32)value * (end - start + 1)) >> 16)``."""
    return (start + (((value & U16) * ((end - start) + 1)) >> 16)) & U16


def clamp(start: int, end: int, value: int, kind: Clamp = Clamp.MODULO) -> int:
    """``__snat_clamp_port_range`` of the given kind (``value`` is taken as a u16)."""
    if kind == Clamp.MULTIPLY_SHIFT:
        return clamp_multiply_shift(start, end, value)
    return clamp_modulo(start, end, value)


def keep(
    start: int, end: int, value: int, random16: Callable[[], int], kind: Clamp = Clamp.MODULO
) -> int:
    """``__snat_try_keep_port``: the original port if it is in range, else a random one."""
    if start <= value <= end:
        return value
    return clamp(start, end, random16(), kind)


def next_port(
    start: int, end: int, port: int, attempt: int, random16: Callable[[], int],
    *, kind: Clamp = Clamp.MODULO,
) -> int:
    """The port tried after attempt ``attempt`` collided: random after the first, else
    ``clamp((u16)(port + 1))``."""
    return clamp(start, end, port + 1 if attempt else random16(), kind)


def walk(
    start: int,
    end: int,
    original: int,
    retries: int,
    random16: Callable[[], int],
    *,
    kind: Clamp = Clamp.MODULO,
) -> list[int]:
    """The ports ``snat_v4_new_mapping`` would try if every attempt collided, in order.

    Draws from ``random16`` exactly as the allocator does (one draw for an out-of-range
    original port, one after the first collision), so it can replay an allocation.
    """
    port = keep(start, end, original, random16, kind)
    tried = []
    for attempt in range(retries):
        tried.append(port)
        port = next_port(start, end, port, attempt, random16, kind=kind)
    return tried
