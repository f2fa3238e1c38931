"""The NAT map with the kernel's LRU in the model datapath (no root needed).

Expected values are the kernel's measured behaviour (cilium-snat.md section 11), not the
model's: on 2 possible CPUs a full 1024-entry map evicts 128 entries at once, and the
next inserts are served from the CPU's local free list without evicting.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from egressgw.datapath.model import ModelConfig, ModelDatapath
from egressgw.errors import ConfigError
from egressgw.net import Endpoint, FiveTuple, Proto
from model_helpers import EGRESS, pod

REMOTE = ipaddress.ip_address("203.0.113.9")


def conn(i: int) -> FiveTuple:
    # Distinct remote ports and kept source ports: no collision probes.
    return FiveTuple(Proto.TCP, Endpoint(pod(i), 40000), Endpoint(REMOTE, 1000 + i))


def kernel_lru_datapath(cpus: int = 2, **extra: object) -> ModelDatapath:
    config = ModelConfig(bpf_nat_global_max=1024, nat_lru="kernel", possible_cpus=cpus,
                         flow_cpus="one", **extra)  # type: ignore[arg-type]
    return ModelDatapath(config, random.Random(1))


def evictions(dp: ModelDatapath) -> int:
    return dp.counters.evictions_in + dp.counters.evictions_out


def test_a_full_map_evicts_a_batch_of_128_then_none_for_63_connections():
    dp = kernel_lru_datapath()
    for i in range(512):  # 1024 entries: exactly full, every refill used up
        assert dp.connect(conn(i), EGRESS).port == 40000
    assert evictions(dp) == 0
    assert dp.connect(conn(512), EGRESS).ok
    assert evictions(dp) == 128
    for i in range(513, 576):  # 63 connections, 126 nodes left on the local free list
        assert dp.connect(conn(i), EGRESS).ok
    assert evictions(dp) == 128
    assert dp.connect(conn(576), EGRESS).ok
    assert evictions(dp) == 256


@pytest.mark.parametrize(("cpus", "batch"), [(1, 128), (4, 128), (8, 64), (32, 16)])
def test_the_batch_is_max_entries_over_cpus_over_two_capped_at_128(cpus, batch):
    dp = kernel_lru_datapath(cpus)
    i = 0
    while evictions(dp) == 0:
        assert dp.connect(conn(i), EGRESS).ok
        i += 1
    assert evictions(dp) == batch


def test_the_exact_lru_evicts_one_entry_per_insert():
    dp = ModelDatapath(ModelConfig(bpf_nat_global_max=1024), random.Random(1))
    for i in range(513):
        dp.connect(conn(i), EGRESS)
    assert evictions(dp) == 2


def test_referenced_connections_survive_a_batch_eviction():
    """Connections whose packets went through (BPF lookups set reference bits) are kept;
    the batch is taken from the unreferenced ones."""
    dp = kernel_lru_datapath()
    for i in range(512):
        dp.connect(conn(i), EGRESS)
    for i in range(0, 512, 2):
        assert dp.send(conn(i), EGRESS).ok
        assert dp.reply(conn(i), EGRESS).ok
    dp.connect(conn(512), EGRESS)
    # The shrink scans at most 128 inactive entries: half were referenced (moved to the
    # active list), so this batch is smaller.
    assert 0 < evictions(dp) <= 128
    lost = [i for i in range(512) if not dp.reply(conn(i), EGRESS).ok]
    assert lost and all(i % 2 for i in lost)


def test_settings_are_checked_and_name_their_flag():
    with pytest.raises(ConfigError, match="--nat-lru"):
        ModelConfig(nat_lru="clock")
    with pytest.raises(ConfigError, match="--flow-cpus"):
        ModelConfig(flow_cpus="rss")
    with pytest.raises(ConfigError, match="--possible-cpus"):
        ModelConfig(possible_cpus=0)
    with pytest.raises(ConfigError, match="--bpf-distributed-lru"):
        ModelConfig(bpf_distributed_lru=True, nat_lru="kernel")  # 1.16 has no such flag
    with pytest.raises(ConfigError, match="--bpf-distributed-lru"):
        ModelConfig(bpf_distributed_lru=True, cilium_version="1.18")  # exact LRU
    ModelConfig(bpf_distributed_lru=True, cilium_version="1.18", nat_lru="kernel")


def test_distributed_lru_evicts_within_the_cpus_share():
    """BPF_F_NO_COMMON_LRU: each CPU owns max_entries / CPUs nodes; with every flow on
    CPU 0, half of a 2-CPU map is all it gets, 4 evicted at a time."""
    dp = kernel_lru_datapath(cpus=2, cilium_version="1.18", bpf_distributed_lru=True)
    for i in range(256):
        dp.connect(conn(i), EGRESS)
    assert evictions(dp) == 0
    dp.connect(conn(256), EGRESS)
    assert evictions(dp) == 4
    assert len(list(dp.nat_entries())) == 512 + 2 - 4


@pytest.mark.parametrize("kind", ["exact", "kernel"])
def test_nat_tables_take_dict_style_deletes(kind):
    from egressgw.datapath.model.natmap import ExactLru, KernelLru  # noqa: PLC0415

    evicted: list[int] = []
    table = (ExactLru(4, lambda k, v: evicted.append(k)) if kind == "exact"
             else KernelLru(4, 1, per_cpu=False, on_evict=lambda k, v: evicted.append(k)))
    for key in range(3):
        assert table.create(key, key * 10, 0)
    assert not table.create(1, 99, 0)  # BPF_NOEXIST on an existing key
    assert table.lookup(1, 0) == 10
    assert sorted(table) == [0, 1, 2]
    assert table.pop(1) == 10 and table.pop(1, -1) == -1
    del table[0]
    with pytest.raises(KeyError):
        del table[0]
    assert sorted(table) == [2] and len(table) == 1 and evicted == []


def test_the_agents_model_datapath_takes_the_lru_settings():
    from egressgw.agent.datapaths import make_datapath  # noqa: PLC0415
    from egressgw.agent.modeldp import ModelAgentDatapath  # noqa: PLC0415
    from egressgw.config import NodePortRange  # noqa: PLC0415
    from egressgw.datapath.model.natmap import KernelLru  # noqa: PLC0415
    from egressgw.datapath.model.reference import ReferenceModel  # noqa: PLC0415

    datapath = make_datapath("model", NodePortRange(), cilium_version="1.18", nat_lru="kernel",
                             possible_cpus=4, flow_cpus="one", bpf_distributed_lru=True)
    assert isinstance(datapath, ModelAgentDatapath)
    engine = datapath.model.engine
    assert isinstance(engine, ReferenceModel)
    assert all(isinstance(table, KernelLru) for table in engine.nat)
    assert engine.nat[0].map.per_cpu and engine.nat[0].map.possible_cpus == 4
    with pytest.raises(ConfigError, match="--bpf-distributed-lru"):
        make_datapath("model", NodePortRange(), bpf_distributed_lru=True)
