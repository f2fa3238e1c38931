"""The model's BPF LRU (bpflru.py) against a real BPF_MAP_TYPE_LRU_HASH, operation by operation.

Each test replays one sequence of map operations on a map created with bpf(2) and on the
model, on the same CPUs (the process is pinned with sched_setaffinity; BPF-side lookups
run an XDP program with BPF_PROG_TEST_RUN on the pinned CPU), and asserts that every
operation answers the same and that the same keys survive. Maps and programs are unpinned
file descriptors, closed at the end of each test.
"""

from __future__ import annotations

import os
import random
import struct
from collections import OrderedDict
from collections.abc import Iterator

import pytest

from egressgw.datapath.bpf.progrun import XDP_PASS, xdp_lookup_program
from egressgw.datapath.bpf.syscall import (
    BPF_F_NO_COMMON_LRU,
    BPF_NOEXIST,
    MAP_TYPE_LRU_HASH,
    BpfMap,
    BpfProgram,
    possible_cpus,
)
from egressgw.datapath.model.bpflru import BpfLruHash

pytestmark = pytest.mark.kernel


def k(i: int) -> bytes:
    return struct.pack("<Q", i)


class Pair:
    """A real map and the model, driven together; every answer must agree."""

    def __init__(self, size: int, *, per_cpu: bool = False) -> None:
        self.cpus = possible_cpus()
        self.real = BpfMap.create("lru_check", MAP_TYPE_LRU_HASH, 8, 8, max_entries=size,
                                  flags=BPF_F_NO_COMMON_LRU if per_cpu else 0)
        self.prog: BpfProgram = xdp_lookup_program(self.real)
        self.model: BpfLruHash[int, int] = BpfLruHash(size, self.cpus, per_cpu=per_cpu)
        self.cpu = -1
        self.on(0)

    def on(self, cpu: int) -> None:
        if cpu != self.cpu:
            os.sched_setaffinity(0, {cpu})
            self.cpu = cpu

    def insert(self, key: int) -> int:
        """A BPF_NOEXIST insert (what nat.h's __snat_create does)."""
        real = self.real.update_errno(k(key), k(key), BPF_NOEXIST)
        assert self.model.update(key, key, self.cpu) == real, ("insert", key)
        return real

    def bpf_lookup(self, key: int) -> bool:
        real = self.prog.run(k(key) + bytes(56))[0] == XDP_PASS
        assert (self.model.lookup(key) is not None) == real, ("bpf lookup", key)
        return real

    def user_lookup(self, key: int) -> bool:
        real = self.real.lookup(k(key)) is not None
        assert (self.model.lookup(key, from_bpf=False) is not None) == real, ("lookup", key)
        return real

    def delete(self, key: int) -> bool:
        real = self.real.delete(k(key))
        assert (self.model.delete(key) is not None) == real, ("delete", key)
        return real

    def keys(self) -> set[int]:
        real = {struct.unpack("<Q", key)[0] for key in self.real.all_keys()}
        assert set(self.model.table) == real
        return real

    def close(self) -> None:
        self.prog.close()
        self.real.close()


@pytest.fixture
def pairs() -> Iterator[list[Pair]]:
    made: list[Pair] = []
    saved = os.sched_getaffinity(0)
    try:
        yield made
    finally:
        for pair in made:
            pair.close()
        os.sched_setaffinity(0, saved)


def random_ops(pair: Pair, seed: int, count: int, *, both_cpus: bool) -> None:
    """Mostly new inserts, with re-inserts of existing keys (failed probes), BPF lookups,
    user-space lookups and deletes, in the proportions of a busy NAT map."""
    rng = random.Random(seed)
    fresh = 0
    for _ in range(count):
        if both_cpus:
            pair.on(rng.randrange(pair.cpus))
        r = rng.random()
        if r < 0.5 or fresh == 0:
            if fresh == 0 or rng.random() < 0.8:
                pair.insert(fresh)
                fresh += 1
            else:
                pair.insert(rng.randrange(fresh))
        elif r < 0.8:
            pair.bpf_lookup(rng.randrange(fresh))
        elif r < 0.9:
            pair.user_lookup(rng.randrange(fresh))
        else:
            pair.delete(rng.randrange(fresh))


@pytest.mark.parametrize("per_cpu", [False, True], ids=["common", "no-common-lru"])
@pytest.mark.parametrize("size", [64, 256, 1024])
@pytest.mark.parametrize("seed", [1, 2])
def test_same_keys_survive_random_operations_on_one_cpu(pairs, size, seed, per_cpu):
    pair = Pair(size, per_cpu=per_cpu)
    pairs.append(pair)
    random_ops(pair, seed, 12 * size, both_cpus=False)
    assert len(pair.keys()) > size // 4


@pytest.mark.parametrize("per_cpu", [False, True], ids=["common", "no-common-lru"])
@pytest.mark.parametrize("size", [64, 1024])
def test_same_keys_survive_operations_spread_over_every_cpu(pairs, size, per_cpu):
    pair = Pair(size, per_cpu=per_cpu)
    pairs.append(pair)
    if pair.cpus < 2:
        pytest.skip("one possible CPU: nothing to spread over")
    random_ops(pair, 3, 12 * size, both_cpus=True)
    pair.keys()


