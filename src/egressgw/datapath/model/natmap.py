"""The NAT map's storage for the reference engine: an exact LRU, or the kernel's BPF LRU.

``ModelConfig.nat_lru`` names the kind:

- ``"exact"``: evict the single least recently used entry when full; a BPF lookup makes
  an entry the most recent. Simple to reason about, and what the compiled engine runs.
- ``"kernel"``: ``BPF_MAP_TYPE_LRU_HASH`` as the kernel implements it (``bpflru.py``):
  batch evictions, reference bits instead of recency order, per-CPU free lists, and
  failed ``BPF_NOEXIST`` inserts that evict. ``bpf_distributed_lru`` selects
  ``BPF_F_NO_COMMON_LRU`` (Cilium 1.18's ``--bpf-distributed-lru``).

Both answer the map operations nat.h and the agent perform: a BPF lookup (refreshes), a
``BPF_NOEXIST`` create (from a BPF program on a CPU), a delete, and a user-space walk.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, Protocol, TypeVar

from egressgw.datapath.model.bpflru import BPF_NOEXIST, BpfLruHash

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

NAT_LRU_KINDS = ("exact", "kernel")
FLOW_CPU_KINDS = ("hash", "one")


class NatTable(Protocol[K, V]):
    def lookup(self, key: K, cpu: int) -> V | None:
        """A lookup from a BPF program on ``cpu``: marks the entry as used."""

    def create(self, key: K, value: V, cpu: int) -> bool:
        """map_update_elem(BPF_NOEXIST) from a BPF program on ``cpu``; False on failure."""

    def delete(self, key: K) -> V | None: ...

    def __contains__(self, key: object) -> bool: ...

    def __len__(self) -> int: ...

    def items(self) -> Iterator[tuple[K, V]]:
        """Every entry (for an exact LRU, least recently used first), touching nothing."""

    def keys(self) -> list[K]:
        """Every key, copied at once (a snapshot), in no particular order, touching
        nothing: for counting, where the LRU order does not matter."""


class ExactLru(Generic[K, V]):
    """An exact LRU of ``capacity`` entries."""

    def __init__(self, capacity: int, on_evict: Callable[[K, V], None]) -> None:
        self.capacity = capacity
        self.on_evict = on_evict
        self.table: OrderedDict[K, V] = OrderedDict()

    def lookup(self, key: K, cpu: int) -> V | None:
        value = self.table.get(key)
        if value is not None:
            self.table.move_to_end(key)
        return value

    def create(self, key: K, value: V, cpu: int) -> bool:
        # A failed BPF_NOEXIST insert only finds the key: no refresh of that entry.
        if key in self.table:
            return False
        if len(self.table) >= self.capacity:
            victim, old = self.table.popitem(last=False)
            self.on_evict(victim, old)
        self.table[key] = value
        return True

    def delete(self, key: K) -> V | None:
        return self.table.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self.table

    def __len__(self) -> int:
        return len(self.table)

    def items(self) -> Iterator[tuple[K, V]]:
        return iter(list(self.table.items()))

    def keys(self) -> list[K]:
        # The dict's own walk: an OrderedDict's walks its LRU list and looks every key up
        # (hashing each tuple again), several times slower at 524,288 entries.
        return list(dict.keys(self.table))

    # dict-style aliases, for code written against the plain OrderedDict it replaced
    def pop(self, key: K, default: V | None = None) -> V | None:
        value = self.delete(key)
        return default if value is None else value

    def __delitem__(self, key: K) -> None:
        if self.delete(key) is None:
            raise KeyError(key)

    def __iter__(self) -> Iterator[K]:
        return iter([key for key, _ in self.items()])


class KernelLru(Generic[K, V]):
    """The kernel's LRU hash map (``bpflru.BpfLruHash``) behind the NatTable interface."""

    def __init__(
        self, capacity: int, possible_cpus: int, *, per_cpu: bool,
        on_evict: Callable[[K, V], None],
    ) -> None:
        self.map: BpfLruHash[K, V] = BpfLruHash(
            capacity, possible_cpus, per_cpu=per_cpu, on_evict=on_evict
        )

    def lookup(self, key: K, cpu: int) -> V | None:
        return self.map.lookup(key, from_bpf=True)

    def create(self, key: K, value: V, cpu: int) -> bool:
        return self.map.update(key, value, cpu, BPF_NOEXIST) == 0

    def delete(self, key: K) -> V | None:
        return self.map.delete(key)

    def __contains__(self, key: object) -> bool:
        return key in self.map

    def __len__(self) -> int:
        return len(self.map)

    def items(self) -> Iterator[tuple[K, V]]:
        return self.map.items()

    def keys(self) -> list[K]:
        return list(self.map.table)

    # dict-style aliases, for code written against the plain OrderedDict it replaced
    def pop(self, key: K, default: V | None = None) -> V | None:
        value = self.delete(key)
        return default if value is None else value

    def __delitem__(self, key: K) -> None:
        if self.delete(key) is None:
            raise KeyError(key)

    def __iter__(self) -> Iterator[K]:
        return iter([key for key, _ in self.items()])


def flow_cpu(key: tuple[int, ...], reply: bool, cpus: int) -> int:
    """The CPU a packet of the flow ``key`` runs on, as receive-side hashing spreads flows:
    a fixed 32-bit mix of the tuple (and direction), modulo the CPUs."""
    h = 0x811C9DC5 ^ int(reply)
    for part in key:
        h = ((h ^ (part & 0xFFFFFFFF)) * 0x01000193) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h ^= h >> 15
    return h % cpus
