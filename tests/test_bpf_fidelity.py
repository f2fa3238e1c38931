"""The same workload through the BPF datapath (real packets) and the model datapath.

Workload: one pod opens connections one after another to 198.51.100.10:443 through a
64-port NAT range (--node-port-range 30000,65471); client ports come from Linux's
ephemeral range (32768..60999), outside the NAT range, so every allocation starts with a
random pick.

- v1.16: the outcome is fixed by the arithmetic (63 reachable ports, a walk that covers
  them within 128 tries), so both must give exactly 63 established, the rest refused.
  Tolerance 0.
- v1.18: 32 tries and v1.17's clamp make the count random: ``clamp(port + 1)`` of any
  port in 65472..65534 is 65535 and of 65535 (wrapping to 0) is 65472, so after the
  random pick the walk only alternates between those two. ``v117_search`` below, a
  direct transcription of nat.h's loop, gives the law (3000 seeds); the model (100 seeds)
  must have its median, and the real count must lie within its central 99.9% (a real run
  outside it by chance: 1 in 1000).
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from ipaddress import IPv4Address

import numpy as np
import pytest

from bpf_support import Client
from egressgw.config import NodePortRange
from egressgw.datapath.bpf import BpfDatapath, BpfSettings
from egressgw.datapath.bpf.datapath import REMAPPED_REASON
from egressgw.datapath.bpf.syscall import possible_cpus
from egressgw.datapath.model import ModelConfig, ModelDatapath
from egressgw.lab import Lab, lab_rules
from egressgw.net import Endpoint, FiveTuple, Proto
from netns import built_lab

pytestmark = pytest.mark.kernel
PORTS = NodePortRange(30000, 65471)
SERVER = "198.51.100.10"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A lab whose processes (servers, clients, this test) all run on one CPU.

    Over veth a packet is processed on the CPU of the process that sent it, and the
    kernel's LRU keeps per-CPU free and pending lists, so which NAT entries it evicts
    depends on how the scheduler spread the client and servers over the CPUs: unpinned,
    the first 64 connections of the eviction test lost 22-64 of their entries from run to
    run. On one CPU the real map's choice is fixed, and the model can be asked the same
    question (``flow_cpus="one"``). Children inherit the affinity, so pin before building.
    """
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        with built_lab() as built:
            yield built
    finally:
        os.sched_setaffinity(0, before)


def model_established(version: str, attempts: int, seed: int) -> int:
    model = ModelDatapath(ModelConfig(node_port_range=PORTS, cilium_version=version),
                          random.Random(seed), engine="reference")
    rng = random.Random(seed + 1)
    client_ports = rng.sample(range(32768, 61000), attempts)
    ok = 0
    for port in client_ports:
        tup = FiveTuple(Proto.TCP, Endpoint(IPv4Address("192.0.2.10"), port),
                        Endpoint(IPv4Address(SERVER), 443))
        ok += model.connect(tup, IPv4Address("203.0.113.10")).ok
    return ok


def v117_search(seed: int, attempts: int, tries: int = 32) -> int:
    """Established connections under v1.17+'s __snat_clamp_port_range and the +1 walk."""
    rng = random.Random(seed)
    start, end = PORTS.nat_min, PORTS.nat_max
    used: set[int] = set()

    def clamp(value: int) -> int:
        return start + (((value & 0xFFFF) * (end - start + 1)) >> 16)

    for _ in range(attempts):
        client_port = rng.randrange(32768, 61000)
        port = client_port if start <= client_port <= end else clamp(rng.getrandbits(16))
        for attempt in range(tries):
            if port not in used:
                used.add(port)
                break
            port = clamp(port + 1 if attempt else rng.getrandbits(16))
    return len(used)


def real_established(lab: Lab, version: str, attempts: int, *,
                     timeout: float = 1.0) -> int:
    if shutil.which("clang") is None or shutil.which("bpftool") is None:
        pytest.skip("the BPF datapath needs clang and bpftool (scripts/test.sh installs them)")
    t = lab.topology
    dp = BpfDatapath(BpfSettings(PORTS, cilium_version=version, netns=t.gateway_ns))
    try:
        dp.apply(lab_rules(t, [t.egress4[0], t.egress6[0]]))
        return lab.load(f"{SERVER}:443", attempts, parallel=1, timeout=timeout).succeeded
    finally:
        dp.cleanup()


def test_v116_bpf_and_model_agree_exactly(lab: Lab) -> None:
    real = real_established(lab, "1.16", 70, timeout=2.0)  # exact: no slow-start misses
    modelled = {model_established("1.16", 70, seed) for seed in range(20)}
    assert modelled == {63}
    assert real == 63