def test_a_full_map_evicts_a_batch_then_serves_inserts_from_the_local_free_list(pairs):
    """cilium-snat.md section 11, measured: a full 1024-entry map, one insert evicts
    clamp(1024 / possible CPUs / 2, 1, 128) entries at once (128 on 2 CPUs), the next none."""
    size = 1024
    pair = Pair(size)
    pairs.append(pair)
    batch = min(max(size // pair.cpus // 2, 1), 128)
    inserted = 0
    while len(pair.keys()) < size:  # fill up (the last refills may already evict)
        pair.insert(inserted)
        inserted += 1
    # Use up the CPU's local free list: every insert now evicts a batch or nothing.
    sizes = []
    for _ in range(3 * batch):
        before = pair.keys()
        pair.insert(inserted)
        inserted += 1
        sizes.append(len(before - pair.keys()))
    assert set(sizes) == {0, batch}
    assert sizes.count(batch) == 3
    first = sizes.index(batch)
    assert sizes[first + 1 : first + batch] == [0] * (batch - 1)


def test_a_failed_noexist_probe_evicts_and_probed_keys_go_first(pairs):
    """A failed BPF_NOEXIST insert still takes a node (prealloc_lru_pop before the flag
    check), so it can evict; keys touched only by failed probes keep no reference bit."""
    size = 256
    pair = Pair(size)
    pairs.append(pair)
    for key in range(size):
        pair.insert(key)
    probed = list(range(0, size, 2))
    looked_up = list(range(1, size, 2))
    for key in looked_up:
        assert pair.bpf_lookup(key)
    evictions_by_probes = 0
    for key in probed:
        before = pair.keys()
        pair.insert(key)  # exists (or was just evicted: then the insert succeeds)
        evictions_by_probes += len(before - pair.keys())
    assert evictions_by_probes > 0
    before = pair.keys()
    for key in range(size, size + 64):
        pair.insert(key)
    evicted = before - pair.keys()
    assert evicted
    assert evicted <= set(probed)  # the looked-up keys were kept


def test_a_noexist_insert_can_evict_its_own_key_and_then_succeed(pairs):
    size = 64
    pair = Pair(size)
    pairs.append(pair)
    succeeded_on_existing = 0
    for key in range(40 * size):
        existing = sorted(pair.model.table)
        target = existing[0] if existing else key
        present = target in pair.model.table
        if pair.insert(target) == 0 and present:
            succeeded_on_existing += 1
        pair.insert(key + 1000)
    assert succeeded_on_existing > 0
    pair.keys()


def test_user_space_lookups_do_not_protect_a_key_but_bpf_lookups_do(pairs):
    size = 256
    pair = Pair(size)
    pairs.append(pair)
    for key in range(size):
        pair.insert(key)
    for key in range(0, 64):
        pair.user_lookup(key)
    for key in range(64, 128):
        pair.bpf_lookup(key)
    for key in range(size, size + 128):
        pair.insert(key)
    survivors = pair.keys()
    assert set(range(64, 128)) <= survivors
    assert not set(range(0, 64)) <= survivors


def exact_lru_survivors(size: int, seed: int, count: int) -> set[int]:
    """The same operations on an exact LRU (what the model had before): for contrast."""
    rng = random.Random(seed)
    table: OrderedDict[int, int] = OrderedDict()
    fresh = 0
    for _ in range(count):
        r = rng.random()
        if r < 0.5 or fresh == 0:
            key = fresh if fresh == 0 or rng.random() < 0.8 else rng.randrange(fresh)
            fresh += key == fresh
            if key not in table:
                if len(table) >= size:
                    table.popitem(last=False)
                table[key] = key
        elif r < 0.8:
            key = rng.randrange(fresh)
            if key in table:
                table.move_to_end(key)
        elif r < 0.9:
            rng.randrange(fresh)
        else:
            table.pop(rng.randrange(fresh), None)
    return set(table)


def test_an_exact_lru_would_not_match_the_kernel(pairs):
    """The comparison can fail: an exact LRU keeps different keys than the kernel."""
    size, seed = 256, 1
    pair = Pair(size)
    pairs.append(pair)
    random_ops(pair, seed, 12 * size, both_cpus=False)
    assert exact_lru_survivors(size, seed, 12 * size) != pair.keys()


@pytest.mark.parametrize(("entries", "distributed", "narrow"),
                         [(1024, False, False), (2048, False, False), (1024, True, False),
                          (2048, False, True)])
def test_the_models_nat_map_operations_replay_identically_on_a_real_map(
    entries, distributed, narrow
):
    """A NAT workload through the reference engine with the kernel LRU: every map operation
    nat.h and the agent performed, replayed on real maps, gets the same answer, and the
    same NAT entries survive. The map is small enough for thousands of evictions; with
    ``narrow``, 256 NAT ports per tuple make the port search probe (and fail) often."""
    from egressgw.config import NodePortRange  # noqa: PLC0415
    from egressgw.datapath.bpf.lrureplay import CREATE, record, replay, run_model  # noqa: PLC0415
    from egressgw.datapath.model import ModelConfig  # noqa: PLC0415

    config = ModelConfig(bpf_nat_global_max=entries, conntrack_gc_interval=30.0,
                         node_port_range=NodePortRange(30000, 65279 if narrow else 32767),
                         possible_cpus=possible_cpus(), nat_lru="kernel",
                         cilium_version="1.18" if distributed else "1.16",
                         bpf_distributed_lru=distributed)
    dp, log = run_model(config, seed=4, rate=8.0, duration=240.0, hook=record)
    assert dp.counters.evictions_in + dp.counters.evictions_out > 0 or entries > 1024
    if narrow:
        assert sum(1 for op in log if op.kind == CREATE and not op.answer) > 1000
    result = replay(log, entries, per_cpu=distributed)
    assert result.operations > 10_000
    assert (result.differing, result.first_difference) == (0, -1)
    from egressgw.datapath.model.reference import ReferenceModel  # noqa: PLC0415

    engine = dp.engine  # nat_lru="kernel" runs the reference engine
    assert isinstance(engine, ReferenceModel)
    for family in (0, 1):
        assert result.real_keys[family] == {key for key, _ in engine.nat[family].items()}
