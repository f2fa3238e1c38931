"""The kernel's BPF LRU hash map (``BPF_MAP_TYPE_LRU_HASH``), as the NAT map experiences it.

Cilium creates its SNAT maps as LRU hash maps with the common LRU (flags 0), or with
``BPF_F_NO_COMMON_LRU`` when 1.18's ``--bpf-distributed-lru`` is on. The kernel's LRU is
not an exact LRU; this module reproduces what ``kernel/bpf/bpf_lru_list.c`` and the LRU
paths of ``kernel/bpf/hashtab.c`` do (Linux 6.18), step for step, so the same sequence of
map operations leaves the same keys in the map. Checked against a real map created with
bpf(2) in tests/test_bpf_lru_kernel.py.

The behaviour, in the kernel's terms:

- Every element sits on a node. The common LRU has one global list set (active,
  inactive, free), per-CPU local free lists and per-CPU pending lists. An insert takes a
  node from the CPU's local free list; when that is empty it takes the global lock,
  flushes the CPU's pending nodes onto the global lists (referenced ones to active, the
  others to inactive, each at the head), rotates the lists, and moves up to
  ``target_free = clamp(max_entries / possible CPUs / 2, 1, 128)`` nodes to the local
  free list: first from the global free list, then by shrinking the inactive list from
  its tail (``__bpf_lru_list_shrink``), which evicts those elements. So one insert can
  evict a whole batch, and the next ones none. The new element's node waits on the CPU's
  pending list until the next refill.
- Rotation (``__bpf_lru_list_rotate``): when the inactive list is shorter than the active
  one, up to 128 nodes from the active tail move to the active head (referenced, bit
  cleared) or to the inactive head; then a clock hand walks up to 128 inactive nodes and
  moves referenced ones to the active head.
- Shrinking scans up to 128 inactive nodes from the tail: referenced ones move to the
  active head, others are evicted. If none could be evicted, one element is evicted from
  the inactive tail, or else the active tail, regardless of its reference bit. If the
  global lists give nothing, the CPU steals a free node, or evicts an unreferenced (else
  any) pending node, from each CPU's local lists in turn, starting with its own.
- ``htab_lru_map_update_elem`` takes the node (``prealloc_lru_pop``) *before* it checks
  the flags: a ``BPF_NOEXIST`` insert of an existing key can evict others, and can evict
  its own key and then succeed. A failed insert gives its node back to the local free list.
- A lookup from a BPF program sets the element's reference bit; a lookup from user space
  (``map_lookup_elem_sys_only``) does not. An element touched only by failed probes keeps
  its bit clear and goes first.
- Deleting puts the node back on the free list (a pending node on its CPU's local list).
- ``BPF_F_NO_COMMON_LRU``: max_entries is rounded up to a multiple of the possible CPUs and
  each CPU owns an equal share of nodes on its own list set; an insert rotates and shrinks
  (4 at a time, 4 scans) only its own CPU's lists and puts the new node straight on its
  inactive list.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar, cast

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

ACTIVE = 0
INACTIVE = 1
FREE = 2
LOCAL_FREE = 3
LOCAL_PENDING = 4

LOCAL_FREE_TARGET = 128  # bpf_lru_list.c: the refill target's cap, and the common nr_scans
PERCPU_FREE_TARGET = 4  # ... and the per-CPU LRU's shrink size and nr_scans

# map_update_elem flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

EEXIST = 17
ENOENT = 2
ENOMEM = 12


class _Node:
    """A preallocated element: list links, the LRU fields and, while in use, key and value."""

    __slots__ = ("cpu", "key", "next", "prev", "ref", "type", "value")

    def __init__(self) -> None:
        self.prev: _Node = self
        self.next: _Node = self
        self.key: object = None
        self.value: object = None
        self.type = FREE
        self.ref = False
        self.cpu = 0


def _unlink(node: _Node) -> None:
    node.prev.next = node.next
    node.next.prev = node.prev


def _add_head(node: _Node, head: _Node) -> None:
    node.next = head.next
    node.prev = head
    head.next.prev = node
    head.next = node


def _move_head(node: _Node, head: _Node) -> None:
    _unlink(node)
    _add_head(node, head)


def _iter_from_tail(head: _Node) -> Iterator[_Node]:
    """Tail to head, safe against moving the current node away."""
    node = head.prev
    while node is not head:
        prev = node.prev
        yield node
        node = prev


class _LruList:
    """One active/inactive/free list set with its counts and inactive clock hand."""

    def __init__(self, nr_scans: int, evict: Callable[[_Node], bool]) -> None:
        self.heads = (_Node(), _Node(), _Node())
        self.counts = [0, 0]  # active, inactive
        self.next_inactive_rotation: _Node = self.heads[INACTIVE]
        self.nr_scans = nr_scans
        self.evict = evict  # del_from_htab: remove the node's element from the hash table

    def _count(self, kind: int, delta: int) -> None:
        if kind < FREE:
            self.counts[kind] += delta

    def move(self, node: _Node, kind: int) -> None:
        """__bpf_lru_node_move: between or within active, inactive and free."""
        if node.type != kind:
            self._count(node.type, -1)
            self._count(kind, +1)
            node.type = kind
        node.ref = False
        if node is self.next_inactive_rotation:
            self.next_inactive_rotation = node.prev
        _move_head(node, self.heads[kind])

    def move_in(self, node: _Node, kind: int) -> None:
        """__bpf_lru_node_move_in: from a CPU's pending list onto this list set."""
        self._count(kind, +1)
        node.type = kind
        node.ref = False
        _move_head(node, self.heads[kind])

    def take_out(self, node: _Node, kind: int) -> None:
        """__bpf_lru_node_move_to_free: off these lists (to a local list, ``kind``)."""
        if node is self.next_inactive_rotation:
            self.next_inactive_rotation = node.prev
        self._count(node.type, -1)
        node.type = kind
        _unlink(node)
        node.prev = node.next = node

    def rotate(self) -> None:
        """__bpf_lru_list_rotate."""
        if self.counts[INACTIVE] < self.counts[ACTIVE]:
            self._rotate_active()
        self._rotate_inactive()

    def _rotate_active(self) -> None:
        active = self.heads[ACTIVE]
        first = active.next
        for i, node in enumerate(_iter_from_tail(active), 1):
            self.move(node, ACTIVE if node.ref else INACTIVE)
            if i == self.nr_scans or node is first:
                break

    def _rotate_inactive(self) -> None:
        inactive = self.heads[INACTIVE]
        if inactive.next is inactive:
            return
        last = self.next_inactive_rotation.next
        if last is inactive:
            last = last.next
        cur = self.next_inactive_rotation
        nxt = inactive
        i = 0
        while i < self.nr_scans:
            if cur is inactive:
                cur = cur.prev
                continue
            nxt = cur.prev
            if cur.ref:
                self.move(cur, ACTIVE)
            if cur is last:
                break
            cur = nxt
            i += 1
        self.next_inactive_rotation = nxt

    def shrink(self, target: int, out: Callable[[_Node], None], kind: int) -> int:
        """__bpf_lru_list_shrink: evict up to ``target`` elements, nodes to ``out``."""
        done = 0
        for i, node in enumerate(_iter_from_tail(self.heads[INACTIVE]), 1):
            if node.ref:
                self.move(node, ACTIVE)
            elif self.evict(node):
                self.take_out(node, kind)
                out(node)
                done += 1
                if done == target:
                    break
            if i == self.nr_scans:
                break
        if done:
            return done
        # Force: one element, ignoring reference bits; inactive first.
        inactive = self.heads[INACTIVE]
        victims = inactive if inactive.next is not inactive else self.heads[ACTIVE]
        for node in _iter_from_tail(victims):
            if self.evict(node):
                self.take_out(node, kind)
                out(node)
                return 1
        return 0


