"""Fidelity: the model reproduces Cilium's failure modes, checked against direct computation."""

from __future__ import annotations

import ipaddress
import math
import random

import numpy as np
import pytest

from egressgw.config import NodePortRange
from egressgw.datapath.model import ConnectionBatch, EndKind, ModelConfig, ModelDatapath
from egressgw.net import Endpoint, FiveTuple, Proto
from model_helpers import EGRESS, REMOTE, pod

# 1023 ports the clamp reaches (64512..65534); a collision steps by (64512 + 1) % 1023 = 64,
# coprime to 1023, so the walk never revisits a port within 32 tries. v1.16's modulo clamp
# with v1.18's bound of 32 tries.
WIDE_RANGE = NodePortRange(30000, 64511)
P_MIN, P_MOD = 64512, 1023


def exact_failure_probability(occupied: np.ndarray, retries: int) -> float:
    """P(the nat.h search fails) for this occupancy, computed directly.

    The first port is clamp(r0) (an out-of-range source port), the second clamp(r1), then
    clamp(port + 1) steps: it fails iff the first and all ``retries - 1`` walk ports are
    taken. r0, r1 are independent uniform 16-bit values, so the clamp's modulo bias counts.
    """
    weight = np.bincount(np.arange(65536) % P_MOD, minlength=P_MOD) / 65536.0
    taken = np.zeros(P_MOD, bool)
    taken[occupied - P_MIN] = True
    walk_full = np.ones(P_MOD, bool)
    position = np.arange(P_MOD)
    for _ in range(retries - 1):
        walk_full &= taken[position]
        position = (position + P_MIN + 1) % P_MOD  # clamp(port + 1) - P_MIN
    return float((weight * taken).sum() * (weight * walk_full).sum())


@pytest.mark.parametrize("occupancy", [0.90, 0.99])
def test_bounded_search_failure_rate_matches_exact_probability(occupancy):
    config = ModelConfig(
        node_port_range=WIDE_RANGE,
        cilium_version="1.16",
        snat_collision_retries=32,
        snat_signal_thres=16,
        conntrack_gc_interval=1.0,
        bpf_nat_global_max=8192,
    )
    dp = ModelDatapath(config, random.Random(42))
    gen = np.random.default_rng(7)
    k = round(occupancy * P_MOD)
    occupied = P_MIN + np.sort(gen.choice(P_MOD, k, replace=False))
    src, dst, egress = dp.intern(pod(1)), dp.intern(REMOTE), dp.intern(EGRESS)
    # Long-lived connections whose source ports are kept: exactly a uniform random set.
    hold = ConnectionBatch(
        start=np.zeros(k),
        duration=np.full(k, np.inf),
        end=np.full(k, EndKind.IDLE, np.uint8),
        src=np.full(k, src, np.uint32),
        sport=occupied.astype(np.uint16),
        dst=np.full(k, dst, np.uint32),
        dport=np.full(k, 443, np.uint16),
        proto=np.full(k, 6, np.uint8),
        egress=np.full(k, egress, np.uint32),
        keepalive=np.full(k, 1000.0, np.float32),
    )
    dp.run(hold, 10.0)
    assert dp.counters.allocations == k
    trials = 1500
    # One trial every 20 s with a source port below the range (a random first port); each
    # closes right away with FIN from both sides (10 s close timeout; an RST after the
    # handshake would hold the port 8000 s) and the GC (every second) frees its port
    # before the next trial.
    probe = ConnectionBatch(
        start=10.0 + 20.0 * np.arange(trials),
        duration=np.zeros(trials),
        end=np.full(trials, EndKind.FIN, np.uint8),
        src=np.full(trials, src, np.uint32),
        sport=(2000 + np.arange(trials)).astype(np.uint16),
        dst=np.full(trials, dst, np.uint32),
        dport=np.full(trials, 443, np.uint16),
        proto=np.full(trials, 6, np.uint8),
        egress=np.full(trials, egress, np.uint32),
        keepalive=np.zeros(trials, np.float32),
    )
    dp.run(probe, 10.0 + 20.0 * trials)
    assert sum(dp.endpoint_counts().values()) == k  # occupancy held throughout
    failures = dp.counters.drops.get(167, 0)
    p = exact_failure_probability(occupied, config.retries)
    expected = trials * p
    tolerance = 4.0 * math.sqrt(trials * p * (1 - p)) + 1.0  # about 4 binomial sigmas
    assert abs(failures - expected) <= tolerance, (failures, expected, tolerance)
    # The bounded search gives up while ports are still free (cilium issue 34088).
    assert failures > 0
    assert P_MOD - k > 0


def test_lru_evicts_the_least_recently_used_connections_which_then_break():
    config = ModelConfig(bpf_nat_global_max=1024)
    dp = ModelDatapath(config, random.Random(8))
    remote = ipaddress.ip_address("203.0.113.9")

    def conn(i: int) -> FiveTuple:
        # Distinct remote ports and kept source ports: no collision probes touch entries.
        return FiveTuple(Proto.TCP, Endpoint(pod(i), 40000), Endpoint(remote, 1000 + i))

    for i in range(512):  # exactly fills the 1024-entry map
        assert dp.connect(conn(i), EGRESS).port == 40000
        assert dp.reply(conn(i), EGRESS).ok
    recently_used = set(random.Random(3).sample(range(200), 100))
    dp.advance(50.0)
    for i in sorted(recently_used):
        assert dp.send(conn(i), EGRESS).ok
        assert dp.reply(conn(i), EGRESS).ok
    for i in range(512, 612):  # 100 new connections: 200 evictions
        assert dp.connect(conn(i), EGRESS).ok
    expected_evicted = sorted(set(range(512)) - recently_used)[:100]
    dropped = [i for i in range(612) if not dp.reply(conn(i), EGRESS).ok]
    assert dropped == expected_evicted
    assert dp.counters.evictions_in == dp.counters.evictions_out == 100
    # Their next packet finds no OUT entry: a new mapping, the connection is broken.
    for i in expected_evicted[:10]:
        assert dp.send(conn(i), EGRESS).broken
    assert dp.counters.broken == 10