def test_v118_bpf_lies_within_the_models_spread(lab: Lab) -> None:
    real = real_established(lab, "1.18", 64)
    modelled = np.array([model_established("1.18", 64, seed) for seed in range(100)])
    law = np.array([v117_search(seed, 64) for seed in range(3000)])
    low, high = np.percentile(law, [0.05, 99.95])
    print(f"v1.18, 64 attempts: real {real}; model median {np.median(modelled):.0f} "
          f"({modelled.min()}-{modelled.max()}, 100 seeds); nat.h's law median "
          f"{np.median(law):.0f}, 0.05-99.95th percentile {low:.1f}-{high:.1f}")
    # The model follows nat.h's law (medians of a discrete law agree within one) ...
    assert abs(np.median(modelled) - np.median(law)) <= 1
    # ... and so does the real program: outside the law's central 99.9% by chance in 1
    # run of 1000.
    assert low <= real <= high


NAT_MAX = 1024  # the model's smallest --bpf-nat-global-max
FIRST, MORE = 64, 513  # connections opened first, then after (1154 entries in all)
# The kernel's LRU evicts a batch when it needs a free node: clamp(max_entries / possible
# CPUs / 2, 1, 128) entries (kernel/bpf/bpf_lru_list.c; 128 for 1024 entries on 2 CPUs).
LRU_BATCH = 128


def model_evictions(seed: int, nat_lru: str = "exact",
                    flow_cpus: str = "hash") -> tuple[int, int, int]:
    """(entries evicted while opening, connections broken while opening, of the first
    connections broken when each sends again), for the same packets the lab's client
    sends: SYN, SYN-ACK, ACK, greeting, ACK per connection."""
    model = ModelDatapath(
        ModelConfig(node_port_range=NodePortRange(30000, 60999), bpf_nat_global_max=NAT_MAX,
                    nat_lru=nat_lru, possible_cpus=possible_cpus(), flow_cpus=flow_cpus),
        random.Random(seed), engine="reference")
    rng = random.Random(seed + 1)
    egress = IPv4Address("203.0.113.10")
    tuples = [FiveTuple(Proto.TCP, Endpoint(IPv4Address("192.0.2.10"), port),
                        Endpoint(IPv4Address(SERVER), 8080))
              for port in rng.sample(range(32768, 61000), FIRST + MORE)]
    broken_open = 0
    for tup in tuples:
        model.connect(tup, egress)
        model.reply(tup, egress)
        broken_open += model.send(tup, egress).broken
        model.reply(tup, egress)
        broken_open += model.send(tup, egress).broken
    c = model.counters
    evicted = c.evictions_out + c.evictions_in
    broken_poke = sum(model.send(tup, egress).broken for tup in tuples[:FIRST])
    return evicted, broken_open, broken_poke


def test_evictions_match_the_model_of_the_kernels_lru(lab: Lab) -> None:
    """The real map against ``--nat-lru kernel`` on the lab's one CPU: the same entries
    evicted (the kernel frees a batch of LRU_BATCH when the CPU's local free list is empty,
    so 1152 inserts into 1024 nodes evict exactly one batch). The exact LRU evicts one
    entry per insert (128 here too, by arithmetic). Connections broken: within 5% of those
    at stake, for a packet the model does not send (a delayed ACK, a retransmission) can
    set a reference bit the model leaves clear (measured pinned: 63-64 of the first 64)."""
    if shutil.which("clang") is None or shutil.which("bpftool") is None:
        pytest.skip("the BPF datapath needs clang and bpftool (scripts/test.sh installs them)")
    m_evicted, m_broken_open, m_broken_poke = model_evictions(0)
    assert (m_evicted, m_broken_open, m_broken_poke) == (130, 0, 64)  # exact LRU's answer
    k_evicted, k_broken_open, k_broken_poke = model_evictions(0, "kernel", "one")
    t = lab.topology
    dp = BpfDatapath(BpfSettings(NodePortRange(30000, 60999), nat_global_max=NAT_MAX,
                                 netns=t.gateway_ns))
    client = None
    try:
        dp.apply(lab_rules(t, [t.egress4[0], t.egress6[0]]))
        client = Client(lab, 8080)
        assert all(client.ask(f"open {FIRST}"))
        assert all(client.ask(f"open {MORE}"))
        entries = sum(len(table) for table in dp.nat_tables())
        evicted = 2 * (FIRST + MORE) - entries
        broken_open = dp.allocation_failures()[REMAPPED_REASON]
        outcome = client.ask(f"poke {FIRST}")
        broken_poke = FIRST - outcome.count("ok")
        print(f"evicted entries: bpf {evicted}, model {m_evicted}; broken while opening: "
              f"bpf {broken_open}, model {m_broken_open}; first {FIRST} broken on their "
              f"next packet: bpf {broken_poke} ({outcome.count('reset')} reset), "
              f"model {m_broken_poke}; model with the kernel's LRU: {k_evicted} evicted, "
              f"{k_broken_open} and {k_broken_poke} broken")
        # Two inserts past the map's size: the exact LRU evicts 2 more, the kernel a batch.
        assert k_evicted == 2 * LRU_BATCH
        assert evicted == k_evicted
        assert abs(broken_open - k_broken_open) <= 0.05 * MORE
        assert abs(broken_poke - k_broken_poke) <= 0.05 * FIRST
    finally:
        if client is not None:
            client.close()
        dp.cleanup()