class _LocalList:
    """A CPU's local free list (a stack) and pending list (common LRU only)."""

    def __init__(self, cpu: int) -> None:
        self.free: list[_Node] = []
        self.pending = _Node()
        self.next_steal = cpu


class BpfLruHash(Generic[K, V]):
    """A ``BPF_MAP_TYPE_LRU_HASH`` of ``max_entries`` on ``possible_cpus`` CPUs.

    ``per_cpu`` is ``BPF_F_NO_COMMON_LRU``. ``on_evict(key, value)`` is called for each
    element the LRU removes to make room. Operations take the CPU they run on.
    """

    def __init__(
        self,
        max_entries: int,
        possible_cpus: int,
        *,
        per_cpu: bool = False,
        on_evict: Callable[[K, V], None] | None = None,
    ) -> None:
        if max_entries < 1 or possible_cpus < 1:
            raise ValueError("max_entries and possible_cpus must be positive")
        self.possible_cpus = possible_cpus
        self.per_cpu = per_cpu
        self.on_evict = on_evict
        self.table: dict[K, _Node] = {}
        if per_cpu:  # htab_map_alloc rounds max_entries up to a multiple of the CPUs
            max_entries = -(-max_entries // possible_cpus) * possible_cpus
        self.max_entries = max_entries
        if per_cpu:
            share = max_entries // possible_cpus
            self.lists = [_LruList(PERCPU_FREE_TARGET, self._evict) for _ in range(possible_cpus)]
            for cpu, lru in enumerate(self.lists):
                for _ in range(share):
                    node = _Node()
                    node.cpu = cpu
                    _add_head(node, lru.heads[FREE])
            self.target_free = PERCPU_FREE_TARGET
        else:
            self.lists = [_LruList(LOCAL_FREE_TARGET, self._evict)]
            for _ in range(max_entries):
                _add_head(_Node(), self.lists[0].heads[FREE])
            self.locals = [_LocalList(cpu) for cpu in range(possible_cpus)]
            self.target_free = min(max(max_entries // possible_cpus // 2, 1), LOCAL_FREE_TARGET)

    # -- the hash table side ------------------------------------------------------------

    def _evict(self, node: _Node) -> bool:
        """htab_lru_map_delete_node: drop the node's element; False if it is not there."""
        key = cast(K, node.key)
        if self.table.get(key) is not node:
            return False
        del self.table[key]
        if self.on_evict is not None:
            self.on_evict(key, cast(V, node.value))
        return True

    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, key: object) -> bool:
        return key in self.table

    def items(self) -> Iterator[tuple[K, V]]:
        """Every element, without touching reference bits (like a user-space dump)."""
        for key, node in list(self.table.items()):
            yield key, node.value  # type: ignore[misc]

    def lookup(self, key: K, *, from_bpf: bool = True) -> V | None:
        """map_lookup_elem: a BPF program's lookup sets the reference bit; user space's not."""
        node = self.table.get(key)
        if node is None:
            return None
        if from_bpf:
            node.ref = True
        return node.value  # type: ignore[return-value]

    def update(self, key: K, value: V, cpu: int, flags: int = BPF_NOEXIST) -> int:
        """htab_lru_map_update_elem on ``cpu``: 0, -EEXIST, -ENOENT or -ENOMEM."""
        node = self._pop_free(cpu)
        if node is None:
            return -ENOMEM
        node.key = key
        node.value = value
        old = self.table.get(key)
        if (old is not None and flags == BPF_NOEXIST) or (old is None and flags == BPF_EXIST):
            self._push_free(node)
            return -EEXIST if old is not None else -ENOENT
        self.table[key] = node
        if old is not None:
            node.ref = True
            self._push_free(old)
        return 0

    def delete(self, key: K) -> V | None:
        """map_delete_elem (from BPF or user space): the node goes back to a free list."""
        node = self.table.pop(key, None)
        if node is None:
            return None
        self._push_free(node)
        return node.value  # type: ignore[return-value]

    # -- bpf_lru_pop_free / bpf_lru_push_free ------------------------------------------

    def _pop_free(self, cpu: int) -> _Node | None:
        if self.per_cpu:
            return self._percpu_pop_free(cpu)
        return self._common_pop_free(cpu)

    def _push_free(self, node: _Node) -> None:
        if self.per_cpu:
            self.lists[node.cpu].move(node, FREE)
        elif node.type == LOCAL_PENDING:
            _unlink(node)
            node.type = LOCAL_FREE
            node.ref = False
            self.locals[node.cpu].free.append(node)
        else:
            self.lists[0].move(node, FREE)

    def _percpu_pop_free(self, cpu: int) -> _Node | None:
        lru = self.lists[cpu]
        lru.rotate()
        free = lru.heads[FREE]
        if free.next is free:
            lru.shrink(PERCPU_FREE_TARGET, lambda n: _add_head(n, free), FREE)
        if free.next is free:
            return None
        node = free.next
        node.ref = False
        lru.move(node, INACTIVE)
        return node

    def _common_pop_free(self, cpu: int) -> _Node | None:
        local = self.locals[cpu]
        if not local.free:
            self._refill(local)
        node = local.free.pop() if local.free else None
        if node is None:
            node = self._steal(local)
        if node is None:
            return None
        node.cpu = cpu
        node.type = LOCAL_PENDING
        node.ref = False
        _add_head(node, local.pending)
        return node

    def _refill(self, local: _LocalList) -> None:
        """bpf_lru_list_pop_free_to_local."""
        lru = self.lists[0]
        for node in _iter_from_tail(local.pending):  # __local_list_flush, oldest first
            lru.move_in(node, ACTIVE if node.ref else INACTIVE)
        lru.rotate()
        harvested: list[_Node] = []
        free = lru.heads[FREE]
        while free.next is not free and len(harvested) < self.target_free:
            node = free.next
            lru.take_out(node, LOCAL_FREE)
            harvested.append(node)
        if len(harvested) < self.target_free:
            lru.shrink(self.target_free - len(harvested), harvested.append, LOCAL_FREE)
        local.free.extend(harvested)

    def _steal(self, local: _LocalList) -> _Node | None:
        """Steal a free node, else evict a pending one, CPU by CPU from ``next_steal``."""
        first = steal = local.next_steal
        node = None
        while True:
            victim = self.locals[steal]
            node = victim.free.pop() if victim.free else self._pop_pending(victim)
            steal = (steal + 1) % self.possible_cpus
            if node is not None or steal == first:
                break
        local.next_steal = steal
        return node

    def _pop_pending(self, local: _LocalList) -> _Node | None:
        """__local_list_pop_pending: the oldest unreferenced pending element, else any."""
        for force in (False, True):
            for node in _iter_from_tail(local.pending):
                if (force or not node.ref) and self._evict(node):
                    _unlink(node)
                    return node
        return None
